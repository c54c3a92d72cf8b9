"""The policy update (PPO's clipped surrogate over mini-batches) and the value-model update.

Mini-batches are drawn from the global batch (the same permutation on every rank); each rank
runs its own rows of a mini-batch in micro-batches (as many on every rank, padded with
dummies). ``optim.loss_scope`` sets the normaliser of the aggregated loss: ``micro`` divides
each micro-batch's summed loss by the total over the same-index micro-batches of all ranks and
weighs it by their share of the mini-batch's rows (in one process: the micro-batch's own mean,
weighted by its share of rows); ``mini_batch`` divides by the mini-batch's total, so gradients
do not depend on how a mini-batch is split. A mini-batch whose loss or gradient is non-finite
is skipped (no optimizer step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from iprime import algo
from iprime.config import PrimeConfig
from iprime.rollout import RolloutBatch
from iprime.train import distributed as D
from iprime.train.passes import ForwardPasses, agg_denominator, rank_rows

POLICY_METRICS = ("clip_frac", "dual_clip_frac", "approx_kl", "ratio_mean", "pg_loss", "entropy")


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


def micro_weights(
    cfg: PrimeConfig, m: torch.Tensor, union_mask: torch.Tensor, union_rows: int, mini_mask, mini_rows: int
) -> tuple[float, float, float, float]:
    """Normalisers of one micro-batch (mask ``m``) under ``optim.loss_scope``.

    ``union_mask``: the mask of the same-index micro-batches of all ranks. Returns ``(f_agg,
    f_tok, r_agg, r_tok)``: the factors applied to the ``optim.agg``-aggregated terms and to
    the token means (entropy) in the loss, and the micro-batch's shares of the union, which
    weigh its metrics."""
    agg = cfg.optim.agg
    r_agg = agg_denominator(m, agg) / max(agg_denominator(union_mask, agg), 1.0)
    r_tok = float(m.sum()) / max(float(union_mask.sum()), 1.0)
    if cfg.optim.loss_scope == "micro":
        return r_agg * union_rows / mini_rows, r_tok * union_rows / mini_rows, r_agg, r_tok
    f_agg = agg_denominator(m, agg) / max(agg_denominator(mini_mask, agg), 1.0)
    f_tok = float(m.sum()) / max(float(mini_mask.sum()), 1.0)
    return f_agg, f_tok, r_agg, r_tok


def scaled_loss(cfg: PrimeConfig, loss: MicroLoss, f_agg: float, f_tok: float) -> torch.Tensor:
    """The micro-batch's share of the mini-batch loss: the entropy bonus is a token mean, the rest
    follows ``optim.agg``."""
    if f_agg == f_tok:
        return loss.total * f_agg
    a = cfg.algo
    scaled = loss.pg * f_agg
    if a.entropy_coef:
        scaled = scaled - a.entropy_coef * loss.entropy * f_tok
    if loss.kl is not None and a.kl_mode == "loss":
        scaled = scaled + a.kl_coef * loss.kl * f_agg
    return scaled


class PolicyUpdate:
    """PPO epochs over shuffled mini-batches of one step's global batch; gradients accumulate
    over micro-batches. ``batch`` is this rank's share of ``global_batch``; per-token tensors
    (``advantages``, ``old_logp``, ``ref_logp``) are this rank's rows."""

    def __init__(
        self,
        passes: ForwardPasses,
        policy,
        optimizer,
        global_batch: RolloutBatch,
        batch: RolloutBatch,
        advantages,
        old_logp,
        ref_logp,
    ) -> None:
        self.passes, self.cfg, self.policy, self.optimizer = passes, passes.cfg, policy, optimizer
        self.global_batch, self.batch = global_batch, batch
        self.advantages, self.old_logp, self.ref_logp = advantages, old_logp, ref_logp
        self.gmask, self.mask = global_batch.response_mask.bool(), batch.response_mask.bool()
        self.shares = rank_rows(len(global_batch), self.cfg.rollout.n, passes.dist.world_size)
        self.sums: dict[str, float] = {}
        self.metric_count = 0  # micro-batches ("micro" scope) or mini-batches ("mini_batch") the sums are over

    def run(self, step: int) -> dict[str, float]:
        o, n = self.cfg.optim, len(self.global_batch)
        grad_norms, skipped = [], 0
        g = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + step)
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
        o, rank, W = self.cfg.optim, self.passes.dist.rank, self.passes.dist.world_size
        self.optimizer.zero_grad(set_to_none=True)
        plans = [
            self.passes.plan(self.global_batch, [i for i in mini if s <= i < e], o.micro_batch_size)
            for s, e in self.shares
        ]
        finite = True
        for j in range(max(len(p) for p in plans)):
            mine = plans[rank][j] if j < len(plans[rank]) else None
            union = [i for p in plans if j < len(p) for i in p[j]]
            finite = self.micro_batch(mine, union, mini, W)
            if not finite:
                break
        if o.loss_scope == "mini_batch":
            self.metric_count += 1
        grad_norm = (
            D.to_float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), o.grad_clip)) if finite else None
        )
        if grad_norm is None or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        return grad_norm

    def micro_batch(self, mine: list[int] | None, union: list[int], mini: list[int], W: int) -> bool:
        """Forward and backward of this rank's rows ``mine`` (global ids; ``None``: a dummy that
        keeps this rank in step with the others' collectives). False when the loss is non-finite."""
        by_mini = self.cfg.optim.loss_scope == "mini_batch"
        lo = self.shares[self.passes.dist.rank][0]
        rows = torch.tensor([i - lo for i in mine] if mine else [0])
        logp, entropy = self.passes.logprobs(self.policy, self.batch, rows, entropy=True)
        if mine is None:
            if not self.passes.all_finite(True):
                return False
            (logp.nan_to_num() * 0.0).sum().backward()
            self.metric_count += 0 if by_mini else 1
            return True
        m = self.mask[rows]
        ref = self.ref_logp[rows] if self.ref_logp is not None else None
        loss = micro_loss(self.cfg, logp, entropy, self.old_logp[rows], self.advantages[rows], ref, m)
        f_agg, f_tok, r_agg, r_tok = micro_weights(
            self.cfg, m, self.gmask[union], len(union), self.gmask[mini], len(mini)
        )
        scaled = scaled_loss(self.cfg, loss, f_agg, f_tok)
        if not self.passes.all_finite(bool(torch.isfinite(loss.total))):
            return False
        (scaled * W).backward()  # FSDP averages gradients over ranks; the factors already make global shares
        values = {**loss.metrics, "pg_loss": loss.pg.item(), "entropy": loss.entropy.item()}
        for key, value in values.items():
            if key in ("pg_loss", "kl_ref"):
                ratio = f_agg if by_mini else r_agg
            else:
                ratio = f_tok if by_mini else r_tok
            self.sums[key] = self.sums.get(key, 0.0) + (value * ratio if ratio != 1.0 else value)
        self.metric_count += 0 if by_mini else 1
        return True

    def metrics(self, grad_norms: list[float], skipped: int) -> dict[str, float]:
        keys = sorted(set(self.sums) | set(POLICY_METRICS) | ({"kl_ref"} if self.ref_logp is not None else set()))
        t = D.all_reduce(
            torch.tensor([self.sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.passes.device)
        )
        out = {f"policy/{k}": v / max(1, self.metric_count) for k, v in zip(keys, t.tolist())}
        out["policy/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        out["policy/updates"] = len(grad_norms)
        out["policy/skipped_updates"] = skipped
        return out


def update_value(passes: ForwardPasses, value, optimizer, batch: RolloutBatch, returns, old_values) -> dict[str, float]:
    """One pass of the clipped value loss over micro-batches (one optimizer step each)."""
    o = passes.cfg.optim
    mask = batch.response_mask.bool()
    losses = []
    T = batch.response_ids.shape[1]
    for plan in passes.plan(batch, list(range(len(batch))), o.micro_batch_size):
        rows = torch.tensor(plan)
        optimizer.zero_grad(set_to_none=True)
        values = value(batch.input_ids[rows], batch.attention_mask[rows], T)
        loss, _ = algo.ppo_value_loss(values, old_values[rows], returns[rows], mask[rows], o.value_clip)
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
