"""Rollout collection: generation rounds, verification, PRIME's accuracy filter, refill and the
buffer of surplus groups.

A step wants ``rollout.prompts_per_step`` groups of ``K`` responses whose accuracy lies in
``[filter.low, filter.high]``. Each round draws ``ceil(prompts_per_step * oversample)`` prompts
from the resumable :class:`~iprime.data.prompts.PromptStream`, samples K responses each and
verifies them; kept groups accumulate until the step is full or ``rollout.max_rounds`` rounds
ran. What the step keeps of the kept groups beyond its need follows ``rollout.buffer``:

- ``rollouts``: the groups (at most one step's worth) wait in :attr:`RolloutCollector.buffer`
  and are trained on first next step, before any new round;
- ``prompts`` (the PRIME repository's ``ray_trainer.py`` ``add_to_buffer`` /
  ``BufferedDataLoader``): only their dataset rows wait in
  :attr:`RolloutCollector.prompt_buffer`; next step up to ``prompts_per_step`` of them are put
  before the first round's new prompts, sampled by the current policy and filtered again.

Every row carries ``meta["sampled_step"]`` (the step whose policy sampled it) and
``meta["from_buffer"]`` (its group came through the buffer), from which the step's
``rollout/buffer_share`` and ``rollout/buffer_staleness`` are logged. Under torchrun each rank
samples and verifies a contiguous share of a round's prompts, and the rollouts are all-gathered
in rank order, so every rank filters the same global pool.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from iprime import algo
from iprime.config import PrimeConfig
from iprime.data.prompts import PromptStream
from iprime.eval.loop import GroupTally
from iprime.rollout import RolloutBatch, SamplingParams
from iprime.train import distributed as D
from iprime.train.scoring import RolloutScorer, failures

VERIFY_COUNTS = ("verify/timeouts", "verify/failed")
MAX_REASON_CHARS = 500  # a verifier's reason kept with each sample (buffer, checkpoints, samples.jsonl)


def buffer_stats(train: RolloutBatch, step: int, group_size: int) -> dict[str, float]:
    """``rollout/buffer_share``: the share of the step's groups that came through the buffer;
    ``rollout/buffer_staleness``: their mean age in steps between the policy that sampled them
    and the one that trains on them (``step`` is the number of steps done: the policy about to
    be updated). Only where some groups came through the buffer."""
    firsts = range(0, len(train), group_size)  # one row per group: a group is sampled and buffered whole
    served = [i for i in firsts if train.meta["from_buffer"][i]]
    if not served:
        return {"rollout/buffer_share": 0.0}
    ages = [step - train.meta["sampled_step"][i] for i in served]
    return {"rollout/buffer_share": len(served) / len(firsts), "rollout/buffer_staleness": sum(ages) / len(ages)}


def rollout_stats(generated: list[RolloutBatch], groups_seen: int, groups_kept: int) -> dict[str, float]:
    """Accuracy before the filter, kept share, length and truncation of what a step generated."""
    if not generated:  # a step served entirely from the buffer generates nothing
        return {}
    every = RolloutBatch.cat(generated)
    return {
        "rollout/acc_before_filter": float(every.tensors["outcome"].mean()),
        "rollout/kept_group_frac": groups_kept / max(1, groups_seen),
        "rollout/response_length": float(every.response_mask.sum(-1).float().mean()),
        "rollout/truncated_frac": float(every.truncated.float().mean()),
    }


def group_stats(
    generated: list[RolloutBatch], rows: Sequence[Mapping[str, Any]], ability_key: str, source_key: str
) -> dict[str, float]:
    """Accuracy and response count by ability and by data source of what a step sampled, before
    the filter (like ``rollout/acc_before_filter``): ``rollout/acc/<ability>``,
    ``rollout/count/<ability>`` and, when the step's rows have at most
    :data:`~iprime.eval.loop.MAX_SOURCE_GROUPS` sources, ``rollout/acc/source/<data_source>`` and
    ``rollout/count/source/<data_source>`` (:class:`~iprime.eval.loop.GroupTally`).

    ``generated``: the step's global rounds, whose ``meta["row"]`` indexes ``rows``. Under
    torchrun every rank holds the same all-gathered rounds, so these are sums over all ranks'
    samples and every rank logs the same names, a rank that sampled no row of an ability
    included."""
    if not generated:
        return {}
    every = RolloutBatch.cat(generated)
    sampled = [rows[int(r)] for r in every.meta["row"]]
    tally = GroupTally.for_rows(sampled, ability_key, source_key)
    tally.add(sampled, every.tensors["outcome"].tolist())
    return tally.metrics("rollout")


def round_line(
    step: int, index: int, rounds: int, batch: RolloutBatch, keep: torch.Tensor, K: int, n_kept: int, want: int
) -> str:
    """The line a generation round logs: ``step 1: round 2 of 4: 32 prompts x 4 sampled,
    accuracy 0.125, kept 3 groups (5 of 16 for the step)``. ``index`` counts from 1; ``keep``
    is the round's ``[B]`` keep-mask, ``n_kept`` the step's kept groups so far."""
    acc = float(batch.tensors["outcome"].mean()) if len(batch) else float("nan")
    return (
        f"step {step}: round {index} of {rounds}: {len(batch) // K} prompts x {K} sampled, accuracy {acc:.3f}, "
        f"kept {int(keep.sum()) // K} groups ({min(n_kept, want)} of {want} for the step)"
    )


def _json_safe(value: Any) -> Any:
    """``value`` if JSON can write it (rows read from JSON can), else its ``str``."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def token_reward_fields(tokens: Sequence[str], rewards: Sequence[float], lowest: int = 0) -> dict[str, list]:
    """A sample's per-token PRM rewards for ``samples.jsonl``, rounded to 4 decimals:
    ``{"token_rewards": [[token_text, reward], ...]}`` for every token (``lowest == 0``), else
    ``{"lowest_tokens": [[position, token_text, reward], ...]}`` for the ``lowest`` most negative
    ones, most negative first (where the PRM thinks the response went wrong)."""
    if len(tokens) != len(rewards):
        raise ValueError(f"{len(tokens)} tokens but {len(rewards)} rewards")
    rounded = [round(float(r), 4) + 0.0 for r in rewards]  # + 0.0: -0.0 reads as 0.0
    if lowest == 0:
        return {"token_rewards": [[t, r] for t, r in zip(tokens, rounded)]}
    order = sorted(range(len(rounded)), key=lambda i: (rounded[i], i))[:lowest]
    return {"lowest_tokens": [[i, tokens[i], rounded[i]] for i in order]}


def sample_records(
    batch: RolloutBatch,
    references: Sequence[Any],
    tokenizer,
    *,
    groups: int,
    group_size: int,
    token_rewards: torch.Tensor | None = None,
    lowest_tokens: int = 0,
) -> list[dict[str, Any]]:
    """The first ``groups`` prompt groups of ``batch`` (all ``group_size`` responses of each) as
    ``samples.jsonl`` rows: ``group`` (its index in ``batch``), ``row`` (the dataset index),
    ``prompt`` (the rendered prompt text the policy saw), ``reference``, ``response``, ``score``,
    ``reason`` (the verifier's explanation), ``ended`` (stopped at EOS, not cut at the length cap)
    and, given the PRM's ``token_rewards`` ``[B, T]``, the per-token rewards
    (:func:`token_reward_fields`). ``references[i]`` is dataset row ``i``'s reference."""
    n = min(len(batch), groups * group_size)
    rows_of, reasons = batch.meta.get("row"), batch.meta.get("reason")
    mask = batch.response_mask.bool()
    out = []
    for i in range(n):
        row = int(rows_of[i]) if rows_of is not None else None
        record: dict[str, Any] = {
            "group": i // group_size,
            "row": row,
            "prompt": batch.prompt_texts[i],
            "reference": _json_safe(references[row]) if row is not None else None,
            "response": batch.texts[i],
            "score": round(float(batch.tensors["outcome"][i]), 4),
            "reason": reasons[i] if reasons is not None else None,
            "ended": not bool(batch.truncated[i]),
        }
        if token_rewards is not None:
            ids = batch.response_ids[i][mask[i]].tolist()
            tokens = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=False)
            record.update(token_reward_fields(tokens, token_rewards[i][mask[i]].tolist(), lowest_tokens))
        out.append(record)
    return out


class RolloutCollector:
    """Turns prompts into a step's filtered global batch; owns the prompt stream and the buffer.

    ``prompts[i]`` is the rendered prompt of ``rows[i]`` and ``references[i]`` its reference;
    ``scorer`` (:class:`~iprime.train.scoring.RolloutScorer`) scores responses in [0, 1].
    ``policy_root``: the policy's FSDP root when the built-in sampler
    runs the (sharded) policy, whose full parameters are then gathered for the whole round."""

    def __init__(
        self,
        config: PrimeConfig,
        dist: D.DistContext,
        device: torch.device,
        generator,
        rows: Sequence[Mapping[str, Any]],
        prompts: Sequence[Any],
        references: Sequence[Any],
        scorer: RolloutScorer,
        policy_root: torch.nn.Module | None = None,
    ) -> None:
        self.cfg, self.dist, self.device = config, dist, device
        self.generator, self.rows, self.prompts, self.references = generator, rows, prompts, references
        self.scorer = scorer
        self.policy_root = policy_root
        self.stream = PromptStream(len(rows), config.train.seed, config.data.shuffle)
        self.buffer: RolloutBatch | None = None  # rollout.buffer=rollouts: surplus groups
        self.prompt_buffer: list[int] = []  # rollout.buffer=prompts: dataset rows of surplus groups
        self.last_generated: RolloutBatch | None = None  # an empty step's rounds, before the filter
        self.log: Callable[[str], None] | None = None  # hears one line per round (rank 0's trainer sets it)

    def _sampling_params(self, step: int, round_index: int) -> SamplingParams:
        r = self.cfg.rollout
        # seeded by (run seed, step, round, rank): a resumed run samples exactly what the original would
        seed = (self.cfg.train.seed * 1_000_003 + step * 101 + round_index + self.dist.rank * 7_919_993) % (2**31)
        return SamplingParams(
            n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens, seed=seed
        )

    def generate_round(
        self, step: int, round_index: int, buffered: Sequence[int] = ()
    ) -> tuple[RolloutBatch, dict[str, float]]:
        """Sample and verify one round: the dataset rows ``buffered`` (prompts back from the
        buffer), then the stream's next ``ceil(prompts_per_step * oversample)``. Returns the
        global round (identical on every rank)."""
        fresh = self.stream.take(math.ceil(self.cfg.rollout.prompts_per_step * self.cfg.rollout.oversample))
        indices = list(buffered) + fresh
        shares = D.group_shares(len(indices), self.dist.world_size)
        start, end = shares[self.dist.rank]
        mine = indices[start:end]
        batch, t_gen, t_ver, first_failure = None, 0.0, 0.0, None
        verify_stats = dict.fromkeys(VERIFY_COUNTS, 0)
        if mine:
            t0 = time.perf_counter()
            with D.full_params(self.policy_root):
                batch = self.generator.generate(
                    [self.prompts[i] for i in mine], self._sampling_params(step, round_index)
                )
            t_gen = time.perf_counter() - t0
            row_ids = [mine[int(p)] for p in batch.prompt_index]
            batch.meta["row"] = row_ids
            t0 = time.perf_counter()
            rows, references = [self.rows[r] for r in row_ids], [self.references[r] for r in row_ids]
            results, verify_stats = self.scorer.verify(batch.texts, rows, references, row_ids)
            scores = [float(r.score) for r in results]
            batch.tensors["outcome"] = torch.tensor(scores, dtype=torch.float32, device=batch.response_ids.device)
            batch.meta["reason"] = [r.reason[:MAX_REASON_CHARS] for r in results]
            first_failure = next(iter(failures(results)), None)
            t_ver = time.perf_counter() - t0
        batch = D.all_gather_rollouts(batch, [s for s, _ in shares], self.dist, self.device)
        batch.meta["sampled_step"] = [step] * len(batch)
        batch.meta["from_buffer"] = [int(p) < len(buffered) for p in batch.prompt_index]
        counts = D.all_reduce(torch.tensor([verify_stats[k] for k in VERIFY_COUNTS], device=self.device))
        stats = {"time/generate": t_gen, "time/verify": t_ver, "generated_tokens": int(batch.response_mask.sum())}
        stats.update(zip(VERIFY_COUNTS, counts.tolist()))
        self._check_failures(
            int(stats["verify/failed"]), len(batch), first_failure, f"step {step + 1}'s round {round_index + 1}"
        )
        return batch, stats

    def _check_failures(self, failed: int, total: int, first: str | None, what: str) -> None:
        """The scorer's stop rule on the round's global counts (the same on every rank, so every rank
        stops together); each rank's first failure is gathered only when it stops."""
        if failed and (failed == total or failed / total > self.cfg.verify.max_failed_share):
            self.scorer.check_failures(failed, total, D.all_gather_objects(first, self.dist), what)

    def _keep_mask(self, batch: RolloutBatch) -> torch.Tensor:
        f = self.cfg.filter
        if not f.enabled:
            return torch.ones(len(batch), dtype=torch.bool)
        return algo.filter_groups(
            batch.tensors["outcome"], batch.truncated, self.cfg.rollout.n, f.low, f.high, f.drop_truncated
        )

    def collect(self, step: int) -> tuple[RolloutBatch | None, dict[str, float]]:
        """Generate and filter until the step has ``prompts_per_step`` groups or rounds run out.

        Returns the step's global batch (identical on every rank; ``None`` when no group is left
        to train on) and the rollout metrics."""
        K, want = self.cfg.rollout.n, self.cfg.rollout.prompts_per_step
        kept = [self._served_buffer()] if self.buffer is not None and len(self.buffer) else []
        n_kept = sum(len(b) for b in kept) // K
        # rollout.buffer=prompts: at most a step's worth of buffered prompts head the first round
        # (ray_trainer.py fit: get_from_buffer(batch_size, ...), concatenated before the first batch)
        buffered, self.prompt_buffer = self.prompt_buffer[:want], self.prompt_buffer[want:]
        stats: dict[str, float] = {"time/generate": 0.0, "time/verify": 0.0, "generated_tokens": 0}
        stats.update(dict.fromkeys(VERIFY_COUNTS, 0))
        generated, seen, passed, rounds = [], 0, 0, 0
        while (n_kept < want or buffered) and rounds < self.cfg.rollout.max_rounds:
            batch, s = self.generate_round(step, rounds, buffered)
            buffered = []
            stats = {key: stats[key] + s[key] for key in stats}
            generated.append(batch)
            keep = self._keep_mask(batch)
            seen, passed = seen + len(batch) // K, passed + int(keep.sum()) // K
            if keep.any():
                kept.append(batch.select(keep))
                n_kept += int(keep.sum()) // K
            rounds += 1
            if self.log is not None:
                self.log(round_line(step + 1, rounds, self.cfg.rollout.max_rounds, batch, keep, K, n_kept, want))
        stats["rollout/rounds"] = rounds
        stats.update(rollout_stats(generated, seen, passed))
        stats.update(group_stats(generated, self.rows, self.cfg.data.ability_key, self.cfg.data.source_key))
        train, stats = self._take(kept, n_kept, stats, step)
        # an empty step keeps what it generated, for its samples.jsonl rows; a step that trains
        # keeps nothing (the rounds would hold memory through the updates)
        self.last_generated = RolloutBatch.cat(generated) if train is None and generated else None
        return train, stats

    def _served_buffer(self) -> RolloutBatch:
        """The buffered groups as this step serves them: marked as having come through the buffer."""
        buffer = self.buffer.select(torch.arange(len(self.buffer)))
        buffer.meta["from_buffer"] = [True] * len(buffer)
        return buffer

    def _take(self, kept: list[RolloutBatch], n_kept: int, stats: dict[str, float], step: int):
        """The step's groups from the kept pool; the surplus goes to the buffer ``rollout.buffer`` names."""
        K, want = self.cfg.rollout.n, self.cfg.rollout.prompts_per_step
        if not kept:
            self.buffer = None
            stats["rollout/buffer_groups"] = len(self.prompt_buffer)
            return None, stats
        pool = RolloutBatch.cat(kept)
        groups = min(want, n_kept)
        groups -= groups % self.dist.world_size  # equal shares of whole groups per rank
        take = groups * K
        train, surplus = pool.select(torch.arange(take)), pool.select(torch.arange(take, len(pool)))
        if self.cfg.rollout.buffer == "rollouts":
            self.buffer = surplus.select(torch.arange(min(len(surplus), want * K))) if len(surplus) else None
            stats["rollout/buffer_groups"] = (len(self.buffer) // K) if self.buffer is not None else 0
        else:
            # the surplus groups' prompts, in order and without a cap (ray_trainer.py add_to_buffer);
            # a step takes back at most prompts_per_step of them
            self.buffer = None
            self.prompt_buffer += [int(r) for r in surplus.meta["row"][::K]]
            stats["rollout/buffer_groups"] = len(self.prompt_buffer)
        if take == 0:  # fewer kept groups than ranks: all wait in the buffer
            return None, stats
        stats["rollout/acc_after_filter"] = float(train.tensors["outcome"].mean())
        stats.update(buffer_stats(train, step, K))
        return train, stats

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict(), "buffer": self.buffer, "prompt_buffer": list(self.prompt_buffer)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (``state`` may be a run checkpoint's whole meta). Either
        buffer is served whatever ``rollout.buffer`` now says; new surplus goes where it says."""
        self.stream.load_state_dict(state["stream"])
        self.buffer = state["buffer"].to(self.device) if state["buffer"] is not None else None
        self.prompt_buffer = [int(r) for r in state.get("prompt_buffer", [])]  # none before rollout.buffer
        if self.buffer is None:
            return
        n, meta = len(self.buffer), self.buffer.meta
        if "reason" not in meta:  # written before reasons were kept
            meta["reason"] = [""] * n
        if "sampled_step" not in meta:  # written before staleness was logged: sampled by the saving step
            meta["sampled_step"] = [int(state["step"]) - 1] * n
            meta["from_buffer"] = [False] * n
