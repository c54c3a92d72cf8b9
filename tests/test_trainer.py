"""The PRIME loop end to end on the tiny model: learning signal plumbing, filter/refill, resume,
non-finite handling, baselines and bad data."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from tiny_runs import ROWS, parity_verifier, tiny_config

from iprime.config import ConfigError
from iprime.train.prime import NonFiniteError, PrimeTrainer
from iprime.train.prm_update import prm_mini_batches, update_prm


def make_config(tmp_path, *overrides: str):
    return tiny_config(tmp_path, "train.save_every=1", "rollout.max_rounds=3", *overrides)


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prime_run_end_to_end(tiny_model_dir, tmp_path):
    trainer = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path), ROWS, parity_verifier)
    policy0, prm0, ref0 = params_of(trainer.policy), params_of(trainer.prm), params_of(trainer.reference)
    history = trainer.train(progress=False)
    assert [m["step"] for m in history] == [1, 2, 3]
    for m in history:
        for key in ("prm/loss", "policy/pg_loss", "policy/entropy", "adv/std", "batch/response_length"):
            assert math.isfinite(m[key]), (key, m[key])
    assert changed(policy0, trainer.policy) and changed(prm0, trainer.prm)
    assert not changed(ref0, trainer.reference)  # the reference stays frozen
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert (tmp_path / "checkpoints" / "LATEST").read_text() == "step-000003"
    assert (tmp_path / "config.yaml").is_file()
    # the saved PRM carries what its rewards mean: beta, the reference and the step delimiter
    from iprime.prm.metadata import PRMMetadata, load_prm_metadata

    final = trainer.save_pretrained(tmp_path / "final")
    assert load_prm_metadata(final / "prm") == PRMMetadata(
        beta=0.5, reference=str(tiny_model_dir.resolve()), step_delimiter="\n", granularity="token", loss="ce"
    )


def test_filter_keeps_medium_groups_and_refills(tiny_model_dir, tmp_path):
    # rows 0-19 are always solved or never solved; only rows 20-23 alternate 1, 0, 1, 0
    alternating = itertools.cycle([1.0, 0.0])

    def verifier(text, answer):
        kind = int(answer) % 3
        return next(alternating) if int(answer) > 40 else float(kind == 0)

    cfg = make_config(
        tmp_path,
        "filter.enabled=true",
        "rollout.prompts_per_step=2",
        "rollout.oversample=1.0",
        "rollout.max_rounds=20",
        "train.steps=1",
        "filter.drop_truncated=false",
    )
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, verifier)
    trainer.collector.stream.shuffle = False  # walk the rows in order: 10 rounds before the first medium row
    batch, stats = trainer.collect()
    rows = batch.meta["row"]
    assert len(batch) == 2 * 4 and all(r >= 20 for r in rows)
    assert all(len(set(rows[g * 4 : g * 4 + 4])) == 1 for g in range(2))  # whole groups
    assert stats["rollout/rounds"] == 11  # rows 0..21 in pairs: the 11th round holds rows 20, 21
    assert stats["rollout/acc_after_filter"] == 0.5
    assert 0 < stats["rollout/kept_group_frac"] < 0.2


def test_surplus_groups_wait_in_the_buffer(tiny_model_dir, tmp_path):
    cfg = make_config(tmp_path, "rollout.prompts_per_step=2", "rollout.oversample=2.0", "train.steps=1")
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)
    batch, stats = trainer.collect()
    assert len(batch) == 8 and stats["rollout/buffer_groups"] == 2
    buffered = trainer.collector.buffer.meta["row"]
    assert stats["rollout/buffer_share"] == 0.0 and "rollout/buffer_staleness" not in stats
    trainer.step = 1  # the next step: the buffered groups were sampled by the previous policy
    batch2, stats2 = trainer.collect()
    assert stats2["rollout/rounds"] == 0 and batch2.meta["row"] == buffered
    assert stats2["rollout/buffer_share"] == 1.0 and stats2["rollout/buffer_staleness"] == 1.0
    assert batch2.meta["sampled_step"] == [0] * 8 and all(batch2.meta["from_buffer"])


def test_the_prompts_buffer_keeps_surplus_prompts_and_samples_them_again(tiny_model_dir, tmp_path):
    """rollout.buffer=prompts (ray_trainer.py add_to_buffer): the surplus groups' prompts wait,
    with no cap, and each step puts at most prompts_per_step of them before its fresh prompts."""
    cfg = make_config(
        tmp_path, "rollout.buffer=prompts", "rollout.prompts_per_step=2", "rollout.oversample=2.0", "train.steps=1"
    )
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)
    c = trainer.collector
    batch, stats = trainer.collect()  # 4 prompts, all kept (no filter): 2 train, 2 wait as prompts
    firsts = batch.meta["row"][::4]
    assert len(batch) == 8 and c.buffer is None and stats["rollout/buffer_groups"] == 2
    surplus = list(c.prompt_buffer)
    assert len(surplus) == 2 and not set(surplus) & set(firsts)
    assert stats["rollout/buffer_share"] == 0.0

    trainer.step = 1
    batch2, stats2 = trainer.collect()  # round 0: the 2 buffered prompts, then 4 fresh ones
    assert stats2["rollout/rounds"] == 1 and batch2.meta["row"][::4] == surplus
    assert batch2.meta["sampled_step"] == [1] * 8 and all(batch2.meta["from_buffer"])  # sampled again, now
    assert stats2["rollout/buffer_share"] == 1.0 and stats2["rollout/buffer_staleness"] == 0.0
    assert len(c.prompt_buffer) == 4 and stats2["rollout/buffer_groups"] == 4  # the 4 fresh prompts wait

    state = c.state_dict()
    trainer.step = 2
    batch3, _ = trainer.collect()  # 2 of the 4 head the round, 2 keep waiting, the 4 new surplus join them
    assert batch3.meta["row"][::4] == state["prompt_buffer"][:2]
    assert c.prompt_buffer[:2] == state["prompt_buffer"][2:] and len(c.prompt_buffer) == 6

    c.load_state_dict({**state, "step": 2})  # what a checkpoint restores
    assert c.prompt_buffer == state["prompt_buffer"] and c.buffer is None
    c.load_state_dict({"stream": state["stream"], "buffer": None, "step": 2})  # written before rollout.buffer
    assert c.prompt_buffer == []


def test_a_buffer_from_before_staleness_was_logged_loads_as_sampled_by_the_saving_step(tiny_model_dir, tmp_path):
    cfg = make_config(tmp_path, "rollout.prompts_per_step=2", "rollout.oversample=2.0")
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)
    trainer.collect()
    old = trainer.collector.buffer
    for key in ("sampled_step", "from_buffer"):
        del old.meta[key]
    trainer.collector.load_state_dict({**trainer.collector.state_dict(), "step": 5})
    meta = trainer.collector.buffer.meta
    assert meta["sampled_step"] == [4] * 8 and meta["from_buffer"] == [False] * 8
    trainer.step = 5
    _, stats = trainer.collect()
    assert stats["rollout/buffer_share"] == 1.0 and stats["rollout/buffer_staleness"] == 1.0


def _comparable(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("time/") and k != "tokens_per_s"}


def test_resume_gives_the_same_next_step(tiny_model_dir, tmp_path):
    full = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path / "full"), ROWS, parity_verifier)
    uninterrupted = full.train(progress=False)

    first = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path / "cut", "train.steps=2"), ROWS, parity_verifier)
    first.train(progress=False)
    resumed = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path / "cut"), ROWS, parity_verifier)
    after = resumed.train(resume=True, progress=False)
    assert [m["step"] for m in after] == [3]
    assert after[0].pop("config/changed") == "train.steps: 2 -> 3"  # changeable: applied, and said so
    a, b = _comparable(uninterrupted[-1]), _comparable(after[0])
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6, nan_ok=True), key
    for k, v in full.policy.state_dict().items():
        assert torch.allclose(v, resumed.policy.state_dict()[k], atol=1e-6)


def test_resume_without_checkpoint_is_an_error(tiny_model_dir, tmp_path):
    trainer = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path), ROWS, parity_verifier)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        trainer.train(resume=True, progress=False)


def test_non_finite_loss_skips_updates_then_stops(tiny_model_dir, tmp_path, monkeypatch):
    import iprime.train.ppo_update as ppo_module

    real = ppo_module.algo.ppo_policy_loss

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        return loss * float("nan"), metrics

    monkeypatch.setattr(ppo_module.algo, "ppo_policy_loss", poisoned)
    cfg = make_config(tmp_path, "train.max_bad_steps=2", "prm.enabled=false", "algo.estimator=rloo")
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)
    before = params_of(trainer.policy)
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        trainer.train(progress=False)
    assert not changed(before, trainer.policy)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["policy/skipped_updates"] >= 1 and lines[0]["policy/updates"] == 0


@pytest.mark.parametrize("estimator", ["rloo", "grpo", "reinforce", "reinforce_pp", "gae"])
def test_baselines_are_one_flag_apart(tiny_model_dir, tmp_path, estimator):
    cfg = make_config(
        tmp_path,
        f"algo.estimator={estimator}",
        "prm.enabled=false",
        "train.steps=1",
        "algo.kl_coef=0.01",
        "algo.kl_mode=" + ("reward" if estimator in ("reinforce_pp", "gae") else "loss"),
    )
    alternating = itertools.cycle([1.0, 0.0])  # every group of K=4 is half right: non-zero advantages
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, lambda text, answer: next(alternating))
    assert trainer.prm is None and (trainer.value is not None) == (estimator == "gae")
    before = params_of(trainer.policy)
    (m,) = trainer.train(progress=False)
    assert math.isfinite(m["policy/pg_loss"]) and math.isfinite(m["policy/kl_ref"])
    assert m["batch/acc"] == 0.5 and m["adv/std"] > 0.1 and m["policy/updates"] >= 1
    assert changed(before, trainer.policy)


@pytest.mark.parametrize(
    "override",
    [
        "prm.granularity=step",
        "prm.granularity=whole",
        "prm.loss=dpo",
        "prm.update=before",
        "model.reference=policy",
        "algo.normalize=batch_norm",
    ],
)
def test_prime_options_run(tiny_model_dir, tmp_path, override):
    trainer = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path, "train.steps=1", override), ROWS, parity_verifier)
    (m,) = trainer.train(progress=False)
    assert math.isfinite(m["prm/loss"]) and math.isfinite(m["policy/pg_loss"])


def test_frozen_prm_is_not_updated(tiny_model_dir, tmp_path):
    trainer = PrimeTrainer(
        str(tiny_model_dir), make_config(tmp_path, "train.steps=1", "prm.update=none"), ROWS, parity_verifier
    )
    before = params_of(trainer.prm)
    trainer.train(progress=False)
    assert not changed(before, trainer.prm)


def test_prm_epochs_are_repeated_passes_scored_before_the_first(tiny_model_dir, tmp_path):
    one = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path / "one"), ROWS, parity_verifier)
    two = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path / "two", "prm.epochs=2"), ROWS, parity_verifier)
    batch, _ = one.collect()
    ref_logp = one.passes.all_logprobs(one.reference, batch, 8)
    expected = one.passes.all_logprobs(one.prm, batch, 8)

    def update(trainer, return_logp=False):
        return update_prm(
            trainer.passes, trainer.prm, trainer.optimizers.prm, batch, ref_logp, len(batch), return_logp=return_logp
        )

    m2, scored = update(two, return_logp=True)
    m1a, _ = update(one)
    m1b, _ = update(one)  # two single passes == one call with prm.epochs=2
    mask = batch.response_mask.bool()
    assert torch.allclose(scored[mask], expected[mask], atol=1e-5)
    for (name, a), b in zip(one.prm.state_dict().items(), two.prm.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert m2["prm/loss"] == pytest.approx(m1a["prm/loss"], abs=1e-6)
    assert m2["prm/loss_last"] == pytest.approx(m1b["prm/loss"], abs=1e-6)
    with pytest.raises(Exception, match="prm.epochs"):
        make_config(tmp_path, "prm.epochs=0")


def test_prm_mini_batches_deal_whole_groups_in_turn():
    assert prm_mini_batches(3, 2, None) == [[0, 1, 2, 3, 4, 5]]
    assert prm_mini_batches(4, 2, 4) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # 5 groups in mini-batches of 2 groups: 3 mini-batches of 2, 2 and 1 groups, every row once
    minis = prm_mini_batches(5, 2, 4)
    assert minis == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5]]
    assert prm_mini_batches(2, 2, 100) == [[0, 1, 2, 3]]  # larger than the batch: one step
    for bad in (3, 1):
        with pytest.raises(ValueError, match="whole number of groups"):
            prm_mini_batches(4, 2, bad)
    with pytest.raises(ConfigError, match="prm.mini_batch_size: must be a multiple of rollout.n=4"):
        tiny_config("unused", "prm.mini_batch_size=6")


def test_a_quarter_batch_prm_mini_batch_takes_four_prm_steps_every_step(tiny_model_dir, tmp_path):
    # 4 prompts x K=4 = 16 responses a step; mini-batches of 4 responses: 4 PRM optimizer steps
    cfg = tiny_config(tmp_path, "rollout.prompts_per_step=4", "prm.mini_batch_size=4")
    history = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier).train(progress=False)
    assert [m["batch/size"] for m in history] == [16, 16, 16]
    assert [m["prm/updates"] for m in history] == [4, 4, 4]
    assert all(m["policy/updates"] == 2 for m in history)  # optim.mini_batch_size=8: 16 / 8
    # prm.epochs repeats the pass: 2 x 4 steps; without a mini-batch size, one step per pass
    two = tiny_config(tmp_path / "two", "rollout.prompts_per_step=4", "prm.mini_batch_size=4", "prm.epochs=2")
    trainer = PrimeTrainer(str(tiny_model_dir), two, ROWS, parity_verifier)
    assert trainer.train_step()["prm/updates"] == 8
    whole = PrimeTrainer(str(tiny_model_dir), tiny_config(tmp_path / "whole"), ROWS, parity_verifier)
    assert whole.train_step()["prm/updates"] == 1


def test_prm_mini_batches_are_scored_by_the_prm_as_it_is_at_their_turn(tiny_model_dir, tmp_path):
    """prm.update=after with mini-batches (dp_prime.py update_policy): mini-batch 0 is scored by
    the PRM before any step, mini-batch 1 by the PRM after the step on mini-batch 0 only; the
    PRM ends where two single updates, one per mini-batch, take it."""
    cfg = make_config(tmp_path / "mini", "prm.mini_batch_size=4")
    mini = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)
    plain = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path / "plain"), ROWS, parity_verifier)
    batch, _ = mini.collect()
    assert len(batch) == 8  # two groups: mini-batch 0 is group 0, mini-batch 1 group 1
    ref_logp = mini.passes.all_logprobs(mini.reference, batch, 8)
    before = mini.passes.all_logprobs(mini.prm, batch, 8)
    metrics, scored = update_prm(
        mini.passes, mini.prm, mini.optimizers.prm, batch, ref_logp, len(batch), return_logp=True
    )
    assert metrics["prm/updates"] == 2 and metrics["prm/skipped"] == 0.0

    first, second = torch.arange(0, 4), torch.arange(4, 8)
    # the same PRM (seeded alike), one plain update on mini-batch 0 alone, then one on mini-batch 1
    update_prm(plain.passes, plain.prm, plain.optimizers.prm, batch.select(first), ref_logp[first], 4)
    after_first = plain.passes.all_logprobs(plain.prm, batch, 8)
    update_prm(plain.passes, plain.prm, plain.optimizers.prm, batch.select(second), ref_logp[second], 4)
    mask = batch.response_mask.bool()
    m0, m1 = mask.clone(), mask.clone()
    m0[second], m1[first] = False, False
    assert torch.allclose(scored[m0], before[m0], atol=1e-5)  # group 0: the PRM before any step
    assert torch.allclose(scored[m1], after_first[m1], atol=1e-5)  # group 1: after the step on group 0
    assert (after_first[m1] - before[m1]).abs().max() > 1e-3  # ... which moved its scores
    for (name, a), b in zip(mini.prm.state_dict().items(), plain.prm.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_advantage_stage_passes_the_batch_norm_scope():
    from iprime.train.advantages import advantage_inputs

    mask = torch.ones(4, 3, dtype=torch.bool)
    for scope in ("global", "rank"):
        cfg = tiny_config("unused", f"algo.batch_norm_scope={scope}")
        assert advantage_inputs(cfg, torch.zeros(4), mask).batch_norm_scope == scope
    with pytest.raises(ConfigError, match="algo.batch_norm_scope: must be one of"):
        tiny_config("unused", "algo.batch_norm_scope=node")


def test_bad_rows_are_reported_with_their_index(tiny_model_dir, tmp_path):
    rows = ROWS[:3] + [{"prompt": "Compute 1 + 1."}] + ROWS[3:]
    with pytest.raises(ValueError, match=r"train_dataset row 3: answer: field 'answer' is missing"):
        PrimeTrainer(str(tiny_model_dir), make_config(tmp_path), rows, parity_verifier)


def test_a_verifier_out_of_range_stops_with_a_clear_error(tiny_model_dir, tmp_path):
    trainer = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path), ROWS, lambda text, ans: 2.0)
    with pytest.raises(ValueError, match="scores must lie in"):
        trainer.train(progress=False)


def test_sampling_logprobs_stand_in_for_a_recompute(tiny_model_dir, tmp_path):
    runs = {}
    for mode in ("sampling", "recompute"):
        trainer = PrimeTrainer(
            str(tiny_model_dir),
            make_config(tmp_path / mode, "train.steps=1", f"rollout.old_logprobs={mode}"),
            ROWS,
            parity_verifier,
        )
        assert trainer.reuse_sampling_logprobs == (mode == "sampling")
        (runs[mode],) = trainer.train(progress=False)
    for key in ("policy/pg_loss", "policy/approx_kl", "policy/clip_frac", "prm/loss", "adv/std"):
        assert runs["sampling"][key] == pytest.approx(runs["recompute"][key], abs=1e-4), key
    # a recompute is compared with what the sampler recorded; a reuse has nothing to compare
    assert 0 <= runs["recompute"]["rollout/sampler_logprob_gap"] < 1e-4
    assert "rollout/sampler_logprob_gap" not in runs["sampling"]
    # auto: the built-in sampler's log-probs are reused; with IS correction they must be recomputed
    auto = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path / "a"), ROWS, parity_verifier)
    corrected = PrimeTrainer(
        str(tiny_model_dir), make_config(tmp_path / "b", "rollout.is_correction=true"), ROWS, parity_verifier
    )
    assert auto.reuse_sampling_logprobs and not corrected.reuse_sampling_logprobs


def test_the_prm_update_pass_scores_with_the_pre_update_prm(tiny_model_dir, tmp_path):
    trainer = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path), ROWS, parity_verifier)
    batch, _ = trainer.collect()
    ref_logp = trainer.passes.all_logprobs(trainer.reference, batch, 8)
    expected = trainer.passes.all_logprobs(trainer.prm, batch, 8)
    before = params_of(trainer.prm)
    metrics, scored = update_prm(
        trainer.passes, trainer.prm, trainer.optimizers.prm, batch, ref_logp, len(batch), return_logp=True
    )
    mask = batch.response_mask.bool()
    assert metrics["prm/skipped"] == 0.0 and changed(before, trainer.prm)
    assert torch.allclose(scored[mask], expected[mask], atol=1e-5)
    assert trainer.prm.training  # the scoring pass ran in eval mode and restored the mode


def test_a_registered_estimator_trains_from_the_config(tiny_model_dir, tmp_path, monkeypatch):
    import iprime.algo.advantages as advantages_module
    from iprime.algo import AdvantageOutput, register_advantage_estimator, rloo_advantages

    monkeypatch.setattr(advantages_module, "_REGISTRY", dict(advantages_module._REGISTRY))
    seen = []

    @register_advantage_estimator("scaled_rloo")
    def scaled_rloo(x):
        seen.append((x.outcome.shape, x.mask.shape, x.group_size, x.token_rewards is None))
        return AdvantageOutput(3.0 * rloo_advantages(x.outcome, x.mask, x.group_size))

    alternating = itertools.cycle([1.0, 0.0])
    cfg = make_config(tmp_path, "algo.estimator=scaled_rloo", "prm.enabled=false", "train.steps=1", "algo.whiten=false")
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, lambda text, answer: next(alternating))
    (m,) = trainer.train(progress=False)
    assert seen == [(torch.Size([8]), torch.Size([8, 8]), 4, True)]
    assert m["adv/max"] == pytest.approx(3.0 * (1.0 - 1.0 / 3.0))  # 3 x the RLOO advantage of a right answer


def test_an_explosive_update_is_not_checkpointed_as_the_newest_state(tiny_model_dir, tmp_path):
    cfg = make_config(tmp_path, "train.steps=1", "optim.lr=1e10", "prm.enabled=false", "algo.estimator=rloo")
    alternating = itertools.cycle([1.0, 0.0])
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, lambda text, answer: next(alternating))
    with pytest.warns(UserWarning, match="not checkpointed"):
        (m,) = trainer.train(progress=False)
    assert "policy" in m["guard/rejected"] and math.isfinite(m["policy/grad_norm"])  # finite, yet ruinous
    assert not (tmp_path / "checkpoints" / "LATEST").exists()
