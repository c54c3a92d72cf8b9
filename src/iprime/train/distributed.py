"""Data parallelism for the PRIME trainer (and SFT, :class:`iprime.train.sft.SFTRun`): process
group, FSDP2 wrapping, collectives, DCP.

Launch with ``torchrun --nproc_per_node=N -m iprime train --config run.yaml``. Every rank holds
the same prompt stream and rollout buffer (replicated, so a checkpoint does not depend on the
world size); each round the prompts are split into ``N`` contiguous shares, each rank samples
and verifies its share, and the rollouts are all-gathered in rank order, so every rank sees
the same global pool, makes the same filter decision and trains on a contiguous, equal share
of the kept groups (groups never span ranks). The models are sharded with FSDP2
(``fully_shard`` per decoder layer, then a root that runs :func:`response_logprobs`).

In one process (no ``WORLD_SIZE`` > 1 in the environment) every helper here is a no-op: the
trainer runs one code path for any world size. Sharded checkpoints (DCP) are
:mod:`iprime.train.checkpoint_dcp`, built on the collectives here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from iprime.algo import get_advantage_estimator
from iprime.models.logprobs import response_logprobs
from iprime.rollout.types import RolloutBatch


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

    def warm_up(self, device: torch.device) -> None:
        """One tiny no-grad forward: FSDP's lazy initialisation (see :func:`shard_model`)."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=device)
        with torch.no_grad():
            self(ids, torch.ones_like(ids), 1)


class LogitsModule(nn.Module):
    """FSDP root whose forward is the wrapped causal LM's own forward: ``(input_ids, attention_mask)``
    ``[B, L]`` -> logits ``[B, L, V]`` (supervised fine-tuning scores every position,
    :mod:`iprime.train.sft`). Unsharded it is the plain forward, bit for bit: one process runs it
    too, so SFT has one code path for any world size."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def warm_up(self, device: torch.device) -> None:
        """One tiny no-grad forward: FSDP's lazy initialisation (see :func:`shard_model`)."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=device)
        with torch.no_grad():
            self(ids, torch.ones_like(ids))


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names |= set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        layers = list(base.get_decoder().layers)
    return layers


def shard_model(
    model: nn.Module, device: torch.device, root_type: type[LogprobModule] | type[LogitsModule] = LogprobModule
) -> nn.Module:
    """``fully_shard`` each decoder layer, then the root, ``root_type(model)`` (the trainer's
    :class:`LogprobModule`, or SFT's :class:`LogitsModule`). Returns the root; ``model`` itself
    stays usable (generation, state dicts) and now holds DTensor shards.

    One tiny forward through the root (``root.warm_up``) runs FSDP's lazy initialisation, so a
    later plain forward of ``model`` (generation) finds the root already set up. Collective: call
    on every rank, in the same order."""
    from torch.distributed.fsdp import fully_shard

    for layer in _decoder_layers(model):
        fully_shard(layer)
    root = root_type(model)
    fully_shard(root)
    root.warm_up(device)
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


# ------------------------------------------------------------------------------ full state dicts, rollouts
def full_state_items(model: nn.Module, root: nn.Module | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` for every entry of ``model.state_dict()``, in its order, on every
    rank, one tensor gathered at a time: what a rollout engine's ``load_weights`` takes.

    Under FSDP2 each entry is a DTensor shard; ``full_tensor()`` all-gathers it on its own device
    (the GPU under NCCL), so the extra memory at any moment is one full parameter, not the model
    (TRL's ``_sync_fsdp2_params_to_vllm`` gathers the same way). The tensors of a plain model are
    the live parameters themselves: a consumer copies them, it does not keep them.

    Collective and lazy: every rank must take every item, in order (an engine that ignored
    the weights must still exhaust the iterator), or the next all-gather waits forever.
    ``root``: the FSDP root that owns ``model``'s top-level parameters, when there is one (it
    keeps them gathered after a no-grad forward; they are resharded first)."""
    reshard_all(root if root is not None else model)
    for name, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):  # a DTensor shard
            value = value.full_tensor()
        yield name, value.detach()


def full_state_dict(
    model: nn.Module, root: nn.Module | None = None, *, every_rank: bool = True
) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on the CPU, on every rank (FSDP or plain model; a plain
    model's own tensors, uncopied). ``every_rank=False``: on rank 0 only, the others get ``{}``
    (a model written by rank 0 need not be held on the CPU by every rank). Collective under FSDP:
    every rank must call it.

    Not ``get_model_state_dict(full_state_dict=True, cpu_offload=True)``: with ``cpu_offload``
    torch gathers to rank 0 only (``ranks_only=(0,)``), whatever the caller meant."""
    if not fsdp_modules(root if root is not None else model):
        return model.state_dict()
    keep = every_rank or dist.get_rank() == 0
    out = {}
    for name, value in full_state_items(model, root):  # every rank takes part in every gather
        if keep:
            out[name] = value.cpu()
    return out


def all_gather_rollouts(batch, starts: list[int], ctx: DistContext, device: torch.device):
    """Every rank's share of a round, concatenated in rank order (``batch`` itself in one process).

    ``starts[r]`` is the offset of rank r's first prompt in the round: each share's
    ``prompt_index`` is shifted by it. A rank with no prompts passes ``None``."""
    if not ctx.enabled:
        return batch
    parts = all_gather_objects(batch.to("cpu") if batch is not None else None, ctx)
    for part, start in zip(parts, starts):
        if part is not None:
            part.prompt_index = part.prompt_index + start
    return RolloutBatch.cat([p for p in parts if p is not None]).to(device)


# ------------------------------------------------------------------------------ run setup
def check_config(cfg, ctx: DistContext) -> None:
    """What a data-parallel run needs of the config (nothing in one process)."""
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
