"""What a loop shows while it trains: a progress bar on a terminal, plain log lines elsewhere.

A job started under ``nohup``, a scheduler or with its output sent to a file has no terminal to
draw a bar on; it gets one plain line per step instead (no ANSI codes, flushed at once)::

    PRIME step 3/10  acc 0.75  kept 0.50  prm_acc 0.61  len 37  pg_loss -0.0123  lr 1.0e-06  1.9s/step  elapsed 0:00:06

:func:`format_step_line` builds that line from a step's metrics dict and is shared by every loop
(PRIME's trainer, :func:`iprime.train.sft.run_sft`, offline PRM training), so their logs read
alike. :func:`progress_bar` chooses between the rich bar, the lines and nothing
(``train.progress``). Nothing of iprime is imported here: the trainer, SFT and ``iprime prm
train`` all use it.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Literal

import rich
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

ProgressMode = Literal["auto", "bar", "lines", "none"]
PROGRESS_MODES = ("auto", "bar", "lines", "none")

# The headline metrics of a step, in the order shown: (metrics key, label, format). A key that is
# missing is left out, never shown as a made-up 0. Accuracy and length have their own rules
# (:func:`_rollout_fields`) because a step served from the buffer generates nothing.
_SCALARS: tuple[tuple[str, str, str], ...] = (
    ("prm/pairwise_acc", "prm_acc", ".2f"),
    ("loss", "loss", ".4f"),  # SFT, offline PRM training
    ("policy/pg_loss", "pg_loss", ".4f"),
    ("prm/loss", "prm_loss", ".4f"),
    ("policy/kl_ref", "kl", ".4f"),
    ("lr", "lr", ".1e"),
)


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _fmt(value: float, spec: str) -> str:
    """``value`` with a fixed format; ``nan``/``inf`` spelled out, and no ``-0.0000`` for a tiny
    negative number."""
    if not math.isfinite(value):
        return str(value)
    text = format(value, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a non-negative number of seconds (``0:00:06``)."""
    total = int(max(0.0, seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _rollout_fields(m: dict[str, Any]) -> list[str]:
    """Sampled accuracy, kept share and response length.

    A step that generated rollouts has ``rollout/*``. A step served entirely from the buffer
    generated nothing and has no ``rollout/*``: its trained batch's ``batch/acc`` and
    ``batch/response_length`` are shown instead, marked ``(buffer)``, and ``kept`` is left out
    (nothing was filtered)."""
    acc, length = _number(m.get("rollout/acc_before_filter")), _number(m.get("rollout/response_length"))
    from_buffer = acc is None and _number(m.get("batch/acc")) is not None
    if from_buffer:
        acc, length = _number(m.get("batch/acc")), _number(m.get("batch/response_length"))
    fields = []
    if acc is not None:
        fields.append(f"acc {_fmt(acc, '.2f')}" + (" (buffer)" if from_buffer else ""))
    kept = _number(m.get("rollout/kept_group_frac"))
    if kept is not None:
        fields.append(f"kept {_fmt(kept, '.2f')}")
    if length is not None:
        fields.append(f"len {_fmt(length, '.0f')}")
    return fields


def _eval_fields(m: dict[str, Any]) -> list[str]:
    """Eval results of the step (``eval/<name>/acc``, ``eval/<name>/pass@k``, an ``eval_fn``'s
    ``eval/accuracy``), three decimals."""
    out = []
    for key, value in m.items():
        number = _number(value)
        headline = key.endswith(("/acc", "accuracy")) or "pass@" in key
        if key.startswith("eval/") and number is not None and headline:
            out.append(f"{key.removeprefix('eval/')} {_fmt(number, '.3f')}")
    return out


def _rate_fields(m: dict[str, Any]) -> list[str]:
    """Throughput: seconds per step (``time/step``) and sampled tokens per second
    (``tokens_per_s``; left out when the step sampled nothing)."""
    out = []
    if (t := _number(m.get("time/step"))) is not None:
        out.append(f"{_fmt(t, '.1f')}s/step")
    generated_nothing = m.get("generated_tokens") == 0  # a step served from the buffer: no sampling rate
    if (tps := _number(m.get("tokens_per_s"))) is not None and not generated_nothing:
        out.append(f"{_fmt(tps, '.0f')} tok/s")
    return out


def step_flags(m: dict[str, Any]) -> list[str]:
    """Why a step is not an ordinary one, in brackets: nothing to learn from, skipped, rejected by
    the update guard, non-finite updates dropped. Shown in every mode, never hidden."""
    flags = []
    if "empty" in m:
        flags.append(f"[EMPTY STEP: {m['empty']}]")
    if "skipped" in m and m["skipped"] != m.get("empty"):
        flags.append(f"[skipped: {m['skipped']}]")
    if m.get("guard/rejected"):
        flags.append(f"[guard rejected: {m['guard/rejected']}]")
    if m.get("config/changed"):  # the first step after a resume that changed the config
        flags.append(f"[config changed: {m['config/changed']}]")
    if (n := _number(m.get("policy/skipped_updates"))) and n > 0:
        flags.append(f"[{n:.0f} non-finite policy updates skipped]")
    if (n := _number(m.get("prm/skipped"))) and n > 0:
        flags.append("[PRM update skipped: non-finite]")
    return flags


def format_metrics(m: dict[str, Any]) -> str:
    """The headline metrics of one step as fixed-decimal ``name value`` fields joined by two
    spaces, then its flags (:func:`step_flags`); the rich bar's info column and the middle of
    :func:`format_step_line`. Keys that are absent are left out."""
    fields = _rollout_fields(m)
    for key, label, spec in _SCALARS:
        value = _number(m.get(key))
        # no (correct, wrong) pair in the batch gives a NaN pairwise accuracy: nothing to show; a
        # non-finite loss is shown, since it is the news
        if value is not None and (math.isfinite(value) or key != "prm/pairwise_acc"):
            fields.append(f"{label} {_fmt(value, spec)}")
    fields += _eval_fields(m)
    fields += _rate_fields(m)
    return "  ".join(fields + step_flags(m))


def format_step_line(step: int, total: int, metrics: dict[str, Any], elapsed_s: float) -> str:
    """One plain log line for a step: ``step 3/10  acc 0.75  kept 0.50 ...  elapsed 0:00:06``.

    Pure: no clock, no terminal. Numbers have fixed decimals (never 17-digit floats); the
    step's flags (empty, skipped, guard rejected) are part of the line."""
    parts = [f"step {step}/{total}", format_metrics(metrics), f"elapsed {format_duration(elapsed_s)}"]
    return "  ".join(p for p in parts if p)


def _console(stream: IO[str] | None):
    """The rich console a bar would draw on: rich's default one (stdout, honouring FORCE_COLOR
    and notebooks) or one writing to ``stream``."""
    return rich.get_console() if stream is None else Console(file=stream)


def resolve_mode(mode: ProgressMode | bool, stream: IO[str] | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"none"`` for a ``train.progress`` value.

    ``"auto"``: the bar when the console rich would draw on (``stream``, default stdout) is a
    terminal or a notebook, plain lines otherwise (a file, a pipe, a scheduler's log). A bool is
    accepted for older callers: ``True`` is ``"auto"``, ``False`` is ``"none"``."""
    if isinstance(mode, bool):
        mode = "auto" if mode else "none"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress must be one of {PROGRESS_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    console = _console(stream)
    return "bar" if console.is_terminal or console.is_jupyter else "lines"


@contextlib.contextmanager
def _lines(
    total: int, every_s: float, stream: IO[str] | None, label: str
) -> Iterator[Callable[[int, dict[str, Any]], None]]:
    """``advance`` printing :func:`format_step_line` (prefixed by ``label``) at most once per
    ``every_s`` seconds; the last step and any flagged step are always printed."""
    t0, last = time.monotonic(), -math.inf

    def advance(step: int, m: dict[str, Any]) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < every_s and step < total and not step_flags(m):
            return
        last = now
        out = stream if stream is not None else sys.stdout
        print(f"{label} {format_step_line(step, total, m, now - t0)}", file=out, flush=True)

    yield advance


@contextlib.contextmanager
def _bar(total: int, completed: int, stream: IO[str] | None, label: str):
    """``advance`` moving a rich progress bar; the step's :func:`format_metrics` is shown on the
    line(s) below the bar, wrapped to the terminal's width and never read as rich markup."""

    class BarAndInfo(Progress):
        def get_renderables(self):
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                if task.fields.get("info"):
                    yield Text(task.fields["info"])

    columns = [
        TextColumn(escape(label)),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with BarAndInfo(*columns, console=_console(stream), transient=False) as bar:
        task = bar.add_task(label, total=total, completed=completed, info="")

        def advance(step: int, m: dict[str, Any]) -> None:
            bar.update(task, completed=step, info=format_metrics(m))

        yield advance


@contextlib.contextmanager
def progress_bar(
    mode: ProgressMode | bool,
    total: int,
    completed: int,
    *,
    every_s: float = 0.0,
    stream: IO[str] | None = None,
    label: str = "PRIME",
) -> Iterator[Callable[[int, dict[str, Any]], None]]:
    """Yields ``advance(step, metrics)``, to be called after each step (``step`` counts from 1).

    ``mode`` (``train.progress``): ``"bar"`` draws a rich bar; ``"lines"`` prints one plain line
    per step (:func:`format_step_line`, prefixed by ``label``), at most one per ``every_s``
    seconds, though the last step (``step >= total``) and a flagged step (empty, skipped, guard
    rejected) are always printed; ``"none"`` shows nothing; ``"auto"`` is the bar on a terminal
    and lines elsewhere (:func:`resolve_mode`). ``stream``: where to write; default stdout (rich's
    console), looked up at each call. ``completed``: steps already done (a resumed run)."""
    if every_s < 0:
        raise ValueError(f"every_s must be >= 0, got {every_s}")
    resolved = resolve_mode(mode, stream)
    if resolved == "none":
        yield lambda step, metrics: None
    elif resolved == "lines":
        with _lines(total, every_s, stream, label) as advance:
            yield advance
    else:
        with _bar(total, completed, stream, label) as advance:
            yield advance
