"""docs/fidelity.md and the Eurus recipe agree: every ``key=value`` the table's **recipe** column
names is what configs/eurus2_7b_prime.yaml sets, and every row that keeps a difference says why."""

from __future__ import annotations

import re
from functools import reduce
from pathlib import Path

import pytest
import yaml

from iprime.config import load_config

ROOT = Path(__file__).resolve().parents[1]
FIDELITY = ROOT / "docs" / "fidelity.md"
EURUS = ROOT / "configs" / "eurus2_7b_prime.yaml"
FLAG = re.compile(r"`([a-z_]+\.[a-z_.]+)=([^`]+)`")


def table_rows(text: str) -> list[dict[str, str]]:
    """Every row of every Markdown table, as ``{header: cell}``."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if header is None:
            header = cells
        elif not set(line) <= set("|- "):
            rows.append(dict(zip(header, cells, strict=False)))
    return rows


def recipe_flags(text: str) -> list[tuple[str, str, str]]:
    """``(aspect, key, value)`` for every ``key=value`` in a **recipe** cell."""
    return [(row["aspect"], k, v) for row in table_rows(text) for k, v in FLAG.findall(row.get("recipe", ""))]


def test_table_rows_and_flags_are_read_as_written():
    text = "| aspect | recipe | decision |\n| --- | --- | --- |\n| a | `prm.x=1`, `algo.y=rank` | kept |\n\n| b |\n"
    assert recipe_flags(text) == [("a", "prm.x", "1"), ("a", "algo.y", "rank")]


FLAGS = recipe_flags(FIDELITY.read_text())


def test_the_table_names_the_recipes_flags():
    # the options added for the original's behaviour must all be in the table
    keys = {k for _, k, _ in FLAGS}
    wanted = {
        "prm.mini_batch_size",
        "optim.agg",
        "filter.drop_truncated",
        "rollout.buffer",
        "algo.batch_norm_scope",
        "verify.code_reward",
        "verify.code_test_timeout_s",
        "verify.timeout_s",
        "verify.code_prelude",
    }
    assert wanted <= keys, sorted(wanted - keys)


@pytest.mark.parametrize(("aspect", "key", "value"), FLAGS, ids=[f"{k}={v}" for _, k, v in FLAGS])
def test_the_recipe_sets_what_the_table_says(aspect, key, value):
    cfg = load_config(EURUS, [])
    actual = reduce(getattr, key.split("."), cfg)
    assert actual == yaml.safe_load(value), f"{aspect}: docs/fidelity.md says {key}={value}, the recipe has {actual!r}"


def test_every_row_says_what_was_decided():
    rows = [row for row in table_rows(FIDELITY.read_text()) if "decision" in row]
    assert len(rows) >= 30
    assert [row["aspect"] for row in rows if row["decision"].strip("—- .") == ""] == []
