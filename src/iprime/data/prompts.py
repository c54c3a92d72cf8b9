"""Training prompts: loading rows, checking them, and a resumable stream over them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def load_rows(path: str | Path, *, required: Sequence[str] = ()) -> list[dict]:
    """Rows from a ``.jsonl`` (malformed lines reported with their number) or ``.parquet`` file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {str(p)!r} does not exist")
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from err
        rows = pq.read_table(p).to_pylist()
        check_rows(rows, required, source=str(p))
        return rows
    from .jsonl import read_jsonl

    return read_jsonl(p, required=required)


def check_rows(rows: Sequence[Mapping[str, Any]], required: Sequence[str], *, source: str = "dataset") -> None:
    """Every row is a mapping with the required, non-empty fields; the error names the row."""
    if len(rows) == 0:
        raise ValueError(f"{source} has no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{source} row {i}: expected a mapping, got {type(row).__name__}")
        for key in required:
            if key not in row or row[key] is None or (isinstance(row[key], str) and not row[key].strip()):
                raise ValueError(f"{source} row {i}: missing or empty field {key!r} (has {sorted(row)})")


class PromptStream:
    """Endless, reproducible pass over row indices: a fresh permutation each epoch.

    The state (epoch, position) is all that a checkpoint needs to continue exactly where the
    run stopped; the permutation of epoch ``e`` depends only on ``(seed, e)``.
    """

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True) -> None:
        if num_rows < 1:
            raise ValueError("PromptStream needs at least one row")
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_rows, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            order = self._order(self.epoch)
            chunk = order[self.position : self.position + (k - len(out))]
            out += chunk
            self.position += len(chunk)
            if self.position >= self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "num_rows": self.num_rows}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["num_rows"] != self.num_rows:
            raise ValueError(f"checkpoint was taken over {state['num_rows']} rows, this dataset has {self.num_rows}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
