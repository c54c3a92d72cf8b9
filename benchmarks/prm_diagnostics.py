"""Can the implicit PRM learn the built-in task, and does it locate the first wrong step?

Why this exists: in ``sample_efficiency.py`` PRIME does not beat outcome-only RLOO on the
built-in task, and its online PRM barely learns (pairwise accuracy ~0.6). This script takes
the online loop out of the question. From the SFT model it samples ``--n`` responses to
``--train-prompts`` training problems and ``--test-prompts`` held-out problems, verifies them,
then trains one PRM per grid point offline (:func:`iprime.prm.train_prm_offline`, starting
from the SFT model, reference = the SFT model) and scores the held-out responses:

- ``auc``: outcome AUC of the sequence reward ``beta * sum_t log(pi_phi / pi_ref)`` (correct
  vs. wrong responses, all held-out responses);
- ``pair``: pairwise accuracy within a prompt (a correct response scored above a wrong one of
  the same prompt; ties count 1/2), the number the online trainer logs;
- ``step auc``: the *process* check the task allows, since every line ``a op b = c`` can be
  checked (:func:`iprime.data.first_wrong_step`): AUC of the step reward (sum of token rewards over a
  line) of correct lines before
  the first error vs. the first wrong line;
- ``first err``: share of wrong responses whose lowest-reward arithmetic line is the first
  wrong one (``chance`` is the same share for a uniformly random line);
- ``R right`` / ``R wrong``: mean sequence reward of correct / wrong responses.

It also prints how many response tokens the SFT model is unsure about (probability of the
sampled token < 0.9): outcome-only RL already gives exact credit to tokens the policy is sure
of (their log-prob gradient is ~0), so dense rewards can only help on the unsure ones.

    .venv/bin/python benchmarks/prm_diagnostics.py [--sft DIR] [--beta 0.05,0.5] [--lr 3e-4,1e-3]
        [--epochs 2] [--policy NAME=run/checkpoints/step-N/state.pt ...] [--save-best DIR]

``--policy`` scores the held-out prompts' samples from trained policies too: a PRM trained on
SFT rollouts can be checked on the distribution RL moves to.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import statistics
import time
from pathlib import Path

import torch

from iprime.data import first_wrong_step, problem_from_prompt


def task_preset(ops: int | None = None):
    """The quickstart preset, or the same task with ``ops`` operations per problem: a harder
    task with more carry decisions per response (a response has ~10 tokens per operation)."""
    from dataclasses import replace

    from iprime.presets import QUICKSTART

    if ops is None or (QUICKSTART.task.min_ops == QUICKSTART.task.max_ops == ops):
        return QUICKSTART
    return replace(QUICKSTART, task=replace(QUICKSTART.task, min_ops=ops, max_ops=ops), max_new_tokens=12 * ops + 32)


def auc(pos: list[float], neg: list[float]) -> float:
    """P(score of a positive > score of a negative), ties 1/2 (Mann-Whitney)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def sample(model, tok, rows, n: int, max_new_tokens: int, seed: int) -> list[dict]:
    from iprime.data.arithmetic import ArithmeticTask
    from iprime.train.evaluate import evaluate_accuracy

    res = evaluate_accuracy(
        model,
        tok,
        rows,
        ArithmeticTask.verify,
        n=n,
        temperature=1.0,
        max_new_tokens=max_new_tokens,
        seed=seed,
        return_samples=True,
    )
    return [{"prompt": s["prompt"], "response": s["response"], "label": float(s["score"])} for s in res["samples"]]


def process_metrics(scores, rows: list[dict]) -> dict:
    by_prompt: dict[str, list[tuple[float, float]]] = {}
    good_steps, bad_steps, hits, chance = [], [], [], []
    for s, r in zip(scores, rows):
        by_prompt.setdefault(r["prompt"], []).append((s.seq_reward, r["label"]))
        problem = problem_from_prompt(r["prompt"])
        step_r = s.step_rewards[: len(problem.ops)]  # one step per line; the boxed line is not checked
        err = first_wrong_step(problem, r["response"])
        if err is None:
            good_steps += step_r
        elif err < len(step_r):
            good_steps += step_r[:err]
            bad_steps.append(step_r[err])
            if r["label"] == 0.0:
                hits.append(float(min(range(len(step_r)), key=step_r.__getitem__) == err))
                chance.append(1.0 / len(step_r))
    pairs = [
        (w > lo) + 0.5 * (w == lo)
        for group in by_prompt.values()
        for (w, lw), (lo, ll) in itertools.permutations(group, 2)
        if lw > ll
    ]
    right = [s.seq_reward for s, r in zip(scores, rows) if r["label"] == 1.0]
    wrong = [s.seq_reward for s, r in zip(scores, rows) if r["label"] == 0.0]
    return {
        "r_right": statistics.mean(right) if right else float("nan"),
        "r_wrong": statistics.mean(wrong) if wrong else float("nan"),
        "auc": auc(right, wrong),
        "pair": statistics.mean(pairs) if pairs else float("nan"),
        "step_auc": auc(good_steps, bad_steps),
        "first_err": statistics.mean(hits) if hits else float("nan"),
        "chance": statistics.mean(chance) if chance else float("nan"),
    }


def unsure_token_stats(ref, tok, rows: list[dict]) -> dict:
    """Share of response tokens whose SFT probability is < 0.9, and how many per response."""
    from iprime.prm import ImplicitPRM

    scorer = ImplicitPRM(ref, ref, tok, batch_size=64)
    unsure, total, per_resp = 0, 0, []
    for s in scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows], step_delimiter=None):
        k = sum(lp < math.log(0.9) for lp in s.ref_logp)
        unsure, total = unsure + k, total + len(s.ref_logp)
        per_resp.append(k)
    return {
        "unsure_frac": unsure / total,
        "unsure_per_response": statistics.mean(per_resp),
        "tokens_per_response": total / len(rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sft", default="runs/sample_efficiency/sft", help="SFT model dir (made with the preset if missing)"
    )
    ap.add_argument("--train-prompts", type=int, default=256)
    ap.add_argument("--test-prompts", type=int, default=96)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--beta", default="0.05,0.5")
    ap.add_argument("--lr", default="3e-4,1e-3")
    ap.add_argument("--loss", default="ce")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ops", type=int, default=None, help="operations per problem (default: the preset's 4)")
    ap.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME=STATE_PT",
        help="also score held-out samples of this trained policy (a trainer checkpoint's state.pt); repeatable",
    )
    ap.add_argument("--save-best", default=None, help="save the PRM with the best held-out step AUC here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from iprime.models import load_model, load_tokenizer
    from iprime.presets import run_preset_sft
    from iprime.prm import ImplicitPRM, OfflinePRMConfig, train_prm_offline

    preset = task_preset(args.ops)
    sft = Path(args.sft)
    if not (sft / "config.json").is_file():
        run_preset_sft(sft.parent, preset, log=lambda *a: None)
    ref, tok = load_model(sft).eval(), load_tokenizer(sft)
    task = preset.make_task()
    t0 = time.perf_counter()
    train = sample(ref, tok, task.rows("train", args.train_prompts, seed=123), args.n, preset.max_new_tokens, 0)
    test = sample(ref, tok, task.rows("test", args.test_prompts, seed=456), args.n, preset.max_new_tokens, 1)
    acc = statistics.mean(r["label"] for r in train)
    print(
        f"SFT samples: {len(train)} train ({acc:.3f} correct), {len(test)} held-out "
        f"({statistics.mean(r['label'] for r in test):.3f} correct), {time.perf_counter() - t0:.0f} s"
    )
    u = unsure_token_stats(ref, tok, test)
    print(
        f"SFT tokens with p < 0.9: {u['unsure_frac']:.3f} of response tokens "
        f"({u['unsure_per_response']:.2f} of {u['tokens_per_response']:.1f} per response)"
    )
    tests = {"sft": test}
    for spec in args.policy:  # the same held-out prompts, sampled from a trained policy
        name, _, path = spec.partition("=")
        policy = copy.deepcopy(ref)
        policy.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["policy"])
        tests[name] = sample(
            policy.eval(), tok, task.rows("test", args.test_prompts, seed=456), args.n, preset.max_new_tokens, 1
        )
        print(f"{name} samples: {statistics.mean(r['label'] for r in tests[name]):.3f} correct")
    wrong = [r for r in test if r["label"] == 0.0]
    located = [first_wrong_step(problem_from_prompt(r["prompt"]), r["response"]) for r in wrong]
    print(f"held-out wrong responses: {len(wrong)}, first error found in {sum(e is not None for e in located)}")

    print(
        f"\n{'loss':4s} {'beta':>6s} {'lr':>8s} {'train loss':>16s} {'scored':>10s} {'auc':>6s} {'pair':>6s} "
        f"{'step auc':>9s} {'first err':>10s} {'chance':>7s} {'R right':>8s} {'R wrong':>8s} {'time s':>7s}"
    )
    best = None
    for beta, lr in itertools.product([float(b) for b in args.beta.split(",")], [float(x) for x in args.lr.split(",")]):
        prm = copy.deepcopy(ref).requires_grad_(True)  # train_prm_offline froze ref
        cfg = OfflinePRMConfig(beta=beta, lr=lr, loss=args.loss, epochs=args.epochs, batch_size=args.batch_size)
        res = train_prm_offline(prm, ref, tok, train, cfg)
        first = statistics.mean(res["losses"][:10])
        last = statistics.mean(res["losses"][-10:])
        scorer = ImplicitPRM(prm, ref, tok, beta, batch_size=64)
        for name, rows in tests.items():
            m = process_metrics(
                scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows], step_delimiter="\n"), rows
            )
            print(
                f"{args.loss:4s} {beta:6g} {lr:8.0e} {first:7.3f}->{last:6.3f} {name:>10s} {m['auc']:6.3f} "
                f"{m['pair']:6.3f} {m['step_auc']:9.3f} {m['first_err']:10.3f} {m['chance']:7.3f} "
                f"{m['r_right']:8.3f} {m['r_wrong']:8.3f} "
                f"{res['train_time_s']:7.0f}",
                flush=True,
            )
            if name == "sft" and (best is None or m["step_auc"] > best[0]):
                best = (m["step_auc"], prm, beta, lr)
    if args.save_best and best is not None:
        best[1].save_pretrained(args.save_best)
        tok.save_pretrained(args.save_best)
        print(f"saved the PRM with step auc {best[0]:.3f} (beta {best[2]:g}, lr {best[3]:g}) to {args.save_best}")


if __name__ == "__main__":
    main()
