"""Every failure of a long command (``iprime train``, ``iprime sft``) is a clean stop.

:func:`clean_stop` wraps what the command runs. Whatever is raised inside becomes one message
on the terminal (:func:`classify`: the cause, the file or key, what to do) and an exit status,
and the full traceback goes to a file (:func:`write_traceback`: ``<out_dir>/error.log``, or a
file in the temporary folder when ``out_dir`` cannot be written; the message names it):

- **2**: the input or the machine: a config key, the data, the run folder (``OutDirError``), a
  checkpoint (``CheckpointError``), a full disk (``ENOSPC``, anywhere in a save), permissions or
  a read-only file system, a run folder deleted under a live run, memory, and the run's own stops
  (the update guard, ``train.max_bad_steps`` / ``max_empty_steps``, the verifier failure stop,
  the code sandbox). Every ``ValueError`` counts here: iprime raises it, or a subclass, for bad
  input (``ConfigError``, ``DataError``, the resume checks).
- **128 + signum** (143, 130): a SIGTERM / SIGINT (:mod:`iprime.train.signals`): what was saved
  and how to resume.
- **1**: anything else: a bug (in iprime, or in code handed to it), said as such.

Under torchrun every rank goes through here. A stop that every rank reaches together (the
config, the data, the run's own stops: they are computed from the same global batch and
all-reduced metrics) is printed by rank 0 alone; anything else (a disk, memory, a bug) may be
one rank's own, so each rank that hits it prints it, prefixed with its rank. Each rank writes
its own traceback file (``error.log`` for rank 0, ``error-rank<N>.log``).
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
import typer

from iprime.config import ConfigError
from iprime.data.sources import DataError
from iprime.train.checkpoint_store import CheckpointError, resume_candidates
from iprime.train.prime import EmptyStepsError, NonFiniteError
from iprime.train.run_lock import RunLockedError
from iprime.train.scoring import VerifierFailureError
from iprime.train.signals import RunInterrupted, signal_name
from iprime.verifiers import SandboxError

RUN_STOPS = (ConfigError, DataError, NonFiniteError, EmptyStepsError, VerifierFailureError)
"""Stops every rank reaches together (the same config, data, global batch and metrics)."""
USER_ERRORS = (ValueError, CheckpointError, SandboxError, RunLockedError, *RUN_STOPS)
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


@dataclass
class Stop:
    """What a failure becomes: the exit ``code``, a ``label`` (``config error``, ``disk full``,
    ...), the ``message`` and what to do (``hint``, may be empty); ``every_rank``: whether each
    rank that hits it prints it (else rank 0 alone)."""

    code: int
    label: str
    message: str
    hint: str = ""
    every_rank: bool = True


@dataclass
class RunState:
    """What the wrapped code tells :func:`clean_stop`: ``running`` once the training loop has
    started (a stop then says which checkpoint to resume from)."""

    running: bool = False


def _named(err: BaseException, names: frozenset[str]) -> bool:
    return any(cls.__name__ in names for cls in type(err).__mro__)


def _os_stop(err: OSError, out_dir: Path) -> Stop:
    """A full disk, no permission, a read-only file system, a deleted run folder, or another
    ``OSError`` of the machine (exit 2 each), with what to do."""
    text = err.strerror if err.strerror and len(err.args) >= 2 else str(err)
    where = f" ({err.filename})" if err.filename and str(err.filename) not in text else ""
    if err.errno in DISK_FULL or "No space left on device" in text:
        hint = "" if "free some space" in text else "the checkpoints are intact; free some space and resume"
        return Stop(2, "disk full", text + where, hint)
    if err.errno in NO_WRITE:
        return Stop(
            2,
            "cannot write",
            text + where,
            f"make {out_dir} writable (or set another train.out_dir) and start again, or resume",
        )
    if isinstance(err, FileNotFoundError) and (not out_dir.exists() or text.startswith("train.out_dir")):
        gone = (
            text
            if text.startswith("train.out_dir")
            else (
                f"train.out_dir {out_dir} no longer exists: it was deleted or moved while the run was using it "
                f"({text}{where})"
            )
        )
        return Stop(
            2,
            "run folder gone",
            gone,
            "its checkpoints went with it: put the folder back and resume, or start the run again",
        )
    return Stop(2, "error", text + where)


def classify(err: BaseException, out_dir: Path) -> Stop:
    """The :class:`Stop` a failure becomes (module docstring)."""
    if isinstance(err, OSError):
        return _os_stop(err, out_dir)
    if isinstance(err, MemoryError) or _named(err, frozenset({"OutOfMemoryError"})):
        return Stop(
            2,
            "out of memory",
            str(err).splitlines()[0] if str(err) else type(err).__name__,
            "lower optim.micro_batch_size (or set optim.micro_batch_tokens), set model.gradient_checkpointing=true, "
            "or use more GPUs; iprime train --dry-run estimates the memory",
        )
    label = {ConfigError: "config error", DataError: "data error", CheckpointError: "checkpoint error"}
    for cls, name in label.items():
        if isinstance(err, cls):
            return Stop(2, name, str(err), every_rank=not isinstance(err, RUN_STOPS))
    if isinstance(err, (NonFiniteError, EmptyStepsError, VerifierFailureError)):
        return Stop(2, "run stopped", str(err), every_rank=False)
    if isinstance(err, USER_ERRORS):
        return Stop(2, "error", str(err))
    return Stop(
        1,
        "internal error",
        f"{type(err).__name__}: {err}",
        "this looks like a bug, in iprime or in code given to it (a verifier, a reward function): please report "
        "it with the traceback file",
    )


def traceback_path(out_dir: Path, rank: int) -> Path:
    return out_dir / ("error.log" if rank == 0 else f"error-rank{rank}.log")


def write_traceback(err: BaseException, out_dir: Path, rank: int = 0) -> Path | None:
    """Append the traceback of ``err`` (with the time and the command line) to
    :func:`traceback_path`, or, when that cannot be written, to ``iprime-error-<pid>.log`` in
    the temporary folder. Returns the file (``None``: neither could be written)."""
    text = (
        f"--- {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, rank {rank}: {shlex.join(sys.argv)}\n"
        + "".join(traceback.format_exception(err))
    )
    for path in (traceback_path(out_dir, rank), Path(tempfile.gettempdir()) / f"iprime-error-{os.getpid()}.log"):
        try:
            with path.open("a", encoding="utf-8") as fh:
                fh.write(text)
            return path
        except OSError:
            continue
    return None


def resume_command() -> str:
    """This command again, continuing the run: ``--overwrite`` dropped, ``--resume`` added."""
    args = [a for a in sys.argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "the same torchrun command with --resume"
    return shlex.join(["iprime", *args])


def checkpoint_line(out_dir: Path) -> str:
    """Which checkpoint the run can continue from, and how."""
    found = resume_candidates(out_dir)
    if not found:
        return f"no checkpoint in {out_dir / 'checkpoints'}: the run starts again from the beginning"
    return f"the newest checkpoint: {found[0]}; continue with: {resume_command()}"


def _interrupted(stop: RunInterrupted, out_dir: Path) -> list[str]:
    name = signal_name(stop.signum)
    if stop.checkpoint is not None:
        return [f"stopped by {name} after step {stop.step}: saved the checkpoint {stop.checkpoint}", resume_hint()]
    lines = [f"stopped by {name}" + (f" after step {stop.step}" if stop.step > 0 else "") + f": {stop.note}"]
    if stop.step != 0 or resume_candidates(out_dir):
        lines.append(checkpoint_line(out_dir))
    return lines


def resume_hint() -> str:
    return f"continue with: {resume_command()}"


@contextmanager
def clean_stop(
    out_dir: Path, say: Callable[..., None], *, rank: int | None = None, world_size: int | None = None
) -> Iterator[RunState]:
    """Run the body; turn what it raises into a message (``say(*parts)``, rich text parts), a
    traceback file and ``SystemExit`` with the status of :func:`classify` (module docstring).
    ``typer.Exit`` (a ``RuntimeError``), click's ``Exit`` and ``SystemExit`` pass through.
    Yields a :class:`RunState` to mark the run started."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    state = RunState()
    try:
        yield state
    except (SystemExit, typer.Exit, click.exceptions.Exit):  # a command's own exit, its message printed
        raise
    except KeyboardInterrupt:  # a SIGINT outside the handlers of iprime.train.signals
        _stop_on_signal(RunInterrupted(2, -1, None, "no checkpoint written by this stop"), out_dir, rank, say)
    except RunInterrupted as stop:
        _stop_on_signal(stop, out_dir, rank, say)
    except Exception as err:  # noqa: BLE001 - every failure becomes a message and a status
        stop = classify(err, out_dir)
        log = write_traceback(err, out_dir, rank)
        if rank == 0 or stop.every_rank:
            prefix = f"rank {rank}: " if world > 1 and stop.every_rank else ""
            say((f"{prefix}{stop.label}: ", "red"), stop.message)
            if stop.hint:
                say(f"  what to do: {stop.hint}")
            if state.running and rank == 0:
                say(f"  {checkpoint_line(out_dir)}")
            say(f"  the full traceback: {log}" if log else "  (the traceback could not be written anywhere)")
        raise SystemExit(stop.code) from None


def _stop_on_signal(stop: RunInterrupted, out_dir: Path, rank: int, say: Callable[..., None]) -> None:
    if rank == 0:
        for line in _interrupted(stop, out_dir):
            say(line)
    raise SystemExit(stop.exit_code) from None
