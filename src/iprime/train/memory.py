"""Memory options of the PRIME trainer: LoRA PRM on the reference, gradient checkpointing,
bf16 autocast and token-budget micro-batches."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from iprime.models import LoraSettings


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """Non-reentrant activation checkpointing on a transformers causal LM (peft-wrapped or not),
    as :func:`iprime.models.load_model` does; the KV cache is switched off for training forwards."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.use_cache = False
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def is_gradient_checkpointing(model: nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_gradient_checkpointing", False))


def attach_lora(base: nn.Module, r: int, alpha: int, dropout: float = 0.0) -> nn.Module:
    """Wrap ``base`` in a fresh peft LoRA adapter (B = 0: the wrapped model starts equal to
    ``base``). Base weights are frozen; ``with model.disable_adapter():`` gives ``base`` back."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # optional dependency
        raise ImportError("prm.lora needs peft: pip install 'iprime[lora]'") from e

    settings = LoraSettings(r=r, alpha=alpha, dropout=dropout)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def autocast_context(mode: str, device: torch.device):
    """``bf16`` autocast on CUDA, else a no-op context (the config refuses ``bf16`` off CUDA)."""
    if mode == "bf16":
        if device.type != "cuda":
            raise ValueError(f"bf16 autocast needs a CUDA device, got {device}")
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def row_lengths(prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """Per row: real prompt tokens, and response width up to the last valid token."""
    p = prompt_mask.sum(-1).tolist()
    T = response_mask.shape[1]
    pos = torch.arange(1, T + 1, device=response_mask.device).expand_as(response_mask)
    r = torch.where(response_mask.bool(), pos, torch.zeros_like(pos)).max(-1).values.tolist() if T else [0] * len(p)
    return [int(x) for x in p], [int(x) for x in r]


def plan_micro_batches(
    order: list[int],
    max_rows: int,
    max_tokens: int | None = None,
    prompt_len: list[int] | None = None,
    response_len: list[int] | None = None,
    unit: int = 1,
) -> list[list[int]]:
    """Split ``order`` (row ids, kept in this order) into consecutive micro-batches.

    Without ``max_tokens``: chunks of ``max_rows`` (rounded down to whole ``unit`` blocks, at
    least one unit). With it: greedy over units, a micro-batch also keeps
    ``rows * (max prompt len + max response len) <= max_tokens`` (its padded size after the
    all-padding columns are trimmed); a unit that alone exceeds the budget runs alone."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if len(order) % unit:
        raise ValueError(f"{len(order)} rows do not split into units of {unit}")
    if max_tokens is None:
        return [order[s : s + max_rows] for s in range(0, len(order), max_rows)]
    assert prompt_len is not None and response_len is not None
    out: list[list[int]] = []
    cur: list[int] = []
    mp = mr = 0
    for s in range(0, len(order), unit):
        block = order[s : s + unit]
        bp = max(prompt_len[i] for i in block)
        br = max(response_len[i] for i in block)
        np_, nr = max(mp, bp), max(mr, br)
        fits = len(cur) + len(block) <= max_rows and (len(cur) + len(block)) * (np_ + nr) <= max_tokens
        if cur and not fits:
            out.append(cur)
            cur, np_, nr = [], bp, br
        cur = cur + block
        mp, mr = np_, nr
    if cur:
        out.append(cur)
    return out
