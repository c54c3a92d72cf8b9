"""Atomic checkpoints: a run killed at any moment leaves the previous checkpoint intact.

Layout: ``<out>/checkpoints/step-000010/state.pt`` plus ``<out>/checkpoints/LATEST`` naming the
newest complete one. A checkpoint is written into a temporary directory and renamed into place;
``LATEST`` is replaced with ``os.replace``, which is atomic on POSIX.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    return publish_checkpoint(tmp, final, keep)


def publish_checkpoint(tmp: Path, final: Path, keep: int = 2) -> Path:
    """Rename a complete checkpoint directory into place, point ``LATEST`` at it (both with
    ``os.replace``, atomic on POSIX) and keep only the newest ``keep`` checkpoints."""
    root = final.parent
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".LATEST.{os.getpid()}"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "LATEST")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    marker = Path(out_dir) / "checkpoints" / "LATEST"
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if (path / "state.pt").is_file() else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "state.pt"
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(file)!r}")
    return torch.load(file, map_location="cpu", weights_only=False)
