"""Forward passes of the training step, and how a global batch is shared between ranks.

One code path for any world size: with one process the rank shares are the whole batch, the
collectives do nothing and the dummy micro-batch count is 0. Under torchrun each rank holds a
contiguous share of whole groups of the global batch; models sharded with FSDP2 run through
their :class:`~iprime.train.distributed.LogprobModule` root, and every rank runs as many
forward passes as the busiest (FSDP gathers parameters collectively in each one).
"""

from __future__ import annotations

import math

import torch

from iprime.config import PrimeConfig
from iprime.models import response_logprobs
from iprime.rollout import RolloutBatch
from iprime.train import distributed as D
from iprime.train.memory import autocast_context, plan_micro_batches, row_lengths


def trim_padding(ids: torch.Tensor, mask: torch.Tensor, response_len: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Drop all-padding columns: leading ones of the (left-padded) prompt, trailing ones of the
    (right-padded) response. ``[b, P+T]`` -> trimmed ids and mask, and the response columns kept."""
    P = ids.shape[1] - response_len
    prompt_cols = mask[:, :P].any(0).nonzero()
    start = int(prompt_cols[0]) if len(prompt_cols) else P - 1
    start = min(start, P - 1)  # keep at least one prompt column
    resp_cols = mask[:, P:].any(0).nonzero()
    keep_t = int(resp_cols[-1]) + 1 if len(resp_cols) else 1
    return ids[:, start : P + keep_t], mask[:, start : P + keep_t], keep_t


def rank_rows(n_rows: int, group_size: int, world_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` global rows of every rank: contiguous shares of whole groups."""
    return [(s * group_size, e * group_size) for s, e in D.group_shares(n_rows // group_size, world_size)]


def agg_denominator(mask: torch.Tensor, agg: str) -> float:
    """The denominator :func:`iprime.algo.aggregate_loss` divides this mask's summed loss by."""
    if agg == "token-mean":
        return float(mask.sum())
    if agg == "seq-mean-token-mean":
        return float(mask.any(-1).sum())
    return float(mask.shape[0])


class ForwardPasses:
    """Log-prob passes over a :class:`RolloutBatch`, micro-batched, with the data-parallel helpers.

    ``roots`` maps ``id(model)`` to its FSDP root (empty in one process)."""

    def __init__(
        self, config: PrimeConfig, dist: D.DistContext, device: torch.device, roots: dict[int, torch.nn.Module]
    ) -> None:
        self.cfg, self.dist, self.device, self.roots = config, dist, device, roots
        t = config.rollout.temperature
        # log-probs of the distribution the sampler drew from; greedy (t = 0) reads the plain model
        self.temperature = max(t, 1e-6) if t > 0 else 1.0

    # ------------------------------------------------------------------ rank shares
    def local_share(self, batch: RolloutBatch) -> RolloutBatch:
        """This rank's contiguous rows of a global batch (the whole batch in one process)."""
        s, e = rank_rows(len(batch), self.cfg.rollout.n, self.dist.world_size)[self.dist.rank]
        return batch.select(torch.arange(s, e))

    def pad_count(self, n: int) -> int:
        """Dummy micro-batches this rank adds to run as many as the busiest rank."""
        return int(D.all_reduce(torch.tensor([n], device=self.device), "max")[0]) - n

    def all_finite(self, ok: bool) -> bool:
        """The same skip decision on every rank: true only where every rank's value is finite."""
        return bool(D.all_reduce(torch.tensor([int(ok)], device=self.device), "min")[0])

    def global_stats(self, values: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """mean / std (Bessel) / max / min of ``values[mask]`` over all ranks, in float64."""
        v = values[mask].double()
        t = torch.stack([v.sum(), (v * v).sum(), torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device)])
        D.all_reduce(t)
        big = torch.tensor(float("inf"), dtype=torch.float64, device=v.device)
        hi = D.all_reduce((v.max() if v.numel() else -big).reshape(1).clone(), "max")
        lo = D.all_reduce((v.min() if v.numel() else big).reshape(1).clone(), "min")
        n = float(t[2])
        mean = float(t[0]) / max(1.0, n)
        var = max(0.0, float(t[1]) - n * mean * mean) / max(1.0, n - 1)
        return {"mean": mean, "std": math.sqrt(var) if n > 1 else 0.0, "max": float(hi[0]), "min": float(lo[0])}

    def global_mean(self, value: float) -> float:
        """Mean over ranks of a per-rank value (ranks hold equal row counts)."""
        t = D.all_reduce(torch.tensor([value], dtype=torch.float64, device=self.device))
        return float(t[0]) / self.dist.world_size

    # ------------------------------------------------------------------ passes
    def plan(self, batch: RolloutBatch, order: list[int], max_rows: int, unit: int = 1) -> list[list[int]]:
        """Micro-batches over ``order`` (row ids of ``batch``): ``max_rows`` rows, and under
        ``optim.micro_batch_tokens`` also a padded-token budget."""
        budget = self.cfg.optim.micro_batch_tokens
        if budget is None:
            return plan_micro_batches(order, max_rows)
        p, r = row_lengths(batch.prompt_mask, batch.response_mask)
        return plan_micro_batches(order, max_rows, budget, p, r, unit)

    def logprobs(self, model, batch: RolloutBatch, rows: torch.Tensor, *, entropy: bool = False):
        """Log-probs (and entropy) ``[b, T]`` of the response tokens of ``rows``, padding trimmed."""
        T = batch.response_ids.shape[1]
        ids, mask, t_keep = trim_padding(batch.input_ids[rows], batch.attention_mask[rows], T)
        root = self.roots.get(id(model))
        with autocast_context(self.cfg.model.autocast, self.device):
            if root is not None:
                out = root(ids, mask, t_keep, self.temperature, entropy)
            else:
                out = response_logprobs(model, ids, mask, t_keep, temperature=self.temperature, return_entropy=entropy)

        def pad(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(x, (0, T - t_keep))

        return (pad(out[0]), pad(out[1])) if entropy else pad(out)

    @torch.no_grad()
    def all_logprobs(self, model, batch: RolloutBatch, micro: int) -> torch.Tensor:
        """``[B, T]`` log-probs of every row, in eval mode, ``micro`` rows per forward."""
        was = model.training
        model.eval()
        try:
            plans = self.plan(batch, list(range(len(batch))), micro)
            out = torch.cat([self.logprobs(model, batch, torch.tensor(r)) for r in plans])
            for _ in range(self.pad_count(len(plans))):
                self.logprobs(model, batch, torch.tensor([0]))
            return out
        finally:
            model.train(was)
            D.reshard_all(self.roots.get(id(model)))
