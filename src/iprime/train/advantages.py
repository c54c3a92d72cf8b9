"""The advantage stage: the configured estimator from :mod:`iprime.algo`'s registry, given
every input the step has (outcome, implicit token rewards, values, KL to the reference), and
the importance correction toward the sampling engine's log-probs."""

from __future__ import annotations

import torch

from iprime import algo
from iprime.config import PrimeConfig


def advantage_inputs(
    cfg: PrimeConfig,
    outcome: torch.Tensor,
    mask: torch.Tensor,
    token_rewards: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> algo.AdvantageInputs:
    """The estimator's inputs from the config's ``algo`` section and this rank's rows (``[B]``
    outcome, ``[B, T]`` the rest).

    With ``algo.kl_mode="reward"`` and a reference, the per-token KL estimate of the sampling
    policy (``old_logp``) to the reference goes in as ``kl``; the estimator subtracts
    ``kl_coef * kl`` from its rewards."""
    a = cfg.algo
    kl = None
    if a.kl_mode == "reward" and ref_logp is not None:
        kl = algo.kl_penalty(old_logp, ref_logp, a.kl_estimator)
    return algo.AdvantageInputs(
        outcome=outcome,
        mask=mask,
        group_size=cfg.rollout.n,
        token_rewards=token_rewards,
        values=values,
        kl=kl,
        kl_coef=a.kl_coef,
        gamma=a.gamma,
        lam=a.lam,
        rm_coef=a.rm_coef,
        outcome_coef=a.outcome_coef,
        outcome_gamma=a.outcome_gamma,
        normalize=a.normalize,
        batch_norm_scope=a.batch_norm_scope,
        whiten=a.whiten,
        process_baseline=a.process_baseline,
    )


def compute_advantages(
    cfg: PrimeConfig,
    outcome: torch.Tensor,
    mask: torch.Tensor,
    token_rewards: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> algo.AdvantageOutput:
    """``algo.estimator`` on :func:`advantage_inputs`. Batch statistics are global under torchrun."""
    inputs = advantage_inputs(cfg, outcome, mask, token_rewards, old_logp, ref_logp, values)
    return algo.get_advantage_estimator(cfg.algo.estimator)(inputs)


def importance_corrected(
    passes, advantages: torch.Tensor, old_logp: torch.Tensor, sampling_logp: torch.Tensor, mask: torch.Tensor, cap
) -> tuple[torch.Tensor, dict[str, float]]:
    """``advantages`` times the truncated importance weights ``min(exp(old_logp - sampling_logp),
    cap)`` between the trainer's and the sampling engine's log-probs (``rollout.is_correction``),
    and the weights' and log-prob gaps' statistics over the global batch (``passes.global_stats``)."""
    weights = algo.truncated_is_weights(old_logp, sampling_logp, mask, cap)
    w = passes.global_stats(weights, mask)
    d = passes.global_stats((old_logp - sampling_logp).abs(), mask)
    metrics = {
        "rollout/is_weight_mean": w["mean"],
        "rollout/is_weight_min": w["min"],
        "rollout/logp_abs_diff_mean": d["mean"],
        "rollout/logp_abs_diff_max": d["max"],
    }
    return algo.apply_is_weights(advantages, weights), metrics
