"""Peak memory of one PRIME training step: full PRM vs. LoRA PRM vs. reference = policy.

Each (model, variant) runs in a fresh child process, which builds the trainer and runs one
step (log-probs of policy / reference / PRM, PRM update, PPO update with AdamW, whose moments
are allocated in this step) on a fixed batch, so generation does not blur the comparison. The
child reports ``getrusage(RUSAGE_SELF).ru_maxrss`` (what the parent's ``RUSAGE_CHILDREN`` sees
for that one child) at the end, minus its current RSS (``VmRSS``) just before the trainer was
built (after imports): the peak RSS the training state and the step added. CPU, float32. A
few MB of noise (allocator, import-time high-water marks) make the tiny model's ratios rough.

Models: the tiny Qwen2 of the tests, and a ~58M-parameter Qwen2 (hidden 512, 8 layers, vocab
32000, random init; only its memory matters).

    python benchmarks/memory.py [--groups 4] [--response 48] [--only tiny]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "full PRM": [],
    "LoRA PRM": ["prm.lora=true", "prm.lora_r=16"],
    "ref=policy": ["model.reference=policy"],
}


def build_models(root: Path) -> dict[str, Path]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from iprime.models import make_tiny_model

    tiny = make_tiny_model(root / "tiny", seed=0)
    mid = root / "qwen2-58m"
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(mid)
    for f in Path(tiny).iterdir():  # the tiny tokenizer (its ids are < 32000)
        if "token" in f.name or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, mid / f.name)
    return {"tiny": Path(tiny), "qwen2-58m": mid}


def current_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(model_dir: str, variant: str, groups: int, response: int) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import dist_worker as worker

    from iprime.config import load_config
    from iprime.train.prime import PrimeTrainer

    torch.set_num_threads(2)
    base = current_rss_kb()
    out = tempfile.mkdtemp()
    cfg = load_config(
        None,
        worker.base_overrides(out)
        + [
            f"rollout.prompts_per_step={groups}",
            f"optim.mini_batch_size={groups * 4}",
            "optim.micro_batch_size=8",
            "prm.micro_batch_size=8",
            *VARIANTS[variant],
        ],
    )
    trainer = PrimeTrainer(model_dir, cfg, worker.ROWS, worker.parity_verifier)
    n_params = sum(p.numel() for p in trainer.policy.parameters())
    batch = worker.fixed_batch(trainer.tokenizer, n_groups=groups, K=4, T=response)
    trainer.train_on_batch(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"delta_mb": (peak - base) / 1024, "peak_mb": peak / 1024, "params": n_params}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=4, help="prompts (groups of K=4) in the step")
    ap.add_argument("--response", type=int, default=48, help="response tokens per row")
    ap.add_argument("--only", choices=["tiny", "qwen2-58m"], default=None)
    ap.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.groups, args.response)
        return
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp))
        rows = []
        for name, path in models.items():
            if args.only and name != args.only:
                continue
            results = {}
            for variant in VARIANTS:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(path),
                        variant,
                        "--groups",
                        str(args.groups),
                        "--response",
                        str(args.response),
                    ],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:
                    raise SystemExit(f"{name} / {variant} failed:\n{proc.stderr[-3000:]}")
                results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((name, results))
    print(
        f"\nPeak RSS added by building the trainer + one training step "
        f"({args.groups} groups x K=4, {args.response} response tokens, CPU float32)\n"
    )
    header = (
        f"{'model':<11}{'params':>9}"
        + "".join(f"{v:>14}" for v in VARIANTS)
        + "".join(f"{v + ' / full':>20}" for v in list(VARIANTS)[1:])
    )
    print(header)
    print("-" * len(header))
    for name, res in rows:
        full = max(res["full PRM"]["delta_mb"], 1e-9)
        line = f"{name:<11}{res['full PRM']['params'] / 1e6:>8.1f}M"
        line += "".join(f"{res[v]['delta_mb']:>11.0f} MB" for v in VARIANTS)
        line += "".join(f"{res[v]['delta_mb'] / full:>20.2f}" for v in list(VARIANTS)[1:])
        print(line)


if __name__ == "__main__":
    main()
