"""Policy-gradient losses: PPO's clipped surrogate, KL estimators, entropy, value loss.

``[B, T]`` tensors over response tokens; ``mask`` marks valid tokens. Losses are reduced by
:func:`aggregate_loss`, whose mode decides how tokens and sequences are weighted.
"""

from __future__ import annotations

import torch

from ._checks import check_choice, check_finite, check_same_shape
from .masked import masked_mean, masked_sum

Tensor = torch.Tensor

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def aggregate_loss(loss: Tensor, mask: Tensor, agg: str = "token-mean", norm_len: int | None = None) -> Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar.

    - ``token-mean``: ``sum(l * m) / sum(m)`` — every valid token weighs the same.
    - ``seq-mean-token-mean``: the mean over rows of each row's token mean (rows without a
      valid token are skipped) — every sequence weighs the same (GRPO paper).
    - ``seq-mean-token-sum-norm``: ``sum(l * m) / (B * norm_len)`` with a constant
      ``norm_len`` (default ``T``) — Dr. GRPO's length-unbiased form.
    """
    check_choice("agg", agg, AGGREGATIONS)
    if agg == "token-mean":
        return masked_mean(loss, mask)
    if agg == "seq-mean-token-mean":
        has_tokens = mask.bool().any(-1)
        per_seq = masked_mean(loss, mask, dim=-1)
        return per_seq[has_tokens].sum() / has_tokens.sum().clamp(min=1)
    norm = loss.shape[1] if norm_len is None else norm_len
    if norm <= 0:
        raise ValueError(f"norm_len must be positive, got {norm}")
    return masked_sum(loss, mask) / (loss.shape[0] * norm)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from log-probs of tokens sampled from ``pi``.

    With ``d = logp - ref_logp``: ``k1 = d`` (unbiased, can be negative),
    ``k2 = d^2 / 2``, ``k3 = exp(-d) - 1 + d`` (unbiased and non-negative; Schulman 2020).
    """
    check_choice("kind", kind, KL_ESTIMATORS)
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d.square()
    return torch.expm1(-d) + d


def kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, kind: str = "k3", agg: str = "token-mean") -> Tensor:
    """KL-to-reference as a loss term, aggregated over valid tokens."""
    check_same_shape(logp=logp, ref_logp=ref_logp, mask=mask)
    return aggregate_loss(kl_penalty(logp, ref_logp, kind), mask, agg)


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate loss.

    ``ratio = exp(logp - old_logp)``; per token
    ``l = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))`` (asymmetric bounds
    allow DAPO's clip-higher). With ``dual_clip = c > 1`` the loss of tokens with ``A < 0`` is
    further capped at ``-A * c`` (Ye et al. 2020). Reduced by :func:`aggregate_loss`.

    Returns ``(loss, metrics)``; metrics: ``clip_frac`` (share of valid tokens where the
    clipped term is active), ``dual_clip_frac``, ``approx_kl`` (mean of ``old_logp - logp``)
    and ``ratio_mean``.
    """
    check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    check_finite("old_logp", old_logp, mask)
    check_finite("advantages", advantages, mask)
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip bounds must be non-negative, got clip_low={clip_low}, clip_high={clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be greater than 1, got {dual_clip}")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(mask, dtype=torch.bool)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        dual_active = (advantages < 0) & (per_token > cap)
        per_token = torch.where(advantages < 0, torch.minimum(per_token, cap), per_token)
    loss = aggregate_loss(per_token, mask, agg, norm_len)
    with torch.no_grad():
        valid = mask.bool()
        metrics = {
            "clip_frac": float(masked_mean((clipped > unclipped).float(), valid)),
            "dual_clip_frac": float(masked_mean(dual_active.float(), valid)),
            "approx_kl": float(masked_mean(-log_ratio, valid)),
            "ratio_mean": float(masked_mean(ratio, valid)),
        }
    return loss, metrics


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    agg: str = "token-mean",
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss: ``0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2)``; without
    ``clip`` the plain ``0.5 * (V - R)^2``. Returns ``(loss, {"vf_clip_frac": ...})``."""
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    unclipped = (values - returns).square()
    if clip is None:
        per_token, active = unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped = (clipped_values - returns).square()
        per_token, active = torch.maximum(unclipped, clipped), clipped > unclipped
    loss = 0.5 * aggregate_loss(per_token, mask, agg)
    return loss, {"vf_clip_frac": float(masked_mean(active.float(), mask.bool()))}
