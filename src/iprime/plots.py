"""Plots of a run's ``metrics.jsonl`` that read at a glance.

Every panel has ``step`` on the x axis, a y label saying what is measured and in which unit, and a
title. Each metric is drawn twice in one colour: its value at each step as faint dots, and an
exponential moving average (EMA) over them as a line whose legend names the smoothing
("EMA 0.8"). Evaluation metrics, measured every ``train.eval_every`` steps and already averaged
over many prompts, are drawn unsmoothed, as a line with markers. The PRM pairwise-accuracy panel
has a dashed chance line at 0.5.

Gaps stay gaps. A step with no value for a metric (the key is missing, ``null`` or NaN: a step
served from the buffer has no ``rollout/*``, a skipped step no ``policy/*``, a step missing from
the file has nothing) breaks the line; it is never bridged, and no value is drawn for it. The
EMA restarts after a gap longer than its half-life (a crash, a resume); across a shorter one (a
step served from the buffer) the older values fade by the EMA weight per missing step instead,
so the line does not restart from a noisy raw value at every such step (see :func:`smooth`).

Used by ``iprime plot RUN_DIR`` (:func:`plot_command`) and by the quickstart (one PNG per panel,
:func:`save_panels`). matplotlib is imported only when a figure is drawn, with the Agg backend (no
display needed).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from rich.console import Console

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RAW_ALPHA = 0.3
"""Opacity of the per-step dots under the smoothed line."""
DPI = 110


class PlotWarning(UserWarning):
    """A damaged line of ``metrics.jsonl`` was left out of a plot."""


# ---------------------------------------------------------------------------- panels
@dataclass(frozen=True)
class Panel:
    """One axes of a figure: which metrics it draws and how it is labelled.

    ``series`` pairs a metrics key with its legend label. ``ylim`` fixes the y range (fractions
    get ``(0, 1)`` so that runs compare by eye); ``chance`` draws a dashed horizontal line
    labelled "chance" at that y. ``smoothed=False`` draws the values as measured (a line with
    markers), for sparse metrics such as evaluations. ``stem`` names the PNG when a panel is saved
    on its own (:func:`save_panels`); by default the first key with ``/`` replaced by ``_``.
    """

    title: str
    ylabel: str
    series: tuple[tuple[str, str], ...]
    ylim: tuple[float, float] | None = None
    chance: float | None = None
    smoothed: bool = True
    stem: str | None = None

    @property
    def file_stem(self) -> str:
        return self.stem or self.series[0][0].replace("/", "_")


FRACTION = (-0.02, 1.02)  # a little room so that 0 and 1 are not drawn on the frame

TRAINING_PANELS: tuple[Panel, ...] = (
    Panel(
        "Training accuracy",
        "mean verifier score\n(fraction correct)",
        (("rollout/acc_before_filter", "sampled, before filter"), ("batch/acc", "trained batch")),
        ylim=FRACTION,
    ),
    # the evaluation panel goes here when the run has eval/* scores (default_panels)
    Panel(
        "PRM pairwise accuracy",
        "fraction of (correct, wrong)\npairs ranked right",
        (("prm/pairwise_acc", "implicit PRM"),),
        ylim=FRACTION,
        chance=0.5,
    ),
    Panel("PRM loss", "PRM loss (nats)", (("prm/loss", "PRM loss"),)),
    Panel("Policy loss", "clipped surrogate loss", (("policy/pg_loss", "policy gradient loss"),)),
    Panel(
        "KL divergence",
        "KL (nats per token)",
        (("policy/kl_ref", "to the reference"), ("policy/approx_kl", "to the rollout policy")),
    ),
    Panel(
        "Response length",
        "tokens per response",
        (("rollout/response_length", "sampled"), ("batch/response_length", "trained batch")),
    ),
    Panel("Policy entropy", "entropy (nats per token)", (("policy/entropy", "policy"),)),
    Panel("Gradient norm", "gradient L2 norm", (("policy/grad_norm", "policy"), ("prm/grad_norm", "PRM"))),
    Panel("Value loss", "value loss (squared error)", (("value/loss", "value model"),)),
    Panel("Loss", "loss (nats per token)", (("loss", "loss"),)),
    Panel("Step time", "seconds per step", (("time/step", "wall clock"),)),
)
"""The panels of ``iprime plot``, in order; those whose metrics a run lacks are left out."""

EXTRA_PANELS: tuple[Panel, ...] = (
    Panel("Learning rate", "learning rate", (("lr", "policy"),), smoothed=False),
    Panel("Throughput", "generated tokens per second", (("tokens_per_s", "generation"),)),
    Panel(
        "Kept groups",
        "fraction of groups kept\nby the accuracy filter",
        (("rollout/kept_group_frac", "kept"),),
        FRACTION,
    ),
    Panel(
        "Truncated responses",
        "fraction of responses\ncut at max_new_tokens",
        (("rollout/truncated_frac", "truncated"),),
        FRACTION,
    ),
)
"""Panels drawn only when their key is asked for (``iprime plot -k lr``), labelled like the rest."""

QUICKSTART_PANELS: tuple[Panel, ...] = (
    Panel("Held-out accuracy (greedy)", "fraction correct", (("eval/accuracy", "held-out"),), FRACTION, smoothed=False),
    Panel(
        "Training accuracy (sampled, before filter)",
        "mean verifier score\n(fraction correct)",
        (("rollout/acc_before_filter", "sampled, before filter"),),
        FRACTION,
    ),
    Panel(
        "PRM pairwise accuracy",
        "fraction of (correct, wrong)\npairs ranked right",
        (("prm/pairwise_acc", "implicit PRM"),),
        FRACTION,
        chance=0.5,
    ),
    Panel(
        "Response length",
        "tokens per response",
        (("batch/response_length", "trained batch"), ("rollout/response_length", "sampled")),
    ),
)
"""The quickstart's four PNGs (``eval_accuracy.png``, ``rollout_acc_before_filter.png``,
``prm_pairwise_acc.png``, ``batch_response_length.png``)."""

_SCORE_NAMES = ("acc", "accuracy")
_SCORE_PREFIXES = ("pass@", "maj@", "avg@", "bon@", "wvote@")


def is_eval_score(key: str) -> bool:
    """Whether ``key`` is an evaluation score in [0, 1]: ``eval/accuracy``, ``eval/<name>/acc``,
    ``eval/<name>/pass@k`` (or maj@k, avg@k, bon@k, wvote@k)."""
    if not key.startswith("eval/"):
        return False
    last = key.rsplit("/", 1)[-1]
    return last in _SCORE_NAMES or last.startswith(_SCORE_PREFIXES)


def eval_panel(keys: Iterable[str]) -> Panel:
    """The evaluation panel: every eval score in ``keys``, unsmoothed, labelled without ``eval/``."""
    scores = sorted(k for k in keys if is_eval_score(k))
    return Panel(
        "Evaluation during training",
        "score (accuracy, pass@k)",
        tuple((k, k.removeprefix("eval/")) for k in scores),
        ylim=FRACTION,
        smoothed=False,
        stem="eval",
    )


def default_panels(metrics: Sequence[dict[str, Any]]) -> list[Panel]:
    """:data:`TRAINING_PANELS` plus the evaluation panel, keeping only the metrics the run has.

    A panel keeps the series with at least one finite value; a panel left with none is dropped."""
    keys = numeric_keys(metrics)
    panels = list(TRAINING_PANELS)
    if any(is_eval_score(k) for k in keys):
        panels.insert(1, eval_panel(keys))
    return [p for p in (_with_data(p, metrics) for p in panels) if p is not None]


def key_panels(metrics: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[Panel]:
    """One panel per requested key, labelled as in :data:`TRAINING_PANELS` when the key is known
    there, else titled with the key itself. Raises ``ValueError`` naming the keys that have no
    value in the run, with those it has."""
    have = numeric_keys(metrics)
    missing = [k for k in keys if k not in have]
    if missing:
        raise ValueError(f"no values for {', '.join(missing)} in the metrics; they have: {', '.join(sorted(have))}")
    known = {key: (panel, label) for panel in TRAINING_PANELS + EXTRA_PANELS for key, label in panel.series}
    out = []
    for key in keys:
        if key in known:
            panel, label = known[key]
            out.append(Panel(panel.title, panel.ylabel, ((key, label),), panel.ylim, panel.chance, panel.smoothed))
        elif is_eval_score(key):
            out.append(eval_panel([key]))
        else:
            out.append(Panel(key, key.rsplit("/", 1)[-1], ((key, key),)))
    return out


def _with_data(panel: Panel, metrics: Sequence[dict[str, Any]]) -> Panel | None:
    """``panel`` without the series that have no finite value; ``None`` when none is left."""
    kept = tuple((k, label) for k, label in panel.series if np.isfinite(series(metrics, k)[1]).any())
    if not kept:
        return None
    return Panel(panel.title, panel.ylabel, kept, panel.ylim, panel.chance, panel.smoothed, panel.file_stem)


# ---------------------------------------------------------------------------- data
def _number(value: Any) -> float:
    """``value`` as a float; NaN when it is not a real number (missing, ``None``, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in file order.

    Blank lines are skipped. A line that is not a JSON object with an integer ``step`` (the torn
    last line of a run still writing, or a damaged line) is left out with a :class:`PlotWarning`
    naming the file and line. Raises ``FileNotFoundError`` when the file is missing and
    ``ValueError`` when it holds no record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int):
            warnings.warn(f"{path}:{number}: left out, not a metrics record: {line[:80]!r}", PlotWarning, stacklevel=2)
            continue
        records.append({**record, "step": step})
    if not records:
        raise ValueError(f"{path} holds no metrics (is the run's first step done?)")
    return records


def numeric_keys(metrics: Sequence[dict[str, Any]]) -> set[str]:
    """The keys (but ``step``) that have a finite number in at least one record."""
    return {k for m in metrics for k, v in m.items() if k != "step" and math.isfinite(_number(v))}


def _cadence(steps: Sequence[int] | np.ndarray) -> int:
    """The usual spacing of sorted, distinct steps: the most common difference (the smallest of
    equally common ones); 1 for fewer than two steps."""
    diffs = np.diff(np.asarray(steps, dtype=np.int64))
    if diffs.size == 0:
        return 1
    counts = Counter(diffs.tolist())
    top = max(counts.values())
    return int(min(d for d, c in counts.items() if c == top))


def series(metrics: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric over the run: int64 ``[S]`` and float64 ``[S]``.

    ``steps`` is the run's step grid: every logged step, plus every step from the first to the last
    at the run's logging cadence (1 for ``metrics.jsonl``, which has one record per step), so that a
    step missing from the file shows up too. ``values`` holds the metric at each step and NaN where
    the step has none (no record, no key, ``null``, NaN, or not a number). When a step is logged
    twice (a resumed run whose old lines were kept), the later record wins."""
    by_step: dict[int, float] = {}
    for m in metrics:
        by_step[int(m["step"])] = _number(m.get(key))
    logged = sorted(by_step)
    if not logged:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    grid = sorted(set(logged) | set(range(logged[0], logged[-1] + 1, _cadence(logged))))
    values = np.array([by_step.get(s, math.nan) for s in grid], dtype=np.float64)
    return np.array(grid, dtype=np.int64), values


def measured(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points a line is drawn through: ``(x, y)``, float arrays.

    The finite values, with one NaN point inserted wherever two consecutive ones are further apart
    than the metric's own cadence (the smallest spacing between consecutive finite values), at the
    first step after the earlier one. A metric logged every step therefore breaks at each step
    without a value; one measured every 50 steps (an evaluation) joins its measurements and breaks
    where one is missing. Caveat: a metric that happened to be present only on every other step
    would be read as measured every 2 steps and joined."""
    finite = np.isfinite(values)
    x, y = steps[finite].astype(np.float64), values[finite]
    if x.size < 2:
        return x, y
    cadence = float(np.diff(x).min())
    xs, ys = [x[0]], [y[0]]
    for prev, cur, value in zip(x[:-1], x[1:], y[1:]):
        if cur - prev > cadence:
            xs.append(prev + cadence)
            ys.append(math.nan)
        xs.append(cur)
        ys.append(value)
    return np.array(xs), np.array(ys)


def smooth(
    values: Sequence[float] | np.ndarray,
    weight: float,
    *,
    steps: Sequence[float] | np.ndarray | None = None,
    max_gap: float = 0.0,
) -> np.ndarray:
    """Exponential moving average of ``values`` ``[N]`` with ``weight`` in [0, 1): ``[N]``.

    Bias-corrected, as TensorBoard's smoothing: ``s_t = a_t / b_t`` with
    ``a_t = w * a_(t-1) + (1 - w) * x_t`` and ``b_t = w * b_(t-1) + (1 - w)``, so every output is a
    weighted mean of measured values only (``s_0 = x_0``; nothing is pulled towards 0).

    NaN marks a value that was not measured: its output is NaN (the line breaks there). ``steps``
    gives each value's step (default: its index); the metric's cadence is the smallest spacing of
    two consecutive finite values (1 for the default). Across a gap of ``g`` missing points
    (``g = spacing / cadence - 1``) the average either restarts at the next value, when
    ``g > max_gap``, or carries on with the older values faded by ``w`` per missing point. The
    default ``max_gap=0`` restarts after every gap, so nothing measured before a gap shapes the
    line after it; :func:`plot_run` allows gaps up to the EMA's half-life (:func:`half_life`), so
    frequent one-step gaps (steps served from the buffer) do not make the line restart at a noisy
    raw value each time, while after a long gap (a crash, a resume) it starts afresh. No value is
    ever made up for a missing step. ``weight=0`` returns the values unchanged."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    x = np.asarray(values, dtype=np.float64)
    at = np.arange(x.size, dtype=np.float64) if steps is None else np.asarray(steps, dtype=np.float64)
    if at.shape != x.shape:
        raise ValueError(f"steps has shape {at.shape}, values {x.shape}")
    finite = np.flatnonzero(np.isfinite(x))
    spacing = np.diff(at[finite])
    cadence = 1.0 if steps is None or spacing.size == 0 else float(spacing.min())
    out = np.full_like(x, math.nan)
    acc = norm = 0.0
    last = None
    for i in finite:
        if last is not None:
            missing = round((at[i] - at[last]) / cadence) - 1
            fade = 0.0 if missing > max_gap else weight ** (missing + 1)
            acc, norm = fade * acc, fade * norm
        acc += (1.0 - weight) * x[i]
        norm += 1.0 - weight
        out[i] = acc / norm
        last = i
    return out


def half_life(weight: float) -> float:
    """The number of points over which an EMA with ``weight`` halves a value's share:
    ``log(0.5) / log(w)`` (0 for ``w = 0``); e.g. 3.1 for 0.8, 13.5 for 0.95."""
    return 0.0 if weight <= 0.0 else math.log(0.5) / math.log(weight)


def auto_weight(n_steps: int) -> float:
    """The default EMA weight for a run of ``n_steps``: about a tenth of the run, in steps, is
    averaged (``w = 1 - 2 / (n/10 + 1)``, the EMA whose span is n/10), kept within [0.6, 0.95]
    so that short runs are still smoothed and long ones still show change. Two decimals."""
    return round(min(0.95, max(0.6, 1.0 - 2.0 / (n_steps / 10.0 + 1.0))), 2)


# ---------------------------------------------------------------------------- drawing
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_panel(ax: Axes, metrics: Sequence[dict[str, Any]], panel: Panel, weight: float) -> None:
    """Draw ``panel`` on ``ax``: per series, faint dots at each step's value and an EMA line
    (``weight``; 0 draws a plain line) that breaks at gaps, or, for an unsmoothed panel, a line
    with markers through the measurements; labels, chance line, legend. A panel with no data says
    so in its middle."""
    from matplotlib.ticker import MaxNLocator

    drawn = 0
    for i, (key, label) in enumerate(panel.series):
        x, y = measured(*series(metrics, key))
        if not np.isfinite(y).any():
            continue
        drawn += 1
        color = f"C{i}"
        if panel.smoothed:
            ax.plot(x, y, linestyle="none", marker="o", markersize=3.5, alpha=RAW_ALPHA, color=color)
            line = smooth(y, weight, steps=x, max_gap=half_life(weight)) if weight > 0 else y
            how = f"EMA {weight:g}" if weight > 0 else "raw"
            # a value with gaps on both sides has no line to be part of: mark it, or it would vanish
            mark = _isolated(line)
            marker = "o" if any(mark) else None
            ax.plot(
                x,
                line,
                color=color,
                linewidth=1.8,
                marker=marker,
                markersize=3,
                markevery=mark,
                label=f"{label} ({how})",
            )
        else:
            few = np.isfinite(y).sum() <= 60  # markers on each of many points would blur into a thick line
            ax.plot(x, y, color=color, linewidth=1.5, marker="o" if few else None, markersize=4, label=label)
    if panel.chance is not None:
        ax.axhline(panel.chance, color="0.35", linestyle="--", linewidth=1.0, label="chance")
    if not drawn:
        ax.text(0.5, 0.5, "no data in this run", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    first, last = min(m["step"] for m in metrics), max(m["step"] for m in metrics)
    pad = max(0.5, 0.02 * (last - first))
    ax.set_xlim(first - pad, last + pad)  # every panel spans the whole run, so panels line up
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="y", useOffset=False)  # no "1e-18+1e-6" above a flat line
    ax.grid(alpha=0.3)
    if drawn or panel.chance is not None:
        ax.legend(fontsize="small", loc="best", framealpha=0.8)


def _isolated(y: np.ndarray) -> list[bool]:
    """Per point of ``y``: finite with a NaN (or the end) on both sides, so no line segment
    touches it."""
    finite = np.isfinite(y)
    before = np.concatenate([[False], finite[:-1]])
    after = np.concatenate([finite[1:], [False]])
    return (finite & ~before & ~after).tolist()


def _weight(metrics: Sequence[dict[str, Any]], smooth_weight: float | None) -> float:
    """``smooth_weight``, validated, or :func:`auto_weight` of the run's length."""
    if smooth_weight is None:
        steps = [m["step"] for m in metrics]
        return auto_weight(max(steps) - min(steps) + 1)
    smooth([], smooth_weight)  # validates the range
    return float(smooth_weight)


_FOOTNOTE = (
    "dots: each step's value · lines: EMA of the dots (restarts after a gap longer than its half-life) · "
    "breaks: steps without a value (e.g. served from the buffer, skipped) · evaluations: as measured"
)


def run_figure(
    metrics: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str] | None = None,
    smooth: float | None = None,
    title: str | None = None,
) -> Figure:
    """The figure of :func:`plot_run`, not saved and not closed (the caller closes it with
    ``matplotlib.pyplot.close``): a grid of panels, two columns, one per panel in reading order."""
    if not metrics:
        raise ValueError("no metrics to plot")
    panels = key_panels(metrics, keys) if keys else default_panels(metrics)
    if not panels:
        raise ValueError(
            f"none of the plotted metrics is in the run (it has: {', '.join(sorted(numeric_keys(metrics)))}); "
            "name some with keys="
        )
    weight = _weight(metrics, smooth)
    plt = _pyplot()
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.4 * rows + 0.8), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        draw_panel(ax, metrics, panel, weight)
    for ax in list(axes.flat)[len(panels) :]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title, fontweight="bold")
    footnote = fig.text(0.5, 0.005, _FOOTNOTE, ha="center", va="bottom", fontsize="small", color="0.35", wrap=True)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))  # 0.6 inch at the bottom for the footnote
    footnote.set_in_layout(False)
    return fig


def plot_run(
    metrics: Sequence[dict[str, Any]] | str | Path,
    out_png: str | Path,
    *,
    keys: Sequence[str] | None = None,
    smooth: float | None = None,
    title: str | None = None,
) -> Path:
    """One PNG of a run: a grid of panels (two columns), written to ``out_png``.

    ``metrics``: the records of ``metrics.jsonl`` or the file's path. ``keys``: one panel per
    metrics key; by default :func:`default_panels` (training and evaluation accuracy, PRM pairwise
    accuracy with its chance line, losses, KL, response length, entropy, gradient norms, step
    time: those the run has). ``smooth``: the EMA weight in [0, 1) (0: no smoothing); by default
    :func:`auto_weight` of the run's length. ``title``: above the grid; by default the run
    directory's name when ``metrics`` is a path. Returns the PNG's path. Raises ``ValueError``
    when no panel has data, ``FileNotFoundError`` when the file is missing."""
    if isinstance(metrics, (str, Path)):
        title = title if title is not None else Path(metrics).resolve().parent.name
        metrics = load_metrics(metrics)
    fig = run_figure(metrics, keys=keys, smooth=smooth, title=title)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=DPI)
    _pyplot().close(fig)
    return out_png


def save_panels(
    metrics: Sequence[dict[str, Any]], out_dir: str | Path, panels: Sequence[Panel], *, smooth: float | None = None
) -> list[Path]:
    """One PNG per panel in ``out_dir``, named ``<panel.file_stem>.png``, written even when the run
    has no data for it (the panel says so), so a pipeline's file names do not depend on its
    settings. ``smooth`` as in :func:`plot_run`. Returns the paths in panel order."""
    if not metrics:
        raise ValueError("no metrics to plot")
    weight = _weight(metrics, smooth)
    plt = _pyplot()
    paths = []
    for panel in panels:
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        draw_panel(ax, metrics, panel, weight)
        fig.tight_layout()
        path = Path(out_dir) / f"{panel.file_stem}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- command
def plot_command(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="run directory (train.out_dir) holding metrics.jsonl"),
    out: str = typer.Option(None, "--out", "-o", metavar="PNG", help="PNG to write (default: RUN_DIR/plots.png)"),
    key: list[str] = typer.Option(
        [], "--key", "-k", help="plot only this metrics key, one panel each (repeatable), e.g. -k prm/loss"
    ),
    smooth_weight: float = typer.Option(
        None, "--smooth", help="EMA weight, from 0 (no smoothing) to below 1 (default: from the run's length)"
    ),
) -> None:
    """Plot a run's metrics.jsonl: accuracy, PRM pairwise accuracy, losses, KL, length, eval.

    Faint dots are each step's value, lines an EMA over them; a step without a value breaks the
    line.
    """
    console = Console()
    run = Path(run_dir)
    target = Path(out) if out else run / "plots.png"
    try:
        path = plot_run(run / "metrics.jsonl", target, keys=key or None, smooth=smooth_weight)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(f"plots: {path}")
