"""What a PRIME run trains: the policy, the reference, the implicit PRM, an optional value
model, their optimizers and the learning-rate schedule."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from transformers import AutoConfig

from iprime.algo import get_advantage_estimator
from iprime.config import PrimeConfig
from iprime.data.sources import Record, prepare_rows
from iprime.models import load_model, load_tokenizer
from iprime.optim import lr_factor
from iprime.rollout import HFGenerator, SyncedHFGenerator, check_generator
from iprime.rollout.vllm import VLLMGenerator
from iprime.train.memory import attach_lora, enable_gradient_checkpointing
from iprime.train.value import ValueModel
from iprime.verifiers import check_row


@dataclass
class Models:
    """The models of a run. ``reference`` is ``None`` when the policy's own pre-update log-probs
    serve as the reference (``model.reference=policy``) or when the PRM is a LoRA adapter on the
    reference (``reference_is_prm_base``: the reference is the PRM with its adapter off)."""

    policy: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module | None = None
    prm: torch.nn.Module | None = None
    value: torch.nn.Module | None = None
    reference_is_prm_base: bool = False

    @property
    def has_reference(self) -> bool:
        """A reference distinct from the policy: a frozen model, or the LoRA PRM's base."""
        return self.reference is not None or self.reference_is_prm_base


@dataclass
class Optimizers:
    policy: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    prm: torch.optim.Optimizer | None = None
    value: torch.optim.Optimizer | None = None


def _load_policy(cfg: PrimeConfig, model, tokenizer, device: torch.device):
    if isinstance(model, (str, Path)):
        policy = load_model(
            model, dtype=cfg.model.dtype, device=device, gradient_checkpointing=cfg.model.gradient_checkpointing
        )
        return policy, tokenizer or load_tokenizer(model)
    if tokenizer is None:
        raise ValueError("pass tokenizer= together with a loaded model")
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model.to(device), tokenizer


def _reference(cfg: PrimeConfig, policy, ref_model, device: torch.device):
    if cfg.model.reference == "policy":
        return None
    if ref_model is not None:
        reference = ref_model.to(device)
    elif cfg.model.reference == "sft":
        reference = copy.deepcopy(policy)
    else:
        reference = load_model(cfg.model.reference, dtype=cfg.model.dtype, device=device)
    return reference.eval().requires_grad_(False)


def _prm(cfg: PrimeConfig, policy, reference, prm_model, device: torch.device):
    """The PRM and the reference that remains (``None`` when the PRM is a LoRA adapter on it)."""
    p = cfg.prm
    if p.lora:
        if prm_model is not None:
            raise ValueError("prm.lora builds the PRM on the reference; pass ref_model=, not prm_model=")
        prm, reference = attach_lora(reference, p.lora_r, p.lora_alpha, p.lora_dropout), None
    elif prm_model is not None:
        prm = prm_model.to(device)
    elif cfg.model.prm:
        prm = load_model(cfg.model.prm, dtype=cfg.model.dtype, device=device)
    else:
        prm = copy.deepcopy(policy)
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(prm)
    return prm.train(), reference


def loading_lines(cfg: PrimeConfig, model) -> dict[str, str]:
    """What :func:`build_models` is about to load, by role, as the run says it before the
    load (``loading policy from runs/sft``): where each model comes from."""
    source = str(model) if isinstance(model, (str, Path)) else "the given model"
    ref = cfg.model.reference
    lines = {"policy": f"loading policy from {source}"}
    if ref == "sft":
        lines["reference"] = "loading reference: a frozen copy of the starting policy (model.reference=sft)"
    elif ref != "policy":
        lines["reference"] = f"loading reference from {ref}"
    if cfg.prm.enabled:
        if cfg.prm.lora:
            lines["prm"] = "loading PRM: a LoRA adapter on the reference (prm.lora=true)"
        elif cfg.model.prm:
            lines["prm"] = f"loading PRM from {cfg.model.prm}"
        else:
            lines["prm"] = "loading PRM: a copy of the starting policy (model.prm not set)"
    return lines


def build_models(
    cfg: PrimeConfig, model, device: torch.device, *, tokenizer=None, prm_model=None, ref_model=None, log=None
) -> Models:
    """Policy from ``model`` (a path / hub id, or a loaded causal LM with ``tokenizer``); the
    reference per ``model.reference``; the PRM per ``prm`` and ``model.prm`` (the policy's
    starting weights by default); a value model when the estimator needs one. ``log(line)``,
    when given, hears :func:`loading_lines` as each load starts."""
    say = (lambda role: log(lines[role]) if role in lines else None) if log is not None else (lambda role: None)
    lines = loading_lines(cfg, model)
    say("policy")
    policy, tokenizer = _load_policy(cfg, model, tokenizer, device)
    policy.train()
    say("reference")
    reference = _reference(cfg, policy, ref_model, device)
    prm = None
    if cfg.prm.enabled:
        say("prm")
        prm, reference = _prm(cfg, policy, reference, prm_model, device)
    value = ValueModel(policy).to(device) if get_advantage_estimator(cfg.algo.estimator).needs_values else None
    return Models(
        policy, tokenizer, reference, prm, value, reference_is_prm_base=bool(cfg.prm.enabled and cfg.prm.lora)
    )


def build_optimizers(cfg: PrimeConfig, models: Models) -> Optimizers:
    """AdamW for each trained model; the policy's learning rate follows ``optim.schedule``."""
    o = cfg.optim
    policy = torch.optim.AdamW(models.policy.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        policy, lambda step: lr_factor(step, cfg.train.steps, o.warmup_steps, o.schedule)
    )
    prm = value = None
    if models.prm is not None:
        trainable = [p for p in models.prm.parameters() if p.requires_grad]
        prm = torch.optim.AdamW(trainable, lr=cfg.prm.lr, weight_decay=cfg.prm.weight_decay)
    if models.value is not None:
        value = torch.optim.AdamW(models.value.parameters(), lr=o.value_lr)
    return Optimizers(policy, scheduler, prm, value)


def build_generator(cfg: PrimeConfig, model, models: Models, generator=None, device: torch.device | None = None):
    """The rollout engine: ``generator`` if given (checked to implement
    :class:`iprime.rollout.Generator`); vLLM (``rollout.engine=vllm``) or the weight-sync HF
    engine (``hf_sync``, on ``device``), each loading its own copy of the policy from its path;
    else the built-in HF sampler on the policy."""
    if generator is not None:
        return check_generator(generator)
    engine, batch_size = cfg.rollout.engine, cfg.rollout.generation_batch_size
    if engine in ("vllm", "hf_sync") and not isinstance(model, (str, Path)):
        raise ValueError(f'rollout.engine="{engine}" loads the policy from its path; pass model= as a path')
    device = device or next(models.policy.parameters()).device
    if engine == "vllm":  # under torchrun one engine per rank, on this rank's GPU (external launcher)
        return VLLMGenerator.from_config(str(model), models.tokenizer, cfg, device=device)
    if engine == "hf_sync":  # the engine's own module, as vllm.LLM(model=path) builds its own
        own = load_model(model, dtype=cfg.model.dtype, device=device)
        return SyncedHFGenerator(own, models.tokenizer, batch_size=batch_size)
    return HFGenerator(models.policy, models.tokenizer, batch_size=batch_size)


def reuses_sampling_logprobs(cfg: PrimeConfig, generator, policy) -> bool:
    """Whether PPO's old log-probs are the sampler's. The built-in sampler records exactly what a
    recompute would give (same model and temperature); another engine's log-probs are not ours."""
    own_sampler = isinstance(generator, HFGenerator) and generator.model is policy
    if cfg.rollout.old_logprobs == "sampling" and not own_sampler:
        raise ValueError('rollout.old_logprobs="sampling" needs the built-in HF sampler on the policy')
    return cfg.rollout.old_logprobs == "sampling" or (
        cfg.rollout.old_logprobs == "auto" and own_sampler and not cfg.rollout.is_correction
    )


def context_length(model) -> int | None:
    """The model's context window from its config (a path, a hub id, or a loaded model)."""
    if isinstance(model, (str, Path)):
        config = AutoConfig.from_pretrained(str(model))
    else:
        config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def prepare_training_data(cfg: PrimeConfig, dataset, tokenizer, model, scorer):
    """The run's rows checked and resolved (:func:`iprime.data.sources.prepare_rows`): prompts
    (with ``data.system_prompt``), references (``data.reference_key``, ``auto`` for verl/Eurus
    rows), each row against its verifier (per-row dispatch only), prompt lengths against
    ``data.max_prompt_tokens`` (default: the context window minus ``rollout.max_new_tokens``).
    Every bad row is reported with its location in one error."""
    records = [r if isinstance(r, Record) else Record(dict(r), f"train_dataset row {i}") for i, r in enumerate(dataset)]
    limit = cfg.data.max_prompt_tokens
    if limit is None and tokenizer is not None:
        context = context_length(model)
        limit = None if context is None else context - cfg.rollout.max_new_tokens
        if limit is not None and limit < 1:
            raise ValueError(
                f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} leaves no room for a prompt in "
                f"the model's context of {context} tokens"
            )
    check = partial(check_row, scoring=scorer.scoring) if scorer.verifier is None else None
    data = prepare_rows(
        records,
        prompt_key=cfg.data.prompt_key,
        reference_key=cfg.data.reference_key,
        system_prompt=cfg.data.system_prompt,
        check_row=check,
        tokenizer=tokenizer,
        max_prompt_tokens=limit,
        overlong=cfg.data.overlong_prompts,
    )
    if data.dropped_overlong:
        warnings.warn(
            f"{len(data.dropped_overlong)} rows have prompts over {limit} tokens and were left out "
            f"(data.overlong_prompts=drop); the first: {data.dropped_overlong[0]}",
            stacklevel=2,
        )
    return data
