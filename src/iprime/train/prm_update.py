"""The implicit PRM in the training step: token rewards, and its online update on outcome labels.

Rewards ``r_t = beta * (log pi_phi(y_t|y<t) - log pi_ref(y_t|y<t))`` (per token, summed per step,
or on the last token: ``prm.granularity``); the update minimises
``BCE(sigmoid(beta * sum_t log-ratio), outcome)`` (``prm.loss=ce``) or the pairwise DPO loss
within a group (``dpo``), ``prm.epochs`` passes over the step's rollouts, each of one optimizer
step per mini-batch (``prm.mini_batch_size``; :func:`prm_mini_batches`). With ``prm.update=after``
the rewards of each mini-batch are the PRM's as it is when that mini-batch's turn comes: before
any update for the whole batch (the default), or after the steps on the mini-batches before it,
as the PRIME repository's update loop does (:func:`score_and_update`).

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
from iprime.train.passes import ForwardPasses, rank_rows


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


def prm_mini_batches(n_groups: int, group_size: int, mini_batch_size: int | None) -> list[list[int]]:
    """Global row ids of each PRM mini-batch of a batch of ``n_groups`` groups of ``group_size``
    consecutive rows, in the order they are trained.

    ``mini_batch_size`` rows (``None``: the whole batch) make ``n = ceil(n_groups / (mini_batch_size
    / group_size))`` mini-batches; group ``g`` goes to mini-batch ``g mod n``, so sizes differ by
    at most one group, and since rank shares are contiguous runs of groups each rank holds an
    (almost) equal part of every mini-batch, whatever the world size. (The PRIME repository
    takes each rank's ``b``-th contiguous chunk as its part of mini-batch ``b``: the same sizes
    and count, another assignment of its shuffled rows, and one that changes with the number of
    ranks: ``dp_prime.py`` ``_make_minibatch_iterator``.)

    >>> prm_mini_batches(4, 2, 4)
    [[0, 1, 4, 5], [2, 3, 6, 7]]
    """
    if n_groups < 1 or group_size < 1:
        raise ValueError(f"need at least one group of at least one row, got {n_groups} x {group_size}")
    if mini_batch_size is None:
        return [list(range(n_groups * group_size))]
    if mini_batch_size < group_size or mini_batch_size % group_size:
        raise ValueError(f"mini_batch_size={mini_batch_size} is not a whole number of groups of {group_size}")
    n = math.ceil(n_groups / (mini_batch_size // group_size))
    return [[g * group_size + k for g in range(b, n_groups, n) for k in range(group_size)] for b in range(n)]


def score_and_update(
    passes: ForwardPasses, prm, optimizer, batch: RolloutBatch, ref_logp: torch.Tensor, n_global: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PRM's ``[B, T]`` log-probs that serve as rewards, and its update per ``prm.update``:
    ``after`` scores each row in the update's own forward pass of the first epoch (the PRM as it
    is before the step on that row's mini-batch: ``dp_prime.py`` ``update_policy`` collects these
    scores as the rewards), ``before`` updates first and then scores with the updated PRM,
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
    """One pass over the step's batch: an optimizer step per PRM mini-batch
    (:func:`prm_mini_batches` of the ``n_global`` rows), each over this rank's rows of it.

    Within a mini-batch each micro-batch's mean loss is weighted by its share of the
    mini-batch's rows on all ranks (:func:`~iprime.train.microbatches.local_micro_batches`), as
    the PRIME repository divides each micro-batch's loss by its accumulation steps
    (``dp_prime.py`` ``update_policy``). With ``return_logp`` also returns the PRM's ``[B, T]``
    log-probs of this rank's rows from these forwards, detached: mini-batch ``b`` scored by the
    PRM after the steps on mini-batches ``0 .. b-1``. A non-finite loss or gradient ends the
    pass (no further step; ``prm/skipped``; the loss then covers the mini-batches reached) and
    returns ``None`` log-probs. Metrics:
    ``prm/loss`` (the mean loss over the batch's rows, each mini-batch's at its own turn),
    ``prm/grad_norm`` (mean over the steps), ``prm/updates`` (steps taken)."""
    cfg, K = passes.cfg, passes.cfg.rollout.n
    mask, outcome = batch.response_mask.bool(), batch.tensors["outcome"]
    scored = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device) if return_logp else None
    micro = max(K, (cfg.prm.micro_batch_size // K) * K)  # DPO pairs live within a group: whole groups
    first, end = rank_rows(n_global, K, passes.dist.world_size)[passes.dist.rank]
    total, grad_norms = 0.0, []
    for mini in prm_mini_batches(n_global // K, K, cfg.prm.mini_batch_size):
        mine = [i - first for i in mini if first <= i < end]
        share = len(mini) / n_global  # of the logged loss, a mean over all the batch's rows
        optimizer.zero_grad(set_to_none=True)
        for mb in local_micro_batches(passes, batch, micro, len(mini), unit=K, rows=mine):
            prm_logp = passes.logprobs(prm, batch, mb.rows)
            if mb.dummy:
                loss = dummy_loss(prm_logp)
            else:
                if scored is not None:
                    scored[mb.rows] = prm_logp.detach()
                loss = _prm_loss(cfg, prm_logp, ref_logp[mb.rows], mask[mb.rows], outcome[mb.rows]) * mb.scale
            if not backward(passes, loss, finite=bool(torch.isfinite(loss))):
                optimizer.zero_grad(set_to_none=True)
                return {"prm/loss": float("nan"), "prm/skipped": 1.0, "prm/updates": len(grad_norms)}, None
            total += loss.item() * share
        grad_norm = optimizer_step(prm, optimizer, cfg.prm.grad_clip)
        if not math.isfinite(grad_norm):  # optimizer_step dropped the gradient; the norm says why
            total = float(D.all_reduce(torch.tensor([total], dtype=torch.float64, device=passes.device))[0])
            metrics = {"prm/loss": total, "prm/grad_norm": grad_norm, "prm/skipped": 1.0}
            return {**metrics, "prm/updates": len(grad_norms)}, None
        grad_norms.append(grad_norm)
    total = float(D.all_reduce(torch.tensor([total], dtype=torch.float64, device=passes.device))[0])
    metrics = {"prm/loss": total, "prm/grad_norm": sum(grad_norms) / len(grad_norms), "prm/skipped": 0.0}
    return {**metrics, "prm/updates": len(grad_norms)}, scored


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
    on data it has not seen), ``prm/loss_last`` the last's; ``prm/updates`` counts the optimizer
    steps of all passes.

    With ``return_logp`` the first pass runs in eval mode, so its log-probs equal a scoring pass
    (dropout off) and serve as the rewards: of the PRM before its update, or, with
    ``prm.mini_batch_size``, of the PRM as it is at each mini-batch's turn."""
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
            metrics["prm/updates"] += last["prm/updates"]
    finally:
        prm.train(was_training)
    return metrics, scored
