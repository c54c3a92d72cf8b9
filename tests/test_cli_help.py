"""``--help`` explains itself: every command ends with examples, no help text is eaten as rich
markup, flags read as flags; ``--version``; third-party progress bars are silenced; the shared
summary table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import click
import pytest
import typer
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from iprime import __version__
from iprime.cli import app, version_text
from iprime.config_show import type_name
from iprime.tables import format_cell, metrics_table

ENV = {"COLUMNS": "200"}


def command_paths(group: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``group`` as its words (``("prm", "score")``)."""
    paths = [prefix]
    for name, sub in getattr(group, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


ROOT = typer.main.get_command(app)
PATHS = command_paths(ROOT)


def test_every_command_is_covered():
    assert {("train",), ("sft",), ("eval",), ("prm", "score"), ("prm", "rerank"), ("config", "show")} <= set(PATHS)
    assert ("data", "check") in PATHS and () in PATHS and len(PATHS) >= 14


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "iprime")
def test_every_help_ends_with_examples_and_shows_flags_as_flags(path):
    result = CliRunner().invoke(app, [*path, "--help"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output, f"no Examples section in iprime {' '.join(path)} --help"
    after = [line.strip(" │") for line in result.output.split("Examples:", 1)[1].splitlines()]
    first = next(line for line in after if line)
    assert first.startswith("iprime"), first
    if path:  # the first example runs this very command
        assert first.startswith(" ".join(("iprime", *path))), first
    assert "<bool>" not in result.output  # --help, --resume, --changed ... take no value


def _help_texts(cmd: click.Command, where: str = "iprime"):
    """``(where, text)`` for every help string, epilog and option help of the tree."""
    for attr in ("help", "epilog"):
        if getattr(cmd, attr, None):
            yield f"{where} ({attr})", getattr(cmd, attr)
    for param in cmd.params:
        if getattr(param, "help", None):
            yield f"{where} {param.opts[0]}", param.help
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _help_texts(sub, f"{where} {name}")


def test_no_help_text_is_eaten_as_rich_markup():
    """typer renders help as rich markup: ``[dotted.key=value ...]`` would vanish as a style tag.
    Every text must come out as written, only its ``\\[`` escapes resolved."""
    texts = list(_help_texts(ROOT))
    assert len(texts) > 40
    for where, text in texts:
        assert Text.from_markup(text).plain == text.replace("\\[", "["), where


def test_train_help_shows_the_overrides_syntax():
    result = CliRunner().invoke(app, ["train", "--help"], env=ENV)
    assert "iprime train --config FILE.yaml [dotted.key=value ...]" in result.output
    assert "[OPTIONS] [KEY=VALUE]..." in result.output and "--overwrite" in result.output
    result = CliRunner().invoke(app, ["--help"], env=ENV)
    assert "[dotted.key=value ...]" in result.output  # the commands list too


def test_flags_have_no_type_but_options_do():
    result = CliRunner().invoke(app, ["config", "show", "--help"], env=ENV)
    options = result.output.split("Examples:")[0].splitlines()
    (line,) = [line for line in options if "--changed" in line]
    assert "<" not in line and "only the keys" in line
    (line,) = [line for line in options if "--width" in line]
    assert "<int>" in line or "INTEGER" in line


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == version_text()
    assert re.fullmatch(
        rf"iprime {re.escape(__version__)} \(torch \S+, transformers \S+, python 3\.\d+\.\d+\S*\)", version_text()
    )


def test_config_show_names_booleans_as_yaml_writes_them():
    assert type_name(bool) == "true or false" and type_name(bool | None) == "true or false or null"
    assert type_name(int) == "int"


# ------------------------------------------------------------------------------ progress bars
@pytest.fixture
def hf_bars_on(monkeypatch):
    """transformers' and huggingface_hub's bars on, as in a fresh process; restored after."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    before = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.enable_progress_bar()
    enable_progress_bars()
    yield
    (hf_logging.enable_progress_bar if before[0] else hf_logging.disable_progress_bar)()
    (disable_progress_bars if before[1] else enable_progress_bars)()


def test_commands_silence_the_loading_weights_bar(hf_bars_on, tiny_model_dir, tmp_path, capsys):
    from iprime.models import load_model

    load_model(tiny_model_dir)  # without iprime's command line the bar is drawn
    assert "Loading weights" in capsys.readouterr().err

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "1 + 1 =", "response": "2"}) + "\n")
    args = ["prm", "score", "--prm", tiny_model_dir, "--ref", tiny_model_dir, "--data", data, "--out", tmp_path / "o"]
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.output and "Writing model shards" not in result.output
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_an_explicit_wish_for_bars_is_kept(hf_bars_on, monkeypatch):
    from transformers.utils import logging as hf_logging

    from iprime.quiet import silence_third_party_progress

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    assert silence_third_party_progress() is False and hf_logging.is_progress_bar_enabled()


# ------------------------------------------------------------------------------- tables
def test_metrics_table_rounds_floats_and_flattens():
    table = metrics_table(
        {"final_loss": 0.123456789, "steps": 40, "lr": 1e-5, "ok": True, "none": None, "cfg": {"beta": 0.05}},
        "summary",
    )
    console = Console(width=100, record=True)
    console.print(table)
    text = console.export_text()
    assert "0.1235" in text and "40" in text and "1.000e-05" in text and "true" in text and "cfg.beta" in text
    assert "0.123456789" not in text
    assert format_cell(float("nan")) == "nan" and format_cell([0.5, 2]) == "0.5000, 2" and format_cell(None) == "-"
    with pytest.raises(KeyError):
        metrics_table({"a": 1}, keys=["b"])
    console = Console(width=60, record=True)
    console.print(metrics_table({"picks": "[bold]x"}))  # values are text, never markup
    assert "[bold]x" in console.export_text()


def test_the_command_line_loads_without_torch():
    """``iprime --help`` must stay instant: no command module may import torch, transformers or
    matplotlib at import time (the eval / train / prm packages export their names lazily)."""
    heavy = "('torch', 'transformers', 'matplotlib')"
    code = f"import sys, iprime.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
