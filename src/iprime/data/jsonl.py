"""JSON-lines I/O with errors that point at the offending line.

A dataset with one bad row out of 50,000 should fail loudly at load time with
``path:line``, not silently train on a partial file or die mid-run with a ``KeyError``.
Reading goes through :func:`iprime.data.sources.iter_jsonl_lines` (the one jsonl reader:
binary, line by line, with a byte cap per line).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .sources import DEFAULT_MAX_ROW_BYTES, DataError, iter_jsonl_lines


class JsonlError(DataError):
    """A malformed jsonl row; ``path`` and 1-based ``line`` say where (a :class:`DataError`,
    hence a ``ValueError``)."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        super().__init__(
            f"{path}:{line}: {message}", where=f"{path} line {line}", problem=message, path=str(path), line=line
        )


def read_jsonl(
    path: str | Path, *, required: Sequence[str] = (), max_row_bytes: int = DEFAULT_MAX_ROW_BYTES
) -> list[dict]:
    """Rows of a jsonl file; blank lines are skipped.

    Every row must be a JSON object holding each key of ``required`` as a string; otherwise a
    :class:`JsonlError` names the file and line number. A line over ``max_row_bytes`` bytes,
    or one that is not UTF-8, is a :class:`JsonlError` too.
    """
    path = Path(path)
    rows = []
    for lineno, row in iter_jsonl(path, max_row_bytes=max_row_bytes):
        for key in required:
            if key not in row:
                raise JsonlError(path, lineno, f"missing field {key!r} (has {sorted(row)})")
            if not isinstance(row[key], str):
                raise JsonlError(path, lineno, f"field {key!r} must be a string, got {type(row[key]).__name__}")
        rows.append(row)
    return rows


def iter_jsonl(path: str | Path, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a jsonl file (``.gz`` read
    transparently); a line that is not a JSON object (or not UTF-8, or over ``max_row_bytes``)
    raises :class:`JsonlError` naming it. A missing file raises ``FileNotFoundError``."""
    path = Path(path)
    lines = iter_jsonl_lines(path, max_row_bytes=max_row_bytes)
    while True:
        try:
            lineno, row = next(lines)
        except StopIteration:
            return
        except DataError as err:
            if err.line is None:
                raise
            raise JsonlError(path, err.line, err.problem or str(err)) from None
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
