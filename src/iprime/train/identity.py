"""A run's identity on resume: which config keys may change when a run continues, and which not.

``iprime train --resume`` compares the config it is given with the config the checkpoint it
resumes from recorded (``meta["config"]``: what was in force when that state was saved; the
run's ``config.yaml`` may have been written by a later start that saved nothing).
:func:`config_changes` lists every key that differs, ``old -> new``. Each key is in one of two
groups:

**Fixed** (:data:`FIXED`): a change makes the run neither the old run nor a new one. Refused
unless named with ``--allow-change KEY`` (:func:`check_changes`), which accepts it on purpose
and records it. By group, and why:

- *the models* (``model.policy``, ``model.prm``, ``model.reference``, ``model.dtype``,
  ``model.autocast``, ``prm.enabled``, ``prm.lora*``): the checkpoint holds the trained policy
  and PRM weights, but the frozen reference is not in it: it is read again from its path (or
  from ``model.policy`` for ``model.reference=sft``) at every start. A new path silently gives
  the implicit reward ``beta * log(pi_prm / pi_ref)`` another baseline. ``--allow-change
  model.policy`` means exactly that: the trained weights stay the checkpoint's, the tokenizer
  and the ``sft`` reference come from the new path. Precision changes the numbers computed.
- *the data and the reward* (``data.*`` but the eval set and the row-size limit, ``verify.code_reward``,
  ``verify.stdout_compare``, ``verify.code_prelude``): the checkpoint's prompt stream is a
  position in *this* data's shuffled order, and the reward is the objective being optimised.
- *the algorithm* (``algo.*``, ``prm.beta`` and the PRM's update rule, ``filter.*``, the PPO
  loss: ``optim.epochs``, ``optim.mini_batch_size``, ``optim.loss_scope``, the clips,
  ``optim.agg``, sampling: ``rollout.temperature``, ``top_p``, ``top_k``,
  ``max_new_tokens``, the buffer and the importance correction, ``rollout.engine``,
  ``rollout.dtype``): the quantity the run estimates and the distribution it samples from.
- *the batch* (``rollout.n``, ``rollout.prompts_per_step``, ``rollout.oversample``,
  ``rollout.max_rounds``): K fixes the leave-one-out baselines and the buffered groups' shape;
  the rest how many samples one step averages over.
- *the seed* (``train.seed``): it seeds the prompt order of every epoch and every step's
  sampling (``train/collect.py``); a new seed halfway makes a run that no seed reproduces.

**Changeable** (:data:`CHANGEABLE`): applied for real from the resumed step on, printed, logged
in the first resumed step's metrics (``config/changed``) and kept in ``config_history.jsonl``.
The learning rates and weight decays are written into the restored optimizers (a checkpoint
restores the old ones) and the policy's scheduler follows the new ``optim.lr``,
``optim.schedule``, ``optim.warmup_steps`` and ``train.steps`` at the step reached
(:func:`follow_optimizer_settings`); everything else is read from the config as the run goes:
the run length, the learning rates, gradient clipping, checkpoint, evaluation and logging
settings, the verifier's workers and limits, memory knobs (micro-batch sizes, gradient
checkpointing, the vLLM engine's memory) and where the run computes (``model.device``).

A key that only one side has (a config written by another iprime version) is not compared.
Under ``torchrun`` every rank compares the same checkpoint's config with the same command line,
so all ranks refuse or accept alike; rank 0 writes the history.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iprime.config import ConfigError, PrimeConfig

HISTORY = "config_history.jsonl"
"""Beside ``config.yaml`` in the run folder: one line per accepted change."""

FIXED: dict[str, tuple[str, ...]] = {
    "the models (the reference is read again from its path on every start; only the trained weights "
    "are in the checkpoint)": (
        "model.policy",
        "model.prm",
        "model.reference",
        "model.dtype",
        "model.autocast",
        "prm.enabled",
        "prm.lora",
        "prm.lora_r",
        "prm.lora_alpha",
        "prm.lora_dropout",
    ),
    "the data and the reward (the checkpoint's prompt stream is a position in this data's order)": (
        "data.train_path",
        "data.prompt_key",
        "data.reference_key",
        "data.ability_key",
        "data.source_key",
        "data.verifier",
        "data.reward_functions",
        "data.reward_weights",
        "data.system_prompt",
        "data.max_prompt_tokens",
        "data.overlong_prompts",
        "data.shuffle",
        "verify.code_reward",
        "verify.stdout_compare",
        "verify.code_prelude",
    ),
    "the algorithm (what the run estimates and the distribution it samples from)": (
        "algo.estimator",
        "algo.rm_coef",
        "algo.outcome_coef",
        "algo.gamma",
        "algo.outcome_gamma",
        "algo.lam",
        "algo.normalize",
        "algo.batch_norm_scope",
        "algo.whiten",
        "algo.process_baseline",
        "algo.kl_coef",
        "algo.kl_mode",
        "algo.kl_estimator",
        "algo.entropy_coef",
        "prm.beta",
        "prm.update",
        "prm.loss",
        "prm.granularity",
        "prm.step_delimiter",
        "prm.epochs",
        "prm.mini_batch_size",
        "filter.enabled",
        "filter.low",
        "filter.high",
        "filter.drop_truncated",
        "optim.epochs",
        "optim.mini_batch_size",
        "optim.loss_scope",
        "optim.clip_low",
        "optim.clip_high",
        "optim.dual_clip",
        "optim.agg",
        "optim.value_clip",
        "rollout.temperature",
        "rollout.top_p",
        "rollout.top_k",
        "rollout.max_new_tokens",
        "rollout.engine",
        "rollout.dtype",
        "rollout.is_correction",
        "rollout.is_cap",
        "rollout.buffer",
        "rollout.old_logprobs",
    ),
    "the batch (K fixes the leave-one-out baselines and the buffered groups' shape)": (
        "rollout.n",
        "rollout.prompts_per_step",
        "rollout.oversample",
        "rollout.max_rounds",
    ),
    "the seed (it seeds every epoch's prompt order and every step's sampling)": ("train.seed",),
}
"""Keys refused on resume unless ``--allow-change KEY``, by group (the group is the reason)."""

CHANGEABLE: dict[str, tuple[str, ...]] = {
    "the run length and the learning rates (written into the restored optimizers and scheduler)": (
        "train.steps",
        "optim.lr",
        "optim.schedule",
        "optim.warmup_steps",
        "optim.weight_decay",
        "optim.value_lr",
        "prm.lr",
        "prm.weight_decay",
        "optim.grad_clip",
        "prm.grad_clip",
    ),
    "checkpoints, evaluation and logging": (
        "train.out_dir",
        "train.save_every",
        "train.keep_checkpoints",
        "train.save_hf",
        "train.checkpoint_format",
        "train.eval_every",
        "train.eval_benchmarks",
        "train.eval_limit",
        "train.eval_n",
        "train.eval_temperature",
        "train.eval_max_new_tokens",
        "data.eval_path",
        "train.log_samples_every",
        "train.log_sample_groups",
        "train.log_sample_tokens",
        "train.progress",
        "train.log_every_s",
        "train.tensorboard",
        "train.wandb",
        "train.wandb_project",
        "train.wandb_entity",
        "train.wandb_run_name",
        "train.wandb_tags",
        "train.push_to_hub",
        "train.hub_private",
        "train.max_bad_steps",
        "train.max_empty_steps",
        "train.checkpoint_on_signal",  # what a stop writes, not what a step computes
        "verify.max_failed_share",  # when failures stop the run; a failing sample scores 0 either way
    ),
    "the machine: devices, memory and workers (the same numbers, computed elsewhere or in other pieces)": (
        "model.device",
        "model.gradient_checkpointing",
        "train.num_threads",
        "optim.micro_batch_size",
        "optim.micro_batch_tokens",
        "prm.micro_batch_size",
        "rollout.generation_batch_size",
        "rollout.vllm_gpu_memory_utilization",
        "rollout.vllm_sleep",
        "rollout.vllm_max_model_len",
        "rollout.vllm_enforce_eager",
        "data.max_row_bytes",
        "verify.workers",
        "verify.timeout_s",
        "verify.code_test_timeout_s",
        "verify.memory_limit_mb",
    ),
}
"""Keys a resume applies (and records) without being asked, by group."""

SCHEDULE_KEYS = frozenset({"optim.lr", "optim.schedule", "optim.warmup_steps", "train.steps"})
"""What the policy's learning rate at a step is computed from (``iprime.optim.lr_factor``)."""


class ConfigChangeError(ConfigError):
    """``--resume`` with a config that changes keys the run cannot change (a user error)."""


class ConfigChangeWarning(UserWarning):
    """A resume applied a changed config key (changeable, or allowed with ``--allow-change``)."""


@dataclass(frozen=True)
class Change:
    """One key whose value differs between the checkpoint's config and the one given."""

    key: str
    old: Any
    new: Any

    @property
    def fixed(self) -> bool:
        return self.key not in _CHANGEABLE_KEYS

    def text(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


_FIXED_KEYS = frozenset(k for keys in FIXED.values() for k in keys)
_CHANGEABLE_KEYS = frozenset(k for keys in CHANGEABLE.values() for k in keys)


def all_keys() -> list[str]:
    """Every dotted key of :class:`~iprime.config.PrimeConfig`, in declaration order."""
    return list(flatten(PrimeConfig().to_dict()))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-6}}`` -> ``{"optim.lr": 1e-6}`` (sections are the nested mappings)."""
    out: dict[str, Any] = {}
    for name, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _same(old: Any, new: Any) -> bool:
    """Equal as config values: numbers by value (YAML may have written ``1`` for ``1.0``), NaN = NaN."""
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return True
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new))
    return old == new


def _show(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def config_changes(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[Change]:
    """The keys whose values differ between ``saved`` (the checkpoint's config, plain data) and
    ``given`` (the config of this start), in ``given``'s key order. Keys only one side has are
    not compared (another iprime version's config)."""
    old, new = flatten(saved), flatten(given)
    return [Change(k, old[k], v) for k, v in new.items() if k in old and not _same(old[k], v)]


def check_allowed_keys(allow: Iterable[str]) -> None:
    """Raise :class:`~iprime.config.ConfigError` for an ``--allow-change`` that names no config key."""
    known = set(all_keys())
    for key in allow:
        if key not in known:
            raise ConfigError(f"--allow-change {key}: not a config key (`iprime config show` lists them)")


def check_changes(changes: Iterable[Change], allow: Iterable[str], source: str) -> None:
    """Raise :class:`ConfigChangeError` when a fixed key changed and ``allow`` does not name it.

    The message lists each refused key ``old -> new`` with its group (the reason), then what to
    do. ``source``: what the config was compared with (the checkpoint's saved config)."""
    allow = set(allow)
    refused = [c for c in changes if c.fixed and c.key not in allow]
    if not refused:
        return
    lines = [f"this config changes {len(refused)} key(s) that cannot change in the middle of a run ({source}):"]
    lines += [f"  {c.text()}   [{group_of(c.key)}]" for c in refused]
    flags = " ".join(f"--allow-change {c.key}" for c in refused)
    lines.append(
        "Resume with the old values, start a new run in another train.out_dir, or accept the change on purpose "
        f"with {flags} (recorded in {HISTORY})."
    )
    raise ConfigChangeError("\n".join(lines))


def group_of(key: str) -> str:
    """The reason a fixed key is fixed (its :data:`FIXED` group), or "changeable"."""
    for reason, keys in FIXED.items():
        if key in keys:
            return reason
    return "changeable"


def follow_optimizer_settings(cfg: PrimeConfig, optimizers, changed: Iterable[str]) -> None:
    """Write the changed learning rates and weight decays into restored optimizers (a checkpoint
    restores the old ones), and make the policy's scheduler follow the new schedule.

    ``optimizers``: :class:`~iprime.train.build.Optimizers` (``policy``, ``scheduler``, ``prm``,
    ``value``). The scheduler is a ``LambdaLR`` whose factor reads ``cfg`` (``lr_factor(step,
    train.steps, optim.warmup_steps, optim.schedule)``); after a change of :data:`SCHEDULE_KEYS`
    its base rate becomes ``optim.lr`` and each group's rate ``optim.lr * factor(last_epoch)``,
    the step count kept, so the next step trains at the new rate, not after one more step.
    Nothing is touched for keys that did not change (a plain resume stays bitwise)."""
    changed = set(changed)
    o = cfg.optim
    policy, scheduler = optimizers.policy, optimizers.scheduler
    if changed & SCHEDULE_KEYS:
        scheduler.base_lrs = [o.lr for _ in policy.param_groups]
        for group, factor in zip(policy.param_groups, scheduler.lr_lambdas):
            group["initial_lr"] = o.lr
            group["lr"] = o.lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in policy.param_groups]
    settings = [
        (policy, "optim.weight_decay", "weight_decay", o.weight_decay),
        (optimizers.prm, "prm.lr", "lr", cfg.prm.lr),
        (optimizers.prm, "prm.weight_decay", "weight_decay", cfg.prm.weight_decay),
        (optimizers.value, "optim.value_lr", "lr", o.value_lr),
    ]
    for optimizer, key, name, value in settings:
        if optimizer is not None and key in changed:
            for group in optimizer.param_groups:
                group[name] = value


def changes_text(changes: Iterable[Change]) -> str:
    """``"optim.lr: 0.001 -> 0.05; train.steps: 3 -> 5"``: one metrics value for a step's changes."""
    return "; ".join(c.text() for c in changes)


def append_history(out_dir: str | Path, step: int, changes: Iterable[Change], allowed: Iterable[str]) -> Path:
    """Append one line per change to ``out_dir/config_history.jsonl``: ``{"step", "key", "old",
    "new", "by", "time"}``; ``by`` is ``"--allow-change"`` for a fixed key accepted on purpose,
    ``"changeable"`` otherwise. ``step``: the checkpoint step the changed config applies after."""
    allowed = set(allowed)
    path = Path(out_dir) / HISTORY
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with path.open("a", encoding="utf-8") as fh:
        for c in changes:
            by = "--allow-change" if c.fixed and c.key in allowed else "changeable"
            row = {"step": int(step), "key": c.key, "old": c.old, "new": c.new, "by": by, "time": stamp}
            fh.write(json.dumps(row) + "\n")
    return path


def unsorted_keys() -> list[str]:
    """Config keys in neither :data:`FIXED` nor :data:`CHANGEABLE` (a new key needs a decision),
    or in both."""
    return sorted((set(all_keys()) ^ (_FIXED_KEYS | _CHANGEABLE_KEYS)) | (_FIXED_KEYS & _CHANGEABLE_KEYS))
