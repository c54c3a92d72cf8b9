"""The policy update (PPO's clipped surrogate over mini-batches) and the value-model update.

CleanRL's minibatch loop: ``optim.epochs`` passes over the step's global batch in shuffled
mini-batches (the same permutation on every rank), one optimizer step per mini-batch, its
gradient accumulated over micro-batches. Which rows this rank runs, the dummies that keep ranks
in step and each micro-batch's weight come from :mod:`iprime.train.microbatches`
(``optim.loss_scope`` sets the loss normaliser, see
:func:`~iprime.train.microbatches.policy_micro_batches`). A mini-batch whose loss or gradient
is non-finite is skipped (no optimizer step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from iprime import algo
from iprime.config import PrimeConfig
from iprime.rollout import RolloutBatch
from iprime.train import distributed as D
from iprime.train.microbatches import MicroBatch, backward, dummy_loss, optimizer_step, policy_micro_batches
from iprime.train.passes import ForwardPasses
from iprime.train.record import StepRecord

POLICY_METRICS = ("clip_frac", "dual_clip_frac", "approx_kl", "ratio_mean", "pg_loss", "entropy")
AGG_METRICS = ("pg_loss", "kl_ref")  # weighted like the optim.agg terms; the rest like token means


@dataclass
class MicroLoss:
    """One micro-batch's loss terms: ``total`` = pg - entropy_coef * entropy (+ kl_coef * kl)."""

    total: torch.Tensor
    pg: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


def micro_loss(cfg: PrimeConfig, logp, entropy, old_logp, advantages, ref_logp, mask) -> MicroLoss:
    """The policy loss of one micro-batch (all tensors ``[b, T]``; ``ref_logp`` may be ``None``)."""
    o, a = cfg.optim, cfg.algo
    pg, metrics = algo.ppo_policy_loss(logp, old_logp, advantages, mask, o.clip_low, o.clip_high, o.dual_clip, o.agg)
    ent = algo.masked_mean(entropy, mask)
    total = pg - a.entropy_coef * ent if a.entropy_coef else pg
    kl_term = None
    if ref_logp is not None:
        kl_term = algo.kl_loss(logp, ref_logp, mask, a.kl_estimator, o.agg)
        metrics["kl_ref"] = kl_term.item()
        if a.kl_mode == "loss":
            total = total + a.kl_coef * kl_term
    return MicroLoss(total, pg, ent, kl_term, metrics)


def scaled_loss(cfg: PrimeConfig, loss: MicroLoss, scale: float, token_scale: float) -> torch.Tensor:
    """The micro-batch's share of the mini-batch loss: the entropy bonus is a token mean
    (``token_scale``), the rest follows ``optim.agg`` (``scale``)."""
    if scale == token_scale:
        return loss.total * scale
    a = cfg.algo
    scaled = loss.pg * scale
    if a.entropy_coef:
        scaled = scaled - a.entropy_coef * loss.entropy * token_scale
    if loss.kl is not None and a.kl_mode == "loss":
        scaled = scaled + a.kl_coef * loss.kl * scale
    return scaled


class PolicyUpdate:
    """PPO epochs over shuffled mini-batches of one step (:meth:`run`). Reads the step record:
    the global batch ``rollouts`` (the mini-batches' rows), this rank's share ``batch`` and its
    per-token ``old_logp``, ``kl_ref_logp`` and ``advantages``."""

    def __init__(self, passes: ForwardPasses, policy, optimizer, step: StepRecord) -> None:
        self.passes, self.cfg, self.policy, self.optimizer, self.record = passes, passes.cfg, policy, optimizer, step
        self.sums: dict[str, float] = {}
        self.metric_count = 0  # micro-batches ("micro" scope) or mini-batches ("mini_batch") the sums are over

    def run(self) -> dict[str, float]:
        o, n = self.cfg.optim, len(self.record.rollouts)
        grad_norms, skipped = [], 0
        steps_before = self.record.index - 1
        g = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + steps_before)
        for _ in range(o.epochs):
            order = torch.randperm(n, generator=g)
            for start in range(0, n, o.mini_batch_size):
                grad_norm = self.mini_batch(order[start : start + o.mini_batch_size].tolist())
                if grad_norm is None:
                    skipped += 1
                else:
                    grad_norms.append(grad_norm)
        return self.metrics(grad_norms, skipped)

    def mini_batch(self, mini: list[int]) -> float | None:
        """Accumulate one mini-batch's gradient and step; the gradient norm, ``None`` if skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        finite = all(self.micro_batch(mb) for mb in policy_micro_batches(self.passes, self.record.rollouts, mini))
        if self.cfg.optim.loss_scope == "mini_batch":
            self.metric_count += 1
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        grad_norm = optimizer_step(self.policy, self.optimizer, self.cfg.optim.grad_clip)
        return grad_norm if math.isfinite(grad_norm) else None

    def micro_batch(self, mb: MicroBatch) -> bool:
        """Forward and backward of one micro-batch; False when a rank's loss is non-finite."""
        s, rows = self.record, mb.rows
        logp, entropy = self.passes.logprobs(self.policy, s.batch, rows, entropy=True)
        if mb.dummy:
            loss, scaled = None, dummy_loss(logp)
        else:
            ref = s.kl_ref_logp[rows] if s.kl_ref_logp is not None else None
            loss = micro_loss(self.cfg, logp, entropy, s.old_logp[rows], s.advantages[rows], ref, s.mask[rows])
            scaled = scaled_loss(self.cfg, loss, mb.scale, mb.token_scale)
        if not backward(self.passes, scaled, finite=loss is None or bool(torch.isfinite(loss.total))):
            return False
        if loss is not None:
            values = {**loss.metrics, "pg_loss": loss.pg.item(), "entropy": loss.entropy.item()}
            for key, value in values.items():
                weight = mb.metric_weight if key in AGG_METRICS else mb.metric_token_weight
                self.sums[key] = self.sums.get(key, 0.0) + value * weight
        if self.cfg.optim.loss_scope == "micro":
            self.metric_count += 1
        return True

    def metrics(self, grad_norms: list[float], skipped: int) -> dict[str, float]:
        with_kl = {"kl_ref"} if self.record.kl_ref_logp is not None else set()
        keys = sorted(set(self.sums) | set(POLICY_METRICS) | with_kl)
        t = D.all_reduce(
            torch.tensor([self.sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.passes.device)
        )
        out = {f"policy/{k}": v / max(1, self.metric_count) for k, v in zip(keys, t.tolist())}
        out["policy/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        out["policy/updates"] = len(grad_norms)
        out["policy/skipped_updates"] = skipped
        return out


def update_value(passes: ForwardPasses, value, optimizer, step: StepRecord) -> dict[str, float]:
    """One pass of the clipped value loss over micro-batches (one optimizer step each), toward
    ``step.returns`` from ``step.values``. Single-process only (the value model is not sharded)."""
    o, batch, mask = passes.cfg.optim, step.batch, step.mask
    losses = []
    T = batch.response_ids.shape[1]
    for plan in passes.plan(batch, list(range(len(batch))), o.micro_batch_size):
        rows = torch.tensor(plan)
        optimizer.zero_grad(set_to_none=True)
        values = value(batch.input_ids[rows], batch.attention_mask[rows], T)
        loss, _ = algo.ppo_value_loss(values, step.values[rows], step.returns[rows], mask[rows], o.value_clip)
        if not torch.isfinite(loss):
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(value.parameters(), o.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return {"value/loss": sum(losses) / max(1, len(losses))}


@torch.no_grad()
def value_estimates(passes: ForwardPasses, value, batch: RolloutBatch) -> torch.Tensor:
    """``[B, T]`` values of every row before the update."""
    T = batch.response_ids.shape[1]
    plans = passes.plan(batch, list(range(len(batch))), passes.cfg.optim.micro_batch_size)
    return torch.cat([value(batch.input_ids[r], batch.attention_mask[r], T) for r in map(torch.tensor, plans)])
