"""Masked reductions and returns over ``[B, T]`` response tensors.

Conventions for the whole package: ``mask`` is ``[B, T]`` (bool or 0/1), true on valid response
tokens. Responses are right-padded, but nothing here assumes it: a mask with holes (for
example tool-output tokens excluded from the loss) is handled token by token.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def zero_outside(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` on valid entries, 0 elsewhere — even where ``x`` is NaN or inf (``x * mask`` is not)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    x = zero_outside(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over valid entries; an all-masked row (or batch) gives 0, not NaN."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over all valid entries (Bessel-corrected by default)."""
    count = mask.to(x.dtype).sum()
    mean = masked_mean(x, mask)
    var = masked_sum((x - mean) ** 2, mask) / count.clamp(min=1.0)
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with statistics over valid entries; zero outside the mask."""
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return zero_outside(out, mask)


def last_valid_index(mask: Tensor) -> Tensor:
    """``[B]`` index of the last valid token of each row, ``-1`` for an empty row."""
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def place_on_last_token(values: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` per-sequence values -> ``[B, T]`` with each value on its row's last valid token.

    Rows with no valid token get nothing (their value is dropped, not moved to padding).
    """
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    last = last_valid_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    out[rows, last[rows]] = values[rows]
    return out


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go over valid tokens: ``G_t = r_t + gamma * G_{t'}`` (t' the next valid token).

    Masked positions neither receive reward nor count as a discounting step; the result is
    zero outside the mask. With ``gamma == 1`` this is a reverse cumulative sum.

    Shapes: ``rewards`` and ``mask`` ``[B, T]`` -> ``[B, T]``.
    """
    valid = mask.bool()
    r = zero_outside(rewards, valid)
    if gamma == 1.0:
        return zero_outside(r.flip(-1).cumsum(-1).flip(-1), valid)
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        # on a masked position the running return passes through unchanged
        running = torch.where(valid[:, t], r[:, t] + gamma * running, running)
        out[:, t] = running
    return zero_outside(out, valid)
