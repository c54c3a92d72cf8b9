"""What a run shows while it trains: the progress bar and the batch's headline metrics."""

from __future__ import annotations

import contextlib
from typing import Any

from iprime.rollout import RolloutBatch


def batch_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Size, accuracy and mean response length of the step's global batch."""
    return {
        "batch/size": len(batch),
        "batch/acc": float(batch.tensors["outcome"].mean()),
        "batch/response_length": float(batch.response_mask.bool().sum(-1).float().mean()),
    }


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, completed: int):
    """Yields ``advance(step, metrics)``, which moves a rich progress bar (drawn when ``enabled``)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("PRIME"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        task = bar.add_task("train", total=total, completed=completed, info="")

        def advance(step: int, m: dict[str, Any]) -> None:
            info = (
                f"acc {m.get('rollout/acc_before_filter', 0):.2f} kept {m.get('rollout/kept_group_frac', 0):.2f} "
                f"prm_acc {m.get('prm/pairwise_acc', float('nan')):.2f} "
                f"len {m.get('rollout/response_length', 0):.0f}"
            )
            if "empty" in m:  # shown, not hidden in the metrics file
                info += f" [EMPTY STEP: {m['empty']}]"
            bar.update(task, completed=step, info=info)

        yield advance
