"""Micro-batches under data parallelism: what this rank computes, and how much it weighs.

Every update of the step (PPO's, the PRM's) is gradient accumulation: a loop over micro-batches
whose scaled losses add up to one loss, then one clipped optimizer step. In one process that is
all. Under ``torchrun`` each rank holds a contiguous share of the global batch's groups
(:func:`iprime.train.passes.rank_rows`), and three more things make N ranks compute the
1-process gradient; they live here, so the updates read the same at any world size:

- **as many micro-batches on every rank.** FSDP gathers parameters collectively in every
  forward, so a rank with fewer micro-batches runs *dummies* (the first rows of its share under
  a zero loss, :func:`dummy_loss`) until it has run as many as the busiest rank;
- **global weights.** Each micro-batch's loss is scaled to its share of the *global* normaliser
  (:class:`MicroBatch` ``scale``), so the scaled losses of all micro-batches of all ranks sum to
  the loss one process would compute;
- **one backward for all ranks** (:func:`backward`). FSDP averages gradients over the ``W``
  ranks, so each rank backpropagates ``W`` times its share; and a non-finite loss on any rank
  skips the backward on every rank (:meth:`~iprime.train.passes.ForwardPasses.all_finite`).

With one process there are no dummies, ``W = 1``, and a micro-batch's scale is its share of the
batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from iprime.rollout import RolloutBatch
from iprime.train import distributed as D
from iprime.train.passes import ForwardPasses, agg_denominator, rank_rows


@dataclass(frozen=True)
class MicroBatch:
    """One forward and backward of this rank.

    ``rows``: ``[b]`` indices into this rank's share of the batch. ``dummy``: this rank has no
    rows left at this position; it runs ``rows`` under :func:`dummy_loss` to stay in step with
    the other ranks' collectives.

    ``scale`` multiplies the micro-batch's loss (for the policy: its ``optim.agg``-aggregated
    terms), ``token_scale`` its token means (the policy's entropy bonus): together the global
    weights. ``metric_weight`` and ``metric_token_weight`` weigh its metrics the same two ways
    (see :func:`policy_micro_batches`)."""

    rows: torch.Tensor
    dummy: bool = False
    scale: float = 1.0
    token_scale: float = 1.0
    metric_weight: float = 1.0
    metric_token_weight: float = 1.0


def policy_micro_batches(passes: ForwardPasses, rollouts: RolloutBatch, mini: list[int]) -> list[MicroBatch]:
    """This rank's micro-batches of one PPO mini-batch (``mini``: row ids of the global batch
    ``rollouts``), at most ``optim.micro_batch_size`` rows (and ``optim.micro_batch_tokens``).

    Every rank holds the global batch, so every rank plans every rank's rows of the mini-batch,
    and knows the micro-batches at the same position on all ranks (its *peers*) without a
    collective. The scales follow ``optim.loss_scope``:

    - ``micro``: the micro-batch's summed loss over the total of its peers, times the peers'
      share of the mini-batch's rows (in one process: its own mean, weighted by its share of
      the rows); metrics are weighted by the share of the peers and averaged over positions;
    - ``mini_batch``: the summed loss over the mini-batch's total, so the gradient does not
      depend on how the mini-batch is split; metrics are weighted the same way.
    """
    o, dist = passes.cfg.optim, passes.dist
    mask = rollouts.response_mask.bool()
    shares = rank_rows(len(rollouts), passes.cfg.rollout.n, dist.world_size)
    plans = [passes.plan(rollouts, [i for i in mini if s <= i < e], o.micro_batch_size) for s, e in shares]
    mine, first = plans[dist.rank], shares[dist.rank][0]
    out = []
    for j in range(max(len(p) for p in plans)):
        if j >= len(mine):
            out.append(MicroBatch(torch.tensor([0]), dummy=True))
            continue
        peers = [i for p in plans if j < len(p) for i in p[j]]
        weights = _policy_weights(o.agg, o.loss_scope, mask[mine[j]], mask[peers], len(peers), mask[mini], len(mini))
        out.append(MicroBatch(torch.tensor([i - first for i in mine[j]]), **weights))
    return out


def _policy_weights(agg: str, scope: str, m, peers_mask, n_peers: int, mini_mask, n_mini: int) -> dict[str, float]:
    """:class:`MicroBatch` weights of a policy micro-batch with mask ``m`` (shapes ``[rows, T]``)."""
    share = agg_denominator(m, agg) / max(agg_denominator(peers_mask, agg), 1.0)
    token_share = float(m.sum()) / max(float(peers_mask.sum()), 1.0)
    if scope == "micro":
        scale, token_scale = share * n_peers / n_mini, token_share * n_peers / n_mini
        return {"scale": scale, "token_scale": token_scale, "metric_weight": share, "metric_token_weight": token_share}
    scale = agg_denominator(m, agg) / max(agg_denominator(mini_mask, agg), 1.0)
    token_scale = float(m.sum()) / max(float(mini_mask.sum()), 1.0)
    return {"scale": scale, "token_scale": token_scale, "metric_weight": scale, "metric_token_weight": token_scale}


def local_micro_batches(
    passes: ForwardPasses,
    batch: RolloutBatch,
    max_rows: int,
    n_global: int,
    *,
    unit: int = 1,
    rows: list[int] | None = None,
) -> list[MicroBatch]:
    """Micro-batches over ``rows`` (row ids of this rank's share ``batch``; ``None``: every row)
    of ``max_rows`` rows, whole units of ``unit`` rows, then dummies up to the busiest rank's
    count (a collective: every rank calls this at the same point). ``scale``: the micro-batch's
    share of the ``n_global`` rows the loss is a mean over (all ranks' rows of the batch, or of
    the mini-batch ``rows`` belong to)."""
    plans = passes.plan(batch, list(range(len(batch))) if rows is None else rows, max_rows, unit=unit)
    out = [MicroBatch(torch.tensor(plan), scale=len(plan) / n_global) for plan in plans]
    dummy = MicroBatch(torch.tensor(list(range(unit))), dummy=True)
    return out + [dummy] * passes.pad_count(len(plans))


def dummy_loss(logp: torch.Tensor) -> torch.Tensor:
    """A zero loss through a dummy micro-batch's forward: its backward runs the collectives of a
    real one and adds nothing to the gradient."""
    return (logp.nan_to_num() * 0.0).sum()


def backward(passes: ForwardPasses, loss: torch.Tensor, *, finite: bool) -> bool:
    """Backpropagate this rank's scaled ``loss``, unless any rank's is non-finite (``finite``
    says whether this rank's is): then no rank does, and all return False."""
    if not passes.all_finite(finite):
        return False
    (loss * passes.dist.world_size).backward()  # FSDP averages gradients over ranks; the scales make global shares
    return True


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """After accumulation: clip the gradient to ``max_norm`` and step. A non-finite gradient norm
    drops the gradient instead (no step). Returns the norm before clipping."""
    grad_norm = D.to_float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return grad_norm
