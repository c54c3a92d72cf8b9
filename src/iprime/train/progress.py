"""The step's batch as progress metrics; the bar and the log lines are :mod:`iprime.progress`."""

from __future__ import annotations

from iprime.progress import progress_bar
from iprime.rollout.types import RolloutBatch

__all__ = ["batch_metrics", "progress_bar"]  # progress_bar: still read from here by train/prime.py


def batch_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Size, accuracy and mean response length of the step's global batch."""
    return {
        "batch/size": len(batch),
        "batch/acc": float(batch.tensors["outcome"].mean()),
        "batch/response_length": float(batch.response_mask.bool().sum(-1).float().mean()),
    }
