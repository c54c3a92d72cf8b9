"""GPU smoke check: PRIME on CUDA with HF and vLLM rollouts, bf16, and torchrun + FSDP2.

Needs a CUDA machine and the GPU environment (``make setup-gpu``: torch + vLLM in ``.venv-gpu``);
downloads nothing. ``make gpu-check`` runs it; by hand::

    .venv-gpu/bin/python benchmarks/gpu_check.py [--out runs/gpu_check] [--steps 3] [--only hf_bf16,torchrun]

Checks, each in its own child process (a crash, a hang or a CUDA error in one does not hide the
others, and every check starts with an empty GPU):

``model``      a small Qwen2 (hidden 512, 4 layers, ~13M parameters; ``iprime.models.make_tiny_model``)
               and its tokenizer built locally, then SFT on the built-in arithmetic task on the GPU,
               so that rollouts earn mixed rewards. Every later check starts from this model.
``hf_bf16``    PRIME steps with the built-in HF sampler, float32 weights under bf16 autocast (the
               Eurus recipe's precision), ``rollout.is_correction=true`` so the trainer logs how far
               the sampler's log-probs are from its own recomputation (a baseline for the vLLM checks).
``vllm_sync``  the same with ``rollout.engine=vllm`` (bf16 engine, ``rollout.dtype``'s default, as the recipe). Weight
               sync: ``rollout/logp_abs_diff_mean`` per step compares vLLM's sampling log-probs with
               the trainer's recomputation under the current weights; after training, fresh vLLM
               samples are scored by the trained policy and by the starting SFT model: vLLM holds
               the trained weights when it is much closer to the first (``sync_ratio`` < 0.5).
``vllm_bf16``  vLLM with ``model.dtype=bfloat16`` (trainer and engine in bf16), the same sync test.
``torchrun``   ``python -m torch.distributed.run --nproc_per_node=N -m iprime train`` on a jsonl of
               arithmetic rows (``data.verifier=arithmetic``), N = the GPUs present: FSDP2 over N
               ranks with NCCL, DCP checkpoints. With one GPU this is a single process (no FSDP2).

Prints a JSON report (per check: status ok / failed / skipped, seconds, key numbers, tokens/s)
and writes it to ``OUT/gpu_check.json``; each check's log is ``OUT/<check>.log``. Exit code 0 when
every check passed, 1 when one failed or was skipped, 2 without CUDA. The run stops starting
checks after ``--budget-s`` seconds (default 480). The first GPU run (one H200: ``model``,
``hf_bf16`` and ``torchrun`` passed; that machine had no vLLM) is in docs/scaling.md.

Without a GPU, ``--device cpu --only model,hf_bf16,torchrun --hidden-size 64 --layers 2 --sft-steps 5
--timeout-scale 8`` runs the same plumbing on the CPU (float32, torchrun over 2 gloo ranks, no vLLM):
that is how this script was developed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CHECKS = ("model", "hf_bf16", "vllm_sync", "vllm_bf16", "torchrun")
TIMEOUT_S = {"model": 150, "hf_bf16": 150, "vllm_sync": 240, "vllm_bf16": 200, "torchrun": 240}
NO_CUDA = (
    "gpu_check: no CUDA device is visible (torch {torch}, built for CUDA {cuda}). This check runs on a "
    "machine with an NVIDIA GPU, in the GPU environment: `make setup-gpu && make gpu-check`. "
    "On the CPU, `make test` covers everything that does not need a GPU."
)
MAX_NEW_TOKENS = 64  # response cap of every rollout in the checks
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
    result = {"setup_seconds": setup_s, **_run_summary(history, steps)}
    result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return trainer, result


def _sync_test(trainer, sft: Path, device: str) -> dict:
    """Fresh vLLM samples scored by the trained policy and by the starting SFT model."""
    import torch

    from iprime.data.chat import render_prompt
    from iprime.models import load_model
    from iprime.models.logprobs import response_logprobs
    from iprime.rollout import SamplingParams

    task = _task()
    prompts = [render_prompt(trainer.tokenizer, r["prompt"]) for r in task.rows("test", 32, seed=5)]
    batch = trainer.generator.generate(
        prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, seed=7)
    ).to(torch.device(device))
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attn = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    mask = batch.response_mask.bool()
    T = batch.response_ids.shape[1]

    def logprobs(model):
        model.eval()
        with torch.no_grad():
            return response_logprobs(model, ids, attn, T).float()

    def mean_abs(x) -> float:
        return float(x.abs()[mask].mean())

    trained_logp = logprobs(trainer.policy)
    start_logp = logprobs(load_model(sft, dtype=trainer.cfg.model.dtype, device=device))
    engine_logp = batch.sampling_logprobs.float()
    trained, initial = mean_abs(engine_logp - trained_logp), mean_abs(engine_logp - start_logp)
    result = {
        "sync_logp_abs_diff_vs_trained": trained,
        "sync_logp_abs_diff_vs_sft": initial,
        "sync_policy_moved": mean_abs(trained_logp - start_logp),  # how far training took the policy
        "sync_ratio": trained / max(initial, 1e-12),
        "sync_tokens": int(mask.sum()),
    }
    if result["sync_policy_moved"] < 1e-3:
        raise RuntimeError(f"inconclusive: training hardly moved the policy; raise --steps. {json.dumps(result)}")
    if not result["sync_ratio"] < 0.5:
        raise RuntimeError(
            f"the engine's samples are not closer to the trained policy than to the SFT model ({trained:.4g} vs "
            f"{initial:.4g}): the weights did not reach the engine. {json.dumps(result)}"
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


def _check_vllm(name: str, out: Path, args, precision: list[str]) -> dict:
    import vllm

    trainer, result = _train(name, out, args, _vllm_overrides() + precision)
    result["vllm_version"] = vllm.__version__
    diffs = [m.get("rollout/logp_abs_diff_mean") for m in result["per_step"]]
    if not all(_finite(d) for d in diffs):
        raise RuntimeError(f"rollout/logp_abs_diff_mean missing or not finite: {diffs}")
    result["logp_abs_diff_mean_per_step"] = diffs
    result.update(_sync_test(trainer, out / "model" / "sft", args.device))
    return result


def check_vllm_sync(out: Path, args) -> dict:
    return _check_vllm("vllm_sync", out, args, _precision(args.device, "float32", "bf16"))


def check_vllm_bf16(out: Path, args) -> dict:
    return _check_vllm("vllm_bf16", out, args, _precision(args.device, "bfloat16", "none"))


def check_torchrun(out: Path, args) -> dict:
    import torch
    import yaml

    n = torch.cuda.device_count() if args.device == "cuda" else args.cpu_procs
    root = out / "torchrun"
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
            "engine": args.torchrun_engine,
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
    if args.torchrun_engine == "vllm":
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
        "engine": args.torchrun_engine,
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
    "vllm_sync": check_vllm_sync,
    "vllm_bf16": check_vllm_bf16,
    "torchrun": check_torchrun,
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
        "vllm_env": {k: os.environ[k] for k in VLLM_ENV if k in os.environ},
    }
    for package in ("iprime", "vllm", "transformers"):
        try:
            env[package] = __import__(package).__version__
        except Exception as err:  # noqa: BLE001 - report what is missing, do not stop
            env[package] = f"not importable: {type(err).__name__}: {err}"
    return env


def run_check(name: str, out: Path, args, timeout: float) -> dict:
    """One check in a child process (its own session, so a timeout kills its whole tree)."""
    log = out / f"{name}.log"
    (out / f"{name}.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(out)]
    cmd += ["--steps", str(args.steps), "--sft-steps", str(args.sft_steps), "--torchrun-engine", args.torchrun_engine]
    cmd += ["--device", args.device, "--cpu-procs", str(args.cpu_procs), "--timeout-scale", str(args.timeout_scale)]
    cmd += ["--hidden-size", str(args.hidden_size), "--layers", str(args.layers)]
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
    ap.add_argument("--budget-s", type=float, default=480.0, help="start no check after this many seconds")
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
    report: dict[str, Any] = {"environment": environment(args.device), "checks": {}}
    for name in CHECKS:
        if name not in only:
            continue
        elapsed = time.perf_counter() - t_start
        if name != "model" and "model" in report["checks"] and report["checks"]["model"]["status"] != "ok":
            report["checks"][name] = {"status": "skipped", "error": "needs the model check to pass"}
        elif elapsed > args.budget_s:
            report["checks"][name] = {"status": "skipped", "error": f"over the time budget ({args.budget_s:.0f} s)"}
        else:
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            report["checks"][name] = run_check(name, out, args, TIMEOUT_S[name] * args.timeout_scale)
            print(f"gpu_check: {name} {report['checks'][name]['status']}", file=sys.stderr, flush=True)
    statuses = [c["status"] for c in report["checks"].values()]
    report["ok"] = bool(statuses) and all(s == "ok" for s in statuses)
    report["seconds"] = time.perf_counter() - t_start
    text = json.dumps(report, indent=1, default=str)
    (out / "gpu_check.json").write_text(text + "\n")
    print(text)
    print(f"gpu_check: report in {out / 'gpu_check.json'}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
