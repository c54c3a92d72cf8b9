"""SIGTERM and SIGINT during a run: finish the step, write a checkpoint, exit 128 + the signal.

A scheduler (Slurm, Kubernetes) sends SIGTERM some time before it kills a job; Ctrl-C sends
SIGINT. Without a handler the process dies at once and every step since the last periodic
checkpoint is lost. With ``train.checkpoint_on_signal`` (the default) :class:`SignalStop`
turns the first signal into a request: the step under way finishes (the step is the unit a
checkpoint holds; a step cut in half cannot be saved), the loop sees the request before the
next step (:meth:`SignalStop.requested`, agreed on by every rank), the trainer writes a
checkpoint of that step and raises :class:`RunInterrupted`, and ``iprime train`` prints what
was saved and exits with ``128 + signum`` (143 for SIGTERM, 130 for SIGINT), the shell's
convention for "ended by this signal". A second signal stops at once (the default action of
the signal: no checkpoint). With the key off, the first signal raises :class:`RunInterrupted`
at once, with no checkpoint.

The handler only records the signal and writes one line with ``os.write`` (a ``print`` from a
signal handler can re-enter a stream that the interrupted code was writing). The verifier's
worker processes ignore SIGINT (:mod:`iprime.verifiers._pool`; Ctrl-C reaches the whole process
group), so the step finished after a Ctrl-C, or after a SIGTERM sent to the training process
alone (``kill PID``, Kubernetes, torchrun forwarding it), is the uninterrupted run's step. A
scheduler that sends SIGTERM to every process of the job (Slurm) also ends the workers: the
pool replaces them, and the samples they held score 0 as failures (``verify/failed``).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

import torch

from iprime.train import distributed as D

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(BaseException):
    """The run stopped on a signal (a ``BaseException``, like ``KeyboardInterrupt``: code that
    catches ``Exception`` around a step must not swallow it).

    ``signum``: the signal; ``step``: the last completed step; ``checkpoint``: the checkpoint
    written for it (``None``: none written, see ``note``); ``exit_code``: ``128 + signum``."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None = None, note: str = "") -> None:
        self.signum, self.step, self.checkpoint, self.note = signum, step, checkpoint, note
        super().__init__(f"stopped by {signal_name(signum)} after step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _say(text: str) -> None:
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


class SignalStop:
    """Handlers for SIGTERM and SIGINT while the training loop runs (the previous ones come back
    on exit). ``checkpoint``: ``train.checkpoint_on_signal``; ``announce``: this rank writes the
    line saying what will happen (rank 0). Outside the main thread (signals cannot be handled
    there) it does nothing."""

    def __init__(self, checkpoint: bool, *, announce: bool = True) -> None:
        self.checkpoint, self.announce = checkpoint, announce
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal_name(signum)
        if not self.checkpoint:
            raise RunInterrupted(signum, -1, None, "train.checkpoint_on_signal=false: no checkpoint written")
        if self.signum is not None:  # the second: the signal's own default action, now
            if self.announce:
                _say(f"{name} again: stopping at once, without a checkpoint")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if self.announce:
            _say(f"{name}: finishing the step under way, then writing a checkpoint (send it again to stop at once)")

    def requested(self, dist: D.DistContext, device: torch.device | str = "cpu") -> int:
        """The signal received by any rank (0: none). Collective under torchrun (the largest
        signal number wins), so every rank stops after the same step."""
        got = self.signum or 0
        if not dist.enabled:
            return got
        return int(D.all_reduce(torch.tensor([got], device=device), "max").item())


class interrupt_on_signals:
    """While a command loads (before the training loop's :class:`SignalStop`): SIGTERM and SIGINT
    raise :class:`RunInterrupted` at once, so ``iprime train`` says it stopped and exits 143 /
    130 instead of dying silently (SIGTERM) or with a traceback (SIGINT)."""

    def __enter__(self) -> interrupt_on_signals:
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    @staticmethod
    def _handle(signum: int, frame: FrameType | None) -> None:
        raise RunInterrupted(signum, -1, None, "no checkpoint written by this stop")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
