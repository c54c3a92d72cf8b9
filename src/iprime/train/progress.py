"""The step's batch as progress metrics; the bar and the log lines are :mod:`iprime.progress`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iprime.progress import progress_bar
from iprime.rollout.types import RolloutBatch

# progress_bar: still read from here by train/prime.py
__all__ = ["batch_metrics", "empty_step_message", "empty_steps_summary", "progress_bar"]


def batch_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Size, accuracy and mean response length of the step's global batch."""
    return {
        "batch/size": len(batch),
        "batch/acc": float(batch.tensors["outcome"].mean()),
        "batch/response_length": float(batch.response_mask.bool().sum(-1).float().mean()),
    }


def _why_empty(cfg, metrics: Mapping[str, Any]) -> str:
    """Why a step had nothing to learn from, in a user's words."""
    acc = metrics.get("rollout/acc_before_filter")
    f = cfg.filter
    if metrics.get("empty") == "every reward was 0" or acc == 0.0:
        return "every sampled reward was 0"
    if acc == 1.0:
        return "every sampled reward was 1"
    return f"no prompt of medium difficulty (group accuracy in [{f.low}, {f.high}]; truncated groups dropped)"


def empty_step_message(cfg, metrics: Mapping[str, Any], step: int) -> str:
    """The warning of one empty step (``metrics`` has ``empty``): ``step 2 of 3 was empty:
    every sampled reward was 0 (sampled accuracy 0.000, truncated 100%); nothing was trained``."""
    acc, trunc = metrics.get("rollout/acc_before_filter"), metrics.get("rollout/truncated_frac")
    facts = []
    if isinstance(acc, (int, float)):
        facts.append(f"sampled accuracy {acc:.3f}")
    if isinstance(trunc, (int, float)):
        facts.append(f"truncated {trunc:.0%}")
    detail = f" ({', '.join(facts)})" if facts else ""
    return f"step {step} of {cfg.train.steps} was empty: {_why_empty(cfg, metrics)}{detail}; nothing was trained"


def empty_steps_summary(cfg, history: Sequence[Mapping[str, Any]], out_dir: Path) -> str | None:
    """The end-of-run line when some steps of ``history`` (the metrics of the steps run) were
    empty, ``None`` when none was: ``3 of 3 steps were empty: no prompt of medium difficulty
    ...; the policy was never updated. See the responses in runs/x/samples.jsonl``."""
    empty = [m for m in history if m.get("empty")]
    if not empty:
        return None
    reasons = Counter(_why_empty(cfg, m) for m in empty)
    why = "; ".join(f"{r} ({n})" if len(reasons) > 1 else r for r, n in reasons.most_common())
    head = f"{len(empty)} of {len(history)} steps were empty: {why}"
    if len(empty) == len(history):
        head += "; the policy was never updated"
    t = cfg.train
    if t.log_samples_every and t.log_sample_groups:
        every = "every step" if t.log_samples_every == 1 else f"every {t.log_samples_every} steps"
        see = f"See the responses in {out_dir / 'samples.jsonl'} ({every})"
    else:
        see = "Set train.log_samples_every=1 to see the responses in samples.jsonl"
    return f"{head}. {see}; check that the model can solve some of the prompts (iprime eval)"
