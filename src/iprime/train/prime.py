"""The PRIME training loop: orchestration only; the math lives in :mod:`iprime.algo`.

One step (see ``docs``/README):
rollout K per prompt -> verify -> filter groups (refill from further prompts, buffer surplus)
-> log-probs of policy (old), reference and PRM -> implicit process rewards -> PRM update
-> advantages -> PPO policy update (mini-batches, epochs).
"""

from __future__ import annotations

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
from iprime.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from iprime.train.logging import MetricsLogger
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
    ) -> None:
        self.cfg = config
        cfg = config
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        torch.manual_seed(cfg.train.seed)
        self.device = torch.device(cfg.model.device)

        if isinstance(model, (str, Path)):
            self.policy = load_model(model, dtype=cfg.model.dtype, device=self.device,
                                     gradient_checkpointing=cfg.model.gradient_checkpointing)
            self.tokenizer = tokenizer or load_tokenizer(model)
        else:
            if tokenizer is None:
                raise ValueError("pass tokenizer= together with a loaded model")
            self.policy, self.tokenizer = model.to(self.device), tokenizer
        self.policy.train()

        self.reference = None
        if cfg.model.reference != "policy":
            if ref_model is not None:
                self.reference = ref_model
            elif cfg.model.reference == "sft":
                self.reference = copy.deepcopy(self.policy)
            else:
                self.reference = load_model(cfg.model.reference, dtype=cfg.model.dtype, device=self.device)
            self.reference.eval().requires_grad_(False)

        self.prm = None
        if cfg.prm.enabled:
            if prm_model is not None:
                self.prm = prm_model.to(self.device)
            elif cfg.model.prm:
                self.prm = load_model(cfg.model.prm, dtype=cfg.model.dtype, device=self.device)
            else:
                self.prm = copy.deepcopy(self.policy)
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
        self.generator = HFGenerator(self.policy, self.tokenizer, batch_size=cfg.rollout.generation_batch_size)

        self.step = 0
        self.bad_steps = 0
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(cfg.optim.schedule, cfg.optim.warmup_steps, cfg.train.steps)
        )
        self.prm_optimizer = (
            torch.optim.AdamW(self.prm.parameters(), lr=cfg.prm.lr, weight_decay=cfg.prm.weight_decay)
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

    # ------------------------------------------------------------------ rollout
    def _generate_round(self, round_index: int) -> tuple[RolloutBatch, dict[str, float]]:
        cfg = self.cfg
        count = math.ceil(cfg.rollout.prompts_per_step * cfg.rollout.oversample)
        indices = self.stream.take(count)
        params = SamplingParams(
            n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
            max_new_tokens=cfg.rollout.max_new_tokens,
            # seeded by (run seed, step, round): a resumed run samples exactly what the original would
            seed=(cfg.train.seed * 1_000_003 + self.step * 101 + round_index) % (2**31),
        )
        t0 = time.perf_counter()
        batch = self.generator.generate([self.prompts[i] for i in indices], params)
        t_gen = time.perf_counter() - t0
        row_ids = [indices[int(p)] for p in batch.prompt_index]
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
        gen_tokens = int(batch.response_mask.sum())
        return batch, {"time/generate": t_gen, "time/verify": t_ver, "generated_tokens": gen_tokens}

    def collect(self) -> tuple[RolloutBatch | None, dict[str, float]]:
        """Generate and filter until the step has ``prompts_per_step`` groups or rounds run out."""
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
        take = min(want, n_kept) * K
        train, surplus = pool.select(torch.arange(take)), pool.select(torch.arange(take, len(pool)))
        # surplus groups wait for the next step, but never more than one step's worth
        self.buffer = surplus.select(torch.arange(min(len(surplus), want * K))) if len(surplus) else None
        stats["rollout/acc_after_filter"] = float(train.tensors["outcome"].mean())
        stats["rollout/buffer_groups"] = (len(self.buffer) // K) if self.buffer is not None else 0
        return train, stats

    # ------------------------------------------------------------------ forward passes
    def _micro_batches(self, n: int, size: int, order: torch.Tensor | None = None) -> list[torch.Tensor]:
        idx = torch.arange(n) if order is None else order
        return [idx[s : s + size] for s in range(0, n, size)]

    def _logprobs(self, model, batch: RolloutBatch, rows: torch.Tensor, *, entropy: bool = False):
        """Log-probs (and entropy) ``[b, T]`` of the response tokens of ``rows``, padding trimmed."""
        T = batch.response_ids.shape[1]
        ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
        ids, mask, t_keep, _ = _trim(ids, mask, T)
        out = response_logprobs(model, ids, mask, t_keep, temperature=max(self.cfg.rollout.temperature, 1e-6)
                                if self.cfg.rollout.temperature > 0 else 1.0, return_entropy=entropy)
        pad = lambda x: torch.nn.functional.pad(x, (0, T - t_keep))  # noqa: E731
        return (pad(out[0]), pad(out[1])) if entropy else pad(out)

    @torch.no_grad()
    def _all_logprobs(self, model, batch: RolloutBatch, micro: int) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            return torch.cat([self._logprobs(model, batch, r) for r in self._micro_batches(len(batch), micro)])
        finally:
            model.train(was)

    # ------------------------------------------------------------------ PRM
    def _process_rewards(self, batch, prm_logp, ref_logp, mask):
        cfg = self.cfg.prm
        step_ends = None
        if cfg.granularity == "step":
            step_ends = algo.step_ends_from_delimiter(batch.response_ids, mask, self.step_delimiter_ids)
        return algo.implicit_process_rewards(prm_logp, ref_logp, mask, cfg.beta, cfg.granularity, step_ends)

    def _update_prm(self, batch: RolloutBatch, ref_logp: torch.Tensor) -> dict[str, float]:
        cfg, K = self.cfg.prm, self.cfg.rollout.n
        mask = batch.response_mask.bool()
        outcome = batch.tensors["outcome"]
        self.prm_optimizer.zero_grad(set_to_none=True)
        # DPO pairs live within a group, so micro-batches hold whole groups
        micro = max(K, (cfg.micro_batch_size // K) * K)
        total = 0.0
        for rows in self._micro_batches(len(batch), micro):
            prm_logp = self._logprobs(self.prm, batch, rows)
            if cfg.loss == "ce":
                loss = algo.prm_ce_loss(prm_logp, ref_logp[rows], mask[rows], outcome[rows], cfg.beta)
            else:
                loss = algo.prm_dpo_loss(prm_logp, ref_logp[rows], mask[rows], outcome[rows], cfg.beta, K)
            loss = loss * (len(rows) / len(batch))
            if not torch.isfinite(loss):
                self.prm_optimizer.zero_grad(set_to_none=True)
                return {"prm/loss": float("nan"), "prm/skipped": 1.0}
            loss.backward()
            total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.prm.parameters(), cfg.grad_clip)
        if not torch.isfinite(grad_norm):
            self.prm_optimizer.zero_grad(set_to_none=True)
            return {"prm/loss": total, "prm/grad_norm": float(grad_norm), "prm/skipped": 1.0}
        self.prm_optimizer.step()
        return {"prm/loss": total, "prm/grad_norm": float(grad_norm), "prm/skipped": 0.0}

    # ------------------------------------------------------------------ advantages
    def _advantages(self, batch, mask, token_rewards, old_logp, ref_logp, values):
        cfg, K = self.cfg.algo, self.cfg.rollout.n
        outcome = batch.tensors["outcome"]
        kl = None
        if cfg.kl_mode == "reward" and ref_logp is not None:
            kl = algo.kl_penalty(old_logp, ref_logp, cfg.kl_estimator)
        name = cfg.estimator
        if name == "prime":
            rewards = token_rewards if kl is None else token_rewards - cfg.kl_coef * kl
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
        return (algo.masked_whiten(adv, mask) if cfg.whiten else adv), None

    # ------------------------------------------------------------------ policy update
    def _update_policy(self, batch, mask, advantages, old_logp, ref_logp) -> dict[str, float]:
        """PPO epochs over shuffled mini-batches; gradients accumulate over micro-batches.

        A mini-batch whose loss or gradient is non-finite is skipped (no optimizer step)."""
        cfg, o = self.cfg, self.cfg.optim
        n = len(batch)
        sums: dict[str, float] = {}
        micro_count, grad_norms, skipped = 0, [], 0
        g = torch.Generator().manual_seed(cfg.train.seed * 7919 + self.step)
        for _ in range(o.epochs):
            for mini in self._micro_batches(n, o.mini_batch_size, torch.randperm(n, generator=g)):
                self.optimizer.zero_grad(set_to_none=True)
                finite = True
                for rows in self._micro_batches(len(mini), o.micro_batch_size, mini):
                    logp, entropy = self._logprobs(self.policy, batch, rows, entropy=True)
                    m = mask[rows]
                    pg, metrics = algo.ppo_policy_loss(logp, old_logp[rows], advantages[rows], m, o.clip_low,
                                                       o.clip_high, o.dual_clip, o.agg)
                    ent = algo.masked_mean(entropy, m)
                    loss = pg - cfg.algo.entropy_coef * ent if cfg.algo.entropy_coef else pg
                    if ref_logp is not None:
                        kl_term = algo.kl_loss(logp, ref_logp[rows], m, cfg.algo.kl_estimator, o.agg)
                        metrics["kl_ref"] = kl_term.item()
                        if cfg.algo.kl_mode == "loss":
                            loss = loss + cfg.algo.kl_coef * kl_term
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    (loss * (len(rows) / len(mini))).backward()
                    for key, value in {**metrics, "pg_loss": pg.item(), "entropy": ent.item()}.items():
                        sums[key] = sums.get(key, 0.0) + value
                    micro_count += 1
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), o.grad_clip) if finite else None
                if grad_norm is None or not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                self.optimizer.step()
                grad_norms.append(float(grad_norm))
        out = {f"policy/{k}": v / max(1, micro_count) for k, v in sums.items()}
        out["policy/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        out["policy/updates"] = len(grad_norms)
        out["policy/skipped_updates"] = skipped
        return out

    def _update_value(self, batch, mask, returns, old_values) -> dict[str, float]:
        o = self.cfg.optim
        losses = []
        T = batch.response_ids.shape[1]
        for rows in self._micro_batches(len(batch), o.micro_batch_size):
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
        cfg = self.cfg
        t_step = time.perf_counter()
        batch, stats = self.collect()
        metrics: dict[str, Any] = {"step": self.step + 1, **stats, "lr": self.scheduler.get_last_lr()[0]}
        if batch is None:
            metrics["skipped"] = "no group passed the filter"
            self.step += 1
            self.scheduler.step()
            metrics["time/step"] = time.perf_counter() - t_step
            return metrics
        K = cfg.rollout.n
        mask = batch.response_mask.bool()
        outcome = batch.tensors["outcome"]
        micro = cfg.optim.micro_batch_size
        metrics["batch/size"] = len(batch)
        metrics["batch/acc"] = float(outcome.mean())
        metrics["batch/response_length"] = float(mask.sum(-1).float().mean())

        t0 = time.perf_counter()
        old_logp = self._all_logprobs(self.policy, batch, micro)
        ref_logp = self._all_logprobs(self.reference, batch, micro) if self.reference is not None else old_logp
        metrics["time/logprobs"] = time.perf_counter() - t0

        token_rewards = None
        t0 = time.perf_counter()
        if self.prm is not None:
            if cfg.prm.update == "before":
                metrics.update(self._update_prm(batch, ref_logp))
            prm_logp = self._all_logprobs(self.prm, batch, micro)
            token_rewards = self._process_rewards(batch, prm_logp, ref_logp, mask)
            seq = algo.masked_sum(token_rewards, mask, dim=-1)
            metrics["prm/pairwise_acc"] = algo.prm_pairwise_accuracy(seq, outcome, K)
            metrics["prm/seq_reward_mean"] = float(seq.mean())
            metrics["prm/token_reward_mean"] = float(algo.masked_mean(token_rewards, mask))
            metrics["prm/token_reward_abs_max"] = float(token_rewards.abs().max())
            if cfg.prm.update == "after":
                metrics.update(self._update_prm(batch, ref_logp))
        metrics["time/prm"] = time.perf_counter() - t0

        values = None
        if self.value is not None:
            with torch.no_grad():
                values = torch.cat([self.value(batch.input_ids[r], batch.attention_mask[r], batch.response_ids.shape[1])
                                    for r in self._micro_batches(len(batch), micro)])
        advantages, returns = self._advantages(batch, mask, token_rewards,
                                               old_logp, ref_logp if self.reference is not None else None, values)
        valid_adv = advantages[mask]
        metrics.update({"adv/mean": float(valid_adv.mean()), "adv/std": float(valid_adv.std()) if valid_adv.numel() > 1 else 0.0,
                        "adv/max": float(valid_adv.max()), "adv/min": float(valid_adv.min())})

        t0 = time.perf_counter()
        metrics.update(self._update_policy(batch, mask, advantages, old_logp,
                                           ref_logp if self.reference is not None else None))
        if self.value is not None:
            metrics.update(self._update_value(batch, mask, returns, values))
        metrics["time/policy"] = time.perf_counter() - t0
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

    def save(self) -> Path:
        return save_checkpoint(self.out_dir, self.step, self.state_dict())

    def resume(self) -> bool:
        """Load the newest complete checkpoint in ``train.out_dir``; False when there is none."""
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return False
        self.load_state_dict(load_checkpoint(path))
        return True

    # ------------------------------------------------------------------ the loop
    def train(self, *, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
        """Run until ``train.steps``; returns the metrics of the steps run by this call."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out_dir / "config.yaml")
        if resume and not self.resume():
            raise FileNotFoundError(f"--resume: no checkpoint in {self.out_dir / 'checkpoints'}")
        self.logger = MetricsLogger(self.out_dir, tensorboard=cfg.train.tensorboard, wandb=cfg.train.wandb,
                                    config=cfg.to_dict())
        self.logger.truncate_after(self.step)
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
            self.logger.close()
        return history

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the policy (and the PRM, if any) as ordinary Hugging Face model directories."""
        d = Path(directory)
        self.policy.save_pretrained(d / "policy")
        self.tokenizer.save_pretrained(d / "policy")
        if self.prm is not None:
            self.prm.save_pretrained(d / "prm")
            self.tokenizer.save_pretrained(d / "prm")
        return d
