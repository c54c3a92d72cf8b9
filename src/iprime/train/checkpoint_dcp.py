"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP), loadable at any world size.

A DCP checkpoint directory holds every rank's shards (``__<rank>_<n>.distcp``), DCP's
``.metadata``, ``meta.pt`` (the run's step, scheduler, stream, buffer, RNG and config as plain
data) and ``manifest.json``; it is written and published like a ``state.pt`` checkpoint
(:mod:`iprime.train.checkpoint_store`). Under torchrun every function here is collective: call
it on every rank, in the same order; a failure on one rank is raised on all of them.

``torch.distributed.checkpoint`` is imported inside the functions that use it: it takes about
a second to import, only runs that write or read DCP checkpoints need it, and torch builds
without distributed support lack it.
"""

from __future__ import annotations

import errno
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iprime.train.checkpoint_plain import load_torch_file, to_plain
from iprime.train.checkpoint_store import (
    CheckpointError,
    file_digests,
    manifest_files,
    new_partial_dir,
    publish_checkpoint,
    verify_checkpoint,
    verify_files,
    write_error,
    write_file,
    write_manifest,
)
from iprime.train.distributed import DistContext, all_gather_objects, reshard_all


def _dcp_state(models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    state: dict[str, Any] = {}
    for name, model in models.items():
        reshard_all(model)
        msd, osd = get_state_dict(model, optimizers[name])
        state[name], state[f"{name}_optimizer"] = msd, osd
    return state


def _on_all_ranks(ctx: DistContext, fn, *args):
    """``fn(*args)`` on this rank; if it failed on any rank, every rank raises (its own error, or
    an ``OSError`` quoting the failing rank's), so no rank waits in a collective that never comes."""
    result, error = None, None
    try:
        result = fn(*args)
    except (OSError, RuntimeError, ValueError, TypeError) as err:
        error = err
    if not ctx.enabled:
        if error is not None:
            raise error
        return result
    failures = [f for f in all_gather_objects(None if error is None else (ctx.rank, str(error)), ctx) if f]
    if error is not None:
        raise error
    if failures:
        rank, message = failures[0]
        code = errno.ENOSPC if "No space left on device" in message else errno.EIO
        raise OSError(code, f"checkpoint failed on rank {rank}: {message}")
    return result


def _own_shards(tmp: Path, rank: int) -> list[str]:
    """The shard files this rank wrote (DCP's ``FileSystemWriter`` names them ``__<rank>_<n>.distcp``)."""
    return sorted(p.name for p in tmp.glob(f"__{rank}_*.distcp"))


def save_dcp_checkpoint(
    out_dir: str | Path,
    step: int,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    ctx: DistContext,
    keep: int = 2,
) -> Path:
    """Sharded checkpoint with ``torch.distributed.checkpoint``: every rank writes its shards,
    rank 0 writes ``meta.pt`` (step, scheduler, stream, buffer, RNG, config; plain data, see
    :func:`~iprime.train.checkpoint_plain.to_plain`) and ``manifest.json`` (SHA-256 of every file; each
    rank hashes its own shards). Written into ``.tmp-step-*`` and renamed into place by rank 0,
    then ``LATEST`` is replaced, so a crash leaves the previous checkpoint intact; leftovers of
    an interrupted save are removed first. A full disk raises ``OSError(ENOSPC)`` naming the
    path on every rank. Loadable at any world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    root = Path(out_dir) / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}-dcp"

    def prepare() -> Any:  # rank 0: meta as plain data (a type error before anything is written), the directory
        if not ctx.is_main:
            return None
        plain = to_plain(meta)
        new_partial_dir(root, step, "dcp")
        return plain

    def write_shards() -> dict[str, dict[str, Any]]:
        try:
            dcp.save(_dcp_state(models, optimizers), checkpoint_id=str(tmp))
        except (OSError, RuntimeError, CheckpointException) as err:
            raise write_error(err, tmp, "checkpoint shards") from err
        return file_digests(tmp, _own_shards(tmp, ctx.rank))

    def finish(digests: dict[str, dict[str, Any]]) -> Path:
        write_file(tmp / "meta.pt", lambda fh: torch.save(plain_meta, fh))
        write_manifest(tmp, step, digests)
        return publish_checkpoint(tmp, final, keep)

    try:
        plain_meta = _on_all_ranks(ctx, prepare)
        own = _on_all_ranks(ctx, write_shards)
        digests = {name: d for part in all_gather_objects(own, ctx) for name, d in part.items()}
        _on_all_ranks(ctx, lambda: ctx.is_main and finish(digests))
    except BaseException:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def is_dcp_checkpoint(path: str | Path) -> bool:
    return (Path(path) / ".metadata").is_file() and (Path(path) / "meta.pt").is_file()


def verify_on_ranks(directory: str | Path, dist: DistContext | None) -> None:
    """:func:`~iprime.train.checkpoint_store.verify_checkpoint` with the hashing shared: under
    torchrun (``dist`` enabled) each rank hashes every ``world_size``-th file and all ranks get
    the same answer (the same :class:`CheckpointError`, or none)."""
    if dist is None or not dist.enabled:
        verify_checkpoint(directory)
        return
    d = Path(directory)
    files = manifest_files(d)
    share = {n: files[n] for n in sorted(files)[dist.rank :: dist.world_size]}
    problems = sorted(p for part in all_gather_objects(verify_files(d, share), dist) for p in part)
    if problems:
        raise CheckpointError("; ".join(problems))


def load_dcp_checkpoint(
    path: str | Path,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    *,
    dist: DistContext | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Load shards (resharded to this world size, FSDP or plain modules) into ``models`` and
    ``optimizers``; returns ``meta.pt``. With ``verify``, every file is first checked against
    ``manifest.json`` (the ranks of ``dist`` share the hashing) and ``meta.pt`` is read as plain
    data: a bad file raises :class:`~iprime.train.checkpoint_store.CheckpointError` naming it before
    anything is loaded."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if verify:
        verify_on_ranks(path, dist)
    meta = load_torch_file(Path(path) / "meta.pt")
    state = _dcp_state(models, optimizers)
    dcp.load(state, checkpoint_id=str(path))
    for name, model in models.items():
        set_state_dict(
            model, optimizers[name], model_state_dict=state[name], optim_state_dict=state[f"{name}_optimizer"]
        )
    return meta


def load_dcp_weights(directory: Path, models: dict[str, torch.nn.Module]) -> None:
    """Model state dicts from DCP shards, read in this process without a process group (DCP
    reshards to whatever asks: here one process holding full tensors)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    saved = {key.split(".", 1)[0] for key in dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata}
    for role in models:
        if role not in saved:
            roles = ", ".join(sorted(r for r in saved if not r.endswith("_optimizer"))) or "none"
            raise CheckpointError(f"{directory}: holds no {role!r} model (saved roles: {roles})")
    state = {role: get_model_state_dict(model) for role, model in models.items()}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... assuming ... a single process": it is
        warnings.filterwarnings("ignore", message=".*torch.distributed.*single process", category=UserWarning)
        dcp.load(state, checkpoint_id=str(directory))
    for role, model in models.items():
        set_model_state_dict(model, state[role])
