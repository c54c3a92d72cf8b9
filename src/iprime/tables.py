"""Summaries as tables: the one way every ``iprime`` command prints a dict of results.

``metrics_table({"first_loss": 0.69314718, "steps": 40})`` is a two-column rich table
(``metric``, ``value``) with floats at 4 decimals, so a command's output never shows a raw
Python dict or a 17-digit float, and reads the same on a terminal and in a log file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

__all__ = ["format_cell", "metrics_table", "flatten"]


def format_cell(value: Any, digits: int = 4) -> str:
    """One value as table text: floats with ``digits`` decimals (``nan``/``inf`` spelled out,
    very large or tiny magnitudes in scientific notation), ``None`` as ``-``, lists and tuples
    as comma-separated cells, anything else as ``str``."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10**-digits):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_cell(v, digits) for v in value)
    return str(value)


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of nested mappings, in insertion order."""
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def metrics_table(
    metrics: Mapping[str, Any],
    title: str | None = None,
    *,
    keys: Iterable[str] | None = None,
    digits: int = 4,
) -> Table:
    """A ``metric | value`` table of ``metrics`` (nested mappings flattened to dotted keys).

    ``keys``: only these top-level keys, in this order (a missing one is a ``KeyError``: a
    summary that lost a field is a bug to see, not to hide). Text is never parsed as rich
    markup, so a value like ``[0.5]`` prints as itself."""
    if keys is not None:
        metrics = {k: metrics[k] for k in keys}
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in flatten(metrics):
        table.add_row(Text(name), Text(format_cell(value, digits)))
    return table
