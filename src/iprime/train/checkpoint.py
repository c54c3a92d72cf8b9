"""A training run's checkpoints: what is saved and restored, in which format.

A run's state is its ``models`` and ``optimizers`` by role (``policy``, ``prm``, ``value``) and
its ``meta``: the step, the scheduler, the prompt stream's position, the rollout buffer, the
RNG states (:func:`rng_state`) and the config. :func:`save_run_checkpoint` writes it as one
``state.pt`` (``train.checkpoint_format="torch"``) or as sharded DCP files plus ``meta.pt``
(``"dcp"``, :mod:`iprime.train.checkpoint_dcp`, loadable at any world size);
:func:`load_run_checkpoint` restores the newest good one, falling back to older ones.

The parts below it, each with its own job:

- :mod:`iprime.train.checkpoint_store`: the files: atomic directories, checksummed manifests,
  verification, finding and cleaning checkpoints (no torch);
- :mod:`iprime.train.checkpoint_plain`: what a file may hold (tensors and plain data, read with
  ``torch.load(weights_only=True)``): :func:`to_plain`, :func:`from_plain`;
- :mod:`iprime.train.checkpoint_dcp`: the sharded format.

**Verified on load.** :func:`load_run_checkpoint` tries ``LATEST`` first, then older
checkpoints, newest first: a bad one is reported in a :class:`CheckpointWarning` naming the
file and what is wrong, and the previous good one is loaded. When none is usable it raises
:class:`CheckpointError` listing each.

**Read outside a run.** :func:`find_checkpoint` resolves a run directory, a ``step-*``
directory or a ``state.pt`` to a verified checkpoint without changing anything on disk;
:func:`read_checkpoint` gives its plain data (the run's config under ``"config"``) and
:func:`load_model_weights` its model weights alone, from either format, in one process
(``iprime export``, :mod:`iprime.train.export`).
"""

from __future__ import annotations

import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iprime.train.checkpoint_dcp import load_dcp_checkpoint, load_dcp_weights, save_dcp_checkpoint
from iprime.train.checkpoint_plain import load_torch_file, to_plain
from iprime.train.checkpoint_store import (
    CheckpointError,
    CheckpointWarning,
    checkpoint_kind,
    clean_partial_checkpoints,
    find_checkpoint,
    new_partial_dir,
    publish_checkpoint,
    resume_candidates,
    verify_checkpoint,
    write_file,
    write_manifest,
)
from iprime.train.distributed import DistContext, all_gather_objects, barrier

# a run's checkpoints, and the errors and look-ups that callers (iprime.train.export) read here
__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "checkpoint_kind",
    "find_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "load_run_checkpoint",
    "read_checkpoint",
    "rng_state",
    "save_checkpoint",
    "save_run_checkpoint",
    "set_rng_state",
]


# ---------------------------------------------------------------------------------------------
# RNG state as plain data
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain data: python's is a tuple of ints, numpy's
    ``(name, keys as an int64 tensor, pos, has_gauss, cached_gaussian)``, torch's a uint8 tensor."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (
        str(name),
        torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        int(pos),
        int(has_gauss),
        float(cached),
    )
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (also accepts numpy's own ``get_state()`` tuple)."""
    random.setstate(_python_rng(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])


def _python_rng(state: Any) -> tuple:
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)


# ---------------------------------------------------------------------------------------------
# one state.pt
def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` (plain data after :func:`to_plain`) as ``step-<step>/state.pt`` with its
    manifest, atomically; keep the newest ``keep`` checkpoints. On any failure the partial
    directory is removed and the previous checkpoint is left as it was."""
    root = Path(out_dir) / "checkpoints"
    plain = to_plain(state)  # a type error is raised before anything is written
    tmp = new_partial_dir(root, step)
    try:
        write_file(tmp / "state.pt", lambda fh: torch.save(plain, fh))
        write_manifest(tmp, step)
        return publish_checkpoint(tmp, root / f"step-{step:06d}", keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """``state.pt`` of a checkpoint directory, checked against its manifest (``verify``) and read
    as plain data (``weights_only=True``). A bad file raises :class:`CheckpointError` naming it."""
    directory = Path(path)
    file = directory / "state.pt"
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(file)!r}")
    if verify:
        verify_checkpoint(directory)
    return load_torch_file(file)


# ---------------------------------------------------------------------------------------------
# a training run's checkpoints
def save_run_checkpoint(
    out_dir: str | Path,
    step: int,
    fmt: str,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    dist: DistContext,
    *,
    keep: int = 2,
) -> Path:
    """A training run's state: ``models`` and ``optimizers`` by role (``policy``, ``prm``,
    ``value``) plus ``meta`` (step, scheduler, prompt stream, buffer, RNG, config).

    ``fmt="torch"``: one ``state.pt`` holding ``meta``, each model's state dict under its role
    and each optimizer's under ``<role>_optimizer``. ``fmt="dcp"``: sharded
    ``torch.distributed.checkpoint`` files plus ``meta.pt``, loadable at any world size. Both
    get a ``manifest.json`` of SHA-256 checksums and keep the newest ``keep`` checkpoints."""
    if fmt == "dcp":
        return save_dcp_checkpoint(out_dir, step, models, optimizers, meta, dist, keep=keep)
    state = dict(meta)
    for role, model in models.items():
        state[role], state[f"{role}_optimizer"] = model.state_dict(), optimizers[role].state_dict()
    return save_checkpoint(out_dir, step, state, keep=keep)


def load_run_checkpoint(
    out_dir: str | Path,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    dist: DistContext,
    restore: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Load the newest checkpoint under ``out_dir`` that loads into ``models`` and ``optimizers``
    (and that ``restore(meta)`` accepts: the trainer's scheduler, prompt stream, buffer, RNG);
    returns its ``meta`` (``None`` when there is none). A DCP checkpoint loads at any
    world size, a ``state.pt`` in a single process.

    Each candidate (``LATEST`` first, then older ones, newest first) is verified against its
    manifest, read as plain data and loaded; *any* failure of a candidate (a bad checksum, a
    ``state.pt`` that is a directory, a readable file with the wrong content: a missing role,
    weights of another shape, a missing meta key) is reported in a :class:`CheckpointWarning`
    naming the directory and the reason, and the next older one is tried. The next candidate
    loads every part again, so nothing of a failed one remains. Under torchrun the ranks agree:
    a candidate that failed on any rank is skipped on all. Partial ``.tmp-step-*`` directories
    are removed first. When no checkpoint loads: :class:`CheckpointError` listing each."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    if dist.is_main:
        clean_partial_checkpoints(root)
    barrier(dist)
    candidates = resume_candidates(out_dir)
    if dist.enabled:  # every rank must try the same list (rank 0's view of the directory)
        candidates = [Path(p) for p in all_gather_objects([str(p) for p in candidates], dist)[0]]
    problems: list[str] = []
    for path in candidates:
        meta, problem = _try_candidate(path, models, optimizers, dist, restore)
        if problem is not None:
            problems.append(problem)
            warnings.warn(f"skipping bad checkpoint {path.name}: {problem}", CheckpointWarning, stacklevel=2)
            continue
        if problems:
            warnings.warn(
                f"resumed from {path} instead of the newest checkpoint, which is unusable (see above)",
                CheckpointWarning,
                stacklevel=2,
            )
        return meta
    if problems:
        raise CheckpointError(f"no usable checkpoint in {root}: " + " | ".join(problems))
    return None


def _try_candidate(path: Path, models, optimizers, dist, restore) -> tuple[dict[str, Any] | None, str | None]:
    """``(meta, None)`` when ``path`` loaded (on every rank), else ``(None, reason)``: the first
    failing rank's reason. A state.pt checkpoint under torchrun is not a bad file but a wrong
    launch: that ``ValueError`` is raised."""
    meta, problem = None, None
    try:
        meta = _load_candidate(path, models, optimizers, dist)
        if restore is not None:
            restore(meta)
    except WrongLaunchError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever makes this checkpoint unusable, try the older one
        problem = str(err) if isinstance(err, CheckpointError) else f"{path}: {type(err).__name__}: {err}"
    if dist.enabled:
        problem = next((p for p in all_gather_objects(problem, dist) if p is not None), None)
    return (None, problem) if problem is not None else (meta, None)


class WrongLaunchError(ValueError):
    """A single-process (``state.pt``) checkpoint resumed under torchrun."""


def _load_candidate(path: Path, models, optimizers, dist) -> dict[str, Any]:
    """Load one checkpoint directory; a bad file raises :class:`CheckpointError`, bad content
    whatever ``load_state_dict`` or a missing key raises."""
    if checkpoint_kind(path) == "dcp":
        return load_dcp_checkpoint(path, models, optimizers, dist=dist)
    if not (path / "state.pt").is_file():
        what = "a directory" if (path / "state.pt").is_dir() else "missing"
        raise CheckpointError(f"{path / 'state.pt'}: {what}, not a checkpoint file (and no DCP files)")
    if dist.enabled:
        raise WrongLaunchError(
            f"{path} is a single-process (state.pt) checkpoint; resume it with one process, "
            'or write it with train.checkpoint_format="dcp" to resume at another world size'
        )
    state = load_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / 'state.pt'}: holds a {type(state).__name__}, not a checkpoint's dict")
    for role, model in models.items():
        if not isinstance(state.get(role), dict):
            raise CheckpointError(f"{path / 'state.pt'}: holds no {role!r} model (saved roles: {_saved_roles(state)})")
        model.load_state_dict(state[role])
        # "optimizer": the policy's optimizer in checkpoints written before the roles were uniform
        optimizers[role].load_state_dict(state.get(f"{role}_optimizer", state.get("optimizer")))
    return state


def read_checkpoint(directory: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The plain data of one checkpoint directory, checked against its manifest (``verify``).

    ``state.pt``: the whole state (the run's ``meta`` keys, each role's model state dict under
    its role and its optimizer's under ``<role>_optimizer``). DCP: ``meta.pt`` only; the weights
    stay in the shards until :func:`load_model_weights`. Either way ``["config"]`` is the run's
    config as plain data and ``["step"]`` its step."""
    d = Path(directory)
    if checkpoint_kind(d) == "torch":
        return load_checkpoint(d, verify=verify)
    if verify:
        verify_checkpoint(d)
    return load_torch_file(d / "meta.pt")


def load_model_weights(
    directory: str | Path, models: dict[str, torch.nn.Module], state: dict[str, Any] | None = None
) -> None:
    """Load each role's saved weights into ``models`` (``{"policy": module, ...}``), no optimizer
    state, in one process. ``state``: what :func:`read_checkpoint` returned for a ``state.pt``
    checkpoint (saves reading it twice). A role the checkpoint lacks is a :class:`CheckpointError`;
    weights that do not fit the module are ``load_state_dict``'s ``RuntimeError``."""
    d = Path(directory)
    if checkpoint_kind(d) == "dcp":
        load_dcp_weights(d, models)
        return
    state = read_checkpoint(d) if state is None else state
    for role, model in models.items():
        if not isinstance(state.get(role), dict):
            raise CheckpointError(f"{d / 'state.pt'}: holds no {role!r} model (saved roles: {_saved_roles(state)})")
        model.load_state_dict(state[role])


def _saved_roles(state: dict[str, Any]) -> str:
    return ", ".join(sorted(k for k in state if f"{k}_optimizer" in state)) or "none"
