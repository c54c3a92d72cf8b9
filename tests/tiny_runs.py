"""The shared setting of the trainer tests' tiny runs: rows, a verifier that gives mixed rewards on
random text, and a small config (2 prompts x 4 samples, no filter, one thread's worth of work)."""

from __future__ import annotations

from pathlib import Path

from iprime.config import PrimeConfig, load_config

ROWS = [{"prompt": f"Compute {i} + {i + 1}.", "answer": str(2 * i + 1)} for i in range(24)]


def parity_verifier(text: str, answer: str) -> float:
    """Deterministic and roughly balanced on random text: gives the filter something to keep."""
    return float(len(text) % 2 == 0)


def tiny_config(out_dir: str | Path, *overrides: str) -> PrimeConfig:
    """3 steps, no checkpoints, 2 prompts x 4 samples of at most 8 tokens, scored in-process;
    ``overrides`` (dotted ``key=value``) come last and win."""
    base = [
        f"train.out_dir={out_dir}",
        "train.steps=3",
        "train.save_every=0",
        "train.tensorboard=false",
        "verify.workers=0",
        "rollout.n=4",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=8",
        "filter.enabled=false",
        "optim.lr=1e-3",
        "prm.lr=1e-3",
        "optim.micro_batch_size=4",
        "optim.mini_batch_size=8",
        "prm.beta=0.5",
    ]
    return load_config(None, base + list(overrides))
