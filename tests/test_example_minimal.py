"""examples/prime_minimal.py keeps running: one PRIME line per step, finite losses, a policy that moved."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prime_minimal.py"
# Tiny and easy (one operation per problem) so that a 100-step warm-up already samples some right
# answers: the accuracy filter then keeps groups and both updates run.
ARGV = "--steps 2 --ops 1 --sft-steps 100 --prompts-per-step 8 --eval-prompts 16 --seed 0".split()
STEP_LINE = re.compile(r"^step=(\d+) acc=([0-9.]+) kept=(\d+)(.*)$")


def load_example():
    spec = importlib.util.spec_from_file_location("prime_minimal", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_prime_minimal_prints_a_line_per_step_and_updates_the_policy(capsys):
    example = load_example()
    threads = torch.get_num_threads()
    try:
        result = example.main(ARGV)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()

    steps = [m for m in map(STEP_LINE.match, out) if m]
    assert [int(m[1]) for m in steps] == [1, 2], out
    assert [line["step"] for line in result["history"]] == [1, 2]
    for m, line in zip(steps, result["history"]):
        assert 0.0 <= float(m[2]) <= 1.0
        assert int(m[3]) == line["kept"] <= 8
        if line["kept"]:
            assert " prm_loss=" in m[4] and " policy_loss=" in m[4]
            assert math.isfinite(line["prm_loss"]) and math.isfinite(line["policy_loss"])
        else:
            assert m[4] == ""  # nothing kept: no update, nothing to report
    trained = [line for line in result["history"] if line["kept"]]
    assert trained, f"no group passed the accuracy filter, so nothing was trained: {out}"
    # The PRM starts as a copy of the reference: its first CE loss is exactly BCE(sigmoid(0), y) = log 2.
    assert abs(trained[0]["prm_loss"] - math.log(2)) < 1e-4

    # The reference is the warmed-up policy, frozen: PPO must have moved the policy away from it.
    ref = dict(result["reference"].named_parameters())
    moved = [n for n, p in result["policy"].named_parameters() if not torch.equal(p, ref[n])]
    assert moved, "the PPO update left every policy parameter unchanged"
    assert all(torch.isfinite(p).all() for p in result["policy"].parameters())
    assert 0.0 <= result["acc_before"] <= 1.0 and 0.0 <= result["acc_after"] <= 1.0
    assert any(line.startswith("held-out greedy accuracy") for line in out)


def test_the_example_takes_the_trainers_defaults():
    """Its algorithm settings are iprime.config's defaults (the PRIME repository's pipeline), not
    numbers of its own; only sizes and learning rates are the tiny model's."""
    from iprime.config import AlgoConfig, FilterConfig, OptimConfig, PRMConfig, RolloutConfig

    example = load_example()
    args, algo, optim = example.Args(), AlgoConfig(), OptimConfig()
    assert (args.rm_coef, args.outcome_coef, args.gamma) == (algo.rm_coef, algo.outcome_coef, algo.gamma)
    assert (args.normalize, args.process_baseline, args.whiten) == ("batch_norm", "reference", True)
    assert (args.normalize, args.process_baseline, args.whiten) == (algo.normalize, algo.process_baseline, algo.whiten)
    assert (args.filter_low, args.filter_high) == (FilterConfig().low, FilterConfig().high)
    assert (args.clip_low, args.clip_high, args.grad_clip) == (optim.clip_low, optim.clip_high, optim.grad_clip)
    assert (args.beta, args.k, args.temperature) == (PRMConfig().beta, RolloutConfig().n, RolloutConfig().temperature)
    paper = example.parse_args(["--normalize", "none", "--whiten", "false", "--process-baseline", "paper"])
    assert (paper.normalize, paper.whiten, paper.process_baseline) == ("none", False, "paper")
