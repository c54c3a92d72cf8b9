"""The PRIME training loop: an orchestrator. Each stage is a call into a module with one job.

One step (:meth:`PrimeTrainer.train_step`), each stage filling in the step's record
(:class:`~iprime.train.record.StepRecord`)::

    collect      generate K per prompt, verify, filter and refill, buffer      (train/collect.py)
    log-probs    policy (PPO's old), reference                                   (train/passes.py)
    PRM          implicit process rewards from the PRM before its update (or, with
                 prm.mini_batch_size, before the step on each mini-batch),
                 then its update on the outcome labels                           (train/prm_update.py)
    advantages   the configured estimator from iprime.algo's registry           (train/advantages.py)
    policy       PPO's clipped loss over mini-batches (and the value model)      (train/ppo_update.py)
    sync         an external sampling engine (vLLM) gets the new weights
    observe      PRM ranking, process share, first-error localisation, samples  (train/diagnostics.py)
    review       the update guard, evaluation when due, the log                  (train/guards.py, evaluate.py)
    checkpoint   when due, unless the guard rejected the update                  (train/checkpoint.py)

The same code runs in one process and under ``torchrun``: every rank sees the same global batch,
trains on a contiguous share of its groups, and the collectives do nothing in one process (see
:mod:`iprime.train.distributed`); the updates' micro-batches, dummies and weights under
data parallelism come from :mod:`iprime.train.microbatches`. Models and optimizers are built in
``train/build.py``, checkpoints written and resumed by ``train/checkpoint.py``.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from iprime.config import PrimeConfig, save_config
from iprime.data.chat import render_prompt
from iprime.models import load_tokenizer
from iprime.prm.metadata import run_prm_metadata, save_prm_metadata
from iprime.rollout import Capability, RolloutBatch
from iprime.train import distributed as D
from iprime.train.advantages import compute_advantages, importance_corrected
from iprime.train.build import (
    build_generator,
    build_models,
    build_optimizers,
    prepare_training_data,
    reuses_sampling_logprobs,
)
from iprime.train.checkpoint import load_run_checkpoint, rng_state, save_run_checkpoint, set_rng_state
from iprime.train.checkpoint_store import resume_candidates, write_error
from iprime.train.collect import RolloutCollector, sample_records
from iprime.train.diagnostics import sampler_gap_metrics, step_diagnostics
from iprime.train.evaluate import build_eval_sets, eval_due, preserved_training_state, run_evals
from iprime.train.guards import UpdateGuard
from iprime.train.identity import (
    Change,
    ConfigChangeWarning,
    append_history,
    changes_text,
    check_changes,
    config_changes,
    follow_optimizer_settings,
)
from iprime.train.logging import MetricsLogger
from iprime.train.passes import ForwardPasses
from iprime.train.ppo_update import PolicyUpdate, update_value, value_estimates
from iprime.train.prm_update import process_rewards, score_and_update, step_delimiter_ids
from iprime.train.progress import batch_metrics, empty_step_message, progress_bar
from iprime.train.record import StepRecord
from iprime.train.scoring import RolloutScorer
from iprime.train.signals import RunInterrupted, SignalStop


def _folder_id(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of a folder (``None``: it does not exist): the same path made again is another folder."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class NonFiniteError(RuntimeError):
    """Raised after ``train.max_bad_steps`` consecutive steps with a non-finite loss or gradient."""


class EmptyStepsError(RuntimeError):
    """Raised after ``train.max_empty_steps`` consecutive steps with nothing to learn from."""


class PrimeTrainer:
    """PRIME (and its baselines, one config value apart) on a causal LM.

    >>> trainer = PrimeTrainer(model="path/to/sft", config=cfg, train_dataset=rows, verifier=fn)
    >>> trainer.train()

    ``model``: a path/hub id or a loaded causal LM (then pass ``tokenizer``). ``train_dataset``:
    rows (mappings, or :class:`iprime.data.sources.Record`) with ``config.data.prompt_key`` and the
    reference (``config.data.reference_key``; dotted keys reach nested fields). Each row is scored
    by its own verifier (``iprime.verifiers.score_row``: by ability / data source), or, given
    ``verifier(response_text, reference) -> float`` in [0, 1], by that one.

    Every ``train.eval_every`` steps and after the last (:mod:`iprime.train.evaluate`) the policy
    is evaluated on ``eval_dataset`` (rows like the training rows), ``data.eval_path`` and
    ``train.eval_benchmarks``, logged as ``eval/<name>/acc`` (a fresh run also logs the starting
    policy as step 0), and ``eval_fn(trainer)`` returns metrics logged as ``eval/<key>``.

    ``log(line)`` (rank 0's; ``None``: silent) hears what the run is doing before its first step
    line: the models as they load, the dataset against ``rollout.prompts_per_step``, each
    generation round (``step 1: round 2 of 4: kept 3 groups, 5 of 16``); these info lines are
    left out when ``train.progress=none``. Warnings (an empty step, prompts per step over the
    dataset's size) go to ``log`` always, as ``warning: ...``, or to :func:`warnings.warn`
    without a ``log``.
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        config: PrimeConfig,
        train_dataset: Sequence[Mapping[str, Any]],
        verifier: Callable[[str, Any], float] | None = None,
        *,
        tokenizer=None,
        prm_model: torch.nn.Module | None = None,
        ref_model: torch.nn.Module | None = None,
        eval_dataset: Sequence[Mapping[str, Any]] | None = None,
        eval_fn: Callable[[PrimeTrainer], dict[str, float]] | None = None,
        generator=None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg = config
        self.dist, self.device = D.init_distributed(cfg.model.device)
        self.log, self.eval_dataset, self.eval_fn = (log if self.dist.is_main else None), eval_dataset, eval_fn
        D.check_config(cfg, self.dist)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        torch.manual_seed(cfg.train.seed)
        # the data is checked before the model loads: a bad row costs seconds, not a model load
        tokenizer = tokenizer or (load_tokenizer(model) if isinstance(model, (str, Path)) else None)
        self.scorer = RolloutScorer(cfg, verifier)
        self.data = prepare_training_data(cfg, train_dataset, tokenizer, model, self.scorer)
        self.eval_sets = build_eval_sets(
            cfg, eval_dataset, tokenizer, self.scorer, model=model, has_eval_fn=eval_fn is not None
        )
        self.models = self._load_models(model, tokenizer, prm_model, ref_model)
        # where the policy started: the reference a saved PRM is read against (model.reference=sft)
        self.model_source = str(model) if isinstance(model, (str, Path)) else (cfg.model.policy or None)
        prompts = [render_prompt(self.tokenizer, prompt) for prompt in self.data.prompts]
        # FSDP2 roots (data-parallel runs only): id(model) -> the module whose forward gives log-probs
        roots = D.shard_models([self.policy, self.reference, self.prm], self.dist, self.device)
        self.passes = ForwardPasses(cfg, self.dist, self.device, roots)
        self.generator = build_generator(cfg, model, self.models, generator, device=self.device)
        sampler_runs_policy = getattr(self.generator, "model", None) is self.policy
        self.collector = RolloutCollector(
            cfg,
            self.dist,
            self.device,
            self.generator,
            self.data.rows,
            prompts,
            self.data.references,
            self.scorer,
            roots.get(id(self.policy)) if sampler_runs_policy else None,
        )
        self.collector.log = self._info
        self.reuse_sampling_logprobs = reuses_sampling_logprobs(cfg, self.generator, self.policy)
        self.optimizers = build_optimizers(cfg, self.models)
        self.delimiter_ids = step_delimiter_ids(self.tokenizer, cfg)
        self.step = self.bad_steps = self.empty_steps = 0
        self.out_dir = Path(cfg.train.out_dir)
        self.checkpoint_format = D.checkpoint_format(cfg.train.checkpoint_format, self.dist)
        self.logger: MetricsLogger | None = None
        # an update far outside the run's history (a loss, gradient or weight-norm spike) is not checkpointed
        self.guard = UpdateGuard()
        self.config_changes: list[Change] = []  # a resume's changes of the checkpoint's config

    # what the run says (rank 0)
    def _info(self, line: str) -> None:
        """An info line to ``log``; none with ``train.progress=none``."""
        if self.log is not None and self.cfg.train.progress != "none":
            self.log(line)

    def _warn(self, message: str) -> None:
        """A warning: to ``log`` (always: it says something went wrong), else :func:`warnings.warn`."""
        if self.log is not None:
            self.log(f"warning: {message}")
        elif self.dist.is_main:
            warnings.warn(message, stacklevel=3)

    def _announce_data(self, rows: int) -> None:
        """The data and a step's shape, as an info line; ``rollout.prompts_per_step`` over the
        dataset's size is a warning: every round then samples rows more than once (the prompt
        stream runs through its epochs), so a step's groups repeat."""
        r = self.cfg.rollout
        per_round = math.ceil(r.prompts_per_step * r.oversample)
        self._info(
            f"training data: {rows} rows; a step wants {r.prompts_per_step} prompts of medium difficulty x "
            f"{r.n} responses, from up to {r.max_rounds} round{'s' * (r.max_rounds != 1)} of {per_round} prompts"
        )
        if r.prompts_per_step > rows:
            self._warn(
                f"rollout.prompts_per_step={r.prompts_per_step} exceeds the {rows} rows of the training data: each "
                f"round samples {per_round} prompts (x oversample {r.oversample}), every row about "
                f"{per_round / rows:.0f} times; set rollout.prompts_per_step={rows} or less for a small dataset"
            )

    def _load_models(self, model, tokenizer, prm_model, ref_model):
        """:func:`build_models`, saying what loads and how long it took; first, a dataset
        smaller than a step's prompts is a warning (the data is read, the models not yet)."""
        self._announce_data(len(self.data.rows))
        t0 = time.perf_counter()
        models = build_models(
            self.cfg, model, self.device, tokenizer=tokenizer, prm_model=prm_model, ref_model=ref_model, log=self._info
        )
        self._info(f"models loaded in {time.perf_counter() - t0:.1f} s")
        return models

    saved: tuple[int, Path | None] = (-1, None)
    """The step and path of the last checkpoint this trainer wrote (``-1``: none yet)."""
    _out_dir_id: tuple[int, int] | None = None
    """Rank 0: ``out_dir``'s (device, inode) once :meth:`train` made it (:meth:`_check_out_dir`)."""

    # the models and optimizers by role
    policy = property(lambda self: self.models.policy)
    reference = property(lambda self: self.models.reference)
    prm = property(lambda self: self.models.prm)
    value = property(lambda self: self.models.value)
    tokenizer = property(lambda self: self.models.tokenizer)
    has_reference = property(lambda self: self.models.has_reference)

    # ------------------------------------------------------------------ one step
    def collect(self) -> tuple[RolloutBatch | None, dict[str, float]]:
        """This step's filtered global batch (identical on every rank) and the rollout metrics."""
        return self.collector.collect(self.step)

    def train_step(self) -> dict[str, Any]:
        """One step: the stages of the table at the top of this module, on a :class:`StepRecord`
        each fills in; then the step's review (update guard, evaluation when due, log) and its
        checkpoint when due. Returns the step's metrics; raises :class:`NonFiniteError` /
        :class:`EmptyStepsError` when the run must stop (after the step is logged)."""
        step = self._new_step()
        self._take_rollouts(step, *self.collect())  # generate K per prompt, verify, filter, refill
        if step.rollouts is not None:
            self._logprobs(step)  # the policy's (PPO's old) and the reference's
            self._prm(step)  # token rewards from the PRM before its update (per mini-batch), and the update
            self._advantages(step)  # the configured estimator (and the importance correction)
            self._policy_update(step)  # PPO's clipped loss over mini-batches (and the value model)
            self._sync_weights(step)  # an external engine (vLLM) samples the next step
            self._observe(step)  # diagnostics: PRM ranking, process share, first error; samples
        self._end(step)  # the schedule, the step counter, the stop counters
        self._empty_step_samples(step)  # an empty step shows what was generated, when samples are due
        self._review(step)  # the update guard, evaluation, the log; a stop is raised here
        self._checkpoint()  # when due, unless the guard rejected the update
        return step.metrics

    def train_on_batch(self, batch: RolloutBatch) -> dict[str, Any]:
        """:meth:`train_step`'s learning stages on a given global batch with
        ``tensors["outcome"]``: no sampling, no review or checkpoint. Under torchrun pass the same
        batch on every rank; each trains on its share. Used to compare world sizes on identical data."""
        step = self._new_step()
        self._take_rollouts(step, batch.to(self.device), {"generated_tokens": 0})
        for stage in (self._logprobs, self._prm, self._advantages, self._policy_update, self._sync_weights):
            stage(step)
        self._observe(step)
        self._end(step)
        if step.stop is not None:
            raise step.stop
        return step.metrics

    # the stages, in the order train_step runs them; each reads and fills in the step record
    def _new_step(self) -> StepRecord:
        metrics: dict[str, Any] = {"step": self.step + 1}
        if self.config_changes:  # the first step after a resume that changed the config says so
            metrics["config/changed"] = changes_text(self.config_changes)
            self.config_changes = []
        return StepRecord(index=self.step + 1, metrics=metrics)

    def _take_rollouts(self, step: StepRecord, rollouts: RolloutBatch | None, stats: dict[str, Any]) -> None:
        """The step's global batch (``None``: nothing passed the filter), this rank's share, and
        the rollout metrics."""
        step.metrics.update({**stats, "lr": self.optimizers.scheduler.get_last_lr()[0]})
        step.rollouts = rollouts
        if rollouts is None:
            step.metrics["skipped"] = "no group passed the filter"
            return
        step.batch = self.passes.local_share(rollouts)
        step.metrics.update(batch_metrics(rollouts))

    def _logprobs(self, step: StepRecord) -> None:
        with step.timed("time/logprobs"):
            step.old_logp = self._old_logprobs(step.batch, step.mask)
            step.ref_logp = self._reference_logprobs(step.batch, step.old_logp)
        step.kl_ref_logp = step.ref_logp if self.has_reference else None  # no KL to the policy itself

    def _old_logprobs(self, batch: RolloutBatch, mask: torch.Tensor) -> torch.Tensor:
        """The policy's log-probs before the update: the sampler's own where they can be reused."""
        if self.reuse_sampling_logprobs:
            return torch.where(mask, batch.sampling_logprobs.to(torch.float32), torch.zeros((), device=mask.device))
        return self.passes.all_logprobs(self.policy, batch, self.cfg.optim.micro_batch_size)

    def _reference_logprobs(self, batch: RolloutBatch, old_logp: torch.Tensor) -> torch.Tensor:
        """The frozen reference's log-probs; the LoRA PRM with its adapter off; or the policy's own."""
        micro = self.cfg.optim.micro_batch_size
        if self.reference is not None:
            return self.passes.all_logprobs(self.reference, batch, micro)
        if self.models.reference_is_prm_base:
            with self.prm.disable_adapter():
                return self.passes.all_logprobs(self.prm, batch, micro)
        return old_logp

    def _prm(self, step: StepRecord) -> None:
        with step.timed("time/prm"):
            if self.prm is None:
                return
            step.prm_logp, metrics = score_and_update(
                self.passes, self.prm, self.optimizers.prm, step.batch, step.ref_logp, len(step.rollouts)
            )
            step.token_rewards = process_rewards(
                self.cfg, step.batch, step.prm_logp, step.ref_logp, step.mask, self.delimiter_ids
            )
            step.metrics.update(metrics)

    def _advantages(self, step: StepRecord) -> None:
        if self.value is not None:
            step.values = value_estimates(self.passes, self.value, step.batch)
        inputs = (step.outcome, step.mask, step.token_rewards, step.old_logp, step.kl_ref_logp, step.values)
        out = compute_advantages(self.cfg, *inputs)
        step.advantages, step.returns = out.advantages, out.returns
        step.metrics.update({f"adv/{k}": v for k, v in self.passes.global_stats(step.advantages, step.mask).items()})
        if self.cfg.rollout.is_correction:  # toward the engine's log-probs
            sampled = step.batch.sampling_logprobs
            step.advantages, metrics = importance_corrected(
                self.passes, step.advantages, step.old_logp, sampled, step.mask, self.cfg.rollout.is_cap
            )
            step.metrics.update(metrics)

    def _policy_update(self, step: StepRecord) -> None:
        with step.timed("time/policy"):
            step.metrics.update(PolicyUpdate(self.passes, self.policy, self.optimizers.policy, step).run())
            if self.value is not None:
                step.metrics.update(update_value(self.passes, self.value, self.optimizers.value, step))

    def _sync_weights(self, step: StepRecord) -> None:
        if Capability.SYNC_WEIGHTS in self.generator.capabilities:  # its own copy of the weights (vLLM)
            with step.timed("time/sync_weights"):
                self._sync_engine()

    def _sync_engine(self) -> None:
        """Hand the engine the current policy, on every rank: the full tensors streamed one at a
        time (FSDP2 shards gathered as the engine loads them). Collective under torchrun."""
        root = self.passes.roots.get(id(self.policy))
        self.generator.sync_weights(D.full_state_items(self.policy, root))

    def _observe(self, step: StepRecord) -> None:
        """The diagnostics (:mod:`iprime.train.diagnostics`), and every ``train.log_samples_every``
        steps ``train.log_sample_groups`` groups of this rank's share as sample rows."""
        if not self.reuse_sampling_logprobs:  # recomputed old log-probs: compare the engine's with them
            step.metrics.update(sampler_gap_metrics(self.passes, step))
        step.metrics.update(step_diagnostics(self.passes, step, self.tokenizer))
        t = self.cfg.train
        if t.log_samples_every and t.log_sample_groups and step.index % t.log_samples_every == 0:
            step.samples = sample_records(
                step.batch,
                self.collector.references,
                self.tokenizer,
                groups=t.log_sample_groups,
                group_size=self.cfg.rollout.n,
                token_rewards=step.token_rewards,
                lowest_tokens=t.log_sample_tokens,
            )

    def _empty_step_samples(self, step: StepRecord) -> None:
        """On a step that trained nothing (no group passed the filter), the rows it generated go
        to ``samples.jsonl`` when samples are due: the one moment a user needs to see them. The
        first ``train.log_sample_groups`` groups, before the filter, without PRM rewards (no
        PRM pass ran)."""
        t, generated = self.cfg.train, self.collector.last_generated
        if step.rollouts is not None or generated is None or not len(generated):
            return
        if t.log_samples_every and t.log_sample_groups and step.index % t.log_samples_every == 0:
            step.samples = sample_records(
                generated,
                self.collector.references,
                self.tokenizer,
                groups=t.log_sample_groups,
                group_size=self.cfg.rollout.n,
            )

    def _end(self, step: StepRecord) -> None:
        """Advance the schedule and the step counter; count bad and empty steps in a row, and
        note a stop (``step.stop``) when either run reaches its limit. The schedule advances
        only on a step that ran the policy's optimizer: a step with nothing to train on, or
        whose every update was skipped as non-finite, leaves the learning rate where it was (and
        torch's ``lr_scheduler.step() before optimizer.step()`` warning never fires); so
        ``optim.schedule`` counts steps that updated the policy."""
        m = step.metrics
        if step.rollouts is not None and m.get("policy/updates", 1) > m.get("policy/skipped_updates", 0):
            self.optimizers.scheduler.step()
        self.step += 1
        m["time/step"] = time.perf_counter() - step.started
        self._check_not_blind(step)
        if step.rollouts is None:
            return
        m["tokens_per_s"] = m["generated_tokens"] / max(1e-9, m["time/step"])
        bad = m.get("policy/skipped_updates", 0) > 0 or m.get("prm/skipped", 0) > 0
        self.bad_steps = self.bad_steps + 1 if bad else 0
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            step.stop = NonFiniteError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient (train.max_bad_steps="
                f"{self.cfg.train.max_bad_steps}); {self.checkpoint_note()}"
            )

    def _check_not_blind(self, step: StepRecord) -> None:
        """Count steps with nothing to learn from (no group passed the filter, or every sampled
        reward 0); stop after ``train.max_empty_steps`` in a row and say what to check."""
        metrics = step.metrics
        all_zero = metrics.get("rollout/acc_before_filter") == 0.0
        if not (step.rollouts is None or all_zero):
            self.empty_steps = 0
            return
        self.empty_steps += 1
        metrics["empty"] = "every reward was 0" if all_zero else "no group passed the filter"
        self._warn(empty_step_message(self.cfg, metrics, self.step))
        if self.empty_steps < self.cfg.train.max_empty_steps:
            return
        c = self.cfg
        step.stop = EmptyStepsError(
            f"{self.empty_steps} steps in a row had nothing to learn from (train.max_empty_steps="
            f"{c.train.max_empty_steps}); the last: {metrics['empty']}, sampled accuracy "
            f"{metrics.get('rollout/acc_before_filter', float('nan')):.3f}, truncated "
            f"{metrics.get('rollout/truncated_frac', float('nan')):.0%}, verifier timeouts "
            f"{metrics.get('verify/timeouts', 0)}, failures {metrics.get('verify/failed', 0)}. Check: that each row's "
            f"reference is what its verifier expects (data.reference_key={c.data.reference_key!r}; run "
            "`iprime data check` on the data); that responses have room to finish (rollout.max_new_tokens="
            f"{c.rollout.max_new_tokens}); the accuracy band (filter.low={c.filter.low}, filter.high={c.filter.high}); "
            f"and the responses in {self.out_dir / 'samples.jsonl'}."
        )

    def _review(self, step: StepRecord) -> None:
        """The update guard, evaluation when due, and the log; then raise the step's stop, if any
        (logged first: the step that stops the run is in metrics.jsonl)."""
        cfg, m = self.cfg, step.metrics
        m.update(self.guard.measure(self._parts()[0]))  # collective under torchrun
        if reason := self.guard.check(m):
            m["guard/rejected"] = reason
        if self.guard.rejected_in_a_row >= cfg.train.max_bad_steps and step.stop is None:
            step.stop = NonFiniteError(
                f"{self.guard.rejected_in_a_row} updates in a row were far outside the run's history ({reason}); "
                f"{self.checkpoint_note()}. Lower optim.lr / prm.lr, or look at the loss and gradient metrics of "
                f"these steps in {self.out_dir / 'metrics.jsonl'}"
            )
        if eval_due(self.step, cfg.train.steps, cfg.train.eval_every):
            m.update(self.evaluate())
        self._log(m, step.samples)
        if step.stop is not None:
            raise step.stop

    def _checkpoint(self) -> None:
        if self.cfg.train.save_every and self.step % self.cfg.train.save_every == 0:
            self._save_unless_rejected()

    def checkpoint_note(self) -> str:
        """What a stopped run can resume from, as it is on disk now: ``the last good checkpoint is
        <path> (resume it with --resume)``, or that none has been written yet and why."""
        found = resume_candidates(self.out_dir)
        if found:
            return f"the last good checkpoint is {found[0]} (continue from it with --resume)"
        every = self.cfg.train.save_every
        when = f"the first is due at step {every}" if every else "train.save_every=0: only at the end"
        return f"no checkpoint has been written yet ({when}); the run starts again from the beginning"

    # ------------------------------------------------------------------ checkpoints
    def _parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        models, optimizers = {"policy": self.policy}, {"policy": self.optimizers.policy}
        for role in ("prm", "value"):
            if getattr(self.models, role) is not None:
                models[role], optimizers[role] = getattr(self.models, role), getattr(self.optimizers, role)
        return models, optimizers

    def _check_out_dir(self) -> None:
        """Rank 0: ``train.out_dir`` is still the folder the run started in. Deleted or replaced
        under a live run (by hand, by another run's ``--overwrite``), the run would go on writing
        its metrics into a deleted file and its next checkpoint into a new empty folder: stop."""
        if self._out_dir_id is None:
            return
        now = _folder_id(self.out_dir)
        if now != self._out_dir_id:
            what = "deleted or moved" if now is None else "replaced by another folder"
            raise FileNotFoundError(
                errno.ENOENT,
                f"train.out_dir {self.out_dir} was {what} while the run was using it (its metrics and checkpoints "
                "went with it)",
                str(self.out_dir),
            )

    def save(self) -> Path:
        """Checkpoint everything a resumed run needs to reproduce the next step."""
        self._check_out_dir()
        meta = {
            "step": self.step,
            "bad_steps": self.bad_steps,
            "empty_steps": self.empty_steps,
            "guard": self.guard.state_dict(),
            "config": self.cfg.to_dict(),
            "scheduler": self.optimizers.scheduler.state_dict(),
            **self.collector.state_dict(),
            "rng": rng_state(),
            "world_size": self.dist.world_size,
            "model_source": self.model_source,  # lets `iprime export` find the architecture
        }
        path = save_run_checkpoint(
            self.out_dir,
            self.step,
            self.checkpoint_format,
            *self._parts(),
            meta,
            self.dist,
            keep=self.cfg.train.keep_checkpoints,
        )
        if self.cfg.train.save_hf:
            self._save_hf(path)
        self.saved = (self.step, path)
        return path

    def _save_hf(self, checkpoint: Path) -> Path:
        """The checkpoint's models in HF format too (``hf/{policy,prm}``, renamed into place: complete or
        absent; not in the manifest, resuming never reads them). Collective under torchrun."""
        final, tmp = checkpoint / "hf", checkpoint / ".hf-partial"
        try:
            self._write_pretrained(tmp, final, what="Hugging Face copy of the checkpoint's models")
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # complete or absent; the checkpoint itself is whole
            raise
        if self.dist.is_main:
            os.replace(tmp, final)
        D.barrier(self.dist)
        return final

    def resume(self, allow_change: Iterable[str] = ()) -> bool:
        """Load the newest checkpoint in ``train.out_dir`` that loads (older ones are tried when a
        newer one is unusable); False when there is none. Then compare this config with the one
        the checkpoint recorded (:mod:`iprime.train.identity`): a changed fixed key not named in
        ``allow_change`` raises :class:`~iprime.train.identity.ConfigChangeError`; changed
        learning rates and schedule are written into the restored optimizers and scheduler. The
        changes are kept in ``self.config_changes`` (logged with the next step)."""
        meta = load_run_checkpoint(self.out_dir, *self._parts(), self.dist, restore=self._restore)
        if meta is None:
            return False
        changes = self._config_changes(meta)
        where = f"the config saved with the checkpoint of step {self.step} in {self.out_dir / 'checkpoints'}"
        check_changes(changes, allow_change, where)  # every rank: the same checkpoint, the same command line
        follow_optimizer_settings(self.cfg, self.optimizers, [c.key for c in changes])
        self.config_changes = changes
        if Capability.SYNC_WEIGHTS in self.generator.capabilities:  # it loaded the starting weights
            self._sync_engine()
        return True

    def _config_changes(self, meta: dict[str, Any]) -> list[Change]:
        """This config against the one ``meta`` recorded. A policy given in Python (``model``
        argument, ``model.policy`` unset) counts as the ``model.policy`` it was loaded from, on
        both sides (``meta["model_source"]``)."""
        saved = meta.get("config")
        if not isinstance(saved, dict):
            return []
        given = self.cfg.to_dict()
        for config, source in ((saved, meta.get("model_source")), (given, self.model_source)):
            model = config.get("model")
            if isinstance(model, dict) and not model.get("policy") and source:
                model["policy"] = source
        return config_changes(saved, given)

    def _restore(self, meta: dict[str, Any]) -> None:
        """Everything of a checkpoint's ``meta`` besides the models and optimizers; a missing or
        malformed part raises (and :func:`load_run_checkpoint` tries the older checkpoint)."""
        step, bad_steps, empty_steps = int(meta["step"]), int(meta["bad_steps"]), int(meta.get("empty_steps", 0))
        self.optimizers.scheduler.load_state_dict(meta["scheduler"])
        self.collector.load_state_dict(meta)
        if "guard" in meta:
            self.guard.load_state_dict(meta["guard"])
        set_rng_state(meta["rng"])
        self.step, self.bad_steps, self.empty_steps = step, bad_steps, empty_steps

    # ------------------------------------------------------------------ the loop
    def train(
        self, *, resume: bool = False, progress: bool = True, allow_change: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Run until ``train.steps``; returns the metrics of the steps run by this call.
        ``allow_change``: fixed config keys a resume may change (:meth:`resume`)."""
        cfg, main = self.cfg, self.dist.is_main  # rank 0 writes config, metrics and samples
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._out_dir_id = _folder_id(self.out_dir)
        D.barrier(self.dist)
        if resume and not self.resume(allow_change):
            raise FileNotFoundError(f"--resume: no checkpoint in {self.out_dir / 'checkpoints'}")
        if main:  # after the resume's checks: config.yaml is the config in force, its changes beside it
            save_config(cfg, self.out_dir / "config.yaml")
            self._record_config_changes(allow_change)
            self.logger = MetricsLogger.from_config(self.out_dir, cfg.train, cfg.to_dict(), start_step=self.step)
        history: list[dict[str, Any]] = []
        self.guard.begin(self._parts()[0])
        try:
            mode = cfg.train.progress if (progress and main) else "none"
            signals = SignalStop(cfg.train.checkpoint_on_signal, announce=main)
            with signals, progress_bar(mode, cfg.train.steps, self.step, every_s=cfg.train.log_every_s) as advance:
                if self.step == 0 and self.eval_sets:  # where the curves start: the policy before training
                    start = {"step": 0, **self.evaluate(eval_fn=False)}
                    self._log(start)
                    advance(0, start)
                while self.step < cfg.train.steps:
                    self._check_out_dir()
                    if signum := signals.requested(self.dist, self.device):  # a step finished since the signal
                        raise self._stopped_by(signum)
                    metrics = self.train_step()
                    history.append(metrics)
                    advance(self.step, metrics)
            if self.step and (not cfg.train.save_every or self.step % cfg.train.save_every):
                self._save_unless_rejected()
        finally:
            self.scorer.close()  # the verifier workers; a later call starts them again
            if self.logger is not None:
                self.logger.close()
                self.logger = None  # a train_step after train() logs nowhere, as one before it
        return history

    def _record_config_changes(self, allow_change: Iterable[str]) -> None:
        """A resume's config changes: printed (a :class:`ConfigChangeWarning` each) and appended
        to ``config_history.jsonl`` beside ``config.yaml``; the next step logs them too."""
        if not self.config_changes:
            return
        path = append_history(self.out_dir, self.step, self.config_changes, allow_change)
        allowed = set(allow_change)
        for c in self.config_changes:
            how = "accepted with --allow-change" if c.fixed and c.key in allowed else "applied"
            warnings.warn(
                f"resume at step {self.step}: {c.text()} ({how}; recorded in {path})", ConfigChangeWarning, stacklevel=3
            )

    def evaluate(self, *, eval_fn: bool = True) -> dict[str, float]:
        """The policy's metrics on the eval sets (``eval/<name>/...``) and ``eval_fn``'s (``eval/<key>``).
        Training is left exactly as it was (RNG states, train/eval modes). Collective under torchrun."""
        metrics: dict[str, float] = {}
        with preserved_training_state(*self._parts()[0].values()):
            if self.eval_sets:
                where = {"dist": self.dist, "device": self.device, "policy_root": self.collector.policy_root}
                metrics.update(
                    run_evals(self.generator, self.tokenizer, self.eval_sets, self.scorer, self.cfg, **where)
                )
            if eval_fn and self.eval_fn is not None:
                metrics.update({f"eval/{k}": v for k, v in self.eval_fn(self).items()})
        return metrics

    def _log(self, metrics: dict[str, Any], samples: list[dict] | None = None) -> None:
        """Metrics (and sample rows) to the sinks; rank 0 only (the others have no logger)."""
        if self.logger is not None:
            self.logger.log(metrics)
            if samples:
                self.logger.log_samples(int(metrics["step"]), samples)

    def _save_unless_rejected(self) -> Path | None:
        """Checkpoint, unless the last update was rejected by the guard (a spike is never the newest state)."""
        if self.guard.last_reason:
            warnings.warn(f"step {self.step}: not checkpointed: {self.guard.last_reason}", stacklevel=2)
            return None
        return self.save()

    def _stopped_by(self, signum: int) -> RunInterrupted:
        """After a SIGTERM / SIGINT: a checkpoint of the last completed step (unless it was just
        written, or the guard rejected that step), as :class:`RunInterrupted` to raise."""
        if self.step == 0:
            return RunInterrupted(signum, 0, None, "before the first step: nothing to save")
        if self.saved[0] == self.step:
            return RunInterrupted(signum, self.step, self.saved[1])
        path = self._save_unless_rejected()
        note = "" if path else f"step {self.step} was not checkpointed (the update guard rejected it); "
        return RunInterrupted(signum, self.step, path, note + ("" if path else self.checkpoint_note()))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the policy (and the PRM, if any) as ordinary Hugging Face model directories; the
        PRM's beta, reference and step delimiter go beside it (``iprime_prm.json``), where every
        command that loads a PRM reads them. Collective under torchrun: rank 0 writes."""
        return self._write_pretrained(Path(directory), Path(directory))

    def _write_pretrained(self, d: Path, final: Path, what: str = "final model") -> Path:
        """:meth:`save_pretrained` into ``d``; ``final``: where it will be read from (a
        ``model.reference=policy`` PRM names ``final/policy`` as its reference). A failed write
        (a full disk: safetensors' ``SafetensorError``, an ``OSError``) raises
        :func:`~iprime.train.checkpoint_store.write_error`'s ``OSError`` naming ``what``."""
        for name, model in (("policy", self.policy), ("prm", self.prm)):
            if model is None:
                continue
            state = D.full_state_dict(model, self.passes.roots.get(id(model)), every_rank=False)
            if self.dist.is_main:
                try:
                    model.save_pretrained(d / name, state_dict=state)
                    self.tokenizer.save_pretrained(d / name)
                except Exception as err:
                    if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":  # no OSError, errno in text
                        raise write_error(err, d / name, what) from err
                    raise
        if self.prm is not None and self.dist.is_main:
            save_prm_metadata(d / "prm", run_prm_metadata(self.cfg, self.model_source, final))
        D.barrier(self.dist)
        return d
