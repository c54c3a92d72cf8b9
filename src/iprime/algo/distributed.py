"""Batch statistics over a data-parallel batch: each rank holds some rows, the statistics are
those of all rows together (``torch.distributed`` all-reduces of sums and counts). Without an
initialised process group (or with one rank) they equal the single-process functions."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .masked import masked_whiten, zero_outside

Tensor = torch.Tensor


def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def distributed_masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, group=None
) -> Tensor:
    """:func:`masked_whiten` with mean and (Bessel-corrected) variance over the valid entries
    of every rank: two all-reduces (``[sum, count]``, then the sum of squared deviations), the
    same two-pass formula as the single-process version."""
    if not _distributed(group):
        return masked_whiten(x, mask, shift_mean, eps)
    m = mask.bool()
    stats = torch.stack([zero_outside(x, m).sum().double(), m.sum().double()])
    dist.all_reduce(stats, group=group)
    count = stats[1]
    mean = (stats[0] / count.clamp(min=1.0)).to(x.dtype)
    sq = zero_outside((x - mean) ** 2, m).sum().double().reshape(1)
    dist.all_reduce(sq, group=group)
    var = sq[0] / count.clamp(min=1.0)
    if count > 1:
        var = var * count / (count - 1)
    out = (x - mean) * torch.rsqrt(var.to(x.dtype) + eps)
    if not shift_mean:
        out = out + mean
    return zero_outside(out, m)


def distributed_max(x: Tensor, group=None) -> Tensor:
    """The maximum of ``x`` (any shape, non-empty on every rank) over all ranks, as a 0-d tensor."""
    v = x.max().detach().clone().reshape(1)
    if _distributed(group):
        dist.all_reduce(v, dist.ReduceOp.MAX, group=group)
    return v[0]


def distributed_mean(x: Tensor, group=None) -> Tensor:
    """The mean of every entry of ``x`` on every rank (a 0-d tensor); ``x.mean()`` in one process."""
    if not _distributed(group):
        return x.mean()
    stats = torch.stack([x.sum().double(), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])
    dist.all_reduce(stats, group=group)
    return (stats[0] / stats[1].clamp(min=1.0)).to(x.dtype)
