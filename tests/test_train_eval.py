"""Evaluation during training from the config (iprime.train.evaluate): which sets, when, what lands in
metrics.jsonl, that it never changes training, and that 2 ranks give the 1-rank numbers.

Run as a script, this file is one rank of the data-parallel check (see ``run_rank``)."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import launch_ranks
from tiny_runs import ROWS, parity_verifier, tiny_config

from iprime.eval.loop import AccuracyTally
from iprime.train.evaluate import (
    build_eval_sets,
    eval_due,
    eval_path_name,
    preserved_training_state,
    run_evals,
    set_metrics,
)
from iprime.train.prime import PrimeTrainer
from iprime.train.scoring import RolloutScorer

pytestmark = pytest.mark.usefixtures("one_thread")


def answer_verifier(text: str, answer: str) -> float:
    """Depends on the row only: the exact accuracy of any set is known in advance."""
    return float(int(answer) % 3 == 0)


def make_config(out_dir, *overrides: str):
    return tiny_config(
        out_dir, "train.progress=none", "train.log_samples_every=0", "rollout.max_new_tokens=6", *overrides
    )


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ pure helpers


def test_eval_runs_every_n_steps_and_after_the_last():
    assert [s for s in range(0, 8) if eval_due(s, 7, 3)] == [3, 6, 7]
    assert [s for s in range(0, 7) if eval_due(s, 6, 3)] == [3, 6]  # the last step is not evaluated twice
    assert not any(eval_due(s, 7, 0) for s in range(8))


def test_eval_path_names():
    assert eval_path_name("data/held_out.jsonl.gz") == "held_out"
    assert eval_path_name("data/test.parquet") == "test"
    assert eval_path_name("data/evalsets/") == "evalsets"
    assert eval_path_name("hf:org/gsm8k:test") == "gsm8k_test"
    assert eval_path_name("hf:gsm8k") == "gsm8k"


def test_set_metrics_from_sums():
    m = set_metrics("x", AccuracyTally(3.0, 8.0, 2.0, 4.0, 4.0), n_rows=4, n=2, time_s=1.5)
    assert m == {"eval/x/acc": 3 / 8, "eval/x/pass@2": 0.5, "eval/x/truncated_frac": 0.5, "eval/x/time_s": 1.5}
    assert "eval/x/pass@1" not in set_metrics("x", AccuracyTally(1.0, 2.0, 1.0, 0.0, 2.0), n_rows=2, n=1, time_s=0.0)
    with pytest.raises(RuntimeError, match="expected 4 rows x 2"):
        set_metrics("x", AccuracyTally(3.0, 7.0, 2.0, 4.0, 4.0), n_rows=4, n=2, time_s=0.0)


def test_preserved_training_state_restores_rng_and_modes():
    model = torch.nn.Linear(2, 2).train()
    torch.manual_seed(5)
    random.seed(5)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(5)
    random.seed(5)
    with preserved_training_state(model, None):
        torch.rand(100), random.random(), model.eval()
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert model.training


# ------------------------------------------------------------------ which sets


def test_build_eval_sets_reads_the_path_the_benchmarks_and_the_dataset(tmp_path):
    path = write_jsonl(tmp_path / "held_out.jsonl", ROWS[:7])
    cfg = make_config(
        tmp_path,
        "train.eval_every=2",
        f"data.eval_path={path}",
        "train.eval_benchmarks=[arithmetic]",
        "train.eval_limit=5",
        "data.system_prompt=Be brief.",
    )
    sets = build_eval_sets(cfg, ROWS[10:20], None, RolloutScorer(cfg, parity_verifier))
    assert [(s.name, len(s)) for s in sets] == [("eval_dataset", 5), ("held_out", 5), ("arithmetic", 5)]
    dataset, held_out, bench = sets
    assert held_out.references == [r["answer"] for r in ROWS[:5]] and held_out.verifiers is None
    # rows like the training rows: the system prompt is put before string prompts
    assert held_out.prompts[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": ROWS[0]["prompt"]},
    ]
    assert dataset.references == [r["answer"] for r in ROWS[10:15]]
    # benchmark rows name their own verifier and are used as `iprime eval` uses them
    assert bench.verifiers == ["arithmetic"] * 5 and isinstance(bench.prompts[0], str)


def test_nothing_to_evaluate_is_refused(tmp_path):
    cfg = make_config(tmp_path, "train.eval_every=2")
    with pytest.raises(ValueError, match="nothing to evaluate: set data.eval_path"):
        build_eval_sets(cfg, None, None, RolloutScorer(cfg))
    assert build_eval_sets(cfg, None, None, RolloutScorer(cfg), has_eval_fn=True) == []


def test_sets_that_are_never_evaluated_are_reported(tmp_path):
    cfg = make_config(tmp_path, "train.eval_benchmarks=[arithmetic]")
    with pytest.warns(UserWarning, match=r"train.eval_benchmarks=\['arithmetic'\] given but train.eval_every=0"):
        assert build_eval_sets(cfg, None, None, RolloutScorer(cfg)) == []


def test_two_sets_with_one_name_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "arithmetic.jsonl", ROWS[:3])
    cfg = make_config(tmp_path, "train.eval_every=1", f"data.eval_path={path}", "train.eval_benchmarks=[arithmetic]")
    with pytest.raises(ValueError, match="share a name"):
        build_eval_sets(cfg, None, None, RolloutScorer(cfg, parity_verifier))


def test_bad_eval_rows_are_refused_before_training(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "held_out.jsonl", ROWS[:2] + [{"prompt": "Compute 1 + 1."}])
    cfg = make_config(tmp_path / "run", "train.eval_every=1", f"data.eval_path={path}")
    with pytest.raises(ValueError, match=r"held_out.jsonl line 3: answer: field 'answer' is missing"):
        PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)


# ------------------------------------------------------------------ during a run


def test_eval_sets_run_at_the_configured_steps_and_land_in_metrics(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "held_out.jsonl", ROWS[:9])
    cfg = make_config(
        tmp_path / "run",
        "train.eval_every=2",
        f"data.eval_path={path}",
        "train.eval_benchmarks=[arithmetic]",
        "train.eval_limit=6",
        "train.eval_n=2",
        "train.eval_temperature=1.0",
        "train.eval_max_new_tokens=4",
    )
    # answer_verifier scores a row 1 when its answer is a multiple of 3: rows 1 and 4 of the first 6
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, answer_verifier)
    history = trainer.train(progress=False)
    lines = read_metrics(tmp_path / "run")
    assert [m["step"] for m in lines] == [0, 1, 2, 3]  # step 0: the policy before training
    evaluated = [m["step"] for m in lines if "eval/held_out/acc" in m]
    assert evaluated == [0, 2, 3] and [m["step"] for m in history if "eval/held_out/acc" in m] == [2, 3]
    for m in (line for line in lines if line["step"] in evaluated):
        # the trainer's verifier scores the held-out rows; the benchmark's rows their own verifier
        assert m["eval/held_out/acc"] == pytest.approx(2 / 6) and m["eval/held_out/pass@2"] == pytest.approx(2 / 6)
        assert m["eval/arithmetic/acc"] == 0.0  # the tiny random policy never writes a right sum
        for name in ("held_out", "arithmetic"):
            assert 0.0 <= m[f"eval/{name}/truncated_frac"] <= 1.0 and m[f"eval/{name}/time_s"] > 0
    assert set(lines[0]) == {"step"} | {
        f"eval/{n}/{k}" for n in ("held_out", "arithmetic") for k in ("acc", "pass@2", "truncated_frac", "time_s")
    }


def test_eval_dataset_and_eval_fn_are_used(tiny_model_dir, tmp_path):
    calls = []
    cfg = make_config(tmp_path / "run", "train.eval_every=2", "train.steps=2")
    trainer = PrimeTrainer(
        str(tiny_model_dir),
        cfg,
        ROWS,
        answer_verifier,
        eval_dataset=ROWS[:3],
        eval_fn=lambda tr: calls.append(tr.step) or {"custom": 0.25},
    )
    trainer.train(progress=False)
    lines = read_metrics(tmp_path / "run")
    assert calls == [2]  # eval_fn: at the eval steps, not at step 0
    assert lines[0] == {"step": 0, **{k: v for k, v in lines[0].items() if k.startswith("eval/eval_dataset/")}}
    assert lines[-1]["eval/custom"] == 0.25 and lines[-1]["eval/eval_dataset/acc"] == pytest.approx(1 / 3)


def _comparable(history):
    """Metrics that evaluation must not move; NaN (a PRM pairwise accuracy with no correct-wrong
    pair, which whether it happens depends on what the CPU's kernels sampled) equals NaN."""
    return [
        {
            k: "nan" if isinstance(v, float) and math.isnan(v) else v
            for k, v in m.items()
            if not k.startswith(("time/", "eval/")) and k != "tokens_per_s"
        }
        for m in history
    ]


def test_eval_does_not_change_training(tiny_model_dir, tmp_path):
    """Bitwise: the same metrics and weights with evaluation (sampled, greedy, an eval_fn that
    draws random numbers and flips the policy to eval mode) as without."""

    def meddle(trainer):
        torch.rand(7), random.random(), trainer.policy.eval()
        return {"meddled": 1.0}

    runs = {}
    for name, extra, kwargs in (
        ("plain", [], {}),
        (
            "eval",
            [
                "train.eval_every=1",
                "train.eval_benchmarks=[arithmetic]",
                "train.eval_limit=3",
                "train.eval_n=2",
                "train.eval_temperature=1.0",
            ],
            {"eval_dataset": ROWS[:4], "eval_fn": meddle},
        ),
    ):
        trainer = PrimeTrainer(
            str(tiny_model_dir), make_config(tmp_path / name, *extra), ROWS, parity_verifier, **kwargs
        )
        runs[name] = (trainer.train(progress=False), trainer.policy.state_dict(), trainer.prm.state_dict())
    (plain, policy, prm), (evald, policy_e, prm_e) = runs["plain"], runs["eval"]
    assert all("eval/eval_dataset/acc" in m for m in evald)
    assert _comparable(plain) == _comparable(evald)
    for a, b in ((policy, policy_e), (prm, prm_e)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_does_not_log_the_baseline_again(tiny_model_dir, tmp_path):
    extra = ("train.eval_every=1", "train.save_every=1", "train.save_hf=false")
    first = PrimeTrainer(
        str(tiny_model_dir),
        make_config(tmp_path, *extra, "train.steps=1"),
        ROWS,
        parity_verifier,
        eval_dataset=ROWS[:2],
    )
    first.train(progress=False)
    resumed = PrimeTrainer(
        str(tiny_model_dir),
        make_config(tmp_path, *extra, "train.steps=2"),
        ROWS,
        parity_verifier,
        eval_dataset=ROWS[:2],
    )
    resumed.train(resume=True, progress=False)
    assert [m["step"] for m in read_metrics(tmp_path)] == [0, 1, 2]


# ------------------------------------------------------------------ torchrun: 2 ranks give the 1-rank numbers

DIST_OVERRIDES = [
    "train.eval_every=1",
    "train.eval_n=2",
    "train.eval_temperature=1.0",
    "train.eval_max_new_tokens=5",
    "rollout.n=2",
    "rollout.prompts_per_step=1",
    "rollout.oversample=1.0",  # one row per chunk: 5 rows are 5 chunks, 3 on rank 0 and 2 on rank 1
]


def dist_eval(model_dir: str, out_dir: str, dist=None) -> dict[str, float]:
    """Evaluate the tiny model on 5 held-out rows (scored by their parity) and the arithmetic benchmark."""
    from iprime.models import load_model, load_tokenizer
    from iprime.rollout import HFGenerator

    cfg = make_config(out_dir, *DIST_OVERRIDES, "train.eval_benchmarks=[arithmetic]", "train.eval_limit=3")
    tok = load_tokenizer(model_dir)
    scorer = RolloutScorer(cfg, parity_verifier)
    sets = build_eval_sets(cfg, ROWS[:5], tok, scorer, model=model_dir)
    return run_evals(HFGenerator(load_model(model_dir), tok), tok, sets, scorer, cfg, dist=dist)


def run_rank(model_dir: str, out_file: str) -> None:
    from iprime.train import distributed as D

    torch.set_num_threads(1)
    ctx, _ = D.init_distributed("cpu")
    metrics = dist_eval(model_dir, out_file + ".run", dist=ctx)
    if ctx.is_main:
        Path(out_file).write_text(json.dumps(metrics))


def test_two_ranks_evaluate_like_one(tiny_model_dir, tmp_path):
    out = tmp_path / "two.json"
    launch_ranks([str(tiny_model_dir), str(out)], script=Path(__file__))
    two = json.loads(out.read_text())
    one = dist_eval(str(tiny_model_dir), str(tmp_path / "one"))
    assert two.keys() == one.keys()
    for key, value in one.items():
        if not key.endswith("time_s"):
            assert two[key] == value, key
    assert 0 < one["eval/eval_dataset/acc"] < 1 and math.isfinite(one["eval/eval_dataset/pass@2"])


if __name__ == "__main__":
    run_rank(*sys.argv[1:3])
