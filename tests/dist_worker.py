"""Worker for tests/test_distributed.py: run as one rank of a data-parallel job (the test sets
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT like torchrun does).

    python tests/dist_worker.py update MODEL_DIR OUT_FILE   # one step on a fixed global batch
    python tests/dist_worker.py train MODEL_DIR OUT_DIR      # a 2-step run with DCP checkpoints
    python tests/dist_worker.py agg MODEL_DIR OUT_FILE      # policy gradients of one mini-batch, per rank
    python tests/dist_worker.py batch_norm - OUT_FILE       # batch_norm's two scopes on each rank's rows
    python tests/dist_worker.py sync MODEL_DIR OUT_FILE RUNS  # weight-sync engine runs (comma-separated SYNC_RUNS)
    python tests/dist_worker.py sft MODEL_DIR OUT_FILE      # SFT: uninterrupted, and interrupted + resumed
    python tests/dist_worker.py vllm MODEL_DIR OUT_FILE     # rollout.engine=vllm on the fake vLLM, external launcher

Every rank writes its own results, ``OUT_FILE.rank{r}``: the tests check each rank, not rank 0 alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import yaml

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
    # 4 PRM mini-batches of one group each: each rank holds rows of 2 of them and runs dummies in the others
    (
        "prm_mini_batches",
        ["prm.mini_batch_size=4", "optim.mini_batch_size=16", "optim.micro_batch_size=16"],
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


def fixed_batch(tokenizer, n_groups: int = 4, K: int = 4, seed: int = 0, T: int = 10, lengths=None):
    """A deterministic global batch (no sampling): real prompts, random responses of random
    length (or of ``lengths``; some end in EOS), outcomes mixed within each group."""
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
    lengths = torch.randint(2, T + 1, (B,), generator=g) if lengths is None else torch.tensor(lengths)
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
    """Every case: a fresh trainer, one step on the fixed batch; metrics and full weights (the
    full state dict as this rank gathers it)."""
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
        roots = trainer.passes.roots
        results[name] = {"metrics": metrics, "policy": D.full_state_dict(trainer.policy, roots.get(id(trainer.policy)))}
        if trainer.prm is not None:
            results[name]["prm"] = D.full_state_dict(trainer.prm, roots.get(id(trainer.prm)))
    return results


# responses of very different lengths (2 to 48 tokens) for the loss-weighting check
UNEVEN_LENGTHS = [2, 48, 5, 40, 3, 45, 8, 30, 48, 2, 36, 4, 20, 6, 48, 10]


def uneven_batch(tokenizer):
    return fixed_batch(tokenizer, T=48, lengths=UNEVEN_LENGTHS)


def recipe_aggregation() -> list[str]:
    """The Eurus recipe's policy-loss weighting, as overrides (read from the recipe itself)."""
    optim = yaml.safe_load((Path(__file__).parents[1] / "configs" / "eurus2_7b_prime.yaml").read_text())["optim"]
    return [f"optim.{key}={optim[key]}" for key in ("agg", "loss_scope", "micro_batch_size")]


AGG_CASES = {
    "recipe": recipe_aggregation(),
    # the recipe before issue 22: one token mean over the rows that share a micro-batch index across ranks
    "token_mean_micro": ["optim.agg=token-mean", "optim.loss_scope=micro", "optim.micro_batch_size=1"],
}


def run_agg(model_dir: str, out_dir: str) -> dict:
    """Per case: the full policy gradient of one mini-batch (the whole uneven batch) after one
    step on it, on this rank (RLOO advantages, not whitened; no PRM; no clipping of the norm)."""
    from iprime.config import load_config
    from iprime.train.prime import PrimeTrainer

    out = {}
    for name, extra in AGG_CASES.items():
        cfg = load_config(
            None,
            base_overrides(f"{out_dir}/{name}")
            + ["rollout.prompts_per_step=4", "rollout.old_logprobs=recompute", "prm.enabled=false"]
            + ["algo.estimator=rloo", "algo.whiten=false", "optim.mini_batch_size=16", "optim.grad_clip=1e9"]
            + extra,
        )
        trainer = PrimeTrainer(model_dir, cfg, ROWS, parity_verifier)
        # lr 0: the step leaves the weights and the accumulated gradient as they are
        trainer.optimizers.policy = torch.optim.SGD(trainer.policy.parameters(), lr=0.0)
        metrics = trainer.train_on_batch(uneven_batch(trainer.tokenizer))
        assert metrics["policy/updates"] == 1, metrics
        grads = {}
        for param_name, p in trainer.policy.named_parameters():  # the same order on every rank
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            grads[param_name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
        out[name] = grads
    return out


def run_batch_norm() -> dict:
    """batch_norm's ``rank`` and ``global`` scopes on this rank's own rows (rank r's rewards are
    scaled by 1 + 3r, so the ranks' largest returns differ), and the prime estimator with each."""
    from iprime import algo
    from iprime.train import distributed as D

    ctx, _ = D.init_distributed("cpu")
    g = torch.Generator().manual_seed(10 + ctx.rank)
    rewards = torch.randn((8, 6), generator=g) * (1 + 3 * ctx.rank)
    mask = torch.arange(6)[None] < torch.randint(1, 7, (8,), generator=g)[:, None]
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    out = {"rank": ctx.rank, "rewards": rewards, "mask": mask, "outcome": outcome}
    for scope in ("rank", "global"):
        out[scope] = algo.batch_norm_process_rewards(rewards, mask, scope=scope)
        x = algo.AdvantageInputs(
            outcome, mask, 4, token_rewards=rewards, normalize="batch_norm", batch_norm_scope=scope, whiten=True
        )
        out[f"prime_{scope}"] = algo.get_advantage_estimator("prime")(x).advantages
    return out


# ------------------------------------------------------------------ the weight-sync engine
def sync_update_overrides(out_dir) -> list[str]:
    """One step on the fixed batch (4 groups: 1, 2 or 4 ranks) with the weight-sync engine."""
    return base_overrides(out_dir) + [
        "rollout.engine=hf_sync",
        "rollout.prompts_per_step=4",
        "optim.mini_batch_size=16",
        "optim.micro_batch_size=16",
    ]


def run_sync_update(model_dir: str, out_dir: str) -> dict:
    """One update on the fixed batch (SGD, as :func:`run_update`), then what this rank holds:
    the full policy state it gathers, and its engine's own weights after the sync."""
    from iprime.config import load_config
    from iprime.train import distributed as D
    from iprime.train.prime import PrimeTrainer

    trainer = PrimeTrainer(model_dir, load_config(None, sync_update_overrides(out_dir)), ROWS, parity_verifier)
    trainer.optimizers.policy = torch.optim.SGD(trainer.policy.parameters(), lr=0.5)
    trainer.optimizers.prm = torch.optim.SGD(trainer.prm.parameters(), lr=0.5)
    trainer.train_on_batch(fixed_batch(trainer.tokenizer))
    engine = trainer.generator
    return {
        "policy": D.full_state_dict(trainer.policy, trainer.passes.roots.get(id(trainer.policy))),
        "engine": {k: v.detach().clone() for k, v in engine.model.state_dict().items()},
        "syncs": engine.syncs,
        "engine_is_policy": engine.model is trainer.policy,
    }


SYNC_RUNS = {
    # 3 steps of real sampling; every sampled row trains in its own step (no filter, oversample 1)
    "good": ["rollout.engine=hf_sync"],
    "stale": ["rollout.engine=hf_sync"],  # and one rank's engine drops every update (STALE_RANK)
    "hf": ["rollout.engine=hf"],  # the built-in sampler on the policy, same seeds
}
STALE_RANK = 1


def sync_run_overrides(out_dir, extra: list[str]) -> list[str]:
    return (
        base_overrides(out_dir)
        + extra
        + [
            "train.steps=3",
            "train.save_every=0",
            "rollout.prompts_per_step=4",
            "rollout.oversample=1.0",
            "rollout.old_logprobs=recompute",
            "optim.mini_batch_size=16",
            "optim.micro_batch_size=8",
        ]
    )


def drop_weights(weights) -> None:
    """A stale engine: takes the whole weight stream (the other ranks' all-gathers need this
    rank's part of each) and loads none of it."""
    for _ in weights:
        pass


def run_sync(model_dir: str, out_dir: str, name: str, rank: int) -> dict:
    """``SYNC_RUNS[name]`` trained for 3 steps: every step's metrics as this rank logged them,
    this rank's own ``max |engine - trainer|`` log-prob gap per step (before the all-reduce),
    and the final policy this rank gathers."""
    from iprime.config import load_config
    from iprime.train import diagnostics
    from iprime.train import distributed as D
    from iprime.train.prime import PrimeTrainer

    cfg = load_config(None, sync_run_overrides(f"{out_dir}/{name}", SYNC_RUNS[name]))
    trainer = PrimeTrainer(model_dir, cfg, ROWS, parity_verifier)
    if name == "stale" and rank == STALE_RANK:
        trainer.generator.sync_weights = drop_weights
    local_gaps, measure = [], diagnostics.local_sampler_gap

    def recording(*args):
        local_gaps.append(measure(*args))
        return local_gaps[-1]

    diagnostics.local_sampler_gap = recording
    try:
        history = trainer.train(progress=False)
    finally:
        diagnostics.local_sampler_gap = measure
    root = trainer.passes.roots.get(id(trainer.policy))
    return {"history": history, "local_gaps": local_gaps, "policy": D.full_state_dict(trainer.policy, root)}


# ------------------------------------------------------------------ SFT
# a few dozen rows of responses of different lengths (5 to ~25 tokens)
SFT_ROWS = [
    {"prompt": f"Compute {i} + {i % 7}.", "response": f"{i} + {i % 7} = {i + i % 7}." + " So" * (i % 5) + " Done."}
    for i in range(36)
]
# 10 steps of global batches of 8 (2.2 epochs: the tail of an epoch joins the next); lr high
# enough that the weights move well beyond float noise
SFT_SETTINGS = {"lr": 3e-3, "max_steps": 10, "batch_size": 8, "warmup_steps": 2, "log_every": 1}
SFT_STOP = 7  # the interrupted run dies after this step; its last checkpoint is at step 6
SFT_SAVE_EVERY = 3


class Interrupted(Exception):
    """Raised on every rank after step SFT_STOP, as if the job had been killed there."""


def sft_run(model_dir: str, out_dir: str | None = None, *, stop: int | None = None, resume: bool = False):
    """A fresh model from ``model_dir`` fine-tuned on SFT_ROWS (:class:`SFTRun`, joining the
    process group torchrun describes, if any); ``stop``: die after that step."""
    from iprime.models import load_model, load_tokenizer
    from iprime.train.sft import SFTConfig, SFTRun, prepare_sft_data

    save_every = SFT_SAVE_EVERY if out_dir is not None else 0
    config = SFTConfig(**SFT_SETTINGS, save_every=save_every)
    data = prepare_sft_data(load_tokenizer(model_dir), SFT_ROWS, config.max_length)
    torch.manual_seed(0)
    run = SFTRun(load_model(model_dir), data, config, out_dir=out_dir)
    if stop is not None:
        after = run._after_step

        def dying(step: int, losses: list[float]) -> None:
            after(step, losses)
            if step == stop:
                raise Interrupted

        run._after_step = dying
    return run, run.train(resume=resume)


def sft_results(model_dir: str, out_dir: str) -> dict:
    """On this rank: the uninterrupted run's per-step losses (global, all-reduced), summary and
    full weights as this rank gathers them; the same for a run interrupted after step SFT_STOP
    and resumed from its checkpoint (step 6) by a new run."""
    from iprime.train import distributed as D

    def result(run, summary) -> dict:
        weights = D.full_state_dict(run.model, run.root if run.dist.enabled else None)
        summary = {k: v for k, v in summary.items() if k not in ("train_time_s", "config")}
        return {"losses": list(run.losses), "summary": summary, "weights": {k: v.clone() for k, v in weights.items()}}

    out = {"uninterrupted": result(*sft_run(model_dir))}
    try:
        sft_run(model_dir, out_dir, stop=SFT_STOP)
        raise AssertionError("the interrupted run went on")
    except Interrupted:
        pass
    out["resumed"] = result(*sft_run(model_dir, out_dir, resume=True))
    return out


def run_fake_vllm(model_dir: str, out_dir: str) -> dict:
    """3 steps with ``rollout.engine=vllm`` as a GPU run under torchrun builds it, on the CPU:
    the fake ``vllm`` of ``tests/fake_vllm.py`` in ``sys.modules``, and CUDA pretended while the
    engine is built (``torch.cuda.set_device`` only recorded), so each rank takes the external
    launcher's path: its own engine, its seed, weights streamed in-process from the FSDP2 shards.
    Returns what this rank's engine was given and holds, and the policy this rank gathers."""
    import fake_vllm

    from iprime.config import load_config
    from iprime.train import distributed as D
    from iprime.train.prime import PrimeTrainer

    vllm = fake_vllm.module()
    sys.modules["vllm"] = vllm
    devices: list[int] = []
    real = torch.cuda.is_available, torch.cuda.set_device
    torch.cuda.is_available, torch.cuda.set_device = (lambda: True), devices.append
    try:
        cfg = load_config(None, sync_run_overrides(out_dir, ["rollout.engine=vllm", "train.seed=7"]))
        trainer = PrimeTrainer(model_dir, cfg, ROWS, parity_verifier)
    finally:
        torch.cuda.is_available, torch.cuda.set_device = real
    history = trainer.train(progress=False)
    (llm,) = vllm.built
    return {
        "kwargs": llm.kwargs,
        "env": llm.env,
        "devices": devices,
        "calls": llm.calls,
        "loads": llm.loads,
        "history": history,
        "engine": {k: v.detach().clone() for k, v in llm.model.state_dict().items()},
        "policy": D.full_state_dict(trainer.policy, trainer.passes.roots.get(id(trainer.policy))),
    }


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

    rank = int(os.environ.get("RANK", "0"))
    if mode == "update":
        torch.save(run_update(model_dir, out + ".runs"), f"{out}.rank{rank}")
    elif mode == "sync":
        results = {}
        for name in sys.argv[4].split(","):
            if name == "update":
                results[name] = run_sync_update(model_dir, f"{out}.runs/update")
            else:
                results[name] = run_sync(model_dir, f"{out}.runs", name, rank)
        torch.save(results, f"{out}.rank{rank}")
    elif mode == "vllm":
        torch.save(run_fake_vllm(model_dir, out + ".runs"), f"{out}.rank{rank}")
    elif mode == "agg":
        torch.save(run_agg(model_dir, out + ".runs"), f"{out}.rank{rank}")
    elif mode == "sft":
        torch.save(sft_results(model_dir, out + ".run"), f"{out}.rank{rank}")
    elif mode == "batch_norm":
        torch.save(run_batch_norm(), f"{out}.rank{rank}")
    elif mode == "train":
        trainer = PrimeTrainer(model_dir, load_config(None, train_overrides(out, 2)), ROWS, parity_verifier)
        history = trainer.train(progress=False)
        state = D.full_state_dict(trainer.policy, trainer.passes.roots.get(id(trainer.policy)))
        torch.save({"history": history, "policy": state}, f"{out}/final.rank{rank}.pt")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
