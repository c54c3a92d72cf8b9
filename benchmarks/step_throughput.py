"""Seconds per RL step: iprime PRIME vs. iprime RLOO-only vs. TRL GRPOTrainer vs. TRL RLOOTrainer.

Same tiny model, same prompts, same batch (16 prompts x 4 samples x up to 64 new tokens), same
thread count, each variant in its own subprocess (peak RSS is per process). The reward is a
length-parity score so every group has a learning signal and no filter empties a step; the
untrained tiny model rarely stops early, so responses are ~64 tokens in every variant.

    .venv/bin/python benchmarks/step_throughput.py [--steps 6] [--threads 2] [--rounds 2]
    .venv/bin/python benchmarks/step_throughput.py --stages [--steps 8]   # where iprime's time goes
    .venv/bin/python benchmarks/step_throughput.py --baseline-src OLD/src  # this tree vs another checkout

Needs TRL, the `bench` extra (`pip install -c constraints.txt -e ".[bench]"`). Last line: RATIO prime_vs_trl_grpo=<x>.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS, SAMPLES, NEW_TOKENS = 16, 4, 64


def parity_reward(text: str) -> float:
    return float(len(text) % 2 == 0)


def build_model(out: Path) -> Path:
    from iprime.data.arithmetic import ArithmeticTask
    from iprime.models import make_tiny_model

    return make_tiny_model(out, corpus=ArithmeticTask().corpus(500), seed=0)


def prompts(n: int) -> list[str]:
    from iprime.data.arithmetic import ArithmeticTask

    return [r["prompt"] for r in ArithmeticTask().rows("train", n, seed=0)]


def make_iprime_trainer(model_dir: str, steps: int, variant: str, out: str):
    from iprime.config import load_config
    from iprime.train.prime import PrimeTrainer

    common = [
        f"train.out_dir={out}",
        f"train.steps={steps}",
        "train.save_every=0",
        "train.tensorboard=false",
        "train.log_samples_every=0",
        # the reward is scored in-process, as TRL's reward functions are: like for like, no worker pool
        "verify.workers=0",
        f"rollout.n={SAMPLES}",
        f"rollout.prompts_per_step={PROMPTS}",
        "rollout.oversample=1.0",
        "rollout.max_rounds=1",
        f"rollout.max_new_tokens={NEW_TOKENS}",
        "filter.enabled=false",
        "optim.mini_batch_size=64",
        "optim.micro_batch_size=64",
        "optim.lr=1e-5",
        "prm.micro_batch_size=64",
    ]
    extra = {
        "prime": ["algo.estimator=prime", "model.reference=sft"],
        "prime_lora": ["algo.estimator=prime", "model.reference=sft", "prm.lora=true"],
        "rloo": ["algo.estimator=rloo", "prm.enabled=false", "model.reference=policy"],
    }[variant]
    rows = [{"prompt": p, "answer": "0"} for p in prompts(PROMPTS * steps)]
    return PrimeTrainer(model_dir, load_config(None, common + extra), rows, lambda t, a: parity_reward(t))


def run_iprime(model_dir: str, steps: int, variant: str, out: str) -> list[float]:
    trainer = make_iprime_trainer(model_dir, steps, variant, out)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return times


def run_trl(model_dir: str, steps: int, variant: str, out: str) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from iprime.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts(PROMPTS * steps)])

    def reward(completions, **kwargs):
        return [parity_reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    common = dict(
        output_dir=out,
        per_device_train_batch_size=PROMPTS * SAMPLES,
        num_generations=SAMPLES,
        max_completion_length=NEW_TOKENS,
        beta=0.0,
        use_cpu=True,
        num_iterations=1,
        gradient_accumulation_steps=1,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        max_steps=steps,
        temperature=1.0,
        learning_rate=1e-5,
        disable_dropout=True,
        seed=0,
    )
    if variant == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=GRPOConfig(**common),
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
    else:
        from trl import RLOOConfig, RLOOTrainer

        trainer = RLOOTrainer(
            model=model,
            reward_funcs=reward,
            args=RLOOConfig(**common),
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
    trainer.train()
    return times


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        runner = run_iprime if args.variant in ("prime", "prime_lora", "rloo") else run_trl
        times = runner(args.model_dir, args.steps + 1, args.variant, out)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"times": times[1:], "peak_rss_mb": peak_mb}))  # first step is warm-up


STAGES = ["time/generate", "time/logprobs", "time/prm", "time/policy", "time/step"]


def stage_breakdown(steps: int, threads: int) -> None:
    """iprime PRIME and RLOO in one process, steps interleaved: the trainer's per-stage timers
    (median over ``steps`` after one warm-up step each). Steadier than separate processes."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_model(Path(tmp) / "tiny"))
        trainers = {v: make_iprime_trainer(model_dir, steps + 1, v, f"{tmp}/{v}") for v in ("prime", "rloo")}
        times = {v: {k: [] for k in STAGES} for v in trainers}
        for i in range(steps + 1):
            for v in ["prime", "rloo"] if i % 2 == 0 else ["rloo", "prime"]:
                m = trainers[v].train_step()
                for k in STAGES if i else ():
                    times[v][k].append(m.get(k, 0.0))
    print(f"iprime per-stage seconds (median of {steps} interleaved steps, {threads} threads)")
    print(f"{'variant':8s}" + "".join(f"{k.split('/')[1]:>10s}" for k in STAGES))
    med = {v: {k: statistics.median(t) for k, t in ts.items()} for v, ts in times.items()}
    for v in med:
        print(f"{v:8s}" + "".join(f"{med[v][k]:10.3f}" for k in STAGES))
    print(f"ratio PRIME / RLOO step = {med['prime']['time/step'] / med['rloo']['time/step']:.2f}")


VARIANTS = [
    ("prime", "iprime PRIME"),
    ("prime_lora", "iprime PRIME, LoRA PRM"),
    ("rloo", "iprime RLOO (no PRM)"),
    ("grpo", "TRL GRPOTrainer"),
    ("trl_rloo", "TRL RLOOTrainer"),
]


def run_child(
    variant: str, model_dir: str, steps: int, threads: int, env: dict | None = None, label: str | None = None
) -> dict:
    """One variant in a fresh subprocess of this script; its ``RESULT`` record (times, peak RSS)."""
    cmd = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--model-dir",
        model_dir,
        "--steps",
        str(steps),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{label or variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def compare_trees(baseline_src: str, steps: int, threads: int, rounds: int) -> None:
    """iprime PRIME and RLOO steps of this tree against another checkout's ``src`` (say, the commit
    before a refactor), each variant in its own subprocess, interleaved round by round."""
    import os

    trees = {"this tree": None, "baseline": str(Path(baseline_src).resolve())}
    times = {(tree, v): [] for tree in trees for v in ("prime", "rloo")}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_model(Path(tmp) / "tiny"))
        for r in range(rounds):
            order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
            for tree, src in order:
                env = dict(os.environ)
                if src is not None:  # ahead of the installed (editable) package
                    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
                for variant in ("prime", "rloo"):
                    got = run_child(variant, model_dir, steps, threads, env, label=f"{tree} {variant}")
                    times[(tree, variant)] += got["times"]
    print(f"seconds per step, median of {rounds} x {steps} steps, {threads} threads (baseline: {baseline_src})")
    print(f"{'tree':12s} {'PRIME':>8s} {'RLOO':>8s}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for tree in trees:
        print(f"{tree:12s} {med[(tree, 'prime')]:8.3f} {med[(tree, 'rloo')]:8.3f}")
    print(
        f"RATIO this_vs_baseline_prime={med[('this tree', 'prime')] / med[('baseline', 'prime')]:.3f} "
        f"rloo={med[('this tree', 'rloo')] / med[('baseline', 'rloo')]:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved passes over all variants (noise)")
    ap.add_argument("--variant")
    ap.add_argument("--model-dir")
    ap.add_argument("--stages", action="store_true", help="only iprime PRIME vs RLOO, per-stage timers, one process")
    ap.add_argument("--baseline-src", help="another checkout's src/: compare its PRIME and RLOO steps with this tree's")
    args = ap.parse_args()
    if args.baseline_src:
        compare_trees(args.baseline_src, args.steps, args.threads, args.rounds)
        return
    if args.variant:
        child(args)
        return
    if args.stages:
        stage_breakdown(args.steps, args.threads)
        return
    results = {key: {"times": [], "peak_rss_mb": 0.0} for key, _ in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_model(Path(tmp) / "tiny"))
        for _ in range(args.rounds):  # interleaved, so a burst of load hits every variant alike
            for key, _ in VARIANTS:
                got = run_child(key, model_dir, args.steps, args.threads)
                results[key]["times"] += got["times"]
                results[key]["peak_rss_mb"] = max(results[key]["peak_rss_mb"], got["peak_rss_mb"])
    tokens = PROMPTS * SAMPLES * NEW_TOKENS
    print(
        f"tiny model, {PROMPTS} prompts x {SAMPLES} samples x {NEW_TOKENS} new tokens, {args.threads} threads, "
        f"median of {args.rounds} x {args.steps} steps (each run after 1 warm-up step)"
    )
    print(f"{'variant':24s} {'s/step':>8s} {'min':>7s} {'max':>7s} {'tok/s*':>8s} {'peak RSS MB':>12s}")
    med = {}
    for key, name in VARIANTS:
        t = results[key]["times"]
        med[key] = statistics.median(t)
        print(
            f"{name:24s} {med[key]:8.2f} {min(t):7.2f} {max(t):7.2f} {tokens / med[key]:8.0f} "
            f"{results[key]['peak_rss_mb']:12.0f}"
        )
    print("* tokens/s = (prompts x samples x max new tokens) / seconds per step")
    print(f"ratio PRIME / TRL GRPO      = {med['prime'] / med['grpo']:.2f}")
    print(f"ratio PRIME / iprime RLOO   = {med['prime'] / med['rloo']:.2f}  (target <= 1.30)")
    print(f"ratio PRIME LoRA PRM / iprime RLOO = {med['prime_lora'] / med['rloo']:.2f}")
    print(f"ratio iprime RLOO / TRL RLOO = {med['rloo'] / med['trl_rloo']:.2f}")
    print(f"RATIO prime_vs_trl_grpo={med['prime'] / med['grpo']:.3f}")


if __name__ == "__main__":
    main()
