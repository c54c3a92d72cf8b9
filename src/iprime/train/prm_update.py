"""The implicit PRM in the training step: token rewards, and its online update on outcome labels.

Rewards ``r_t = beta * (log pi_phi(y_t|y<t) - log pi_ref(y_t|y<t))`` (per token, summed per step,
or on the last token: ``prm.granularity``); the update minimises
``BCE(sigmoid(beta * sum_t log-ratio), outcome)`` (``prm.loss=ce``) or the pairwise DPO loss
within a group (``dpo``), ``prm.epochs`` passes over the step's rollouts. The rewards are the
PRM's *before* its update (:func:`score_and_update`).

What the rewards say (ranking, share of the advantage, first-error localisation) is measured by
observers in :mod:`iprime.train.diagnostics`, not here.
"""

from __future__ import annotations

import math

import torch

from iprime import algo
from iprime.config import PrimeConfig
from iprime.rollout import RolloutBatch
from iprime.train import distributed as D
from iprime.train.microbatches import backward, dummy_loss, local_micro_batches, optimizer_step
from iprime.train.passes import ForwardPasses


def step_delimiter_ids(tokenizer, cfg: PrimeConfig) -> list[int] | None:
    """Token ids of ``prm.step_delimiter`` for step granularity (``None`` otherwise)."""
    if cfg.prm.granularity != "step":
        return None
    ids = tokenizer.encode(cfg.prm.step_delimiter, add_special_tokens=False)
    if not ids:
        raise ValueError(f"prm.step_delimiter {cfg.prm.step_delimiter!r} encodes to no tokens")
    return ids


def process_rewards(
    cfg: PrimeConfig,
    batch: RolloutBatch,
    prm_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    delimiter_ids: list[int] | None,
) -> torch.Tensor:
    """``[B, T]`` implicit process rewards at ``prm.granularity``."""
    step_ends = None
    if cfg.prm.granularity == "step":
        step_ends = algo.step_ends_from_delimiter(batch.response_ids, mask, delimiter_ids)
    return algo.implicit_process_rewards(prm_logp, ref_logp, mask, cfg.prm.beta, cfg.prm.granularity, step_ends)


def score_and_update(
    passes: ForwardPasses, prm, optimizer, batch: RolloutBatch, ref_logp: torch.Tensor, n_global: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PRM's ``[B, T]`` log-probs before its update, and its update per ``prm.update``:
    ``after`` scores in the update's own (pre-update) forward pass, ``before`` updates first,
    ``none`` only scores. Returns the log-probs and the update's metrics."""
    when, metrics, prm_logp = passes.cfg.prm.update, {}, None
    if when != "none":
        metrics, prm_logp = update_prm(passes, prm, optimizer, batch, ref_logp, n_global, return_logp=when == "after")
    if prm_logp is None:  # "before", "none", or an "after" update that was skipped
        prm_logp = passes.all_logprobs(prm, batch, passes.cfg.optim.micro_batch_size)
    return prm_logp, metrics


def _prm_loss(cfg: PrimeConfig, prm_logp, ref_logp, mask, outcome) -> torch.Tensor:
    if cfg.prm.loss == "ce":
        return algo.prm_ce_loss(prm_logp, ref_logp, mask, outcome, cfg.prm.beta)
    return algo.prm_dpo_loss(prm_logp, ref_logp, mask, outcome, cfg.prm.beta, cfg.rollout.n)


def prm_pass(
    passes: ForwardPasses, prm, optimizer, batch: RolloutBatch, ref_logp: torch.Tensor, n_global: int, return_logp: bool
) -> tuple[dict[str, float], torch.Tensor | None]:
    """One optimizer step of the PRM over this rank's rows of the step's batch.

    Each micro-batch's mean loss is weighted by its share of the ``n_global`` rows
    (:func:`~iprime.train.microbatches.local_micro_batches`). With ``return_logp`` also returns
    the PRM's ``[B, T]`` log-probs from this (pre-update) forward, detached; ``None`` when the
    update was skipped."""
    cfg, K = passes.cfg, passes.cfg.rollout.n
    mask, outcome = batch.response_mask.bool(), batch.tensors["outcome"]
    scored = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device) if return_logp else None
    micro = max(K, (cfg.prm.micro_batch_size // K) * K)  # DPO pairs live within a group: whole groups
    total = 0.0
    optimizer.zero_grad(set_to_none=True)
    for mb in local_micro_batches(passes, batch, micro, n_global, unit=K):
        prm_logp = passes.logprobs(prm, batch, mb.rows)
        if mb.dummy:
            loss = dummy_loss(prm_logp)
        else:
            if scored is not None:
                scored[mb.rows] = prm_logp.detach()
            loss = _prm_loss(cfg, prm_logp, ref_logp[mb.rows], mask[mb.rows], outcome[mb.rows]) * mb.scale
        if not backward(passes, loss, finite=bool(torch.isfinite(loss))):
            optimizer.zero_grad(set_to_none=True)
            return {"prm/loss": float("nan"), "prm/skipped": 1.0}, None
        total += loss.item()
    total = float(D.all_reduce(torch.tensor([total], dtype=torch.float64, device=passes.device))[0])
    grad_norm = optimizer_step(prm, optimizer, cfg.prm.grad_clip)
    skipped = not math.isfinite(grad_norm)  # optimizer_step dropped the gradient
    return {"prm/loss": total, "prm/grad_norm": grad_norm, "prm/skipped": float(skipped)}, None if skipped else scored


def update_prm(
    passes: ForwardPasses,
    prm,
    optimizer,
    batch: RolloutBatch,
    ref_logp: torch.Tensor,
    n_global: int,
    *,
    return_logp: bool = False,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """``prm.epochs`` passes of :func:`prm_pass`. ``prm/loss`` is the first pass's (the PRM's loss
    on data it has not seen), ``prm/loss_last`` the last's.

    With ``return_logp`` the first pass runs in eval mode, so its log-probs equal a scoring pass
    (dropout off) and serve as the rewards of the PRM before its update."""
    was_training = prm.training
    if return_logp:
        prm.eval()
    try:
        metrics, scored = prm_pass(passes, prm, optimizer, batch, ref_logp, n_global, return_logp)
        for _ in range(passes.cfg.prm.epochs - 1):
            if metrics.get("prm/skipped"):
                break
            last, _ = prm_pass(passes, prm, optimizer, batch, ref_logp, n_global, False)
            metrics["prm/loss_last"] = last["prm/loss"]
            metrics["prm/skipped"] = last["prm/skipped"]
    finally:
        prm.train(was_training)
    return metrics, scored
