"""The advantage stage: the configured estimator from :mod:`iprime.algo`'s registry, given
every input the step has (outcome, implicit token rewards, values, KL to the reference)."""

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


def _local_stats(values: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``{"std"}`` (Bessel) of ``values[mask]`` in this process (the shape of ``ForwardPasses.global_stats``)."""
    v = values[mask.bool()].double()
    return {"std": float(v.std()) if v.numel() > 1 else 0.0}


def process_share_metrics(
    cfg: PrimeConfig,
    outcome: torch.Tensor,
    mask: torch.Tensor,
    token_rewards: torch.Tensor,
    stats=_local_stats,
) -> dict[str, float]:
    """How much of PRIME's advantage comes from the implicit PRM, over the batch's valid tokens.

    With ``P, O`` = :func:`iprime.algo.advantages.prime_parts` (``rm_coef`` times the
    process return, ``outcome_coef`` times the RLOO outcome advantage, ``[B, T]``, before
    whitening, which scales both alike) and ``A = P + O``:

    - ``adv/process_std``, ``adv/outcome_std``: ``std(P)``, ``std(O)`` over valid tokens;
    - ``adv/process_share``: ``std(P) / std(A)``; ~0 when the process term is negligible, ~1
      when it dominates (it can exceed 1 when ``P`` and ``O`` partly cancel);
    - ``adv/process_outcome_corr``: the correlation of ``P`` and ``O`` over tokens (near 1: the
      process term mostly repeats the outcome);
    - ``adv/dense_share``: ``std(A - its response's mean) / std(A)``, the share of the advantage
      that varies *within* a response: what a dense reward adds (0 for outcome-only RLOO).

    A ratio whose denominator is 0 is left out (``std(A) = 0``: nothing to share; the
    correlation when ``P`` or ``O`` is constant, e.g. the first step, whose PRM is still the
    reference), so no metric is NaN.

    ``stats(values, mask) -> {"std": ...}`` gives the statistics (``ForwardPasses.global_stats``
    under torchrun, where every rank must call this). Only the ``prime`` estimator's split is
    known; a KL penalty in the reward (``algo.kl_mode=reward``) is left out of both parts.
    """
    if cfg.algo.estimator != "prime":
        raise ValueError(f"process_share_metrics splits the prime estimator's advantage, not {cfg.algo.estimator!r}")
    process, outcome_part = algo.advantages.prime_parts(advantage_inputs(cfg, outcome, mask, token_rewards))
    total = process + outcome_part
    sp, so, sa = stats(process, mask)["std"], stats(outcome_part, mask)["std"], stats(total, mask)["std"]
    within = stats(algo.advantages.within_response_deviation(total, mask), mask)["std"]
    metrics = {"adv/process_std": sp, "adv/outcome_std": so}
    if sa > 0:
        metrics.update({"adv/process_share": sp / sa, "adv/dense_share": within / sa})
    if sp > 0 and so > 0:
        metrics["adv/process_outcome_corr"] = (sa * sa - sp * sp - so * so) / (2 * sp * so)
    return metrics
