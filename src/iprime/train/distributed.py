"""Data parallelism for the PRIME trainer: process group, FSDP2 wrapping, collectives, DCP.

Launch with ``torchrun --nproc_per_node=N -m iprime train --config run.yaml``. Every rank holds
the same prompt stream and rollout buffer (replicated, so a checkpoint does not depend on the
world size); each round the prompts are split into ``N`` contiguous shares, each rank samples
and verifies its share, and the rollouts are all-gathered in rank order, so every rank sees
the same global pool, makes the same filter decision and trains on a contiguous, equal share
of the kept groups (groups never span ranks). The models are sharded with FSDP2
(``fully_shard`` per decoder layer, then a root that runs :func:`response_logprobs`).

In one process (no ``WORLD_SIZE`` > 1 in the environment) every helper here is a no-op: the
trainer runs one code path for any world size.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from iprime.models.logprobs import response_logprobs


@dataclass
class DistContext:
    """Where this process sits. ``world_size == 1``: a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else a 1-process context.

    Backend: NCCL for a CUDA ``device``, gloo on the CPU. On CUDA each rank uses
    ``cuda:LOCAL_RANK``. Returns the context and the device this rank computes on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank), dev


# ------------------------------------------------------------------------------ collectives
def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum`` | ``max`` | ``min``); a no-op without a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def group_shares(n_groups: int, world_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each rank's contiguous share of ``n_groups`` (sizes differ by <= 1)."""
    base, extra = divmod(n_groups, world_size)
    out, start = [], 0
    for r in range(world_size):
        end = start + base + (1 if r < extra else 0)
        out.append((start, end))
        start = end
    return out


# ------------------------------------------------------------------------------ FSDP2
class LogprobModule(nn.Module):
    """FSDP root whose forward is :func:`response_logprobs` of the wrapped causal LM.

    ``response_logprobs`` calls the decoder body and the lm_head separately (to chunk the
    head), which would bypass the hooks of an FSDP root placed on the causal LM itself; making
    this wrapper the root keeps the root's parameters (embeddings, final norm, lm_head)
    gathered for the whole forward and reduced after backward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids, attention_mask, response_len: int, temperature: float = 1.0, return_entropy: bool = False
    ):
        out = response_logprobs(
            self.model, input_ids, attention_mask, response_len, temperature=temperature, return_entropy=return_entropy
        )
        # fresh tensors, not views: FSDP's pre-backward hook on a view is lost by in-place ops
        return tuple(x.clone() for x in out) if return_entropy else out.clone()


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names |= set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        layers = list(base.get_decoder().layers)
    return layers


def shard_model(model: nn.Module, device: torch.device) -> LogprobModule:
    """``fully_shard`` each decoder layer, then the :class:`LogprobModule` root. Returns the root;
    ``model`` itself stays usable (generation, state dicts) and now holds DTensor shards.

    One tiny forward through the root runs FSDP's lazy initialisation, so a later plain forward
    of ``model`` (generation) finds the root already set up. Collective: call on every rank, in
    the same order."""
    from torch.distributed.fsdp import fully_shard

    for layer in _decoder_layers(model):
        fully_shard(layer)
    root = LogprobModule(model)
    fully_shard(root)
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    with torch.no_grad():
        root(ids, torch.ones_like(ids), 1)
    reshard_all(root)  # the root keeps its gathered params after a forward; optimizers need the shards
    return root


def reshard_all(root: nn.Module | None) -> None:
    """Free every gathered parameter of an FSDP tree. A root stays unsharded after a forward
    (it expects the backward); after a no-grad forward nothing would reshard it, and
    ``model.parameters()`` / ``state_dict()`` would then see the gathered, soon stale copies."""
    for m in fsdp_modules(root) if root is not None else []:
        m.reshard()


def fsdp_modules(module: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_params(root: nn.Module | None):
    """Gather every FSDP unit's full parameters for the duration (generation runs the plain HF
    forward many times; they stay gathered instead of being all-gathered per decode step)."""
    mods = fsdp_modules(root) if root is not None else []
    for m in mods:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True)


def to_float(x: torch.Tensor | float) -> float:
    """A (possibly DTensor) scalar as a Python float (``clip_grad_norm_`` of FSDP2 params gives a DTensor)."""
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)


# ------------------------------------------------------------------------------ DCP checkpoints
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
    import errno

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
    :func:`iprime.train.checkpoint.to_plain`) and ``manifest.json`` (SHA-256 of every file; each
    rank hashes its own shards). Written into ``.tmp-step-*`` and renamed into place by rank 0,
    then ``LATEST`` is replaced, so a crash leaves the previous checkpoint intact; leftovers of
    an interrupted save are removed first. A full disk raises ``OSError(ENOSPC)`` naming the
    path on every rank. Loadable at any world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from iprime.train import checkpoint as C

    root = Path(out_dir) / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}-dcp"

    def prepare() -> Any:  # rank 0: meta as plain data (a type error before anything is written), the directory
        if not ctx.is_main:
            return None
        plain = C.to_plain(meta)
        C.new_partial_dir(root, step, "dcp")
        return plain

    def write_shards() -> dict[str, dict[str, Any]]:
        try:
            dcp.save(_dcp_state(models, optimizers), checkpoint_id=str(tmp))
        except (OSError, RuntimeError, CheckpointException) as err:
            raise C.write_error(err, tmp, "checkpoint shards") from err
        return C.file_digests(tmp, _own_shards(tmp, ctx.rank))

    def finish(digests: dict[str, dict[str, Any]]) -> Path:
        C.write_file(tmp / "meta.pt", lambda fh: torch.save(plain_meta, fh))
        C.write_manifest(tmp, step, digests)
        return C.publish_checkpoint(tmp, final, keep)

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
    data: a bad file raises :class:`~iprime.train.checkpoint.CheckpointError` naming it before
    anything is loaded."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from iprime.train import checkpoint as C

    if verify:
        C.verify_checkpoint(path, dist)
    meta = C.load_torch_file(Path(path) / "meta.pt")
    state = _dcp_state(models, optimizers)
    dcp.load(state, checkpoint_id=str(path))
    for name, model in models.items():
        set_state_dict(
            model, optimizers[name], model_state_dict=state[name], optim_state_dict=state[f"{name}_optimizer"]
        )
    return meta


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on every rank, on the CPU (FSDP or plain model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not fsdp_modules(model):
        return model.state_dict()
    reshard_all(model)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def all_gather_rollouts(batch, starts: list[int], ctx: DistContext, device: torch.device):
    """Every rank's share of a round, concatenated in rank order (``batch`` itself in one process).

    ``starts[r]`` is the offset of rank r's first prompt in the round: each share's
    ``prompt_index`` is shifted by it. A rank with no prompts passes ``None``."""
    if not ctx.enabled:
        return batch
    from iprime.rollout import RolloutBatch

    parts = all_gather_objects(batch.to("cpu") if batch is not None else None, ctx)
    for part, start in zip(parts, starts):
        if part is not None:
            part.prompt_index = part.prompt_index + start
    return RolloutBatch.cat([p for p in parts if p is not None]).to(device)


# ------------------------------------------------------------------------------ run setup
def check_config(cfg, ctx: DistContext) -> None:
    """What a data-parallel run needs of the config (nothing in one process)."""
    from iprime.algo import get_advantage_estimator

    W = ctx.world_size
    if cfg.rollout.prompts_per_step % W:
        raise ValueError(
            f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be a multiple of the "
            f"world size {W}: each rank trains on an equal share of whole groups"
        )
    spec = get_advantage_estimator(cfg.algo.estimator)
    if W > 1 and not spec.data_parallel:
        raise ValueError(
            f'algo.estimator="{spec.name}" is single-process only (its value model is not sharded); '
            "use an estimator without a value model under torchrun"
        )


def checkpoint_format(fmt: str, ctx: DistContext) -> str:
    """``train.checkpoint_format`` resolved: ``auto`` is ``dcp`` under torchrun, else ``torch``."""
    if fmt == "auto":
        return "dcp" if ctx.enabled else "torch"
    if ctx.enabled and fmt != "dcp":
        raise ValueError('train.checkpoint_format="torch" holds full tensors; under torchrun use "dcp" (or "auto")')
    return fmt


def shard_models(models: list[nn.Module | None], ctx: DistContext, device: torch.device) -> dict[int, nn.Module]:
    """FSDP2-shard each model under torchrun; ``{id(model): root}`` (empty in one process)."""
    if not ctx.enabled:
        return {}
    return {id(m): shard_model(m, device) for m in models if m is not None}
