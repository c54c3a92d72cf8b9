"""iprime.plots: series with gaps, EMA smoothing by hand, and what the figures actually draw."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from iprime.plots import (  # noqa: E402
    QUICKSTART_PANELS,
    PlotWarning,
    auto_weight,
    default_panels,
    half_life,
    load_metrics,
    measured,
    plot_command,
    plot_run,
    run_figure,
    save_panels,
    series,
    smooth,
)

PNG = b"\x89PNG\r\n\x1a\n"
NAN = math.nan


def run_metrics(steps: int = 12) -> list[dict]:
    """A run as metrics.jsonl records: step 4 served from the buffer (no rollout/*), step 6
    skipped (no policy/* or prm/*), step 8 missing from the file, prm/pairwise_acc null (a
    non-finite value, as MetricsLogger writes it) at step 10, evaluations at steps 3, 6, 9, 12."""
    out = []
    for step in range(1, steps + 1):
        if step == 8:
            continue
        m = {"step": step, "lr": 1e-6, "time/step": 2.0 + 0.1 * step}
        if step != 4:
            m["rollout/acc_before_filter"] = 0.3 + 0.02 * step
            m["rollout/response_length"] = 100.0 - step
        if step != 6:
            m["batch/acc"] = 0.5
            m["prm/pairwise_acc"] = None if step == 10 else 0.5 + 0.01 * step
            m["prm/loss"] = 0.69 - 0.01 * step
            m["policy/pg_loss"] = 0.01 * (-1) ** step
            m["policy/kl_ref"] = 0.001 * step
        else:
            m["skipped"] = "no group passed the filter"
        if step % 3 == 0:
            m["eval/math500/acc"] = 0.2 + 0.01 * step
            m["eval/aime/pass@4"] = 0.05
        out.append(m)
    return out


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def figure():
    """Build a figure with run_figure and close it after the test."""
    made = []

    def build(*args, **kwargs):
        made.append(run_figure(*args, **kwargs))
        return made[-1]

    yield build
    for fig in made:
        plt.close(fig)


def axes_titled(fig, title: str):
    (ax,) = [a for a in fig.axes if a.get_title() == title]
    return ax


def line_labelled(ax, start: str):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(start)]
    return line


# ---------------------------------------------------------------------------- series / measured
def test_series_has_nan_for_every_step_without_a_value():
    metrics = run_metrics()
    steps, values = series(metrics, "rollout/acc_before_filter")
    assert steps.tolist() == list(range(1, 13))  # step 8, absent from the file, is on the grid
    expected = [0.3 + 0.02 * s if s not in (4, 8) else NAN for s in range(1, 13)]
    np.testing.assert_allclose(values, expected)  # NaN at the buffer step 4 and the missing step 8
    _, pairwise = series(metrics, "prm/pairwise_acc")
    assert np.isnan(pairwise[[5, 7, 9]]).all()  # skipped 6, missing 8, null 10
    assert np.isfinite(pairwise).sum() == 9


def test_series_treats_strings_bools_and_nan_as_missing_and_keeps_the_last_duplicate():
    metrics = [
        {"step": 1, "x": "text"},
        {"step": 2, "x": True},
        {"step": 3, "x": float("nan")},
        {"step": 4, "x": 1.0},
        {"step": 4, "x": 2.0},  # a resumed run's line for the same step: the later one wins
        {"step": 5, "x": 3},
    ]
    steps, values = series(metrics, "x")
    assert steps.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(values, [NAN, NAN, NAN, 2.0, 3.0])


def test_series_grid_follows_the_logging_cadence():
    """SFT-style logs every 10 steps: the grid is every 10 steps, with a hole where a line is missing."""
    metrics = [{"step": s, "loss": 1.0 / s} for s in (10, 20, 30, 50, 60)]
    steps, values = series(metrics, "loss")
    assert steps.tolist() == [10, 20, 30, 40, 50, 60]
    assert np.isnan(values[3]) and np.isfinite(values[[0, 1, 2, 4, 5]]).all()


def test_measured_breaks_at_missing_steps_and_joins_a_sparse_metric_at_its_cadence():
    x, y = measured(np.arange(1, 8), np.array([1.0, 2.0, NAN, NAN, 5.0, 6.0, 7.0]))
    assert x.tolist() == [1, 2, 3, 5, 6, 7]  # one NaN point at the first missing step
    np.testing.assert_array_equal(y, [1.0, 2.0, NAN, 5.0, 6.0, 7.0])
    # an evaluation every 3 steps: joined, except across the missing one at step 9
    steps = np.arange(1, 16)
    values = np.full(15, NAN)
    values[[2, 5, 11, 14]] = [0.1, 0.2, 0.4, 0.5]
    x, y = measured(steps, values)
    assert x.tolist() == [3, 6, 9, 12, 15]
    np.testing.assert_array_equal(y, [0.1, 0.2, NAN, 0.4, 0.5])


# ---------------------------------------------------------------------------- smoothing
def test_smooth_is_the_bias_corrected_ema_and_restarts_after_a_gap():
    # w = 0.5: s0 = 1; s1 = (0.25*1 + 0.5*3) / 0.75 = 7/3; restart at 5; then (0.25*5 + 0.5*7) / 0.75 = 19/3
    np.testing.assert_allclose(smooth([1.0, 3.0, NAN, 5.0, 7.0], 0.5), [1.0, 7 / 3, NAN, 5.0, 19 / 3])
    # w = 0.8 over [0, 10, 10]: 0; (0.2*10) / 0.36 = 5.5556; (0.8*2 + 2) / 0.488 = 7.377
    np.testing.assert_allclose(smooth([0.0, 10.0, 10.0], 0.8), [0.0, 2 / 0.36, 3.6 / 0.488])
    assert smooth([4.0, 4.0, NAN, 4.0], 0.9).tolist()[::3] == [4.0, 4.0]  # a mean: constants stay put
    np.testing.assert_array_equal(smooth([1.0, NAN, 3.0], 0.0), [1.0, NAN, 3.0])


def test_smooth_fades_across_a_short_gap_when_allowed_and_uses_the_step_spacing():
    # max_gap=1: the one-point gap fades the old average by w**2 instead of restarting it:
    # after [1, 3]: a = 1.75, b = 0.75; at 5: a = 0.25*1.75 + 2.5 = 2.9375, b = 0.25*0.75 + 0.5 = 0.6875
    out = smooth([1.0, 3.0, NAN, 5.0, 7.0], 0.5, max_gap=1)
    np.testing.assert_allclose(out, [1.0, 7 / 3, NAN, 2.9375 / 0.6875, (0.5 * 2.9375 + 3.5) / (0.5 * 0.6875 + 0.5)])
    # a gap of 2 points is longer than max_gap=1: restart
    np.testing.assert_allclose(smooth([1.0, NAN, NAN, 5.0], 0.5, max_gap=1), [1.0, NAN, NAN, 5.0])
    # values every 10 steps without NaN: no gap, an ordinary EMA over the points
    np.testing.assert_allclose(smooth([1.0, 3.0, 5.0], 0.5, steps=[0, 10, 20]), [1.0, 7 / 3, 27 / 7])
    # the same points with step 30 absent (spacing 20 = one missing point): restart by default
    np.testing.assert_allclose(smooth([1.0, 3.0, 5.0], 0.5, steps=[10, 20, 40]), [1.0, 7 / 3, 5.0])


def test_smooth_rejects_bad_weights_and_mismatched_steps():
    for weight in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="smoothing weight"):
            smooth([1.0], weight)
    with pytest.raises(ValueError, match="steps has shape"):
        smooth([1.0, 2.0], 0.5, steps=[1])


def test_auto_weight_and_half_life():
    assert auto_weight(12) == 0.6 and auto_weight(10_000) == 0.95
    assert auto_weight(100) == round(1 - 2 / 11, 2)
    assert half_life(0.5) == pytest.approx(1.0) and half_life(0.0) == 0.0
    assert 0.8 ** half_life(0.8) == pytest.approx(0.5)


# ---------------------------------------------------------------------------- figures
def test_run_figure_labels_every_axis_and_draws_the_chance_line(figure):
    fig = figure(run_metrics(), smooth=0.8)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["Training accuracy", "Evaluation during training", "PRM pairwise accuracy"]
    assert "Policy loss" in titles and "KL divergence" in titles and "Response length" in titles
    assert "Policy entropy" not in titles  # the run has no policy/entropy: no empty panel
    for ax in fig.axes:
        assert ax.get_xlabel() == "step"
        assert ax.get_ylabel().strip() and ax.get_title().strip()
    prm = axes_titled(fig, "PRM pairwise accuracy")
    chance = line_labelled(prm, "chance")
    assert list(chance.get_ydata()) == [0.5, 0.5] and chance.get_linestyle() == "--"
    assert prm.get_ylim()[0] <= 0.0 and prm.get_ylim()[1] >= 1.0
    ema = line_labelled(prm, "implicit PRM")
    assert "EMA 0.8" in ema.get_label()
    legend = [t.get_text() for t in prm.get_legend().get_texts()]
    assert "chance" in legend and any("EMA 0.8" in t for t in legend)


def test_lines_break_at_missing_steps_instead_of_bridging(figure):
    fig = figure(run_metrics(), smooth=0.8)
    acc = axes_titled(fig, "Training accuracy")
    line = line_labelled(acc, "sampled, before filter")
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert np.isnan(y[x == 4]).all() and np.isnan(y[x == 8]).all()  # buffer step, step missing from the file
    assert np.isfinite(y[x == 5]).all()
    # the raw per-step dots: faint, unconnected, one per step with a value
    (dots,) = [ln for ln in acc.get_lines() if ln.get_linestyle() == "None" and ln.get_color() == line.get_color()]
    assert dots.get_alpha() == pytest.approx(0.3)
    assert np.isfinite(dots.get_ydata()).sum() == 10
    prm = line_labelled(axes_titled(fig, "PRM pairwise accuracy"), "implicit PRM")
    x, y = np.asarray(prm.get_xdata()), np.asarray(prm.get_ydata())
    assert np.isnan(y[x == 6]).all() and np.isnan(y[x == 10]).all()  # skipped step, null value


def test_evaluations_are_joined_unsmoothed_at_their_cadence(figure):
    fig = figure(run_metrics(), smooth=0.8)
    ev = axes_titled(fig, "Evaluation during training")
    math500 = line_labelled(ev, "math500/acc")
    assert np.asarray(math500.get_xdata()).tolist() == [3, 6, 9, 12]
    np.testing.assert_allclose(math500.get_ydata(), [0.23, 0.26, 0.29, 0.32])  # as measured, not smoothed
    assert list(line_labelled(ev, "aime/pass@4").get_ydata()) == [0.05] * 4


def test_keys_give_one_panel_each_and_unknown_keys_are_refused(figure):
    fig = figure(run_metrics(), keys=["prm/pairwise_acc", "lr"])
    assert [ax.get_title() for ax in fig.axes] == ["PRM pairwise accuracy", "Learning rate"]
    assert line_labelled(fig.axes[0], "chance")  # the known panel keeps its chance line
    with pytest.raises(ValueError, match="no values for policy/entropy.*they have: .*prm/loss"):
        run_figure(run_metrics(), keys=["policy/entropy"])
    with pytest.raises(ValueError, match="none of the plotted metrics"):
        run_figure([{"step": 1, "custom": 1.0}])


def test_plot_run_writes_a_png_from_a_metrics_file(tmp_path):
    run = tmp_path / "myrun"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", run_metrics())
    out = plot_run(run / "metrics.jsonl", tmp_path / "sub" / "p.png")
    assert out == tmp_path / "sub" / "p.png" and out.read_bytes()[:8] == PNG


def test_load_metrics_drops_a_torn_last_line_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n\n{"step": 2.0, "x": 2}\n{"step": 3, "x"')
    with pytest.warns(PlotWarning, match=r"metrics.jsonl:4: left out"):
        records = load_metrics(path)
    assert [r["step"] for r in records] == [1, 2] and isinstance(records[1]["step"], int)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        load_metrics(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no metrics"):
        load_metrics(tmp_path / "empty.jsonl")


def test_save_panels_keeps_the_quickstart_file_names(tmp_path):
    metrics = [{"step": 0, "eval/accuracy": 0.3}, *run_metrics(6)]
    paths = save_panels(metrics, tmp_path, QUICKSTART_PANELS)
    assert [p.name for p in paths] == [
        "eval_accuracy.png",
        "rollout_acc_before_filter.png",
        "prm_pairwise_acc.png",
        "batch_response_length.png",
    ]
    assert all(p.read_bytes()[:8] == PNG for p in paths)


def test_plot_command_writes_plots_png_and_explains_a_missing_run(tmp_path):
    app = typer.Typer()
    app.command()(plot_command)
    write_jsonl(tmp_path / "metrics.jsonl", run_metrics())
    # rich wraps at the terminal width: wide enough for a tmp path (longer under pytest-xdist) on one line
    result = CliRunner().invoke(app, [str(tmp_path)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots.png").read_bytes()[:8] == PNG and "plots.png" in result.output
    result = CliRunner().invoke(app, [str(tmp_path), "-o", str(tmp_path / "o.png"), "-k", "prm/loss", "--smooth", "0"])
    assert result.exit_code == 0, result.output and (tmp_path / "o.png").is_file()
    result = CliRunner().invoke(app, [str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no metrics file" in result.output
    result = CliRunner().invoke(app, [str(tmp_path), "--smooth", "1"])
    assert result.exit_code == 2 and "smoothing weight" in result.output
    from iprime.cli import app as iprime_app

    assert "iprime plot runs/prime" in CliRunner().invoke(iprime_app, ["plot", "--help"]).output


@pytest.mark.usefixtures("one_thread")
def test_a_real_runs_metrics_fill_the_default_panels(tmp_path, tiny_model_dir):
    """Guards against metric renames: the keys the trainer writes are the keys the plots read."""
    from iprime.config import load_config
    from iprime.train.prime import PrimeTrainer

    rows = [{"prompt": f"Compute {i} + {i + 1}.", "answer": str(2 * i + 1)} for i in range(8)]
    cfg = load_config(
        None,
        [
            f"train.out_dir={tmp_path / 'run'}",
            "train.steps=2",
            "train.save_every=0",
            "train.tensorboard=false",
            "train.log_samples_every=0",
            "verify.workers=0",
            "rollout.n=4",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=6",
            "filter.enabled=false",
        ],
    )
    PrimeTrainer(str(tiny_model_dir), cfg, rows, lambda text, answer: float(len(text) % 2 == 0)).train(progress=False)
    metrics = load_metrics(tmp_path / "run" / "metrics.jsonl")
    titles = [p.title for p in default_panels(metrics)]
    for title in ("Training accuracy", "PRM pairwise accuracy", "PRM loss", "Policy loss", "KL divergence"):
        assert title in titles
    assert plot_run(tmp_path / "run" / "metrics.jsonl", tmp_path / "run" / "plots.png").read_bytes()[:8] == PNG
