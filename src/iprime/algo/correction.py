"""Importance-sampling correction between the rollout engine and the trainer.

An inference engine (vLLM) samples with kernels, precision and batching that differ from the
trainer's forward, so its log-prob of a sampled token, ``log mu(y_t)``, is not the trainer's
``log pi_old(y_t)``. PPO's ratio is taken against ``pi_old``, but the tokens came from ``mu``;
the truncated importance weight (Yao et al., 2025, "Your efficient RL framework secretly
brings you off-policy RL training")

    w_t = min(exp(log pi_old(y_t) - log mu(y_t)), C)

re-weights each token's policy loss. It is a constant (no gradient) and non-negative, so
weighting the per-token PPO loss by ``w_t`` equals scaling that token's advantage by ``w_t``
(``max(-A w r, -A w clip(r)) = w max(-A r, -A clip(r))`` for ``w >= 0``).
"""

from __future__ import annotations

import torch

from ._checks import check_same_shape
from .masked import zero_outside

Tensor = torch.Tensor


def truncated_is_weights(trainer_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float = 2.0) -> Tensor:
    """``[B, T]`` weights ``min(exp(trainer_logp - rollout_logp), cap)`` on valid tokens, 0 elsewhere;
    detached. ``trainer_logp``: the trainer's pre-update log-probs; ``rollout_logp``: the engine's."""
    check_same_shape(trainer_logp=trainer_logp, rollout_logp=rollout_logp, mask=mask)
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    with torch.no_grad():
        w = torch.exp((trainer_logp - rollout_logp).float()).clamp(max=cap)
    return zero_outside(w, mask)


def apply_is_weights(advantages: Tensor, weights: Tensor) -> Tensor:
    """Advantages scaled token-wise by the (non-negative) IS weights: the per-token policy loss
    is then weighted by ``weights`` (see the module docstring for why the two are equal)."""
    check_same_shape(advantages=advantages, weights=weights)
    if bool((weights < 0).any()):
        raise ValueError("importance weights must be non-negative")
    return advantages * weights
