"""The CPU quickstart: tiny model -> SFT on the built-in task -> evaluate -> PRIME -> evaluate.

No GPU and no downloads: the model and tokenizer are built locally from a config, the task is
generated procedurally. Writes ``summary.json``, ``metrics.jsonl``, PNG plots and the final
model directory under ``out``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from iprime.config import load_config
from iprime.presets import QuickstartPreset, run_preset_sft


@dataclass
class QuickstartConfig:
    """Every knob of the quickstart in one place (CleanRL style).

    The task, tiny model and SFT come from :data:`iprime.presets.QUICKSTART` (an SFT model that
    greedily drops carries on ~70% of carry steps: 20-50% held-out accuracy, room for RL).
    """

    preset: QuickstartPreset = field(default_factory=QuickstartPreset)
    train_prompts: int = 3000
    curve_eval_prompts: int = 100
    prime_overrides: tuple[str, ...] = (
        "train.steps=60",
        "train.save_every=20",
        "train.eval_every=5",
        "train.log_samples_every=10",
        "rollout.n=4",
        "rollout.prompts_per_step=16",
        "rollout.oversample=2.0",
        "rollout.max_rounds=3",
        "rollout.temperature=1.0",
        "filter.low=0.2",
        "filter.high=0.8",
        # a 0.6M-parameter model is easily knocked off its SFT solution: 2e-4 collapsed
        # held-out accuracy from 47% to 8% in 60 steps, 3e-5 lifts it
        "optim.lr=3e-5",
        "optim.mini_batch_size=64",
        "optim.micro_batch_size=64",
        "optim.epochs=1",
        "prm.lr=3e-4",
        "prm.beta=0.05",
        "prm.micro_batch_size=64",
        "algo.estimator=prime",
        "algo.rm_coef=5.0",
        "algo.outcome_coef=5.0",
        "algo.whiten=true",
    )


def _plot(metrics: list[dict], out: Path, baseline: dict | None = None) -> list[Path]:
    """One PNG per key metric against the PRIME step; ``baseline`` adds step-0 values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("eval/accuracy", "held-out accuracy (greedy)"),
        ("rollout/acc_before_filter", "train accuracy (sampled, before filter)"),
        ("prm/pairwise_acc", "PRM pairwise accuracy"),
        ("batch/response_length", "response length (tokens)"),
    ]
    paths = []
    for key, title in panels:
        rows = ([{"step": 0, **baseline}] if baseline else []) + metrics
        points = [(m["step"], m[key]) for m in rows if isinstance(m.get(key), (int, float))]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def run_quickstart(
    out: str | Path, qc: QuickstartConfig | None = None, extra_overrides: tuple[str, ...] = (), log=print
) -> dict:
    from iprime.models import load_model, load_tokenizer
    from iprime.train.evaluate import evaluate_accuracy
    from iprime.train.prime import PrimeTrainer

    qc = qc or QuickstartConfig()
    preset = qc.preset
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(preset.seed)
    t_start = time.perf_counter()
    task = preset.make_task()

    log(
        f"1-3/5 tiny model, SFT on {preset.sft_examples} solutions (carry slips at rate {preset.slip_rate}), evaluation"
    )
    sft = run_preset_sft(out, preset, log=lambda m: log(f"    sft {m}"))
    shutil.rmtree(out / "init", ignore_errors=True)
    accuracy_before = sft["accuracy"]
    log(f"    held-out accuracy of the SFT model (greedy, {sft['eval_prompts']} problems): {accuracy_before:.3f}")
    model, tokenizer = load_model(out / "sft"), load_tokenizer(out / "sft")
    test_rows = preset.held_out_rows()  # the rows run_preset_sft scored
    curve_rows = test_rows[: qc.curve_eval_prompts]

    def evaluate(m, rows) -> float:
        return evaluate_accuracy(m, tokenizer, rows, task.verify, max_new_tokens=preset.max_new_tokens)["accuracy"]

    curve_before = evaluate(model, curve_rows)  # step 0 of the held-out curve
    log("4/5 PRIME")
    cfg = load_config(
        None,
        list(qc.prime_overrides)
        + [
            f"train.out_dir={out}",
            f"model.policy={out / 'sft'}",
            f"train.seed={preset.seed}",
            f"rollout.max_new_tokens={preset.max_new_tokens}",
            f"train.num_threads={preset.threads}",
            "train.tensorboard=false",
            *extra_overrides,
        ],
    )
    train_rows = task.rows("train", qc.train_prompts, seed=preset.seed + 2)
    trainer = PrimeTrainer(
        model,
        cfg,
        train_rows,
        task.verify,
        tokenizer=tokenizer,
        eval_fn=lambda tr: {"accuracy": evaluate(tr.policy, curve_rows)},
    )
    history = trainer.train()

    log("5/5 evaluating the PRIME policy")
    accuracy_after = evaluate(trainer.policy, test_rows)
    trainer.save_pretrained(out / "final")
    plots = _plot(history, out, baseline={"eval/accuracy": curve_before})
    summary = {
        "accuracy_before": accuracy_before,
        "accuracy_after": accuracy_after,
        "improvement": accuracy_after - accuracy_before,
        "steps": trainer.step,
        "seconds": time.perf_counter() - t_start,
        "sft_seconds": sft["sft_time_s"],
        "eval_prompts": len(test_rows),
        "plots": [p.name for p in plots],
        "final_model": str(out / "final" / "policy"),
        "quickstart_config": asdict(qc),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(
        f"held-out accuracy {accuracy_before:.3f} -> {accuracy_after:.3f} "
        f"({summary['improvement'] * 100:+.1f} points) in {summary['seconds']:.0f} s; summary in {out / 'summary.json'}"
    )
    return summary
