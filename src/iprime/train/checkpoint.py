"""Atomic checkpoints: a run killed at any moment leaves the previous checkpoint intact.

Layout: ``<out>/checkpoints/step-000010/state.pt`` (or DCP shards plus ``meta.pt`` under torchrun)
and ``<out>/checkpoints/LATEST`` naming the newest complete one. A checkpoint is written into a
temporary directory and renamed into place;
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "state.pt"
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(file)!r}")
    return torch.load(file, map_location="cpu", weights_only=False)


def save_run_checkpoint(
    out_dir: str | Path,
    step: int,
    fmt: str,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    dist,
) -> Path:
    """A training run's state: ``models`` and ``optimizers`` by role (``policy``, ``prm``,
    ``value``) plus ``meta`` (step, scheduler, prompt stream, buffer, RNG, config).

    ``fmt="torch"``: one ``state.pt`` holding ``meta``, each model's state dict under its role
    and each optimizer's under ``<role>_optimizer``. ``fmt="dcp"``: sharded
    ``torch.distributed.checkpoint`` files plus ``meta.pt``, loadable at any world size."""
    from iprime.train import distributed as D

    if fmt == "dcp":
        return D.save_dcp_checkpoint(out_dir, step, models, optimizers, meta, dist)
    state = dict(meta)
    for role, model in models.items():
        state[role], state[f"{role}_optimizer"] = model.state_dict(), optimizers[role].state_dict()
    return save_checkpoint(out_dir, step, state)


def load_run_checkpoint(
    out_dir: str | Path, models: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer], dist
) -> dict[str, Any] | None:
    """Load the newest complete checkpoint under ``out_dir`` into ``models`` and ``optimizers``;
    returns its ``meta`` (``None`` when there is none). A DCP checkpoint loads at any world size,
    a ``state.pt`` in a single process."""
    from iprime.train import distributed as D

    marker = Path(out_dir) / "checkpoints" / "LATEST"
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    if D.is_dcp_checkpoint(path):
        return D.load_dcp_checkpoint(path, models, optimizers)
    if not (path / "state.pt").is_file():
        return None
    if dist.enabled:
        raise ValueError(
            f"{path} is a single-process (state.pt) checkpoint; resume it with one process, "
            'or write it with train.checkpoint_format="dcp" to resume at another world size'
        )
    state = load_checkpoint(path)
    for role, model in models.items():
        model.load_state_dict(state[role])
        # "optimizer": the policy's optimizer in checkpoints written before the roles were uniform
        optimizers[role].load_state_dict(state.get(f"{role}_optimizer", state.get("optimizer")))
    return state
