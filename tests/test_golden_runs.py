"""Behaviour pins: seeded short runs whose metrics and final weights were recorded before the
trainer was split into stage modules, and must not move when code is reorganised.

Every step's metrics (all but timings) and a fingerprint of each trained model's final weights
must match ``tests/data/golden_runs.json`` within 1e-6. Runs cover the estimators and the
trainer's options: filter + refill + buffer, PRM update before / after, epochs, step
granularity, DPO, LoRA PRM, KL in loss and in reward, the value model, token-budget
micro-batches and both loss scopes, and the quickstart pipeline itself.

The runs execute in one child process under ``tests/portable_numerics.py``'s fixed kernels, so
they compute the same bits on every x86-64 CPU (whatever ``ATEN_CPU_CAPABILITY`` the caller
has set; CONTRIBUTING.md, "Golden runs"). An intended change of behaviour re-records the file,
and the commit says why::

    .venv/bin/python tests/test_golden_runs.py --record
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # run as a script (the child, --record) as well
from portable_numerics import check_pinned, run_child  # noqa: E402

from iprime.numerics import unportable_reason  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "golden_runs.json"
ROWS = [{"prompt": f"Compute {i} + {i + 1}.", "answer": str(2 * i + 1)} for i in range(24)]
BASE = [
    "train.steps=3",
    "train.save_every=0",
    "train.tensorboard=false",
    "verify.workers=0",
    "train.log_samples_every=0",
    "train.num_threads=1",
    "rollout.n=4",
    "rollout.prompts_per_step=2",
    "rollout.max_new_tokens=8",
    "rollout.max_rounds=3",
    "optim.lr=1e-3",
    "prm.lr=1e-3",
    "optim.micro_batch_size=4",
    "optim.mini_batch_size=8",
    "prm.beta=0.5",
]
RUNS: dict[str, list[str]] = {
    "prime_filter_buffer": [
        "algo.normalize=null",  # the paper's formula as written (the default is the reference pipeline)
        "algo.process_baseline=paper",
        "filter.low=0.25",
        "filter.high=0.75",
        "rollout.oversample=2.0",
        "filter.drop_truncated=false",
    ],
    "prime_reference_pipeline": [
        "filter.enabled=false",
        "algo.normalize=batch_norm",
        "algo.process_baseline=reference",
        "prm.update=before",
        "prm.granularity=step",
        "prm.epochs=2",
        "algo.kl_mode=loss",
        "algo.kl_coef=0.1",
        "algo.entropy_coef=0.01",
        "optim.agg=seq-mean-token-mean",
        "optim.epochs=2",
        "optim.micro_batch_tokens=40",
        "optim.loss_scope=mini_batch",
        "algo.gamma=0.9",
    ],
    "prime_dpo_lora_kl_reward": [
        "filter.enabled=false",
        "prm.loss=dpo",
        "prm.lora=true",
        "prm.lora_r=4",
        "algo.kl_mode=reward",
        "algo.kl_coef=0.05",
        "rollout.old_logprobs=recompute",
        "prm.granularity=whole",
        "algo.whiten=false",
    ],
    "rloo_reference_policy": [
        "filter.enabled=false",
        "prm.enabled=false",
        "algo.estimator=rloo",
        "model.reference=policy",
        "optim.agg=seq-mean-token-sum-norm",
        "optim.dual_clip=3.0",
    ],
    "grpo": [
        "filter.enabled=false",
        "prm.enabled=false",
        "algo.estimator=grpo",
        "algo.kl_mode=loss",
        "algo.kl_coef=0.02",
        "optim.schedule=linear",
        "optim.warmup_steps=1",
    ],
    "reinforce_pp_kl_reward": [
        "filter.enabled=false",
        "prm.enabled=false",
        "algo.estimator=reinforce_pp",
        "algo.kl_mode=reward",
        "algo.kl_coef=0.05",
    ],
    "gae_value_model": [
        "filter.enabled=false",
        "prm.enabled=false",
        "algo.estimator=gae",
        "algo.lam=0.95",
        "algo.kl_mode=reward",
        "algo.kl_coef=0.01",
    ],
}


def parity_verifier(text: str, answer: str) -> float:
    return float(len(text) % 2 == 0)


def fingerprint(model: torch.nn.Module) -> dict:
    """Per tensor: float64 sum, sum of squares and a fixed random projection; plus a sha256 of
    all bytes (reported, not asserted: bitwise equality is the goal, 1e-6 the contract)."""
    digest = hashlib.sha256()
    stats = {}
    for name, value in sorted(model.state_dict().items()):
        v = value.detach().to(torch.float64).reshape(-1).cpu()
        w = torch.randn(v.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        stats[name] = [float(v.sum()), float((v * v).sum()), float((v * w).sum())]
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return {"sha256": digest.hexdigest(), "tensors": stats}


def _numeric(metrics: dict) -> dict:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("time/") and k != "tokens_per_s"
    }


def run_trainer(name: str, model_dir: Path, out: Path) -> dict:
    from iprime.config import load_config
    from iprime.train.prime import PrimeTrainer

    threads = torch.get_num_threads()
    try:
        cfg = load_config(None, BASE + RUNS[name] + [f"train.out_dir={out}"])
        trainer = PrimeTrainer(str(model_dir), cfg, ROWS, parity_verifier)
        history = trainer.train(progress=False)
        models = {"policy": trainer.policy, "prm": trainer.prm, "value": trainer.value}
        return {
            "metrics": [_numeric(m) for m in history],
            "weights": {k: fingerprint(m) for k, m in models.items() if m is not None},
        }
    finally:
        torch.set_num_threads(threads)


def run_quickstart_pin(out: Path) -> dict:
    from iprime.presets import QuickstartPreset
    from iprime.quickstart import QuickstartConfig, run_quickstart
    from iprime.train.sft import SFTConfig

    threads = torch.get_num_threads()
    try:
        preset = QuickstartPreset(
            threads=1,
            sft_examples=64,
            eval_prompts=8,
            corpus_examples=100,
            max_new_tokens=24,
            sft=SFTConfig(lr=3e-3, max_steps=6, batch_size=16, warmup_steps=2),
        )
        qc = QuickstartConfig(preset=preset, train_prompts=32, curve_eval_prompts=4)
        overrides = ("train.steps=3", "train.eval_every=2", "rollout.prompts_per_step=2", "filter.enabled=false")
        summary = run_quickstart(out, qc, overrides, log=lambda *a: None)
        from iprime.models import load_model

        metrics = [_numeric(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {
            "summary": {k: summary[k] for k in ("accuracy_before", "accuracy_after", "steps")},
            "metrics": metrics,
            "weights": {
                "policy": fingerprint(load_model(out / "final" / "policy")),
                "prm": fingerprint(load_model(out / "final" / "prm")),
            },
        }
    finally:
        torch.set_num_threads(threads)


PERTURBED = ("rloo_reference_policy", ["optim.lr=1.1e-3"])
"""A one-flag change of behaviour the pins must catch: run ``_perturbed``, compared to its base."""


def _close(a: float | None, b: float | None, rel: float = 1e-6, abs_: float = 1e-6) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return a is b or (isinstance(b, float) and math.isnan(b)) or (a is None and b is None)
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def assert_matches(expected: dict, got: dict) -> None:
    """Every recorded metric (later code may add keys) and every weight statistic within 1e-6."""
    assert len(got["metrics"]) == len(expected["metrics"])
    for step, (want, have) in enumerate(zip(expected["metrics"], got["metrics"]), start=1):
        for key, value in want.items():
            assert key in have, f"step {step}: metric {key!r} is gone"
            assert _close(value, have[key]), f"step {step}: {key} = {have[key]!r}, recorded {value!r}"
    for role, fp in expected["weights"].items():
        assert role in got["weights"], role
        for tensor, stats in fp["tensors"].items():
            for i, (a, b) in enumerate(zip(stats, got["weights"][role]["tensors"][tensor])):
                assert _close(a, b), f"{role}.{tensor} statistic {i}: {b!r}, recorded {a!r}"
    for key, value in expected.get("summary", {}).items():
        assert _close(value, got["summary"][key]), key


def run_pinned(names: list[str]) -> dict:
    """The runs ``names`` (keys of RUNS, ``quickstart``, ``_perturbed``) in this process, which
    must run the portable kernels; returns ``{"numerics": ..., "runs": {name: result}}``."""
    numerics = check_pinned()
    from iprime.models import make_tiny_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_tiny_model(tmp / "tiny_model", seed=0)  # as conftest's tiny_model_dir
        for name in names:
            if name == "quickstart":
                results[name] = run_quickstart_pin(tmp / "qs")
                continue
            if name == "_perturbed":
                base, change = PERTURBED
                RUNS[name] = RUNS[base] + change
            results[name] = run_trainer(name, model_dir, tmp / name)
    return {"numerics": numerics, "runs": results}


def pinned_in_child(names: list[str], extra_env: dict[str, str] | None = None) -> dict:
    """:func:`run_pinned` in a child process under the portable kernels."""
    return run_child(Path(__file__), names, extra_env)


ALL_PINNED = [*sorted(RUNS), "quickstart", "_perturbed"]


@pytest.fixture(scope="module")
def golden() -> dict:
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} is missing; record it with: python {Path(__file__).name} --record")
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def pinned(golden) -> dict:
    """Every pinned run, once, in one child process: ``{name: result}``."""
    why_not = unportable_reason()
    if why_not:
        pytest.skip(why_not)
    out = pinned_in_child(ALL_PINNED)
    recorded_torch, torch_now = golden["numerics"]["torch"], out["numerics"]["torch"]
    if recorded_torch != torch_now:
        pytest.fail(
            f"the pins were recorded with torch {recorded_torch} and this is torch {torch_now}: kernels "
            "differ between releases; install the pinned torch (constraints.txt) or re-record"
        )
    return out["runs"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_trainer_run_matches_the_recorded_run(name, golden, pinned):
    assert_matches(golden["runs"][name], pinned[name])


def test_quickstart_matches_the_recorded_run(golden, pinned):
    assert_matches(golden["quickstart"], pinned["quickstart"])


def test_the_pins_can_fail(golden, pinned):
    """A one-flag change of behaviour is caught (the comparison is not vacuous)."""
    with pytest.raises(AssertionError):
        assert_matches(golden["runs"][PERTURBED[0]], pinned["_perturbed"])


def test_the_pinned_bits_do_not_depend_on_the_cpus_kernels(pinned):
    """The pins' premise, checked on this machine: under the portable kernels, MKL held to the
    instructions of an older CPU (SSE4.2, what ``MKL_ENABLE_INSTRUCTIONS`` emulates) computes
    the same bits as MKL free to use all of this one's. Without ``MKL_CBWR`` the two differ on a
    CPU with AVX2 or AVX-512 (tests/portable_numerics.py)."""
    name = "rloo_reference_policy"
    older = pinned_in_child([name], {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})["runs"][name]
    for role, fp in pinned[name]["weights"].items():
        assert older["weights"][role]["sha256"] == fp["sha256"], role
    assert older["metrics"] == pinned[name]["metrics"]


def record() -> None:
    out = pinned_in_child([*sorted(RUNS), "quickstart"])
    runs = out["runs"]
    golden = {"numerics": out["numerics"], "runs": {k: runs[k] for k in sorted(RUNS)}, "quickstart": runs["quickstart"]}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(RUNS)} trainer runs and the quickstart into {GOLDEN} ({out['numerics']})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        Path(sys.argv[2]).write_text(json.dumps(run_pinned(sys.argv[3:])))
    elif sys.argv[1:] == ["--record"]:
        record()
    else:
        sys.exit(__doc__)
