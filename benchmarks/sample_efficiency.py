"""Held-out accuracy against rollouts seen: PRIME vs. RLOO (outcome only) vs. GRPO.

All runs start from the same SFT model (the quickstart preset: tiny Qwen2 model, built-in
arithmetic task, ~47% greedy held-out accuracy), use the same rollouts per step (16 prompts x
4 samples per round, oversampling 2, the same accuracy filter) and differ only in the
advantage estimator (and PRIME's implicit PRM). 3 seeds each.

``--algos`` may add ``prime_warm``: PRIME whose PRM was first trained offline (CE, on
``--warmup-rollouts`` SFT samples, one warm PRM shared by all seeds); its curve starts at that
many rollouts seen, so the warm-up is paid for in the comparison.

    .venv/bin/python benchmarks/sample_efficiency.py [--steps 60] [--seeds 0,1,2] [--out DIR]
        [--algos prime,prime_warm,rloo,grpo] [--set prm.lr=1e-4]

Prints a table (final accuracy, rollouts to reach RLOO's final accuracy, ratio) and writes
DIR/sample_efficiency.png and DIR/sample_efficiency.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

ALGOS = {
    "prime": ["algo.estimator=prime"],
    # PRIME whose PRM starts from an offline warm-up on SFT rollouts (--warmup-rollouts); those
    # rollouts are counted: its curve starts at that many rollouts seen
    "prime_warm": ["algo.estimator=prime"],
    "rloo": ["algo.estimator=rloo", "prm.enabled=false"],
    "grpo": ["algo.estimator=grpo", "prm.enabled=false"],
}


def warm_up_prm(preset, sft_dir: Path, out: Path, rollouts: int, n: int, beta: float, lr: float, epochs: float) -> Path:
    """Offline CE warm-up of a PRM (a copy of the SFT model) on ``rollouts`` SFT samples
    (``n`` per training prompt, temperature 1); saved to ``out`` and reused if present."""
    import copy

    from prm_diagnostics import sample

    from iprime.models import load_model, load_tokenizer
    from iprime.prm import OfflinePRMConfig, train_prm_offline

    if (out / "config.json").is_file():
        return out
    ref, tok = load_model(sft_dir).eval(), load_tokenizer(sft_dir)
    rows = sample(
        ref, tok, preset.make_task().rows("train", math.ceil(rollouts / n), seed=123), n, preset.max_new_tokens, seed=0
    )[:rollouts]
    prm = copy.deepcopy(ref).requires_grad_(True)
    res = train_prm_offline(prm, ref, tok, rows, OfflinePRMConfig(beta=beta, lr=lr, epochs=epochs, batch_size=32))
    print(
        f"  PRM warm-up: {len(rows)} rollouts, loss {res['first_loss']:.3f} -> {res['final_loss']:.3f} "
        f"in {res['train_time_s']:.0f} s",
        flush=True,
    )
    prm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run(
    preset,
    algo: str,
    seed: int,
    sft_dir: Path,
    out: Path,
    steps: int,
    eval_every: int,
    overrides: list[str],
    start_rollouts: int = 0,
) -> list[dict]:
    from iprime.config import load_config
    from iprime.models import load_model, load_tokenizer
    from iprime.quickstart import QuickstartConfig
    from iprime.train.evaluate import evaluate_accuracy
    from iprime.train.prime import PrimeTrainer

    task = preset.make_task()
    model, tok = load_model(sft_dir), load_tokenizer(sft_dir)
    test = task.rows("test", preset.eval_prompts, seed=preset.seed + 1)
    cfg = load_config(
        None,
        list(QuickstartConfig().prime_overrides)
        + ALGOS[algo]
        + [
            f"train.out_dir={out}",
            f"train.seed={seed}",
            f"train.steps={steps}",
            "train.save_every=0",
            f"train.eval_every={eval_every}",
            "train.tensorboard=false",
            "train.log_samples_every=0",
            f"rollout.max_new_tokens={preset.max_new_tokens}",
            *overrides,
        ],
    )
    per_round = math.ceil(cfg.rollout.prompts_per_step * cfg.rollout.oversample) * cfg.rollout.n

    def evaluate(m) -> float:
        return evaluate_accuracy(m, tok, test, task.verify, max_new_tokens=preset.max_new_tokens)["accuracy"]

    trainer = PrimeTrainer(
        model,
        cfg,
        task.rows("train", 3000, seed=preset.seed + 2),
        task.verify,
        tokenizer=tok,
        eval_fn=lambda tr: {"accuracy": evaluate(tr.policy)},
    )
    curve = [{"step": 0, "rollouts": start_rollouts, "accuracy": evaluate(model)}]
    seen = start_rollouts
    for m in trainer.train(progress=False):
        seen += m.get("rollout/rounds", 0) * per_round
        if "eval/accuracy" in m:
            curve.append(
                {
                    "step": m["step"],
                    "rollouts": seen,
                    "accuracy": m["eval/accuracy"],
                    "prm_acc": m.get("prm/pairwise_acc"),
                }
            )
    return curve


def rollouts_to_reach(curve: list[dict], target: float) -> float | None:
    return next((p["rollouts"] for p in curve if p["accuracy"] >= target - 1e-9), None)


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    return [
        {
            "step": pts[0]["step"],
            "rollouts": statistics.mean(p["rollouts"] for p in pts),
            "accuracy": statistics.mean(p["accuracy"] for p in pts),
        }
        for pts in zip(*curves)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--algos", default="prime,rloo,grpo")
    ap.add_argument("--out", default="runs/sample_efficiency")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra config override for every run")
    ap.add_argument("--ops", type=int, default=None, help="operations per problem (default: the preset's 4)")
    ap.add_argument("--warmup-rollouts", type=int, default=2048, help="SFT rollouts for prime_warm's PRM warm-up")
    ap.add_argument("--warmup-lr", type=float, default=1e-4)
    ap.add_argument("--warmup-epochs", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from prm_diagnostics import task_preset

    preset = task_preset(args.ops)
    sft_dir = out / "sft"
    if not (sft_dir / "config.json").is_file():
        from iprime.presets import run_preset_sft

        run_preset_sft(out, preset, log=lambda *a: None)
    seeds = [int(s) for s in args.seeds.split(",")]
    algos = args.algos.split(",")
    curves: dict[str, list[list[dict]]] = {a: [] for a in algos}
    t0 = time.perf_counter()
    extra = {a: [] for a in algos}
    start = {a: 0 for a in algos}
    if "prime_warm" in algos:
        from iprime.config import load_config
        from iprime.quickstart import QuickstartConfig

        beta = load_config(None, list(QuickstartConfig().prime_overrides) + args.set).prm.beta  # as the runs use
        warm = warm_up_prm(
            preset,
            sft_dir,
            out / f"prm_warm_{args.warmup_rollouts}",
            args.warmup_rollouts,
            8,
            beta,
            args.warmup_lr,
            args.warmup_epochs,
        )
        extra["prime_warm"], start["prime_warm"] = [f"model.prm={warm}"], args.warmup_rollouts
    for seed in seeds:
        for algo in algos:
            curves[algo].append(
                run(
                    preset,
                    algo,
                    seed,
                    sft_dir,
                    out / f"{algo}-{seed}",
                    args.steps,
                    args.eval_every,
                    args.set + extra[algo],
                    start[algo],
                )
            )
            print(
                f"  {algo} seed {seed}: final {curves[algo][-1][-1]['accuracy']:.3f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    means = {a: mean_curve(c) for a, c in curves.items()}
    target = means["rloo"][-1]["accuracy"] if "rloo" in means else None
    print(f"\nsame SFT model (start {means[algos[0]][0]['accuracy']:.3f}), {args.steps} steps, seeds {seeds}")
    print(f"{'algo':7s} {'final acc (mean +- sd)':>24s} {'rollouts to reach RLOO final':>30s}")
    reach = {}
    for algo in algos:
        finals = [c[-1]["accuracy"] for c in curves[algo]]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        reach[algo] = rollouts_to_reach(means[algo], target) if target is not None else None
        shown = f"{reach[algo]:.0f}" if reach[algo] is not None else "not reached"
        print(f"{algo:7s} {statistics.mean(finals):16.3f} +- {sd:.3f} {shown:>30s}")
    if reach.get("prime") and reach.get("rloo"):
        print(
            f"sample efficiency PRIME vs RLOO (rollouts RLOO / rollouts PRIME to reach {target:.3f}): "
            f"{reach['rloo'] / reach['prime']:.2f}x"
        )
    (out / "sample_efficiency.json").write_text(
        json.dumps({"curves": curves, "means": means, "target": target}, indent=1)
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo in algos:
        ax.plot(
            [p["rollouts"] for p in means[algo]],
            [p["accuracy"] for p in means[algo]],
            marker="o",
            ms=3,
            label=f"{algo} (mean of {len(seeds)} seeds)",
        )
    ax.set_xlabel("rollouts seen")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sample_efficiency.png", dpi=110)
    print(f"plot: {out / 'sample_efficiency.png'}")


if __name__ == "__main__":
    main()
