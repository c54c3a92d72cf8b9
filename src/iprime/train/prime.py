"""The PRIME training loop: orchestration only; the math lives in :mod:`iprime.algo`.

One step (see ``docs``/README):
rollout K per prompt -> verify -> filter groups (refill from further prompts, buffer surplus)
-> log-probs of policy (old), reference and PRM -> implicit process rewards -> PRM update
-> advantages -> PPO policy update (mini-batches, epochs).

Under ``torchrun`` (world size N > 1) the same loop runs data-parallel, see
:mod:`iprime.train.distributed`: prompts are split by rank, rollouts all-gathered so the filter
decides on the global pool identically everywhere, each rank trains on a contiguous share of
whole groups, the models are FSDP2-sharded, whitening uses all-reduced statistics, and every
loss is normalised by its global denominator so N ranks compute the 1-process gradient.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from iprime import algo
from iprime.config import PrimeConfig, save_config
from iprime.data.prompts import PromptStream, check_rows
from iprime.models import load_model, load_tokenizer, response_logprobs
from iprime.rollout import HFGenerator, RolloutBatch, SamplingParams
from iprime.train.chat import render_prompt
from iprime.train import distributed as D
from iprime.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from iprime.train.logging import MetricsLogger
from iprime.train.memory import (attach_lora, autocast_context, enable_gradient_checkpointing, plan_micro_batches,
                                 row_lengths)
from iprime.train.value import ValueModel

Verifier = Callable[[str, Any], float]


class NonFiniteError(RuntimeError):
    """Raised after ``train.max_bad_steps`` consecutive steps with a non-finite loss or gradient."""


def _lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def _trim(ids: torch.Tensor, mask: torch.Tensor, response_len: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Drop all-padding columns: leading ones of the (left-padded) prompt, trailing ones of the
    (right-padded) response. Returns trimmed ids, mask, new response length, and the response
    columns kept (to pad results back to ``response_len``)."""
    P = ids.shape[1] - response_len
    prompt_cols = mask[:, :P].any(0).nonzero()
    start = int(prompt_cols[0]) if len(prompt_cols) else P - 1
    start = min(start, P - 1)  # keep at least one prompt column
    resp_cols = mask[:, P:].any(0).nonzero()
    keep_t = int(resp_cols[-1]) + 1 if len(resp_cols) else 1
    return ids[:, start : P + keep_t], mask[:, start : P + keep_t], keep_t, keep_t


class PrimeTrainer:
    """PRIME (and its baselines, one config value apart) on a causal LM.

    >>> trainer = PrimeTrainer(model="path/to/sft", config=cfg, train_dataset=rows, verifier=fn)
    >>> trainer.train()

    ``model``: a path/hub id or a loaded causal LM (then pass ``tokenizer``). ``train_dataset``:
    rows (mappings) with ``config.data.prompt_key`` and ``config.data.reference_key``.
    ``verifier(response_text, row[reference_key]) -> float`` in [0, 1].
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        config: PrimeConfig,
        train_dataset: Sequence[Mapping[str, Any]],
        verifier: Verifier,
        *,
        tokenizer=None,
        prm_model: torch.nn.Module | None = None,
        ref_model: torch.nn.Module | None = None,
        eval_dataset: Sequence[Mapping[str, Any]] | None = None,
        eval_fn: Callable[["PrimeTrainer"], dict[str, float]] | None = None,
        generator=None,
    ) -> None:
        self.cfg = config
        cfg = config
        self.dist, self.device = D.init_distributed(cfg.model.device)
        if self.dist.enabled:
            self._check_distributed_config()
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        torch.manual_seed(cfg.train.seed)

        if isinstance(model, (str, Path)):
            self.policy = load_model(model, dtype=cfg.model.dtype, device=self.device,
                                     gradient_checkpointing=cfg.model.gradient_checkpointing)
            self.tokenizer = tokenizer or load_tokenizer(model)
        else:
            if tokenizer is None:
                raise ValueError("pass tokenizer= together with a loaded model")
            self.policy, self.tokenizer = model.to(self.device), tokenizer
            if cfg.model.gradient_checkpointing:
                enable_gradient_checkpointing(self.policy)
        self.policy.train()

        self.reference = None
        if cfg.model.reference != "policy":
            if ref_model is not None:
                self.reference = ref_model.to(self.device)
            elif cfg.model.reference == "sft":
                self.reference = copy.deepcopy(self.policy)
            else:
                self.reference = load_model(cfg.model.reference, dtype=cfg.model.dtype, device=self.device)
            self.reference.eval().requires_grad_(False)

        self.prm = None
        # prm.lora: the PRM is the reference plus a LoRA adapter; reference log-probs are the PRM's
        # with the adapter switched off, so the reference is not held separately
        self.reference_is_prm_base = bool(cfg.prm.enabled and cfg.prm.lora)
        if cfg.prm.enabled:
            if self.reference_is_prm_base:
                if prm_model is not None:
                    raise ValueError("prm.lora builds the PRM on the reference; pass ref_model=, not prm_model=")
                self.prm = attach_lora(self.reference, cfg.prm.lora_r, cfg.prm.lora_alpha, cfg.prm.lora_dropout)
                self.reference = None
            elif prm_model is not None:
                self.prm = prm_model.to(self.device)
            elif cfg.model.prm:
                self.prm = load_model(cfg.model.prm, dtype=cfg.model.dtype, device=self.device)
            else:
                self.prm = copy.deepcopy(self.policy)
            if cfg.model.gradient_checkpointing:
                enable_gradient_checkpointing(self.prm)
            self.prm.train()

        self.value = ValueModel(self.policy).to(self.device) if cfg.algo.estimator == "gae" else None

        rows = list(train_dataset)
        check_rows(rows, [cfg.data.prompt_key, cfg.data.reference_key], source="train_dataset")
        self.rows = rows
        self.prompts = [render_prompt(self.tokenizer, row[cfg.data.prompt_key]) for row in rows]
        self.verifier = verifier
        self.eval_dataset = eval_dataset
        self.eval_fn = eval_fn
        self.stream = PromptStream(len(rows), cfg.train.seed, cfg.data.shuffle)
        self.buffer: RolloutBatch | None = None
        # FSDP2 roots (data-parallel runs only): id(model) -> the module whose forward gives log-probs
        self._roots: dict[int, torch.nn.Module] = {}
        if self.dist.enabled:
            for m in (self.policy, self.reference, self.prm):
                if m is not None:
                    self._roots[id(m)] = D.shard_model(m, self.device)
        if generator is not None:
            self.generator = generator
        elif cfg.rollout.engine == "vllm":
            from iprime.rollout.vllm import VLLMGenerator

            if not isinstance(model, (str, Path)):
                raise ValueError('rollout.engine="vllm" loads the policy from its path; pass model= as a path')
            self.generator = VLLMGenerator.from_config(str(model), self.tokenizer, cfg)
        else:
            self.generator = HFGenerator(self.policy, self.tokenizer, batch_size=cfg.rollout.generation_batch_size)
        # The built-in sampler records exactly what a recompute would give (same model and
        # temperature), so the recompute is skipped; another engine's log-probs are not ours.
        own_sampler = isinstance(self.generator, HFGenerator) and self.generator.model is self.policy
        self.reuse_sampling_logprobs = cfg.rollout.old_logprobs == "sampling" or (
            cfg.rollout.old_logprobs == "auto" and own_sampler and not cfg.rollout.is_correction)
        if cfg.rollout.old_logprobs == "sampling" and not own_sampler:
            raise ValueError('rollout.old_logprobs="sampling" needs the built-in HF sampler on the policy')

        self.step = 0
        self.bad_steps = 0
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(cfg.optim.schedule, cfg.optim.warmup_steps, cfg.train.steps)
        )
        self.prm_optimizer = (
            torch.optim.AdamW([p for p in self.prm.parameters() if p.requires_grad], lr=cfg.prm.lr,
                              weight_decay=cfg.prm.weight_decay)
            if self.prm is not None else None
        )
        self.value_optimizer = (
            torch.optim.AdamW(self.value.parameters(), lr=cfg.optim.value_lr) if self.value is not None else None
        )
        self.step_delimiter_ids = None
        if cfg.prm.granularity == "step":
            self.step_delimiter_ids = self.tokenizer.encode(cfg.prm.step_delimiter, add_special_tokens=False)
            if not self.step_delimiter_ids:
                raise ValueError(f"prm.step_delimiter {cfg.prm.step_delimiter!r} encodes to no tokens")
        self.out_dir = Path(cfg.train.out_dir)
        self.logger: MetricsLogger | None = None
        self.checkpoint_format = cfg.train.checkpoint_format
        if self.checkpoint_format == "auto":
            self.checkpoint_format = "dcp" if self.dist.enabled else "torch"
        if self.dist.enabled and self.checkpoint_format != "dcp":
            raise ValueError('train.checkpoint_format="torch" holds full tensors; under torchrun use "dcp" (or "auto")')

    def _check_distributed_config(self) -> None:
        cfg, W = self.cfg, self.dist.world_size
        if cfg.rollout.prompts_per_step % W:
            raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be a multiple of the "
                             f"world size {W}: each rank trains on an equal share of whole groups")
        if cfg.algo.estimator in ("gae", "reinforce_pp"):
            raise ValueError(f'algo.estimator="{cfg.algo.estimator}" is single-process only (its value model / '
                             'whitening is not data-parallel yet); use prime, rloo, grpo or reinforce under torchrun')

    @property
    def has_reference(self) -> bool:
        """A reference distinct from the policy: a frozen model, or the LoRA PRM's base."""
        return self.reference is not None or self.reference_is_prm_base

    # ------------------------------------------------------------------ rollout
    def _generate(self, prompts: list, params: SamplingParams) -> RolloutBatch:
        root = self._roots.get(id(self.policy))
        # the HF sampler runs the policy's plain forward: gather the FSDP shards for its duration
        gather = root is not None and getattr(self.generator, "model", None) is self.policy
        with D.full_params(root) if gather else contextlib.nullcontext():
            return self.generator.generate(prompts, params)

    def _generate_round(self, round_index: int) -> tuple[RolloutBatch, dict[str, float]]:
        cfg = self.cfg
        count = math.ceil(cfg.rollout.prompts_per_step * cfg.rollout.oversample)
        indices = self.stream.take(count)
        W, rank = self.dist.world_size, self.dist.rank
        start, end = D.group_shares(len(indices), W)[rank] if W > 1 else (0, len(indices))
        mine = indices[start:end]
        params = SamplingParams(
            n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
            max_new_tokens=cfg.rollout.max_new_tokens,
            # seeded by (run seed, step, round, rank): a resumed run samples exactly what the original would
            seed=(cfg.train.seed * 1_000_003 + self.step * 101 + round_index + rank * 7_919_993) % (2**31),
        )
        batch, t_gen, t_ver = None, 0.0, 0.0
        if mine:
            t0 = time.perf_counter()
            batch = self._generate([self.prompts[i] for i in mine], params)
            t_gen = time.perf_counter() - t0
            row_ids = [mine[int(p)] for p in batch.prompt_index]
            batch.meta["row"] = row_ids
            t0 = time.perf_counter()
            scores = []
            for text, r in zip(batch.texts, row_ids):
                score = float(self.verifier(text, self.rows[r][cfg.data.reference_key]))
                if not (0.0 <= score <= 1.0) or math.isnan(score):
                    raise ValueError(f"verifier returned {score} for row {r}; scores must lie in [0, 1]")
                scores.append(score)
            batch.tensors["outcome"] = torch.tensor(scores, dtype=torch.float32, device=batch.response_ids.device)
            t_ver = time.perf_counter() - t0
        if W > 1:  # every rank gets the whole round, in rank order: the same pool everywhere
            shares = D.group_shares(len(indices), W)
            parts = D.all_gather_objects(batch.to("cpu") if batch is not None else None, self.dist)
            for part, (s, _) in zip(parts, shares):
                if part is not None:
                    part.prompt_index = part.prompt_index + s
            batch = RolloutBatch.cat([p for p in parts if p is not None]).to(self.device)
        gen_tokens = int(batch.response_mask.sum())
        return batch, {"time/generate": t_gen, "time/verify": t_ver, "generated_tokens": gen_tokens}

    def collect(self) -> tuple[RolloutBatch | None, dict[str, float]]:
        """Generate and filter until the step has ``prompts_per_step`` groups or rounds run out.

        Under torchrun the returned batch is the global one (identical on every rank)."""
        cfg, K = self.cfg, self.cfg.rollout.n
        want = cfg.rollout.prompts_per_step
        kept = [self.buffer] if self.buffer is not None and len(self.buffer) else []
        n_kept = sum(len(b) for b in kept) // K
        stats = {"time/generate": 0.0, "time/verify": 0.0, "generated_tokens": 0}
        generated, n_groups_seen, n_groups_kept = [], 0, 0
        rounds = 0
        while n_kept < want and rounds < cfg.rollout.max_rounds:
            batch, s = self._generate_round(rounds)
            for key in stats:
                stats[key] += s[key]
            generated.append(batch)
            if cfg.filter.enabled:
                keep = algo.filter_groups(batch.tensors["outcome"], batch.truncated, K, cfg.filter.low,
                                          cfg.filter.high, cfg.filter.drop_truncated)
            else:
                keep = torch.ones(len(batch), dtype=torch.bool)
            n_groups_seen += len(batch) // K
            n_groups_kept += int(keep.sum()) // K
            if keep.any():
                kept.append(batch.select(keep))
                n_kept += int(keep.sum()) // K
            rounds += 1
        stats["rollout/rounds"] = rounds
        if generated:  # a step served entirely from the buffer generates nothing
            all_gen = RolloutBatch.cat(generated)
            stats.update({
                "rollout/acc_before_filter": float(all_gen.tensors["outcome"].mean()),
                "rollout/kept_group_frac": n_groups_kept / max(1, n_groups_seen),
                "rollout/response_length": float(all_gen.response_mask.sum(-1).float().mean()),
                "rollout/truncated_frac": float(all_gen.truncated.float().mean()),
            })
        if not kept:
            self.buffer = None
            return None, stats
        pool = RolloutBatch.cat(kept)
        groups = min(want, n_kept)
        groups -= groups % self.dist.world_size  # equal shares of whole groups per rank
        take = groups * K
        train, surplus = pool.select(torch.arange(take)), pool.select(torch.arange(take, len(pool)))
        # surplus groups wait for the next step, but never more than one step's worth
        self.buffer = surplus.select(torch.arange(min(len(surplus), want * K))) if len(surplus) else None
        if take == 0:  # fewer kept groups than ranks: all wait in the buffer
            stats["rollout/buffer_groups"] = (len(self.buffer) // K) if self.buffer is not None else 0
            return None, stats
        stats["rollout/acc_after_filter"] = float(train.tensors["outcome"].mean())
        stats["rollout/buffer_groups"] = (len(self.buffer) // K) if self.buffer is not None else 0
        return train, stats

    # ------------------------------------------------------------------ data parallel helpers
    def _rank_rows(self, n_rows: int) -> list[tuple[int, int]]:
        """``[start, end)`` global rows of every rank: contiguous shares of whole groups."""
        K = self.cfg.rollout.n
        return [(s * K, e * K) for s, e in D.group_shares(n_rows // K, self.dist.world_size)]

    def _local_share(self, batch: RolloutBatch) -> RolloutBatch:
        if not self.dist.enabled:
            return batch
        s, e = self._rank_rows(len(batch))[self.dist.rank]
        return batch.select(torch.arange(s, e))

    def _pad_count(self, n: int) -> int:
        """How many dummy micro-batches this rank adds so every rank runs as many as the busiest
        (FSDP gathers parameters collectively in every forward)."""
        if not self.dist.enabled:
            return 0
        t = D.all_reduce(torch.tensor([n], device=self.device), "max")
        return int(t[0]) - n

    def _all_finite(self, ok: bool) -> bool:
        """The same skip decision on every rank."""
        if not self.dist.enabled:
            return ok
        return bool(D.all_reduce(torch.tensor([int(ok)], device=self.device), "min")[0])

    def _global_stats(self, values: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """mean / std / max / min of ``values[mask]`` over all ranks."""
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

    # ------------------------------------------------------------------ forward passes
    def _micro_batches(self, n: int, size: int, order: torch.Tensor | None = None) -> list[torch.Tensor]:
        idx = torch.arange(n) if order is None else order
        return [idx[s : s + size] for s in range(0, n, size)]

    def _plan(self, batch: RolloutBatch, order: list[int], max_rows: int, unit: int = 1) -> list[list[int]]:
        """Micro-batches over ``order`` (row ids of ``batch``): ``max_rows`` rows, and under
        ``optim.micro_batch_tokens`` also a padded-token budget."""
        budget = self.cfg.optim.micro_batch_tokens
        if budget is None:
            return plan_micro_batches(order, max_rows)
        p, r = row_lengths(batch.prompt_mask, batch.response_mask)
        return plan_micro_batches(order, max_rows, budget, p, r, unit)

    def _logprobs(self, model, batch: RolloutBatch, rows: torch.Tensor, *, entropy: bool = False):
        """Log-probs (and entropy) ``[b, T]`` of the response tokens of ``rows``, padding trimmed."""
        T = batch.response_ids.shape[1]
        ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
        ids, mask, t_keep, _ = _trim(ids, mask, T)
        temperature = max(self.cfg.rollout.temperature, 1e-6) if self.cfg.rollout.temperature > 0 else 1.0
        root = self._roots.get(id(model))
        with autocast_context(self.cfg.model.autocast, self.device):
            if root is not None:
                out = root(ids, mask, t_keep, temperature, entropy)
            else:
                out = response_logprobs(model, ids, mask, t_keep, temperature=temperature, return_entropy=entropy)
        pad = lambda x: torch.nn.functional.pad(x, (0, T - t_keep))  # noqa: E731
        return (pad(out[0]), pad(out[1])) if entropy else pad(out)

    @torch.no_grad()
    def _all_logprobs(self, model, batch: RolloutBatch, micro: int) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            plans = self._plan(batch, list(range(len(batch))), micro)
            out = torch.cat([self._logprobs(model, batch, torch.tensor(r)) for r in plans])
            for _ in range(self._pad_count(len(plans))):
                self._logprobs(model, batch, torch.tensor([0]))
            return out
        finally:
            model.train(was)
            D.reshard_all(self._roots.get(id(model)))

    def _reference_logprobs(self, batch: RolloutBatch, micro: int, old_logp: torch.Tensor) -> torch.Tensor:
        if self.reference is not None:
            return self._all_logprobs(self.reference, batch, micro)
        if self.reference_is_prm_base:
            with self.prm.disable_adapter():
                return self._all_logprobs(self.prm, batch, micro)
        return old_logp

    # ------------------------------------------------------------------ PRM
    def _process_rewards(self, batch, prm_logp, ref_logp, mask):
        cfg = self.cfg.prm
        step_ends = None
        if cfg.granularity == "step":
            step_ends = algo.step_ends_from_delimiter(batch.response_ids, mask, self.step_delimiter_ids)
        return algo.implicit_process_rewards(prm_logp, ref_logp, mask, cfg.beta, cfg.granularity, step_ends)

    def _update_prm(self, batch: RolloutBatch, ref_logp: torch.Tensor, *, return_logp: bool = False
                    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """One PRM step on ``batch`` (this rank's rows). Each micro-batch's mean loss is weighted
        by its share of the global batch's rows, so N ranks compute the 1-process gradient.

        With ``return_logp`` also returns the PRM's log-probs ``[B, T]`` from this (pre-update)
        forward pass, detached; the pass then runs in eval mode so they equal a scoring pass
        (dropout off; models here have none). ``None`` when the update was skipped.

        ``prm.epochs > 1`` runs that many passes (optimizer steps) over the batch; ``prm/loss``
        is the first pass's (the PRM's loss on data it has not seen), ``prm/loss_last`` the last's."""
        was_training = self.prm.training
        if return_logp:
            self.prm.eval()
        try:
            metrics, scored = self._prm_step(batch, ref_logp, return_logp)
            for _ in range(self.cfg.prm.epochs - 1):
                if metrics.get("prm/skipped"):
                    break
                last, _ = self._prm_step(batch, ref_logp, False)
                metrics["prm/loss_last"] = last["prm/loss"]
                metrics["prm/skipped"] = last["prm/skipped"]
        finally:
            self.prm.train(was_training)
        return metrics, scored

    def _prm_step(self, batch: RolloutBatch, ref_logp: torch.Tensor, return_logp: bool):
        cfg, K = self.cfg.prm, self.cfg.rollout.n
        W = self.dist.world_size
        n_global = len(self._global_batch) if W > 1 else len(batch)
        mask = batch.response_mask.bool()
        outcome = batch.tensors["outcome"]
        self.prm_optimizer.zero_grad(set_to_none=True)
        # DPO pairs live within a group, so micro-batches hold whole groups
        micro = max(K, (cfg.micro_batch_size // K) * K)
        plans = self._plan(batch, list(range(len(batch))), micro, unit=K)
        plans = plans + [None] * self._pad_count(len(plans))
        total = 0.0
        scored = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device) if return_logp else None
        for plan in plans:
            rows = torch.tensor(plan if plan is not None else list(range(K)))
            prm_logp = self._logprobs(self.prm, batch, rows)
            if scored is not None and plan is not None:
                scored[rows] = prm_logp.detach()
            if plan is None:  # a dummy: keeps this rank in step with the others' collectives
                loss = (prm_logp.nan_to_num() * 0.0).sum()
            else:
                if cfg.loss == "ce":
                    loss = algo.prm_ce_loss(prm_logp, ref_logp[rows], mask[rows], outcome[rows], cfg.beta)
                else:
                    loss = algo.prm_dpo_loss(prm_logp, ref_logp[rows], mask[rows], outcome[rows], cfg.beta, K)
                loss = loss * (len(rows) / n_global)
            if not self._all_finite(bool(torch.isfinite(loss))):
                self.prm_optimizer.zero_grad(set_to_none=True)
                return {"prm/loss": float("nan"), "prm/skipped": 1.0}, None
            # FSDP averages gradients over ranks; the losses are already global shares
            (loss * W if W > 1 else loss).backward()
            total += loss.item()
        if W > 1:
            total = float(D.all_reduce(torch.tensor([total], dtype=torch.float64, device=self.device))[0])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.prm.parameters(), cfg.grad_clip)
        grad_norm = D.to_float(grad_norm)
        if not math.isfinite(grad_norm):
            self.prm_optimizer.zero_grad(set_to_none=True)
            return {"prm/loss": total, "prm/grad_norm": grad_norm, "prm/skipped": 1.0}, None
        self.prm_optimizer.step()
        return {"prm/loss": total, "prm/grad_norm": grad_norm, "prm/skipped": 0.0}, scored

    # ------------------------------------------------------------------ advantages
    def _advantages(self, batch, mask, token_rewards, old_logp, ref_logp, values):
        cfg, K = self.cfg.algo, self.cfg.rollout.n
        outcome = batch.tensors["outcome"]
        kl = None
        if cfg.kl_mode == "reward" and ref_logp is not None:
            kl = algo.kl_penalty(old_logp, ref_logp, cfg.kl_estimator)
        name = cfg.estimator
        dp = self.dist.enabled  # groups never span ranks: RLOO is local, batch statistics are all-reduced
        if name == "prime":
            rewards = token_rewards if kl is None else token_rewards - cfg.kl_coef * kl
            if dp:
                normalize = cfg.normalize
                if normalize == "batch_norm":  # batch_norm_process_rewards with the global maximum
                    r = algo.zero_outside(rewards.to(torch.float32), mask)
                    rewards = r / (algo.distributed_max(algo.discounted_returns(r, mask, 1.0).abs()) + 1e-6)
                adv = algo.prime_rloo_advantages(
                    outcome, rewards, mask, K, rm_coef=cfg.rm_coef, gamma=cfg.gamma, normalize=None, whiten=False,
                    process_baseline=cfg.process_baseline, outcome_coef=cfg.outcome_coef,
                    outcome_gamma=cfg.outcome_gamma,
                )
                return (algo.distributed_masked_whiten(adv, mask) if cfg.whiten else adv), None
            return algo.prime_rloo_advantages(
                outcome, rewards, mask, K, rm_coef=cfg.rm_coef, gamma=cfg.gamma, normalize=cfg.normalize,
                whiten=cfg.whiten, process_baseline=cfg.process_baseline, outcome_coef=cfg.outcome_coef,
                outcome_gamma=cfg.outcome_gamma,
            ), None
        if name == "rloo":
            adv = algo.rloo_advantages(outcome, mask, K, cfg.gamma)
        elif name == "grpo":
            adv = algo.grpo_advantages(outcome, mask, K)
        elif name == "reinforce":
            adv = algo.reinforce_advantages(outcome, mask, K, cfg.gamma)
        elif name == "reinforce_pp":
            return algo.reinforce_pp_advantages(outcome, mask, K, kl=kl, kl_coef=cfg.kl_coef if kl is not None else 0.0,
                                                gamma=cfg.gamma), None
        else:  # gae
            token = None if kl is None else -cfg.kl_coef * kl
            return algo.gae_advantages_and_returns(outcome, mask, values, cfg.gamma, cfg.lam, token, cfg.whiten)
        if dp:
            return (algo.distributed_masked_whiten(adv, mask) if cfg.whiten else adv), None
        return (algo.masked_whiten(adv, mask) if cfg.whiten else adv), None

    # ------------------------------------------------------------------ policy update
    @staticmethod
    def _agg_den(mask: torch.Tensor, agg: str) -> float:
        """The denominator ``aggregate_loss`` divides this mask's summed loss by."""
        if agg == "token-mean":
            return float(mask.sum())
        if agg == "seq-mean-token-mean":
            return float(mask.any(-1).sum())
        return float(mask.shape[0])

    def _update_policy(self, batch, mask, advantages, old_logp, ref_logp) -> dict[str, float]:
        """PPO epochs over shuffled mini-batches; gradients accumulate over micro-batches.

        A mini-batch whose loss or gradient is non-finite is skipped (no optimizer step).

        Mini-batches are drawn from the global batch (the same permutation on every rank); each
        rank runs its own rows of a mini-batch in micro-batches (as many on every rank, padded
        with dummies). ``optim.loss_scope`` sets the normaliser: ``micro`` divides each step's
        summed loss by the total over the same-index micro-batches of all ranks and weighs it by
        their share of the mini-batch's rows (1 rank: the micro-batch's own mean, as always);
        ``mini_batch`` divides by the mini-batch's total."""
        cfg, o = self.cfg, self.cfg.optim
        W, rank = self.dist.world_size, self.dist.rank
        gb = self._global_batch if W > 1 else batch
        gmask = gb.response_mask.bool()
        shares = self._rank_rows(len(gb)) if W > 1 else [(0, len(batch))]
        lo = shares[rank][0]
        n = len(gb)
        sums: dict[str, float] = {}
        micro_count, grad_norms, skipped = 0, [], 0
        g = torch.Generator().manual_seed(cfg.train.seed * 7919 + self.step)
        for _ in range(o.epochs):
            for mini in self._micro_batches(n, o.mini_batch_size, torch.randperm(n, generator=g)):
                self.optimizer.zero_grad(set_to_none=True)
                mini_list = mini.tolist()
                plans = [self._plan(gb, [i for i in mini_list if s <= i < e], o.micro_batch_size) for s, e in shares]
                mini_agg, mini_tok = self._agg_den(gmask[mini], o.agg), float(gmask[mini].sum())
                finite = True
                for j in range(max(len(p) for p in plans)):
                    mine = plans[rank][j] if j < len(plans[rank]) else None
                    rows = torch.tensor([i - lo for i in mine] if mine else [0])
                    logp, entropy = self._logprobs(self.policy, batch, rows, entropy=True)
                    if mine is None:  # dummy micro-batch: no rows of this rank in this step
                        if not self._all_finite(True):
                            finite = False
                            break
                        (logp.nan_to_num() * 0.0).sum().backward()
                        micro_count += 0 if o.loss_scope == "mini_batch" else 1
                        continue
                    m = mask[rows]
                    pg, metrics = algo.ppo_policy_loss(logp, old_logp[rows], advantages[rows], m, o.clip_low,
                                                       o.clip_high, o.dual_clip, o.agg)
                    ent = algo.masked_mean(entropy, m)
                    loss = pg - cfg.algo.entropy_coef * ent if cfg.algo.entropy_coef else pg
                    kl_term = None
                    if ref_logp is not None:
                        kl_term = algo.kl_loss(logp, ref_logp[rows], m, cfg.algo.kl_estimator, o.agg)
                        metrics["kl_ref"] = kl_term.item()
                        if cfg.algo.kl_mode == "loss":
                            loss = loss + cfg.algo.kl_coef * kl_term
                    if W == 1 and o.loss_scope == "micro":
                        f_agg = f_tok = len(rows) / len(mini)
                        r_agg = r_tok = 1.0
                    else:
                        union = [i for p in plans if j < len(p) for i in p[j]]
                        um = gmask[union]
                        r_agg = self._agg_den(m, o.agg) / max(self._agg_den(um, o.agg), 1.0)
                        r_tok = float(m.sum()) / max(float(um.sum()), 1.0)
                        if o.loss_scope == "micro":
                            f_agg, f_tok = r_agg * len(union) / len(mini), r_tok * len(union) / len(mini)
                        else:
                            f_agg = self._agg_den(m, o.agg) / max(mini_agg, 1.0)
                            f_tok = float(m.sum()) / max(mini_tok, 1.0)
                    if f_agg == f_tok:
                        scaled = loss * f_agg
                    else:  # the entropy bonus is a token mean, the rest follows optim.agg
                        scaled = pg * f_agg
                        if cfg.algo.entropy_coef:
                            scaled = scaled - cfg.algo.entropy_coef * ent * f_tok
                        if kl_term is not None and cfg.algo.kl_mode == "loss":
                            scaled = scaled + cfg.algo.kl_coef * kl_term * f_agg
                    if not self._all_finite(bool(torch.isfinite(loss))):
                        finite = False
                        break
                    # FSDP averages gradients over ranks; the factors already make global shares
                    (scaled * W if W > 1 else scaled).backward()
                    # metrics: means over the same-index micro-batches of all ranks ("micro"), or over
                    # the mini-batch ("mini_batch": counted once per mini-batch, split-independent)
                    by_mini = o.loss_scope == "mini_batch"
                    for key, value in {**metrics, "pg_loss": pg.item(), "entropy": ent.item()}.items():
                        if key in ("pg_loss", "kl_ref"):
                            ratio = f_agg if by_mini else r_agg
                        else:
                            ratio = f_tok if by_mini else r_tok
                        sums[key] = sums.get(key, 0.0) + (value * ratio if ratio != 1.0 else value)
                    micro_count += 0 if by_mini else 1
                if o.loss_scope == "mini_batch":
                    micro_count += 1  # metrics are per mini-batch
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), o.grad_clip) if finite else None
                grad_norm = D.to_float(grad_norm) if grad_norm is not None else None
                if grad_norm is None or not math.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                self.optimizer.step()
                grad_norms.append(grad_norm)
        if W > 1:
            keys = sorted(set(sums) | {"clip_frac", "dual_clip_frac", "approx_kl", "ratio_mean", "pg_loss", "entropy"}
                          | ({"kl_ref"} if ref_logp is not None else set()))
            t = D.all_reduce(torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.device))
            sums = dict(zip(keys, t.tolist()))
        out = {f"policy/{k}": v / max(1, micro_count) for k, v in sums.items()}
        out["policy/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        out["policy/updates"] = len(grad_norms)
        out["policy/skipped_updates"] = skipped
        return out

    def _update_value(self, batch, mask, returns, old_values) -> dict[str, float]:
        o = self.cfg.optim
        losses = []
        T = batch.response_ids.shape[1]
        for plan in self._plan(batch, list(range(len(batch))), o.micro_batch_size):
            rows = torch.tensor(plan)
            self.value_optimizer.zero_grad(set_to_none=True)
            values = self.value(batch.input_ids[rows], batch.attention_mask[rows], T)
            loss, _ = algo.ppo_value_loss(values, old_values[rows], returns[rows], mask[rows], o.value_clip)
            if not torch.isfinite(loss):
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.value.parameters(), o.grad_clip)
            self.value_optimizer.step()
            losses.append(loss.item())
        return {"value/loss": sum(losses) / max(1, len(losses))}

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, Any]:
        t_step = time.perf_counter()
        batch, stats = self.collect()
        return self._train_on(batch, stats, t_step)

    def train_on_batch(self, batch: RolloutBatch) -> dict[str, Any]:
        """One step (log-probs, PRM update, advantages, policy update) on a given global batch
        with ``tensors["outcome"]``: no sampling. Under torchrun pass the same batch on every rank;
        each trains on its share. Used to compare world sizes on identical data."""
        return self._train_on(batch.to(self.device), {"generated_tokens": 0}, time.perf_counter())

    def _train_on(self, global_batch: RolloutBatch | None, stats: dict[str, Any], t_step: float) -> dict[str, Any]:
        cfg = self.cfg
        metrics: dict[str, Any] = {"step": self.step + 1, **stats, "lr": self.scheduler.get_last_lr()[0]}
        if global_batch is None:
            metrics["skipped"] = "no group passed the filter"
            self.step += 1
            self.scheduler.step()
            metrics["time/step"] = time.perf_counter() - t_step
            return metrics
        dp = self.dist.enabled
        self._global_batch = global_batch
        batch = self._local_share(global_batch)
        K = cfg.rollout.n
        mask = batch.response_mask.bool()
        outcome = batch.tensors["outcome"]
        micro = cfg.optim.micro_batch_size
        gmask = global_batch.response_mask.bool()
        metrics["batch/size"] = len(global_batch)
        metrics["batch/acc"] = float(global_batch.tensors["outcome"].mean())
        metrics["batch/response_length"] = float(gmask.sum(-1).float().mean())

        t0 = time.perf_counter()
        if self.reuse_sampling_logprobs:
            old_logp = torch.where(mask, batch.sampling_logprobs.to(torch.float32), torch.zeros((), device=mask.device))
        else:
            old_logp = self._all_logprobs(self.policy, batch, micro)
        ref_logp = self._reference_logprobs(batch, micro, old_logp)
        metrics["time/logprobs"] = time.perf_counter() - t0

        token_rewards = None
        t0 = time.perf_counter()
        if self.prm is not None:
            prm_logp, prm_metrics = None, {}
            if cfg.prm.update == "before":
                metrics.update(self._update_prm(batch, ref_logp)[0])
            elif cfg.prm.update == "after":
                # the update's own forward pass scores the tokens: rewards from the PRM before
                # its update, without a second forward (None if the update was skipped)
                prm_metrics, prm_logp = self._update_prm(batch, ref_logp, return_logp=True)
            if prm_logp is None:
                prm_logp = self._all_logprobs(self.prm, batch, micro)
            token_rewards = self._process_rewards(batch, prm_logp, ref_logp, mask)
            seq = algo.masked_sum(token_rewards, mask, dim=-1)
            if dp:  # equal rows per rank: means of per-rank means are global means
                t = torch.tensor([algo.prm_pairwise_accuracy(seq, outcome, K), float(seq.mean())], dtype=torch.float64)
                t = D.all_reduce(t.to(self.device)) / self.dist.world_size
                s = self._global_stats(token_rewards, mask)
                metrics["prm/pairwise_acc"], metrics["prm/seq_reward_mean"] = float(t[0]), float(t[1])
                metrics["prm/token_reward_mean"] = s["mean"]
                metrics["prm/token_reward_abs_max"] = max(abs(s["max"]), abs(s["min"]))
            else:
                metrics["prm/pairwise_acc"] = algo.prm_pairwise_accuracy(seq, outcome, K)
                metrics["prm/seq_reward_mean"] = float(seq.mean())
                metrics["prm/token_reward_mean"] = float(algo.masked_mean(token_rewards, mask))
                metrics["prm/token_reward_abs_max"] = float(token_rewards.abs().max())
            metrics.update(prm_metrics)
        metrics["time/prm"] = time.perf_counter() - t0

        values = None
        if self.value is not None:
            with torch.no_grad():
                values = torch.cat([self.value(batch.input_ids[r], batch.attention_mask[r], batch.response_ids.shape[1])
                                    for r in map(torch.tensor, self._plan(batch, list(range(len(batch))), micro))])
        advantages, returns = self._advantages(batch, mask, token_rewards,
                                               old_logp, ref_logp if self.has_reference else None, values)
        if dp:
            metrics.update({f"adv/{k}": v for k, v in self._global_stats(advantages, mask).items()})
        else:
            valid_adv = advantages[mask]
            metrics.update({"adv/mean": float(valid_adv.mean()),
                            "adv/std": float(valid_adv.std()) if valid_adv.numel() > 1 else 0.0,
                            "adv/max": float(valid_adv.max()), "adv/min": float(valid_adv.min())})
        if cfg.rollout.is_correction:
            weights = algo.truncated_is_weights(old_logp, batch.sampling_logprobs, mask, cfg.rollout.is_cap)
            advantages = algo.apply_is_weights(advantages, weights)
            w = self._global_stats(weights, mask)
            d = self._global_stats((old_logp - batch.sampling_logprobs).abs(), mask)
            metrics.update({"rollout/is_weight_mean": w["mean"], "rollout/is_weight_min": w["min"],
                            "rollout/logp_abs_diff_mean": d["mean"], "rollout/logp_abs_diff_max": d["max"]})

        t0 = time.perf_counter()
        metrics.update(self._update_policy(batch, mask, advantages, old_logp,
                                           ref_logp if self.has_reference else None))
        if self.value is not None:
            metrics.update(self._update_value(batch, mask, returns, values))
        metrics["time/policy"] = time.perf_counter() - t0
        if hasattr(self.generator, "sync_weights"):  # an external engine (vLLM) samples next step
            t0 = time.perf_counter()
            self.generator.sync_weights(D.full_state_dict(self.policy))
            metrics["time/sync_weights"] = time.perf_counter() - t0
        self.scheduler.step()
        self.step += 1

        bad = metrics.get("policy/skipped_updates", 0) > 0 or metrics.get("prm/skipped", 0) > 0
        self.bad_steps = self.bad_steps + 1 if bad else 0
        metrics["time/step"] = time.perf_counter() - t_step
        metrics["tokens_per_s"] = stats["generated_tokens"] / max(1e-9, metrics["time/step"])
        if cfg.train.log_samples_every and self.step % cfg.train.log_samples_every == 0:
            self._samples = [{"response": t, "score": float(s)} for t, s in zip(batch.texts[:K], outcome[:K])]
        if self.bad_steps >= cfg.train.max_bad_steps:
            raise NonFiniteError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient (train.max_bad_steps="
                f"{cfg.train.max_bad_steps}); the last checkpoint is in {self.out_dir / 'checkpoints'}"
            )
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step, "bad_steps": self.bad_steps, "config": self.cfg.to_dict(),
            "policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "stream": self.stream.state_dict(),
            "buffer": self.buffer, "rng": rng_state(),
        }
        if self.prm is not None:
            state["prm"], state["prm_optimizer"] = self.prm.state_dict(), self.prm_optimizer.state_dict()
        if self.value is not None:
            state["value"], state["value_optimizer"] = self.value.state_dict(), self.value_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["stream"])
        self.buffer = state["buffer"]
        if self.prm is not None:
            self.prm.load_state_dict(state["prm"])
            self.prm_optimizer.load_state_dict(state["prm_optimizer"])
        if self.value is not None:
            self.value.load_state_dict(state["value"])
            self.value_optimizer.load_state_dict(state["value_optimizer"])
        set_rng_state(state["rng"])
        self.step, self.bad_steps = int(state["step"]), int(state["bad_steps"])

    def _sharded_parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        models, optimizers = {"policy": self.policy}, {"policy": self.optimizer}
        if self.prm is not None:
            models["prm"], optimizers["prm"] = self.prm, self.prm_optimizer
        if self.value is not None:
            models["value"], optimizers["value"] = self.value, self.value_optimizer
        return models, optimizers

    def _meta_state(self) -> dict[str, Any]:
        return {"step": self.step, "bad_steps": self.bad_steps, "config": self.cfg.to_dict(),
                "scheduler": self.scheduler.state_dict(), "stream": self.stream.state_dict(),
                "buffer": self.buffer, "rng": rng_state(), "world_size": self.dist.world_size}

    def save(self) -> Path:
        if self.checkpoint_format == "dcp":
            models, optimizers = self._sharded_parts()
            return D.save_dcp_checkpoint(self.out_dir, self.step, models, optimizers, self._meta_state(), self.dist)
        return save_checkpoint(self.out_dir, self.step, self.state_dict())

    def resume(self) -> bool:
        """Load the newest complete checkpoint in ``train.out_dir``; False when there is none.

        Either format loads: a DCP checkpoint at any world size (shards are redistributed), a
        ``state.pt`` in a single process."""
        marker = self.out_dir / "checkpoints" / "LATEST"
        if not marker.is_file():
            return False
        path = marker.parent / marker.read_text().strip()
        if D.is_dcp_checkpoint(path):
            models, optimizers = self._sharded_parts()
            meta = D.load_dcp_checkpoint(path, models, optimizers)
            self.scheduler.load_state_dict(meta["scheduler"])
            self.stream.load_state_dict(meta["stream"])
            self.buffer = meta["buffer"].to(self.device) if meta["buffer"] is not None else None
            set_rng_state(meta["rng"])
            self.step, self.bad_steps = int(meta["step"]), int(meta["bad_steps"])
            return True
        if not (path / "state.pt").is_file():
            return False
        if self.dist.enabled:
            raise ValueError(f"{path} is a single-process (state.pt) checkpoint; resume it with one process, "
                             'or write it with train.checkpoint_format="dcp" to resume at another world size')
        self.load_state_dict(load_checkpoint(path))
        return True

    # ------------------------------------------------------------------ the loop
    def train(self, *, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
        """Run until ``train.steps``; returns the metrics of the steps run by this call."""
        cfg = self.cfg
        main = self.dist.is_main  # rank 0 writes config, metrics and samples
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        D.barrier(self.dist)
        if resume and not self.resume():
            raise FileNotFoundError(f"--resume: no checkpoint in {self.out_dir / 'checkpoints'}")
        self.logger = MetricsLogger(self.out_dir, tensorboard=cfg.train.tensorboard, wandb=cfg.train.wandb,
                                    config=cfg.to_dict()) if main else None
        if self.logger is not None:
            self.logger.truncate_after(self.step)
        progress = progress and main
        history: list[dict[str, Any]] = []
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [TextColumn("PRIME"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        try:
            with Progress(*columns, disable=not progress, transient=False) as bar:
                task = bar.add_task("train", total=cfg.train.steps, completed=self.step, info="")
                while self.step < cfg.train.steps:
                    self._samples = None
                    metrics = self.train_step()
                    if self.eval_fn is not None and cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                        metrics.update({f"eval/{k}": v for k, v in self.eval_fn(self).items()})
                    if self.logger is not None:
                        self.logger.log(metrics)
                        if self._samples:
                            self.logger.log_samples(self.step, self._samples)
                    history.append(metrics)
                    if cfg.train.save_every and self.step % cfg.train.save_every == 0:
                        self.save()
                    info = (f"acc {metrics.get('rollout/acc_before_filter', 0):.2f} "
                            f"kept {metrics.get('rollout/kept_group_frac', 0):.2f} "
                            f"prm_acc {metrics.get('prm/pairwise_acc', float('nan')):.2f} "
                            f"len {metrics.get('rollout/response_length', 0):.0f}")
                    bar.update(task, completed=self.step, info=info)
            if self.step and (not cfg.train.save_every or self.step % cfg.train.save_every):
                self.save()
        finally:
            if self.logger is not None:
                self.logger.close()
        return history

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the policy (and the PRM, if any) as ordinary Hugging Face model directories."""
        d = Path(directory)
        if self.dist.enabled:  # gather full weights (collective), rank 0 writes
            for name, model in (("policy", self.policy), ("prm", self.prm)):
                if model is None:
                    continue
                state = D.full_state_dict(model)
                if self.dist.is_main:
                    model.save_pretrained(d / name, state_dict=state)
                    self.tokenizer.save_pretrained(d / name)
            D.barrier(self.dist)
            return d
        self.policy.save_pretrained(d / "policy")
        self.tokenizer.save_pretrained(d / "policy")
        if self.prm is not None:
            self.prm.save_pretrained(d / "prm")
            self.tokenizer.save_pretrained(d / "prm")
        return d
