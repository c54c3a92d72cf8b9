"""JSON-lines I/O with errors that point at the offending line.

A dataset with one bad row out of 50,000 should fail loudly at load time with
``path:line``, not silently train on a partial file or die mid-run with a ``KeyError``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


class JsonlError(ValueError):
    """A malformed jsonl row; ``path`` and 1-based ``line`` say where."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}")


def read_jsonl(path: str | Path, *, required: Sequence[str] = ()) -> list[dict]:
    """Rows of a jsonl file; blank lines are skipped.

    Every row must be a JSON object holding each key of ``required`` as a string; otherwise a
    :class:`JsonlError` names the file and line number.
    """
    path = Path(path)
    rows = []
    for lineno, row in iter_jsonl(path):
        for key in required:
            if key not in row:
                raise JsonlError(path, lineno, f"missing field {key!r} (has {sorted(row)})")
            if not isinstance(row[key], str):
                raise JsonlError(path, lineno, f"field {key!r} must be a string, got {type(row[key]).__name__}")
        rows.append(row)
    return rows


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a jsonl file (``.gz`` read
    transparently); a line that is not a JSON object raises :class:`JsonlError` naming it."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise JsonlError(path, lineno, f"expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def write_jsonl(path: str | Path, rows: Iterable[dict], *, fields: Sequence[str] | None = None) -> Path:
    """Write ``rows`` one JSON object per line (only ``fields`` if given); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            if fields is not None:
                missing = [k for k in fields if k not in row]
                if missing:
                    raise ValueError(f"row {i} lacks field(s) {missing}")
                row = {k: row[k] for k in fields}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_sft_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """SFT data file: one ``{"prompt", "response"}`` object per line."""
    return write_jsonl(path, rows, fields=("prompt", "response"))
