"""Where dense rewards could matter: the arithmetic task's credit-assignment knobs
(``carry_every_step``, ``filler_words``), the benchmark presets built on them, and the metrics
that say what the process reward does (``adv/process_share``, ``prm/first_error_hit``)."""

from __future__ import annotations

import hashlib
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from tiny_runs import tiny_config

from iprime.algo.advantages import prime_advantage_parts, prime_rloo_advantages, within_response_deviation
from iprime.config import load_config
from iprime.data.arithmetic import (
    FILLER_WORDS,
    QUICKSTART_TASK,
    ArithmeticConfig,
    ArithmeticTask,
    Problem,
    can_slip,
    first_wrong_step,
    generate_problems,
    problem_from_prompt,
    problem_in_text,
    write_solution,
)
from iprime.presets import BENCHMARK_PRESETS, benchmark_preset, decisive_preset, preset_with_ops
from iprime.train.diagnostics import first_error_hit, first_error_metrics, line_rewards, process_share_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------- the task's knobs


def test_defaults_leave_every_draw_of_the_task_unchanged():
    """sha256 of SFT rows and test rows of two configs, recorded before the knobs existed."""
    out = [
        ArithmeticTask(QUICKSTART_TASK, slip_rate=0.7, slip_kind="carry").sft_rows(300, seed=0),
        ArithmeticTask(QUICKSTART_TASK).rows("test", 100, seed=1),
        ArithmeticTask(
            ArithmeticConfig(min_ops=2, max_ops=3, digits=3, operators=("+", "-", "*")),
            slip_rate=0.5,
            slip_kind="random",
        ).sft_rows(200, seed=1),
    ]
    digest = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
    assert digest == "57b550323fe4fb5e3044beeb368d40ee269832744021cad2afec20df9ca79a33"


@pytest.mark.parametrize("ops", [2, 4, 8])
def test_carry_every_step_makes_every_step_after_the_first_decisive(ops):
    config = ArithmeticConfig(min_ops=ops, max_ops=ops, digits=1, first_digits=1, carry_every_step=True)
    for p in generate_problems(config, 200, seed=3, unique=False):
        steps = p.steps()
        assert len(steps) == ops and p.operands[0] < 10
        assert not can_slip(steps[0].left, steps[0].op, steps[0].right, "carry")  # no column to carry into
        assert all(can_slip(s.left, s.op, s.right, "carry") for s in steps[1:])
        assert all(s.result > 10 for s in steps)
        # every eligible step counts once: exactly ops - 1 decisions per solution
        assert write_solution(p, slip_rate=0.0).n_eligible == ops - 1


def test_carry_every_step_with_two_digit_first_operands_has_no_setup_step():
    config = ArithmeticConfig(min_ops=3, max_ops=3, digits=1, first_digits=2, carry_every_step=True)
    for p in generate_problems(config, 200, seed=4, unique=False):
        assert all(can_slip(s.left, s.op, s.right, "carry") for s in p.steps())


def test_carry_every_step_refuses_what_it_cannot_draw():
    with pytest.raises(ValueError, match="allow_negative"):
        ArithmeticConfig(carry_every_step=True, allow_negative=True)
    only_plus = ArithmeticConfig(
        min_ops=6, max_ops=6, digits=1, first_digits=1, operators=("+",), carry_every_step=True
    )
    with pytest.raises(ValueError, match="every step carries"):
        generate_problems(only_plus, 50, seed=0)  # a multiple of 10 cannot carry with '+' alone


@pytest.mark.parametrize("words", [-1, 17])
def test_filler_words_out_of_range_is_an_error(words):
    with pytest.raises(ValueError, match="filler_words"):
        ArithmeticConfig(filler_words=words)


def test_filler_words_open_every_step_line_and_never_change_correctness():
    task = ArithmeticTask(replace_task(filler_words=2), slip_rate=0.7)
    rows = task.sft_rows(300, seed=0)
    assert {r["correct"] for r in rows} == {True, False}
    for r in rows:
        problem = problem_from_prompt(r["prompt"])
        lines = r["response"].split("\n")
        assert len(lines) == len(problem.ops) + 1
        for line in lines[:-1]:
            words = line.split(" ")[:2]
            assert all(w in FILLER_WORDS for w in words), line
        assert task.verify(r["response"], r["answer"]) == float(r["correct"])
        # the first wrong line is the slip, wherever the filler is
        wrong = first_wrong_step(problem, r["response"], filler=True)
        assert (wrong is None) == r["correct"]
        assert first_wrong_step(problem, r["response"]) == 0  # the strict parser sees a malformed line


def test_filler_words_use_every_word():
    sol = write_solution(Problem((7, 5, 3), ("+", "-")), filler_words=16, rng=random.Random(0))
    used = {w for line in sol.text.split("\n")[:-1] for w in line.split(" ")[:16]}
    assert used <= set(FILLER_WORDS) and len(used) >= 6
    with pytest.raises(ValueError, match="rng"):
        write_solution(Problem((7, 5), ("+",)), filler_words=1)


def replace_task(**changes) -> ArithmeticConfig:
    from dataclasses import replace

    return replace(QUICKSTART_TASK, **changes)


def test_problem_in_text_finds_the_prompt_inside_a_chat_template():
    rendered = "<|im_start|>user\nCompute (37 + 48) * 3 - 19.<|im_end|>\n<|im_start|>assistant\n"
    assert problem_in_text(rendered) == Problem((37, 48, 3, 19), ("+", "*", "-"))
    assert problem_in_text("What is the capital of France?") is None


# ------------------------------------------------------------------------- presets


def test_decisive_presets_keep_the_share_of_correct_sft_solutions():
    for decisions in (3, 7):
        preset = decisive_preset(decisions)
        assert preset.task.min_ops == preset.task.max_ops == decisions + 1
        assert (1 - preset.slip_rate) ** decisions == pytest.approx(0.35, abs=1e-3)
        rows = preset.make_task().sft_rows(1000, seed=0)
        assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(0.35, abs=0.04)


def test_benchmark_presets_by_name():
    assert BENCHMARK_PRESETS["quickstart"].task == QUICKSTART_TASK
    assert benchmark_preset("decisive7").task.carry_every_step
    assert benchmark_preset("filler").task.filler_words == 3
    with pytest.raises(ValueError, match="known: "):
        benchmark_preset("nope")
    six = preset_with_ops(benchmark_preset("quickstart"), 6)
    assert six.task.min_ops == six.task.max_ops == 6 and six.max_new_tokens == 104
    assert preset_with_ops(benchmark_preset("quickstart"), None) is BENCHMARK_PRESETS["quickstart"]


# ------------------------------------------------------------------------- the process term's share

# K = 2, one group: response 0 is right with process rewards [1, 0], response 1 wrong with [0, 0].
# Paper baseline: centred rewards [1, 0] and [-0.5, -0.5]; returns P = [[1, 0], [-1, -0.5]];
# RLOO outcome O = [[1, 1], [-1, -1]]; A = P + O = [[2, 1], [-2, -1.5]].
OUTCOME = torch.tensor([1.0, 0.0])
REWARDS = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
MASK = torch.ones(2, 2, dtype=torch.bool)


def test_prime_advantage_parts_by_hand_and_they_sum_to_the_estimator():
    p, o = prime_advantage_parts(OUTCOME, REWARDS, MASK, 2)
    assert torch.equal(p, torch.tensor([[1.0, 0.0], [-1.0, -0.5]]))
    assert torch.equal(o, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    assert torch.equal(p + o, prime_rloo_advantages(OUTCOME, REWARDS, MASK, 2))


def test_parts_sum_to_the_estimator_bitwise_with_every_option():
    g = torch.Generator().manual_seed(0)
    outcome = (torch.rand(8, generator=g) > 0.5).float()
    rewards = torch.randn(8, 6, generator=g)
    mask = torch.ones(8, 6, dtype=torch.bool)
    mask[1, 4:] = False
    options = dict(rm_coef=5.0, gamma=0.9, normalize="batch_norm", process_baseline="reference", outcome_coef=3.0)
    p, o = prime_advantage_parts(outcome, rewards, mask, 4, outcome_gamma=1.0, **options)
    assert torch.equal(p + o, prime_rloo_advantages(outcome, rewards, mask, 4, outcome_gamma=1.0, **options))
    assert torch.equal(p[1, 4:], torch.zeros(2)) and torch.equal(o[1, 4:], torch.zeros(2))


def test_within_response_deviation_by_hand():
    a = torch.tensor([[2.0, 1.0, 9.0], [-2.0, -1.5, 9.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    want = torch.tensor([[0.5, -0.5, 0.0], [-0.25, 0.25, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(within_response_deviation(a, mask), want)


def _cfg(*overrides: str):
    # the paper's formula (no batch_norm, the paper's baseline): the values below are by hand for it
    paper = ["algo.normalize=null", "algo.process_baseline=paper"]
    return load_config(None, ["rollout.n=2", "algo.rm_coef=1", "algo.outcome_coef=1", *paper, *overrides])


def test_process_share_metrics_by_hand():
    m = process_share_metrics(_cfg(), OUTCOME, MASK, REWARDS)
    # P = 1, 0, -1, -0.5: sample std sqrt(2.1875 / 3); O = +-1: sqrt(4 / 3); A: sqrt(11.1875 / 3);
    # within-response deviations of A: +-0.5, -+0.25: sqrt(0.625 / 3)
    sp, so, sa, sw = math.sqrt(2.1875 / 3), math.sqrt(4 / 3), math.sqrt(11.1875 / 3), math.sqrt(0.625 / 3)
    assert m["adv/process_std"] == pytest.approx(sp)
    assert m["adv/outcome_std"] == pytest.approx(so)
    assert m["adv/process_share"] == pytest.approx(sp / sa)  # 0.442
    assert m["adv/dense_share"] == pytest.approx(sw / sa)  # 0.236
    assert m["adv/process_outcome_corr"] == pytest.approx((sa**2 - sp**2 - so**2) / (2 * sp * so))  # 0.845


def test_process_share_follows_the_coefficients_and_is_zero_without_process_rewards():
    big = process_share_metrics(_cfg("algo.rm_coef=100"), OUTCOME, MASK, REWARDS)
    assert big["adv/process_share"] > 0.98
    none = process_share_metrics(_cfg(), OUTCOME, MASK, torch.zeros(2, 2))
    assert none["adv/process_share"] == 0.0 and none["adv/dense_share"] == 0.0
    assert "adv/process_outcome_corr" not in none  # undefined: the process part is constant
    flat = process_share_metrics(_cfg(), torch.tensor([1.0, 1.0]), MASK, torch.zeros(2, 2))
    assert flat == {"adv/process_std": 0.0, "adv/outcome_std": 0.0}  # nothing to share
    with pytest.raises(ValueError, match="prime"):
        process_share_metrics(_cfg("algo.estimator=rloo", "prm.enabled=false"), OUTCOME, MASK, REWARDS)


# ------------------------------------------------------------------------- first-error localisation


def test_line_rewards_by_hand():
    # tokens: "a" "b\n" "c" "\n\n" "d": lines a+b, c, (empty), d
    assert line_rewards([1.0, 2.0, 3.0, 4.0, 5.0], [0, 1, 0, 2, 0]) == [3.0, 7.0, 0.0, 5.0]
    assert line_rewards([], []) == [0.0]


def test_first_error_hit_by_hand():
    assert first_error_hit([0.5, -1.0, 0.2], 1) == (1.0, pytest.approx(1 / 3))
    assert first_error_hit([0.5, -1.0, 0.2], 2) == (0.0, pytest.approx(1 / 3))
    assert first_error_hit([-1.0, -1.0], 1) == (0.0, 0.5)  # a tie goes to the earlier line
    assert first_error_hit([0.5, -1.0], None) is None
    assert first_error_hit([0.5, -1.0], 2) is None  # the wrong line is not among the steps


def _batch(tokenizer, prompts: list[str], responses: list[str]):
    """A RolloutBatch laid out like the sampler's (left-padded prompts, EOS-ended responses)."""
    from iprime.prm.scoring import collate_responses, encode_response
    from iprime.rollout import RolloutBatch

    enc = [encode_response(tokenizer, p, r) for p, r in zip(prompts, responses)]
    ids, attn, rmask = collate_responses(enc, tokenizer.pad_token_id)
    P = ids.shape[1] - rmask.shape[1]
    from iprime.data.chat import render_prompt

    return RolloutBatch(
        prompt_ids=ids[:, :P],
        prompt_mask=attn[:, :P],
        response_ids=ids[:, P:],
        response_mask=rmask,
        sampling_logprobs=torch.zeros(rmask.shape),
        truncated=torch.zeros(len(enc), dtype=torch.bool),
        prompt_index=torch.arange(len(enc)),
        texts=responses,
        prompt_texts=[render_prompt(tokenizer, p) for p in prompts],
        pad_id=tokenizer.pad_token_id,
    ), enc


def _rewards_on_line(encoded, line: int, value: float = -1.0) -> list[float]:
    """Token rewards: ``value`` on the tokens that start on ``line`` of the response, 0 elsewhere."""
    starts = [encoded.response[:s].count("\n") for s, _ in encoded.spans]
    return [value if n == line else 0.0 for n in starts]


def test_first_error_metrics_on_a_hand_built_batch(tiny_model_dir):
    from iprime.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    prompt = "Compute 37 + 48 - 19."
    responses = [
        "37 + 48 = 85\n85 - 19 = 66\nThe answer is \\boxed{66}",  # right
        "37 + 48 = 85\n85 - 19 = 76\nThe answer is \\boxed{76}",  # first wrong line: 1
        "37 + 48 = 75\n75 - 19 = 56\nThe answer is \\boxed{56}",  # first wrong line: 0
        "so 37 + 48 = 75\nthen 75 - 19 = 56\nThe answer is \\boxed{56}",  # filler; first wrong line: 0
    ]
    batch, enc = _batch(tok, [prompt] * 4, responses)
    T = batch.response_ids.shape[1]
    # the PRM's lowest line: 0 for the right one (not scored), 1, 1 (a miss), 0 (a hit)
    lowest = [0, 1, 1, 0]
    rewards = torch.zeros(4, T)
    for b, line in enumerate(lowest):
        row = _rewards_on_line(enc[b], line)
        rewards[b, : len(row)] = torch.tensor(row)
    outcome = torch.tensor([1.0, 0.0, 0.0, 0.0])
    passes = SimpleNamespace(device=torch.device("cpu"))
    m = first_error_metrics(passes, batch, rewards, batch.response_mask.bool(), outcome, tok)
    assert m == {"prm/first_error_hit": 2 / 3, "prm/first_error_chance": 0.5, "prm/first_error_rows": 3.0}


def test_first_error_metrics_are_absent_off_the_arithmetic_task(tiny_model_dir):
    from iprime.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    batch, _ = _batch(tok, ["Say hello."] * 2, ["hello", "bye"])
    rewards = torch.zeros(batch.response_ids.shape)
    passes = SimpleNamespace(device=torch.device("cpu"))
    assert first_error_metrics(passes, batch, rewards, batch.response_mask.bool(), torch.tensor([1.0, 0.0]), tok) == {}


def test_first_error_metrics_with_nothing_to_locate_count_zero_rows(tiny_model_dir):
    from iprime.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    batch, _ = _batch(tok, ["Compute 7 + 5."] * 2, ["7 + 5 = 12\nThe answer is \\boxed{12}"] * 2)
    rewards = torch.zeros(batch.response_ids.shape)
    passes = SimpleNamespace(device=torch.device("cpu"))
    m = first_error_metrics(passes, batch, rewards, batch.response_mask.bool(), torch.tensor([1.0, 1.0]), tok)
    assert m == {"prm/first_error_rows": 0.0}  # every response right: no share to report


# ------------------------------------------------------------------------- in a training step


def _train(tiny_model_dir, tmp_path, *overrides):
    from iprime.train.prime import PrimeTrainer

    rows = ArithmeticTask(QUICKSTART_TASK).rows("train", 16, seed=0)
    cfg = tiny_config(
        tmp_path,
        "train.steps=2",
        "train.log_samples_every=0",
        "optim.lr=1e-6",  # the default, not the tiny runs' 1e-3
        "optim.micro_batch_size=8",
        *overrides,
    )
    alternating = iter([1.0, 0.0] * 100)
    return PrimeTrainer(str(tiny_model_dir), cfg, rows, lambda text, answer: next(alternating)).train(progress=False)


def test_a_prime_step_logs_the_process_share(tiny_model_dir, tmp_path):
    first, second = _train(tiny_model_dir, tmp_path)
    # step 1 scores with the PRM before its first update: a copy of the reference, rewards 0
    assert first["adv/process_share"] == 0.0 and first["adv/dense_share"] == pytest.approx(0.0, abs=1e-6)
    assert first["adv/outcome_std"] > 0 and "adv/process_outcome_corr" not in first
    assert 0.0 < second["adv/process_share"] and math.isfinite(second["adv/process_share"])
    assert 0.0 < second["adv/dense_share"] < 1.0 and second["adv/process_std"] > 0
    # the trainer hands the PRM stage's batch to the first-error localisation (arithmetic rows)
    assert all("prm/first_error_rows" in m for m in (first, second))


def test_an_outcome_only_step_logs_no_process_share(tiny_model_dir, tmp_path):
    for m in _train(tiny_model_dir, tmp_path, "algo.estimator=rloo", "prm.enabled=false"):
        assert "adv/process_share" not in m and "prm/pairwise_acc" not in m
