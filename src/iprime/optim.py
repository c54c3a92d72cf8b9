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
    done: Sequence[float] = (),
    global_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[int, list[float]], None] | None = None,
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

    A resumed run passes ``done``, the losses of the steps already taken: the loop continues at
    step ``len(done)`` (``batches`` must continue there too), records keep their step numbers and
    windows (a window the interruption cut is completed from ``done``), and the result's
    ``losses`` start with ``done``. Under data parallelism ``loss_fn`` returns this process's
    part of the loss and ``global_loss(loss.detach())`` the whole batch's: the value checked for
    finiteness and logged (the same on every process, so all stop together). ``after_step(step,
    losses)`` runs after each step's update and record (``step`` counts from 1): a checkpoint.
    """
    if steps < 1 or log_every < 1:
        raise ValueError(f"steps and log_every must be >= 1, got {steps}, {log_every}")
    if len(done) > steps:
        raise ValueError(f"{len(done)} steps are done already, more than the {steps} asked for")
    t0 = time.perf_counter()
    items = iter(batches)
    losses: list[float] = list(done)
    window_from = _last_record(len(losses), log_every, steps)  # losses[window_from:]: the open window
    window_tokens, window_start = 0, 0.0
    for step in range(len(done), steps):
        try:
            batch = next(items)
        except StopIteration:
            raise ValueError(f"batches ran out after {step} of {steps} steps") from None
        loss = loss_fn(batch)
        value = loss.detach() if global_loss is None else global_loss(loss.detach())
        if not torch.isfinite(value):
            raise FloatingPointError(f"non-finite {name} at step {step}: {value.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

        losses.append(value.item())
        if count_tokens is not None:
            window_tokens += count_tokens(batch)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            window = losses[window_from:]
            elapsed = time.perf_counter() - t0
            if log is not None:
                record: dict = {"step": step + 1, "loss": sum(window) / len(window)}
                if scheduler is not None:
                    record["lr"] = scheduler.get_last_lr()[0]
                if count_tokens is not None:
                    record["tokens_per_s"] = window_tokens / max(elapsed - window_start, 1e-9)
                record["elapsed_s"] = elapsed
                log(record)
            window_from, window_tokens, window_start = step + 1, 0, elapsed
        if after_step is not None:
            after_step(step + 1, losses)
    return FitResult(
        losses=losses, last_window_loss=_last_window_loss(losses, log_every, steps), time_s=time.perf_counter() - t0
    )


def _last_record(done: int, log_every: int, steps: int) -> int:
    """The step of the last record once ``done`` steps are taken (records: every ``log_every``
    steps and at ``steps``); 0 before the first."""
    return done if done == steps else done - done % log_every


def _last_window_loss(losses: Sequence[float], log_every: int, steps: int) -> float:
    """Mean loss of the last record's window (the steps after the record before it); NaN
    before the first record."""
    end = _last_record(len(losses), log_every, steps)
    if end == 0:
        return float("nan")
    window = losses[_last_record(end - 1, log_every, steps) : end]
    return sum(window) / len(window)
