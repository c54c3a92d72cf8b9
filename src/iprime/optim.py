"""Optimisation pieces shared by every training loop: the learning-rate schedule and the plain
supervised optimizer loop.

:func:`lr_factor` is the one learning-rate schedule (SFT, the PRIME trainer). :func:`fit` is the
one supervised loop (SFT in :mod:`iprime.train.sft`, offline PRM training in
:mod:`iprime.prm.offline`): per batch ``loss -> zero_grad -> backward -> clip -> optimizer step
-> scheduler step``, a non-finite loss stops the run, and the mean loss is logged every
``log_every`` steps. This module imports neither :mod:`iprime.train` nor :mod:`iprime.prm`, so
both can use it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["SCHEDULES", "FitResult", "fit", "lr_factor"]

SCHEDULES = ("constant", "linear", "cosine")

B = TypeVar("B")


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``.

    With ``m = min_ratio`` and ``p = min(1, (step - warmup) / max(1, total - warmup))``::

        step < warmup:        (step + 1) / warmup            linear warm-up to 1
        schedule "constant":  1
        schedule "linear":    m + (1 - m) * (1 - p)          1 -> m
        schedule "cosine":    m + (1 - m) * (1 + cos(pi * p)) / 2

    ``p`` is clamped, so from step ``total`` on the factor stays at its final value (``m``,
    i.e. 0 for the trainer's ``min_ratio=0``). An unknown schedule is a ``ValueError``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class FitResult:
    """What :func:`fit` measured. losses: every step's loss, in order. last_window_loss: the
    mean loss of the last logging window (the steps after the previous record). time_s: wall
    time of the loop."""

    losses: list[float]
    last_window_loss: float
    time_s: float


def fit(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: Iterable[B],
    loss_fn: Callable[[B], torch.Tensor],
    steps: int,
    *,
    scheduler: Any | None = None,
    grad_clip: float = 0.0,
    log_every: int = 1,
    log: Callable[[dict], None] | None = None,
    count_tokens: Callable[[B], int] | None = None,
    name: str = "loss",
) -> FitResult:
    """Take ``steps`` optimizer steps, one per item of ``batches``.

    Each step: ``loss = loss_fn(batch)``; a non-finite loss raises ``FloatingPointError``
    (``"non-finite {name} at step {step}"``) before anything is updated; then
    ``optimizer.zero_grad(set_to_none=True)``, ``loss.backward()``, the global gradient norm
    of ``params`` clipped to ``grad_clip`` (if > 0), ``optimizer.step()`` and
    ``scheduler.step()`` (if given). No gradient accumulation: one batch, one update.

    ``log`` (if given) receives, every ``log_every`` steps and at the last step,
    ``{"step", "loss", ["lr"], ["tokens_per_s"], "elapsed_s"}``: ``loss`` is the mean over the
    steps since the previous record, ``lr`` the scheduler's current rate (only with a
    scheduler), ``tokens_per_s`` the window's ``count_tokens(batch)`` over its wall time (only
    with ``count_tokens``). ``batches`` is read lazily, one item per step, so a generator
    may draw (and shuffle) as it goes.
    """
    if steps < 1 or log_every < 1:
        raise ValueError(f"steps and log_every must be >= 1, got {steps}, {log_every}")
    t0 = time.perf_counter()
    items = iter(batches)
    losses: list[float] = []
    window: list[float] = []
    window_tokens, window_start, last_window_loss = 0, 0.0, float("nan")
    for step in range(steps):
        try:
            batch = next(items)
        except StopIteration:
            raise ValueError(f"batches ran out after {step} of {steps} steps") from None
        loss = loss_fn(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {name} at step {step}: {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

        value = loss.item()
        losses.append(value)
        window.append(value)
        if count_tokens is not None:
            window_tokens += count_tokens(batch)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            last_window_loss = sum(window) / len(window)
            elapsed = time.perf_counter() - t0
            if log is not None:
                record: dict = {"step": step + 1, "loss": last_window_loss}
                if scheduler is not None:
                    record["lr"] = scheduler.get_last_lr()[0]
                if count_tokens is not None:
                    record["tokens_per_s"] = window_tokens / max(elapsed - window_start, 1e-9)
                record["elapsed_s"] = elapsed
                log(record)
            window, window_tokens, window_start = [], 0, elapsed
    return FitResult(losses=losses, last_window_loss=last_window_loss, time_s=time.perf_counter() - t0)
