"""Training prompts: loading rows, checking them, and a resumable stream over them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .sources import DEFAULT_MAX_ROW_BYTES, DataError, MissingField, get_field, read_records, resolve_reference_key


def load_rows(
    path: str | Path, *, required: Sequence[str] = (), max_row_bytes: int = DEFAULT_MAX_ROW_BYTES
) -> list[dict]:
    """Rows of ``path`` through :func:`iprime.data.sources.read_records`: a ``.jsonl``(``.gz``),
    ``.json`` or ``.parquet`` file, a directory of them, or ``hf:NAME[:SPLIT]``.

    Each key of ``required`` (dotted keys reach nested fields; ``"auto"`` is the reference key
    :func:`~iprime.data.sources.resolve_reference_key` picks) must be present and non-empty in
    every row, of any type (a prompt may be a message list); otherwise a
    :class:`~iprime.data.sources.DataError` names the row's file and line (or row). A missing
    file raises ``FileNotFoundError``.
    """
    records = read_records(path, max_row_bytes=max_row_bytes)
    rows = [r.row for r in records]
    _check_required(rows, required, [r.where for r in records])
    return rows


def check_rows(rows: Sequence[Mapping[str, Any]], required: Sequence[str], *, source: str = "dataset") -> None:
    """Every row is a mapping with the required, non-empty fields (dotted keys reach nested
    fields; ``"auto"``: the resolved reference key); the error names the row."""
    if len(rows) == 0:
        raise DataError(f"{source} has no rows")
    _check_required(rows, required, [f"{source} row {i}" for i in range(len(rows))])


def _check_required(rows: Sequence[Any], required: Sequence[str], where: Sequence[str]) -> None:
    for row, w in zip(rows, where):
        if not isinstance(row, Mapping):
            raise DataError(f"{w}: expected a mapping, got {type(row).__name__}", where=w)
    keys = [resolve_reference_key(rows, k) if k == "auto" else k for k in required]
    for row, w in zip(rows, where):
        for key in keys:
            try:
                value = get_field(row, key)
            except MissingField:
                value = None
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(f"{w}: missing or empty field {key!r} (has {sorted(row)})", where=w, field=key)


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
