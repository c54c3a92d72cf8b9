"""The advantage stage: the configured estimator from :mod:`iprime.algo`'s registry, given
every input the step has (outcome, implicit token rewards, values, KL to the reference)."""

from __future__ import annotations

import torch

from iprime import algo
from iprime.config import PrimeConfig


def compute_advantages(
    cfg: PrimeConfig,
    outcome: torch.Tensor,
    mask: torch.Tensor,
    token_rewards: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> algo.AdvantageOutput:
    """``algo.estimator`` on this rank's rows (``[B]`` outcome, ``[B, T]`` the rest).

    With ``algo.kl_mode="reward"`` and a reference, the per-token KL estimate of the sampling
    policy (``old_logp``) to the reference goes to the estimator, which subtracts
    ``kl_coef * kl`` from its rewards. Batch statistics are global under torchrun."""
    a = cfg.algo
    kl = None
    if a.kl_mode == "reward" and ref_logp is not None:
        kl = algo.kl_penalty(old_logp, ref_logp, a.kl_estimator)
    inputs = algo.AdvantageInputs(
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
        whiten=a.whiten,
        process_baseline=a.process_baseline,
    )
    return algo.get_advantage_estimator(a.estimator)(inputs)
