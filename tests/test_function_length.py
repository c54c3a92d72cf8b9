"""The trainer reads as the algorithm: no function in ``iprime.train`` runs over
:data:`MAX_LINES` lines (issue 21), so each stage is a few named steps a reader can hold at once.

A function's length is its lines from ``def`` to its last line (decorators excluded, its
docstring included), read with :mod:`ast`; a nested function counts within its parent and on its
own. Nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "src" / "iprime" / "train"
MAX_LINES = 60


def function_lengths(source: str, where: str) -> list[tuple[int, str]]:
    """``(lines, "where:line name")`` of every function and method in ``source``."""
    return [
        (node.end_lineno - node.lineno + 1, f"{where}:{node.lineno} {node.name}")
        for node in ast.walk(ast.parse(source, where))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def too_long(root: Path, limit: int) -> list[str]:
    """The functions under ``root`` over ``limit`` lines, longest first: ``"N lines: file:line name"``."""
    lengths = []
    for path in sorted(root.rglob("*.py")):
        lengths += function_lengths(path.read_text(encoding="utf-8"), str(path.relative_to(root.parents[1])))
    return [f"{n} lines: {where}" for n, where in sorted(lengths, reverse=True) if n > limit]


def test_no_function_in_the_trainer_is_over_60_lines():
    offenders = too_long(TRAIN, MAX_LINES)
    assert not offenders, f"functions in iprime.train over {MAX_LINES} lines; split them into named steps:\n" + (
        "\n".join(offenders)
    )


def test_the_length_counts_from_def_to_the_last_line():
    source = "@decorator\ndef f(x):\n    '''doc'''\n\n    def g():\n        return 1\n\n    return g\n"
    assert sorted(function_lengths(source, "m.py")) == [(2, "m.py:5 g"), (7, "m.py:2 f")]
