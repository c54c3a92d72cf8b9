"""GPU smoke check: PRIME on CUDA with HF, weight-sync and vLLM rollouts, bf16, and torchrun + FSDP2.

Needs a CUDA machine and the GPU environment (``make setup-gpu``: torch + vLLM in ``.venv-gpu``);
downloads nothing. ``make gpu-check`` runs it; by hand::

    .venv-gpu/bin/python benchmarks/gpu_check.py [--out runs/gpu_check] [--steps 3] [--only hf_bf16,torchrun]

Checks, in this order, each in its own child process (a crash, a hang or a CUDA error in one
does not hide the others, and every check starts with an empty GPU and its own peak-memory count):

``model``        a small Qwen2 (hidden 512, 4 layers, ~13M parameters; ``iprime.models.make_tiny_model``)
                 and its tokenizer built locally, then SFT on the built-in arithmetic task on the GPU,
                 so that rollouts earn mixed rewards. Every later check starts from this model.
``hf_bf16``      PRIME steps with the built-in HF sampler, float32 weights under bf16 autocast (the
                 Eurus recipe's precision), ``rollout.is_correction=true`` so the trainer logs how far
                 the sampler's log-probs are from its own recomputation (a baseline for the vLLM checks).
``hf_sync_bf16`` the same precision with ``rollout.engine=hf_sync``: the engine holds its own copy of
                 the policy in ``model.dtype`` (float32: it has no ``rollout.dtype``), gets each update
                 only through ``sync_weights`` (by name, as vLLM's ``load_weights``) and samples
                 without autocast; the trainer recomputes the old log-probs under bf16 autocast, as
                 the Eurus recipe's trainer does. Passes when
                 ``rollout/sampler_logprob_gap`` stays under ``--bf16-gap-limit`` (1.0) after every update
                 and, after training, fresh engine samples score within float noise (float32, no
                 autocast) of the trained policy and far from the SFT model (a stale-engine control).
``torchrun``     ``python -m torch.distributed.run --nproc_per_node=N -m iprime train`` on a jsonl of
                 arithmetic rows (``data.verifier=arithmetic``), N = the GPUs present: FSDP2 over N
                 ranks with NCCL, DCP checkpoints. With one GPU this is a single process (no FSDP2).
``torchrun_hf_sync`` the same with ``rollout.engine=hf_sync``: ``rollout/sampler_logprob_gap`` (the max
                 over ranks) under the same limit after every update.
``vllm_sync``    ``rollout.engine=vllm`` (bf16 engine, ``rollout.dtype``'s default, as the recipe). Weight sync:
                 ``rollout/logp_abs_diff_mean`` per step compares vLLM's sampling log-probs with the
                 trainer's recomputation under the current weights; after training, fresh vLLM
                 samples are scored by the trained policy and by the starting SFT model: vLLM holds
                 the trained weights when it is much closer to the first (``sync_ratio`` < 0.5).
``vllm_bf16``    vLLM with ``model.dtype=bfloat16`` (trainer and engine in bf16), the same sync test.

The vLLM checks come last, so that on a machine with vLLM its slow engine start cannot take the
budget from the others. Without vLLM (``import vllm`` cannot find it) they are reported as
``skipped`` with "vLLM not installed" at once, without starting a process; so is ``torchrun``
with ``--torchrun-engine vllm``.

Prints a JSON report (per check: status ok / failed / skipped, seconds, key numbers, tokens/s,
peak memory) and writes it to ``OUT/gpu_check.json``; each check's log is ``OUT/<check>.log``.
Exit code 0 when every check that ran passed and every check that did not run was skipped only
because vLLM is not installed (``skipped_without_vllm`` in the report); 1 when a check failed,
was skipped for another reason (over the budget, no model), or none ran; 2 without CUDA or with
an unknown check name. The whole run fits in ``--budget-s`` seconds (default 480): a check starts
only with ``MIN_START_S`` of the budget left and is stopped (reported skipped) when the budget
runs out. The first GPU run (one H200: ``model``, ``hf_bf16`` and ``torchrun`` passed; that
machine had no vLLM) is in docs/scaling.md.

Without a GPU, ``--device cpu --only model,hf_bf16,hf_sync_bf16,torchrun,torchrun_hf_sync --hidden-size 64
--layers 2 --sft-steps 5 --timeout-scale 8`` runs the same plumbing on the CPU (float32 without
autocast, so the gap limit is float noise, 1e-3; torchrun over 2 gloo ranks; no vLLM): that is how
this script was developed. ``--timeout-scale`` scales every check's timeout and the budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CHECKS = ("model", "hf_bf16", "hf_sync_bf16", "torchrun", "torchrun_hf_sync", "vllm_sync", "vllm_bf16")
TIMEOUT_S = {
    "model": 150,
    "hf_bf16": 150,
    "hf_sync_bf16": 180,
    "torchrun": 240,
    "torchrun_hf_sync": 240,
    "vllm_sync": 240,
    "vllm_bf16": 200,
}
VLLM_CHECKS = frozenset({"vllm_sync", "vllm_bf16"})
NO_VLLM = "vLLM not installed"  # the reason of a check skipped because `import vllm` cannot find it
MIN_START_S = 30.0  # a check starts only with this much of the budget left (x --timeout-scale)
NO_CUDA = (
    "gpu_check: no CUDA device is visible (torch {torch}, built for CUDA {cuda}). This check runs on a "
    "machine with an NVIDIA GPU, in the GPU environment: `make setup-gpu && make gpu-check`. "
    "On the CPU, `make test` covers everything that does not need a GPU."
)
MAX_NEW_TOKENS = 64  # response cap of every rollout in the checks

# Limits on `rollout/sampler_logprob_gap`, the max |engine's sampling log-prob - trainer's
# recompute| over a step's response tokens (and ranks), and on the stale-engine control.
#
# float32 engine and float32 trainer (the CPU mode, and the control below on any device): float
# noise between a KV-cache decode and one full forward. Seen on this repository's CPU: 9.5e-7 for
# the hidden-64 model (as tests/test_weight_sync.py), up to 4e-5 for hidden 128 x 4 layers; it
# grows with the model, so 1e-3. A stale engine in these checks is off by O(1) (the check's large
# learning rate: the control's stale max was 0.36 at hidden 64 and 10.1 at hidden 128).
#
# Trainer under bf16 autocast (CUDA): its lm_head returns bf16 logits, so a logit in [8, 16) is
# rounded by up to 2^-5 = 0.031, a token's log-prob (its logit minus the logsumexp) takes two such
# roundings, and every layer below adds its own; the gap is a max over ~8k tokens of a
# heavy-tailed error. Measured with CPU bf16 autocast as a stand-in (the hidden-128 model after
# 300 SFT steps, max |logit| 10, 32 prompts x 4 samples, before and after 3 updates): mean
# 0.0025-0.0054, 99th percentile 0.05-0.07, max 0.28-0.38; the H200's hf_bf16 mean was
# 0.0004-0.0016 (docs/scaling.md). So 1.0: ~3x the largest seen, ~10x under the stale signal of
# this check, whose control must exceed it (else the check is inconclusive). The sharp test of
# the sync under bf16 is the float32 control, not this limit.
FP32_NOISE_MAX = 1e-3
GAP_LIMIT_BF16 = 1.0
VLLM_ENV = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_ALLOW_INSECURE_SERIALIZATION",
    "VLLM_USE_V1",
    "VLLM_ATTENTION_BACKEND",
)


def model_spec(args) -> dict:
    """The check model: hidden 512, 4 layers, head size 64 (~13M parameters with the 512-token vocabulary)."""
    h = args.hidden_size
    return {
        "hidden_size": h,
        "num_layers": args.layers,
        "num_heads": h // 64,
        "num_kv_heads": max(1, h // 128),
        "intermediate_size": 3 * h,
    }


# ------------------------------------------------------------------------------------- helpers
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _task():
    from iprime.data.arithmetic import QUICKSTART_TASK, ArithmeticTask

    # carry slips in half the SFT solutions: the SFT model is right on some samples, wrong on others
    return ArithmeticTask(config=QUICKSTART_TASK, slip_rate=0.5)


def _step_summary(history: list[dict], keys: tuple[str, ...]) -> list[dict]:
    return [{k: m[k] for k in ("step", *keys) if k in m} for m in history]


def _run_summary(history: list[dict], steps: int) -> dict:
    """Key numbers of a trainer run; raises when it did not train every step on finite numbers."""
    trained = [m for m in history if "skipped" not in m]
    if len(history) != steps or len(trained) != steps:
        raise RuntimeError(f"expected {steps} trained steps, got {len(trained)} of {len(history)}: {history[-1:]}")
    for m in trained:
        for key in ("policy/pg_loss", "prm/loss", "policy/grad_norm"):
            if key in m and not _finite(m[key]):
                raise RuntimeError(f"step {m['step']}: {key} = {m[key]!r}")
    gen_tokens = sum(m.get("generated_tokens", 0) for m in trained)
    gen_time = sum(m.get("time/generate", 0.0) for m in trained)
    step_time = sum(m.get("time/step", 0.0) for m in trained)
    return {
        "steps": len(trained),
        "seconds_per_step": step_time / len(trained),
        "generated_tokens": gen_tokens,
        "generation_tokens_per_s": gen_tokens / gen_time if gen_time else None,
        "step_tokens_per_s": gen_tokens / step_time if step_time else None,
        "per_step": _step_summary(
            trained,
            (
                "time/step",
                "time/generate",
                "time/sync_weights",
                "tokens_per_s",
                "rollout/acc_before_filter",
                "policy/pg_loss",
                "prm/loss",
                "rollout/logp_abs_diff_mean",
                "rollout/logp_abs_diff_max",
                "rollout/is_weight_mean",
                "rollout/sampler_logprob_gap",
            ),
        ),
    }


def _common_overrides(out: Path, sft: Path, steps: int, device: str) -> list[str]:
    return [
        f"model.policy={sft}",
        f"model.device={device}",
        f"train.out_dir={out}",
        f"train.steps={steps}",
        "train.save_every=0",
        "train.tensorboard=false",
        "train.log_samples_every=0",
        "data.reference_key=answer",
        "rollout.n=4",
        "rollout.prompts_per_step=32",
        "rollout.oversample=1.0",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
        "filter.enabled=false",  # every step trains, whatever the accuracy
        # large steps on purpose: the policy must move visibly for the weight-sync test
        "optim.lr=5e-4",
        "prm.lr=1e-4",
        "optim.mini_batch_size=128",
        "optim.micro_batch_size=64",
        "prm.micro_batch_size=64",
    ]


def _vllm_overrides() -> list[str]:
    return [
        "rollout.engine=vllm",
        "rollout.is_correction=true",
        "rollout.vllm_gpu_memory_utilization=0.3",
        "rollout.vllm_max_model_len=512",
        "rollout.vllm_enforce_eager=true",  # no CUDA-graph capture: a faster start
    ]


def _precision(device: str, dtype: str, autocast: str) -> list[str]:
    """``model.dtype`` / ``model.autocast`` overrides; bf16 autocast exists on CUDA only."""
    return [f"model.dtype={dtype}", f"model.autocast={autocast if device == 'cuda' else 'none'}"]


def peak_memory(cuda: bool) -> dict:
    """This process's peak memory so far: the CUDA caching allocator's (allocated and reserved,
    GiB, since the last ``torch.cuda.reset_peak_memory_stats``; ``None`` on the CPU) and the
    resident set size (GiB, over the process's life: each check is its own process)."""
    import torch

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_memory_reserved_gb": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "peak_rss_gb": rss_kib / 2**20,
    }


def _train(name: str, out: Path, args, overrides: list[str]):
    import torch

    from iprime.config import load_config
    from iprime.train.prime import PrimeTrainer

    task = _task()
    sft = out / "model" / "sft"
    if not (sft / "config.json").is_file():
        raise RuntimeError(f"no model at {sft}: the 'model' check did not pass")
    steps = args.steps
    cfg = load_config(None, _common_overrides(out / name / "run", sft, steps, args.device) + overrides)
    rows = task.rows("train", 512, seed=2)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = PrimeTrainer(str(sft), cfg, rows, task.verify)
    setup_s = time.perf_counter() - t0
    history = trainer.train()
    result = {"setup_seconds": setup_s, **_run_summary(history, steps), **peak_memory(cuda)}
    return trainer, result


def sync_control(trainer, sft: Path, device: str, autocast: str = "none") -> dict:
    """Fresh engine samples (32 test prompts x 2, temperature 1) scored by the trained policy and
    by the starting SFT model, both in ``model.dtype`` without autocast; with ``autocast="bf16"``
    also by the trained policy under bf16 autocast (the trainer's precision: what
    ``rollout/sampler_logprob_gap`` compares with). Returns the mean and max ``|engine - model|``
    log-prob over the response tokens of each, and ``sync_ratio`` = mean vs trained / mean vs SFT."""
    import torch

    from iprime.data.chat import render_prompt
    from iprime.models import load_model
    from iprime.models.logprobs import response_logprobs
    from iprime.rollout import SamplingParams
    from iprime.train.memory import autocast_context

    task = _task()
    prompts = [render_prompt(trainer.tokenizer, r["prompt"]) for r in task.rows("test", 32, seed=5)]
    batch = trainer.generator.generate(
        prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, seed=7)
    ).to(torch.device(device))
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attn = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    mask = batch.response_mask.bool()
    T = batch.response_ids.shape[1]

    def logprobs(model, precision: str = "none"):
        model.eval()
        with torch.no_grad(), autocast_context(precision, torch.device(device)):
            return response_logprobs(model, ids, attn, T).float()

    def gap(a, b) -> tuple[float, float]:
        d = (a.double() - b.double()).abs()[mask]
        return float(d.mean()), float(d.max())

    engine_logp = batch.sampling_logprobs.float()
    trained_logp = logprobs(trainer.policy)
    start_logp = logprobs(load_model(sft, dtype=trainer.cfg.model.dtype, device=device))
    trained, trained_max = gap(engine_logp, trained_logp)
    initial, initial_max = gap(engine_logp, start_logp)
    result = {
        "sync_logp_abs_diff_vs_trained": trained,
        "sync_logp_abs_max_vs_trained": trained_max,
        "sync_logp_abs_diff_vs_sft": initial,
        "sync_logp_abs_max_vs_sft": initial_max,  # what a stale engine's gap would be
        "sync_policy_moved": gap(trained_logp, start_logp)[0],  # how far training took the policy
        "sync_ratio": trained / max(initial, 1e-12),
        "sync_tokens": int(mask.sum()),
    }
    if autocast != "none":
        mean, top = gap(engine_logp, logprobs(trainer.policy, autocast))
        result.update({"sync_logp_abs_diff_vs_trained_autocast": mean, "sync_logp_abs_max_vs_trained_autocast": top})
    return result


def require_sync(result: dict) -> None:
    """The vLLM checks' criterion: training moved the policy (else inconclusive), and the engine's
    samples are at least 2x closer (mean) to the trained policy than to the SFT model."""
    if result["sync_policy_moved"] < 1e-3:
        raise RuntimeError(f"inconclusive: training hardly moved the policy; raise --steps. {json.dumps(result)}")
    if not result["sync_ratio"] < 0.5:
        raise RuntimeError(
            f"the engine's samples are not closer to the trained policy than to the SFT model "
            f"({result['sync_logp_abs_diff_vs_trained']:.4g} vs {result['sync_logp_abs_diff_vs_sft']:.4g}): "
            f"the weights did not reach the engine. {json.dumps(result)}"
        )


def gap_limit(args) -> float:
    """The limit on ``rollout/sampler_logprob_gap``: ``--bf16-gap-limit`` where the trainer runs
    under bf16 autocast (CUDA), float noise (``FP32_NOISE_MAX``) in float32 (the CPU)."""
    return args.bf16_gap_limit if args.device == "cuda" else FP32_NOISE_MAX


def sampler_gaps(per_step: list[dict], limit: float) -> dict:
    """``rollout/sampler_logprob_gap`` of every step, checked against ``limit`` on the steps after
    the first update (step 1 samples the weights the engine loaded itself: its gap is the
    precision's noise floor, reported on its own). Raises when a step has no finite gap or a
    later step's gap is over the limit (an engine that missed an update)."""
    gaps = [m.get("rollout/sampler_logprob_gap") for m in per_step]
    if not all(_finite(g) for g in gaps):
        raise RuntimeError(f"rollout/sampler_logprob_gap missing or not finite: {gaps}")
    if len(gaps) < 2:
        raise RuntimeError(f"the gap after an update needs at least 2 steps, got {len(gaps)}: raise --steps")
    after = max(gaps[1:])
    result = {
        "sampler_gap_per_step": gaps,
        "sampler_gap_first_step": gaps[0],
        "sampler_gap_max_after_update": after,
        "sampler_gap_limit": limit,
    }
    if not after < limit:
        raise RuntimeError(
            f"rollout/sampler_logprob_gap reached {after:.4g} after an update, over the limit {limit:g}: "
            f"the engine samples from weights the trainer no longer holds. {json.dumps(result)}"
        )
    return result


# ------------------------------------------------------------------------------------- checks
def check_model(out: Path, args) -> dict:
    import torch

    from iprime.data.arithmetic import held_out_rows
    from iprime.models import load_model, load_tokenizer, make_tiny_model
    from iprime.train.evaluate import evaluate_accuracy
    from iprime.train.sft import SFTConfig, run_sft

    task = _task()
    t0 = time.perf_counter()
    spec = model_spec(args)
    init = make_tiny_model(
        out / "model" / "init", corpus=task.corpus(2000, seed=0), seed=0, max_position_embeddings=512, **spec
    )
    build_s = time.perf_counter() - t0
    model, tok = load_model(init, device=args.device), load_tokenizer(init)
    params = sum(p.numel() for p in model.parameters())
    sft = run_sft(
        model,
        tok,
        task.sft_rows(8000, seed=0),
        SFTConfig(lr=1e-3, max_steps=args.sft_steps, batch_size=64, warmup_steps=20, log_every=100),
    )
    model.save_pretrained(out / "model" / "sft")
    tok.save_pretrained(out / "model" / "sft")
    ev = evaluate_accuracy(model, tok, held_out_rows(task.config, 100), task.verify, max_new_tokens=MAX_NEW_TOKENS)
    if not _finite(sft["final_loss"]):
        raise RuntimeError(f"SFT loss is {sft['final_loss']!r}")
    return {
        "parameters": params,
        "model": spec,
        "build_seconds": build_s,
        "sft_steps": sft["steps"],
        "sft_seconds": sft["train_time_s"],
        "sft_first_loss": sft["first_loss"],
        "sft_final_loss": sft["final_loss"],
        "sft_tokens_per_s": sft["response_tokens"] / max(1e-9, sft["train_time_s"])
        if "response_tokens" in sft
        else None,
        "held_out_accuracy": ev["accuracy"],
        "eval_seconds": ev["time_s"],
        "bf16_supported": torch.cuda.is_bf16_supported() if args.device == "cuda" else None,
    }


def check_hf_bf16(out: Path, args) -> dict:
    overrides = ["rollout.engine=hf", "rollout.is_correction=true", *_precision(args.device, "float32", "bf16")]
    _, result = _train("hf_bf16", out, args, overrides)
    return result


def check_hf_sync_bf16(out: Path, args) -> dict:
    """The weight-sync engine under the recipe's trainer precision (float32 weights, bf16
    autocast), the engine in ``model.dtype`` (float32; float32 throughout on the CPU).
    ``old_logprobs=auto`` recomputes the old log-probs, so every step logs
    ``rollout/sampler_logprob_gap``."""
    precision = _precision(args.device, "float32", "bf16")
    autocast = precision[1].split("=", 1)[1]
    trainer, result = _train("hf_sync_bf16", out, args, ["rollout.engine=hf_sync", *precision])
    limit = gap_limit(args)
    result.update({"engine_dtype": trainer.cfg.model.dtype, "trainer_autocast": autocast})
    result["engine_syncs"] = trainer.generator.syncs
    if trainer.generator.syncs != args.steps:
        raise RuntimeError(f"the engine took {trainer.generator.syncs} weight syncs in {args.steps} steps")
    result.update(sampler_gaps(result["per_step"], limit))
    control = sync_control(trainer, out / "model" / "sft", args.device, autocast)
    result.update(control)
    require_sync(control)
    if not control["sync_logp_abs_max_vs_sft"] > limit:
        raise RuntimeError(
            f"inconclusive: a stale engine would differ by at most {control['sync_logp_abs_max_vs_sft']:.4g}, "
            f"under the gap limit {limit:g}; raise --steps. {json.dumps(control)}"
        )
    if not control["sync_logp_abs_max_vs_trained"] < FP32_NOISE_MAX:
        raise RuntimeError(
            f"fresh engine samples differ from the trained policy by up to "
            f"{control['sync_logp_abs_max_vs_trained']:.4g} in {trainer.cfg.model.dtype} without autocast "
            f"(limit {FP32_NOISE_MAX:g}): the engine does not hold the trained weights (or float32 matmuls run "
            f"in TF32). {json.dumps(control)}"
        )
    return result


def _check_vllm(name: str, out: Path, args, precision: list[str]) -> dict:
    import vllm

    trainer, result = _train(name, out, args, _vllm_overrides() + precision)
    result["vllm_version"] = vllm.__version__
    diffs = [m.get("rollout/logp_abs_diff_mean") for m in result["per_step"]]
    if not all(_finite(d) for d in diffs):
        raise RuntimeError(f"rollout/logp_abs_diff_mean missing or not finite: {diffs}")
    result["logp_abs_diff_mean_per_step"] = diffs
    result.update(sync_control(trainer, out / "model" / "sft", args.device))
    require_sync(result)
    return result


def check_vllm_sync(out: Path, args) -> dict:
    return _check_vllm("vllm_sync", out, args, _precision(args.device, "float32", "bf16"))


def check_vllm_bf16(out: Path, args) -> dict:
    return _check_vllm("vllm_bf16", out, args, _precision(args.device, "bfloat16", "none"))


def check_torchrun(out: Path, args) -> dict:
    return _check_torchrun("torchrun", out, args, args.torchrun_engine)


def check_torchrun_hf_sync(out: Path, args) -> dict:
    result = _check_torchrun("torchrun_hf_sync", out, args, "hf_sync")
    result.update(sampler_gaps(result["per_step"], gap_limit(args)))
    return result


def _check_torchrun(name: str, out: Path, args, engine: str) -> dict:
    import torch
    import yaml

    n = torch.cuda.device_count() if args.device == "cuda" else args.cpu_procs
    root = out / name
    root.mkdir(parents=True, exist_ok=True)
    sft = out / "model" / "sft"
    if not (sft / "config.json").is_file():
        raise RuntimeError(f"no model at {sft}: the 'model' check did not pass")
    data = root / "arithmetic.jsonl"
    with data.open("w") as f:
        for row in _task().rows("train", 512, seed=3):
            f.write(json.dumps({"prompt": row["prompt"], "answer": row["answer"]}) + "\n")
    steps = 2
    config = {
        "model": {
            "policy": str(sft),
            "device": args.device,
            "dtype": "float32",
            "autocast": "bf16" if args.device == "cuda" else "none",
        },
        "data": {"train_path": str(data), "verifier": "arithmetic", "reference_key": "answer"},
        "rollout": {
            "n": 4,
            "prompts_per_step": 16 * n,  # a multiple of the world size
            "oversample": 1.0,
            "max_new_tokens": MAX_NEW_TOKENS,
            "engine": engine,
        },
        "filter": {"enabled": False},
        "optim": {"lr": 5e-4, "mini_batch_size": 32 * n, "micro_batch_size": 32},
        "prm": {"lr": 1e-4, "micro_batch_size": 32},
        "train": {
            "steps": steps,
            "save_every": steps,  # one DCP checkpoint under torchrun
            "out_dir": str(root / "run"),
            "tensorboard": False,
            "log_samples_every": 0,
        },
    }
    if engine == "vllm":
        config["rollout"].update({"vllm_gpu_memory_utilization": 0.3, "vllm_max_model_len": 512, "is_correction": True})
    cfg_path = root / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    cmd += ["-m", "iprime", "train", "--config", str(cfg_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=(TIMEOUT_S["torchrun"] - 20) * args.timeout_scale
    )
    seconds = time.perf_counter() - t0
    (root / "torchrun.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    metrics_file = root / "run" / "metrics.jsonl"
    history = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
    result = {
        "world_size": n,
        "fsdp2": n > 1,
        "backend": ("nccl" if args.device == "cuda" else "gloo") if n > 1 else None,
        "engine": engine,
        "command": " ".join(cmd),
        "wall_seconds": seconds,
        **_run_summary(history, steps),
        "final_model": (root / "run" / "final").is_dir(),
        "checkpoints": sorted(p.name for p in (root / "run" / "checkpoints").glob("*"))
        if (root / "run" / "checkpoints").is_dir()
        else [],
    }
    if n == 1 and args.device == "cuda":
        result["note"] = "one GPU: torchrun ran one process (no process group, no FSDP2); FSDP2 needs >= 2 GPUs"
    return result


RUNNERS = {
    "model": check_model,
    "hf_bf16": check_hf_bf16,
    "hf_sync_bf16": check_hf_sync_bf16,
    "torchrun": check_torchrun,
    "torchrun_hf_sync": check_torchrun_hf_sync,
    "vllm_sync": check_vllm_sync,
    "vllm_bf16": check_vllm_bf16,
}


# ------------------------------------------------------------------------------------- driver
def run_child(args) -> int:
    """Run one check in this process; write ``OUT/<check>.json``; exit without atexit handlers
    (vLLM engine processes and NCCL teardown can otherwise hang a finished check)."""
    out = Path(args.out)
    name = args.child
    t0 = time.perf_counter()
    try:
        result = {"status": "ok", **RUNNERS[name](out, args)}
    except BaseException as err:  # noqa: BLE001 - every failure becomes a report entry
        result = {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}"[-4000:],
            "traceback": traceback.format_exc()[-6000:],
        }
    result["seconds"] = time.perf_counter() - t0
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if result["status"] == "ok" else 1)


def environment(device: str) -> dict:
    import torch

    cuda = device == "cuda"

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count() if cuda else 0)
        ],
        "device": device,
        # "highest" unless something enabled TF32, which would move the float32 sync control
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "vllm_env": {k: os.environ[k] for k in VLLM_ENV if k in os.environ},
    }
    for package in ("iprime", "vllm", "transformers"):
        if package == "vllm" and not vllm_installed():
            env[package] = NO_VLLM  # not imported: its absence is the common case on a lent machine
            continue
        try:
            env[package] = __import__(package).__version__
        except Exception as err:  # noqa: BLE001 - report what is missing, do not stop
            env[package] = f"not importable: {type(err).__name__}: {err}"
    return env


def vllm_installed() -> bool:
    """Whether ``import vllm`` would find a package (without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def needs_vllm(name: str, args) -> bool:
    return name in VLLM_CHECKS or (name == "torchrun" and args.torchrun_engine == "vllm")


def skip_reason(name: str, args, done: dict[str, dict], remaining_s: float, have_vllm: bool) -> str | None:
    """Why ``name`` does not start (``None``: it starts). ``done``: the report entries so far;
    ``remaining_s``: seconds left of the budget. vLLM's absence comes first: it costs nothing,
    and it is the one reason that does not fail the run (:func:`run_ok`)."""
    if needs_vllm(name, args) and not have_vllm:
        return NO_VLLM
    if name != "model" and "model" in done and done["model"]["status"] != "ok":
        return "needs the model check to pass"
    if remaining_s < MIN_START_S * args.timeout_scale:
        return f"over the time budget ({args.budget_s * args.timeout_scale:.0f} s): {max(0.0, remaining_s):.0f} s left"
    return None


def run_ok(checks: dict[str, dict]) -> bool:
    """The exit-0 condition: at least one check ran, every check that ran passed, and every
    check that did not run was skipped only because vLLM is not installed."""
    ran = [c for c in checks.values() if not (c["status"] == "skipped" and c.get("error") == NO_VLLM)]
    return bool(ran) and all(c["status"] == "ok" for c in ran)


def run_check(name: str, out: Path, args, timeout: float, budget_bound: bool = False) -> dict:
    """One check in a child process (its own session, so a timeout kills its whole tree).
    ``budget_bound``: ``timeout`` is what is left of the run's budget, not the check's own limit,
    so running past it means the budget ran out (the check is reported skipped, not failed)."""
    log = out / f"{name}.log"
    (out / f"{name}.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(out)]
    cmd += ["--steps", str(args.steps), "--sft-steps", str(args.sft_steps), "--torchrun-engine", args.torchrun_engine]
    cmd += ["--device", args.device, "--cpu-procs", str(args.cpu_procs), "--timeout-scale", str(args.timeout_scale)]
    cmd += ["--hidden-size", str(args.hidden_size), "--layers", str(args.layers)]
    cmd += ["--bf16-gap-limit", repr(args.bf16_gap_limit)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.perf_counter() - t0
    result_file = out / f"{name}.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    elif timed_out and budget_bound:
        result = {"status": "skipped", "error": f"stopped at the end of the time budget, after {timeout:.0f} s"}
    else:
        tail = log.read_text(errors="replace")[-3000:]
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exited {proc.returncode} without a result"
        result = {"status": "failed", "error": f"the check {why}; log tail:\n{tail}"}
    result["seconds"] = seconds
    result["log"] = str(log)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu_check", help="output directory (models, logs, report)")
    ap.add_argument("--steps", type=int, default=3, help="PRIME steps per in-process check")
    ap.add_argument("--sft-steps", type=int, default=400, help="SFT steps of the check model")
    ap.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks, from {','.join(CHECKS)}")
    ap.add_argument("--torchrun-engine", choices=("hf", "vllm"), default="hf", help="rollouts of the torchrun check")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="seconds for the whole run: later checks are skipped, a running one is stopped",
    )
    ap.add_argument(
        "--bf16-gap-limit",
        type=float,
        default=GAP_LIMIT_BF16,
        help="limit on rollout/sampler_logprob_gap after an update with the trainer under bf16 autocast",
    )
    # for developing this script without a GPU: the plumbing on the CPU (float32, gloo), no vLLM
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--cpu-procs", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--timeout-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--hidden-size", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        print(f"gpu_check: unknown checks {unknown}; choose from {list(CHECKS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    budget = args.budget_s * args.timeout_scale
    have_vllm = vllm_installed()
    report: dict[str, Any] = {"environment": environment(args.device), "checks": {}}
    checks = report["checks"]
    for name in CHECKS:
        if name not in only:
            continue
        remaining = budget - (time.perf_counter() - t_start)
        why = skip_reason(name, args, checks, remaining, have_vllm)
        if why is not None:
            checks[name] = {"status": "skipped", "error": why}
            print(f"gpu_check: {name} skipped: {why}", file=sys.stderr, flush=True)
            continue
        own = TIMEOUT_S[name] * args.timeout_scale
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        checks[name] = run_check(name, out, args, min(own, remaining), budget_bound=remaining < own)
        print(f"gpu_check: {name} {checks[name]['status']}", file=sys.stderr, flush=True)
    report["ok"] = run_ok(checks)
    report["skipped_without_vllm"] = [n for n, c in checks.items() if c.get("error") == NO_VLLM]
    report["budget_s"] = budget
    report["seconds"] = time.perf_counter() - t_start
    text = json.dumps(report, indent=1, default=str)
    (out / "gpu_check.json").write_text(text + "\n")
    print(text)
    print(f"gpu_check: report in {out / 'gpu_check.json'}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
