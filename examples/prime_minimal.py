"""PRIME in one file: a tiny model, the built-in arithmetic task, and the `iprime.algo` math.

A CleanRL-style reading copy of what `iprime.train.prime.PrimeTrainer` does (its steps are
numbered in `main`), with no trainer, no rollout engine, no config files: sampling and log-probs
are plain torch, the algorithm is the pure functions of `iprime.algo`, and its settings are the
trainer's defaults, read from `iprime.config` (the PRIME repository's pipeline: `rm_coef` 5,
`batch_norm`-scaled process rewards, its leave-one-out baseline, whitened advantages). On 2 CPU
cores (measured on a quiet machine):

    .venv/bin/python examples/prime_minimal.py --steps 2   # smoke run, ~25 s in all
    .venv/bin/python examples/prime_minimal.py             # 60 steps, ~45 s

With the paper's formula as written (`--rm-coef 1 --outcome-coef 1 --normalize none --whiten false
--process-baseline paper`, this file's settings before it took the trainer's), held-out greedy
accuracy after 60 steps: 0.425 -> 0.555 (seed 0), 0.730 -> 0.765 (seed 1), 0.435 -> 0.560
(seed 2); 150 steps of seed 0 end at 0.560 too.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import random
import tempfile
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from iprime import algo  # the whole algorithm: pure tensor functions, no models
from iprime.config import AlgoConfig, FilterConfig, OptimConfig, PRMConfig, RolloutConfig
from iprime.data.arithmetic import ArithmeticConfig, ArithmeticTask, problem_row
from iprime.models import make_tiny_model

# The trainer's defaults (iprime.config), so that this file computes what `iprime train` does.
# Only the sizes and learning rates below are the example's own: they suit a 0.16M-parameter model.
ALGO, FILTER, OPTIM, PRM, ROLLOUT = AlgoConfig(), FilterConfig(), OptimConfig(), PRMConfig(), RolloutConfig()


@dataclasses.dataclass
class Args:
    seed: int = 0
    threads: int = 2
    steps: int = 60  # PRIME steps
    # task: `Compute 7 + 5 - 3.` The SFT data drops the carry on 70% of carry steps (like the
    # quickstart), so the warmed-up model is wrong in a systematic way RL can fix.
    ops: int = 2
    slip_rate: float = 0.7
    # model: a ~0.16M-parameter Qwen2 and a BPE tokenizer, both built locally (nothing is downloaded)
    hidden_size: int = 64
    num_layers: int = 2
    # supervised warm-up, so that some sampled answers are right and rewards are not all zero
    sft_steps: int = 300
    sft_batch: int = 32
    sft_lr: float = 3e-3
    # rollouts
    prompts_per_step: int = ROLLOUT.prompts_per_step
    k: int = ROLLOUT.n  # responses per prompt (a "group")
    max_new_tokens: int = 32
    temperature: float = ROLLOUT.temperature
    filter_low: float = FILTER.low  # keep groups whose accuracy lies in [low, high]: a group that is
    filter_high: float = FILTER.high  # all right or all wrong has no outcome signal for RLOO
    # implicit PRM
    beta: float = PRM.beta
    prm_lr: float = 1e-3
    # advantages: the PRIME repository's pipeline, as the trainer's `prime` estimator computes it
    rm_coef: float = ALGO.rm_coef  # weight of the process advantage
    outcome_coef: float = ALGO.outcome_coef  # weight of the outcome advantage
    gamma: float = ALGO.gamma  # discount of the returns
    normalize: str = ALGO.normalize or "none"  # batch_norm: process rewards / the batch's largest |return|
    process_baseline: str = ALGO.process_baseline  # leave-one-out baseline of the process rewards
    whiten: bool = ALGO.whiten  # whiten the combined advantage over the batch's tokens
    # policy
    lr: float = 3e-5  # a tiny model is easily knocked off its warm-up solution: 1e-3 collapsed it
    clip_low: float = OPTIM.clip_low
    clip_high: float = OPTIM.clip_high
    ppo_epochs: int = 2  # passes over the batch (the trainer's optim.epochs is 1); from the 2nd on the ratio
    # leaves 1 and the clip guards it
    grad_clip: float = OPTIM.grad_clip
    eval_prompts: int = 200


def parse_args(argv: list[str] | None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Args):
        kind = (lambda text: text.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    return Args(**vars(parser.parse_args(argv)))


def encode_prompts(tok, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-rendered prompts, left-padded so every row's response starts at the same column."""
    chats = [[{"role": "user", "content": p}] for p in prompts]
    texts = tok.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def positions(mask: torch.Tensor) -> torch.Tensor:
    # Left padding: the first real token is position 0 in sampling and scoring alike.
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(model, tok, ids, mask, max_new: int, temperature: float):
    """KV-cache sampling (temperature 0 = greedy). Returns response ids, response mask
    (tokens up to and including EOS) and whether each row ran out of tokens (truncated)."""
    eos, pad = tok.eos_token_id, tok.pad_token_id
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    # transformers renamed `past_key_values` to `cache`; the cache object fills up in place
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = {cache_kw: DynamicCache()}
    attn, pos, inp, out = mask, positions(mask), ids, []
    for _ in range(max_new):
        logits = model(input_ids=inp, attention_mask=attn, position_ids=pos, use_cache=True, **cache).logits[:, -1]
        probs = torch.softmax(logits.float() / max(temperature, 1e-6), -1)
        nxt = torch.multinomial(probs, 1).squeeze(1) if temperature > 0 else logits.argmax(-1)
        nxt = torch.where(done, pad, nxt)  # finished rows emit padding
        out.append(nxt)
        done |= nxt == eos
        if done.all():
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
        inp, pos = nxt[:, None], pos[:, -1:] + 1
    resp = torch.stack(out, 1)
    is_eos = (resp == eos).long()
    resp_mask = (is_eos.cumsum(1) - is_eos) == 0  # everything before the first EOS, and the EOS
    return resp, resp_mask, ~done


def response_logp(model, ids, mask, resp, resp_mask, temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response token, [B, T] (differentiable)."""
    full, attn = torch.cat([ids, resp], 1), torch.cat([mask, resp_mask.long()], 1)
    logits = model(input_ids=full, attention_mask=attn, position_ids=positions(attn)).logits
    logits = logits[:, ids.shape[1] - 1 : -1].float() / temperature  # column P-1 predicts token P
    return torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)


def update(opt, loss: torch.Tensor, grad_clip: float) -> None:
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()


def accuracy(model, tok, task, rows, max_new: int) -> float:
    """Greedy held-out accuracy: the number RL should move."""
    ids, mask = encode_prompts(tok, [r["prompt"] for r in rows])
    resp, _, _ = sample(model, tok, ids, mask, max_new, temperature=0.0)
    texts = tok.batch_decode(resp, skip_special_tokens=True)
    return sum(task.verify(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)


def sft_warmup(model, tok, task, args: Args) -> None:
    """Next-token cross-entropy on [prompt | response | eos], loss on the response only."""
    rows = task.sft_rows(args.sft_steps * args.sft_batch, seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))  # short warmup
    tok.padding_side = "right"  # for responses; prompts are always padded on the left
    for i in range(args.sft_steps):
        batch = rows[i * args.sft_batch : (i + 1) * args.sft_batch]
        ids, mask = encode_prompts(tok, [r["prompt"] for r in batch])
        # the response ends with EOS, so the model learns to stop; padding (on the right) is masked out
        enc = tok([r["response"] + tok.eos_token for r in batch], return_tensors="pt", padding=True)
        resp, resp_mask = enc["input_ids"], enc["attention_mask"].bool()
        update(opt, -algo.masked_mean(response_logp(model, ids, mask, resp, resp_mask), resp_mask), args.grad_clip)
        sched.step()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t0 = time.perf_counter()

    config = ArithmeticConfig(min_ops=args.ops, max_ops=args.ops, digits=1, first_digits=1)
    task = ArithmeticTask(config=config, slip_rate=args.slip_rate, slip_kind="carry")
    size = dict(hidden_size=args.hidden_size, num_layers=args.num_layers, intermediate_size=4 * args.hidden_size)
    with tempfile.TemporaryDirectory() as d:  # tokenizer fit to the task's text, random weights
        path = make_tiny_model(d, corpus=task.corpus(1000, seed=args.seed), seed=args.seed, **size)
        tok, policy = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)

    sft_warmup(policy, tok, task, args)
    # Policy, PRM and reference all start from the warmed-up model. The reference stays frozen;
    # the PRM's reward is beta * log(pi_prm / pi_ref), so it starts at exactly zero everywhere.
    ref, prm = copy.deepcopy(policy).eval(), copy.deepcopy(policy)
    ref.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    prm_opt = torch.optim.AdamW(prm.parameters(), lr=args.prm_lr, weight_decay=0.0)
    # train prompts may repeat (small configs have few distinct problems); test prompts never are train ones
    train_rows = [problem_row(p) for p in task.problems("train", 2000, seed=args.seed, unique=False)]
    test_rows = task.rows("test", args.eval_prompts, seed=args.seed)
    acc0 = accuracy(policy, tok, task, test_rows, args.max_new_tokens)
    print(f"warm-up done in {time.perf_counter() - t0:.1f}s: held-out greedy accuracy {acc0:.3f}", flush=True)

    history = []
    for step in range(1, args.steps + 1):
        # 1. Rollout: K responses per prompt, rows of a group consecutive (the algo functions expect it).
        rows = random.sample(train_rows, args.prompts_per_step)
        ids, mask = encode_prompts(tok, [r["prompt"] for r in rows])
        ids, mask = ids.repeat_interleave(args.k, 0), mask.repeat_interleave(args.k, 0)
        resp, resp_mask, truncated = sample(policy, tok, ids, mask, args.max_new_tokens, args.temperature)
        # 2. Verify: outcome reward in {0, 1}.
        texts = tok.batch_decode(resp, skip_special_tokens=True)
        outcome = torch.tensor([task.verify(t, rows[i // args.k]["answer"]) for i, t in enumerate(texts)])
        # 3. Filter: whole groups with accuracy in [low, high] and no truncated response.
        keep = algo.filter_groups(outcome, truncated, args.k, args.filter_low, args.filter_high)
        line = dict(step=step, acc=outcome.mean().item(), kept=int(keep.sum()) // args.k)
        if keep.any():
            ids, mask, resp, resp_mask, outcome = ids[keep], mask[keep], resp[keep], resp_mask[keep], outcome[keep]
            resp = resp[:, : int(resp_mask.sum(1).max())]  # drop all-padding columns
            resp_mask = resp_mask[:, : resp.shape[1]]
            # 4. Log-probs before any update: old policy (PPO's ratio), reference, PRM.
            with torch.no_grad():
                old_logp = response_logp(policy, ids, mask, resp, resp_mask, args.temperature)
                ref_logp = response_logp(ref, ids, mask, resp, resp_mask)
                prm_logp = response_logp(prm, ids, mask, resp, resp_mask)
            # 5. Implicit process rewards from the PRM *before* its update (the paper's default),
            #    so the rewards never come from a PRM that has seen these labels.
            rewards = algo.implicit_process_rewards(prm_logp, ref_logp, resp_mask, beta=args.beta)
            seq_reward = algo.sequence_logratio(prm_logp, ref_logp, resp_mask)
            line["prm_pair_acc"] = algo.prm_pairwise_accuracy(seq_reward, outcome, args.k)
            # 6. PRM update: cross-entropy of sigmoid(beta * sum_t log-ratio) against the outcome.
            #    Online, on the policy's own samples, so the PRM follows the policy's distribution.
            prm_logp_grad = response_logp(prm, ids, mask, resp, resp_mask)
            prm_loss = algo.prm_ce_loss(prm_logp_grad, ref_logp, resp_mask, outcome, beta=args.beta)
            update(prm_opt, prm_loss, args.grad_clip)
            # 7. Advantages: outcome_coef x leave-one-out on the outcome + rm_coef x leave-one-out on
            #    the process rewards (batch_norm-scaled), returns to the end, whitened.
            adv = algo.prime_rloo_advantages(
                outcome,
                rewards,
                resp_mask,
                args.k,
                rm_coef=args.rm_coef,
                outcome_coef=args.outcome_coef,
                gamma=args.gamma,
                normalize=None if args.normalize == "none" else args.normalize,
                process_baseline=args.process_baseline,
                whiten=args.whiten,
            )
            # 8. PPO clipped update on the whole kept batch, ppo_epochs times.
            for _ in range(args.ppo_epochs):
                logp = response_logp(policy, ids, mask, resp, resp_mask, args.temperature)
                loss, m = algo.ppo_policy_loss(
                    logp, old_logp, adv, resp_mask, clip_low=args.clip_low, clip_high=args.clip_high
                )
                update(opt, loss, args.grad_clip)
            line.update(prm_loss=prm_loss.item(), policy_loss=loss.item(), clip_frac=m["clip_frac"])
        history.append(line)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()), flush=True)

    acc1 = accuracy(policy, tok, task, test_rows, args.max_new_tokens)
    print(f"held-out greedy accuracy {acc0:.3f} -> {acc1:.3f}; {time.perf_counter() - t0:.1f}s in all", flush=True)
    return {"history": history, "acc_before": acc0, "acc_after": acc1, "policy": policy, "reference": ref}


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()  # no progress bars from saving / loading the tiny model
    transformers.logging.disable_progress_bar()
    main()
