"""Worker for tests/test_distributed.py: run as one rank of a data-parallel job (the test sets
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT like torchrun does).

    python tests/dist_worker.py update MODEL_DIR OUT_FILE   # one step on a fixed global batch
    python tests/dist_worker.py train MODEL_DIR OUT_DIR      # a 2-step run with DCP checkpoints
"""

from __future__ import annotations

import sys

import torch

ROWS = [{"prompt": f"Compute {i} + {i + 1}.", "answer": str(2 * i + 1)} for i in range(24)]

# (name, overrides): the second is the general case (several mini- and micro-batches, 2 epochs)
UPDATE_CASES = [
    ("one_micro", ["optim.mini_batch_size=16", "optim.micro_batch_size=16"]),
    (
        "mini_batch_scope",
        [
            "optim.loss_scope=mini_batch",
            "optim.mini_batch_size=8",
            "optim.micro_batch_size=3",
            "optim.epochs=2",
            "algo.entropy_coef=0.01",
            "algo.kl_mode=loss",
            "algo.kl_coef=0.1",
            "optim.micro_batch_tokens=60",
        ],
    ),
    # batch statistics all-reduced inside iprime.algo: REINFORCE's batch mean, REINFORCE++'s whitening
    (
        "reinforce",
        ["algo.estimator=reinforce", "prm.enabled=false", "optim.mini_batch_size=16", "optim.micro_batch_size=16"],
    ),
    (
        "reinforce_pp",
        [
            "algo.estimator=reinforce_pp",
            "prm.enabled=false",
            "algo.kl_mode=reward",
            "algo.kl_coef=0.1",
            "optim.mini_batch_size=16",
            "optim.micro_batch_size=16",
        ],
    ),
]


def parity_verifier(text: str, answer: str) -> float:
    return float(len(text) % 2 == 0)


def base_overrides(out_dir) -> list[str]:
    return [
        f"train.out_dir={out_dir}",
        "train.tensorboard=false",
        "verify.workers=0",
        "rollout.n=4",
        "rollout.max_new_tokens=8",
        "filter.enabled=false",
        "optim.lr=1e-3",
        "prm.lr=1e-3",
        "prm.beta=0.5",
        "train.log_samples_every=0",
    ]


def fixed_batch(tokenizer, n_groups: int = 4, K: int = 4, seed: int = 0, T: int = 10):
    """A deterministic global batch (no sampling): real prompts, random responses of random
    length (some end in EOS), outcomes mixed within each group."""
    from iprime.data.chat import render_prompt
    from iprime.rollout import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    prompts = [
        tokenizer(render_prompt(tokenizer, ROWS[i]["prompt"]), add_special_tokens=False)["input_ids"]
        for i in range(n_groups)
    ]
    B, P = n_groups * K, max(len(p) for p in prompts)
    pad = int(tokenizer.pad_token_id)
    prompt_ids = torch.full((B, P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    for r in range(B):
        p = prompts[r // K]
        prompt_ids[r, P - len(p) :] = torch.tensor(p)
        prompt_mask[r, P - len(p) :] = 1
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    response = torch.randint(5, 200, (B, T), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    response = torch.where(mask.bool(), response, pad)
    ends_eos = lengths < T
    response[ends_eos, lengths[ends_eos] - 1] = int(tokenizer.eos_token_id)
    outcome = torch.tensor([float((r % K + r // K) % 2) for r in range(B)])
    logp = -torch.rand((B, T), generator=g) * mask
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response,
        response_mask=mask,
        sampling_logprobs=logp,
        truncated=~ends_eos,
        prompt_index=torch.arange(B) // K,
        texts=[""] * B,
        prompt_texts=[""] * B,
        pad_id=pad,
        tensors={"outcome": outcome},
    )


def run_update(model_dir: str, out_dir: str) -> dict:
    """Every case: a fresh trainer, one step on the fixed batch; metrics and full weights."""
    from iprime.config import load_config
    from iprime.train import distributed as D
    from iprime.train.prime import PrimeTrainer

    results = {}
    for name, extra in UPDATE_CASES:
        # the fixed batch was not sampled by this policy: its "sampling" log-probs are made up
        cfg = load_config(
            None,
            base_overrides(f"{out_dir}/{name}")
            + ["rollout.prompts_per_step=4", "rollout.old_logprobs=recompute"]
            + extra,
        )
        trainer = PrimeTrainer(model_dir, cfg, ROWS, parity_verifier)
        # SGD, not Adam: Adam's first step is +-lr wherever a gradient is non-zero, so float noise
        # in near-zero gradients would flip whole steps; SGD keeps weight differences ~ gradient noise
        trainer.optimizers.policy = torch.optim.SGD(trainer.policy.parameters(), lr=0.5)
        if trainer.prm is not None:
            trainer.optimizers.prm = torch.optim.SGD(trainer.prm.parameters(), lr=0.5)
        metrics = trainer.train_on_batch(fixed_batch(trainer.tokenizer))
        results[name] = {"metrics": metrics, "policy": D.full_state_dict(trainer.policy)}
        if trainer.prm is not None:
            results[name]["prm"] = D.full_state_dict(trainer.prm)
    return results


def train_overrides(out_dir, steps: int) -> list[str]:
    return base_overrides(out_dir) + [
        f"train.steps={steps}",
        "train.save_every=1",
        "rollout.prompts_per_step=2",
        "optim.micro_batch_size=4",
        "optim.mini_batch_size=8",
        "train.checkpoint_format=dcp",
    ]


def main() -> None:
    mode, model_dir, out = sys.argv[1:4]
    torch.set_num_threads(1)
    from iprime.config import load_config
    from iprime.train import distributed as D
    from iprime.train.prime import PrimeTrainer

    if mode == "update":
        results = run_update(model_dir, out + ".runs")
        if int(__import__("os").environ.get("RANK", "0")) == 0:
            torch.save(results, out)
    elif mode == "train":
        trainer = PrimeTrainer(model_dir, load_config(None, train_overrides(out, 2)), ROWS, parity_verifier)
        history = trainer.train(progress=False)
        state = D.full_state_dict(trainer.policy)
        if trainer.dist.is_main:
            torch.save({"history": history, "policy": state}, f"{out}/final.pt")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
