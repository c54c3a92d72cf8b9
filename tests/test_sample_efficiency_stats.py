"""The statistics of ``benchmarks/sample_efficiency.py``: smoothing, rollouts to reach a target,
the PRIME / RLOO rollouts ratio (censored when PRIME never gets there) and the paired bootstrap,
against values computed by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sample_efficiency as se  # noqa: E402


def test_smooth_is_a_trailing_mean():
    assert se.smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert se.smooth([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert se.smooth([1.0, 2.0, 3.0, 6.0], 10) == [1.0, 1.5, 2.0, 3.0]  # a cumulative mean
    with pytest.raises(ValueError, match="window"):
        se.smooth([1.0], 0)


def test_smooth_weighs_by_rollouts():
    # the second step generated 3 rounds: its samples count three times
    assert se.smooth([0.2, 0.6, 1.0], 2, [128, 384, 128]) == pytest.approx([0.2, 0.5, 0.7])
    with pytest.raises(ValueError, match="weights"):
        se.smooth([0.2, 0.6], 2, [128, 0])


def _step(step: int, rollouts: float, generated: float, reward: float | None) -> dict:
    return {"step": step, "rollouts": rollouts, "generated": generated, "train_reward": reward}


def test_reward_curve_skips_steps_served_from_the_buffer():
    steps = [_step(1, 128, 128, 0.2), _step(2, 128, 0, None), _step(3, 384, 256, 0.5), _step(4, 512, 128, 0.8)]
    xs, ys = se.reward_curve(steps, 2)
    assert xs == [128.0, 384.0, 512.0]
    # window of 2 generating steps, by rollouts: (0.2 * 128 + 0.5 * 256) / 384, (0.5 * 256 + 0.8 * 128) / 384
    assert ys == pytest.approx([0.2, 0.4, 0.6])
    with pytest.raises(ValueError, match="generated"):
        se.reward_curve([_step(1, 0, 0, None)], 2)


def test_rollouts_to_reach_interpolates_the_crossing():
    xs, ys = [100.0, 200.0, 300.0], [0.2, 0.4, 0.6]
    assert se.rollouts_to_reach(xs, ys, 0.5) == pytest.approx(250.0)
    assert se.rollouts_to_reach(xs, ys, 0.4) == 200.0
    assert se.rollouts_to_reach(xs, ys, 0.1) == 100.0  # already there at the first step
    assert se.rollouts_to_reach(xs, ys, 0.7) is None
    assert se.rollouts_to_reach([1.0, 2.0, 3.0], [0.4, 0.3, 0.6], 0.45) == pytest.approx(2 + 0.15 / 0.3)


def test_interpolate():
    assert se.interpolate([100.0, 300.0], [0.4, 0.8], 200.0) == pytest.approx(0.6)
    assert se.interpolate([100.0, 300.0], [0.4, 0.8], 300.0) == 0.8
    with pytest.raises(ValueError, match="outside"):
        se.interpolate([100.0, 300.0], [0.4, 0.8], 50.0)


def test_mean_curve_averages_at_equal_rollouts_over_the_common_range():
    a = ([100.0, 200.0, 300.0, 400.0], [0.2, 0.4, 0.6, 0.8])
    b = ([100.0, 300.0], [0.4, 0.8])  # b saw fewer rollouts: the mean stops at 300
    xs, ys = se.mean_curve([a, b])
    assert xs == [100.0, 200.0, 300.0] and ys == pytest.approx([0.3, 0.5, 0.7])
    with pytest.raises(ValueError, match="share no range"):
        se.mean_curve([a, ([500.0, 600.0], [0.1, 0.2])])


RLOO = ([100.0, 200.0, 300.0, 400.0], [0.3, 0.4, 0.5, 0.6])


def test_rollouts_ratio_by_hand():
    prime = ([100.0, 200.0, 300.0, 400.0], [0.4, 0.7, 0.7, 0.7])
    r = se.rollouts_ratio([prime], [RLOO])
    # target 0.6 (RLOO's final), reached by RLOO at 400; by PRIME at 100 + (0.2 / 0.3) * 100
    assert r["target"] == 0.6 and r["rloo"] == 400.0
    assert r["prime"] == pytest.approx(100 + 200 / 3)
    assert r["ratio"] == r["bound"] == pytest.approx((100 + 200 / 3) / 400)


def test_rollouts_ratio_is_censored_when_prime_never_gets_there():
    prime = ([110.0, 220.0, 330.0, 440.0], [0.3, 0.4, 0.5, 0.55])
    r = se.rollouts_ratio([prime], [RLOO])
    assert math.isinf(r["ratio"]) and r["prime"] is None
    assert r["bound"] == pytest.approx(440 / 400)  # PRIME needs more than all it saw


def test_final_difference_is_paired():
    p = [([1.0], [0.7]), ([1.0], [0.5])]
    r = [([1.0], [0.6]), ([1.0], [0.6])]
    assert se.final_difference(p, r) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="paired"):
        se.final_difference(p, r[:1])


def test_paired_bootstrap_resamples_indices_with_replacement():
    seen = []
    out = se.paired_bootstrap(3, lambda idx: seen.append(idx) or float(sum(idx)), 50, seed=1)
    assert len(out) == 50 and all(len(i) == 3 and set(i) <= {0, 1, 2} for i in seen)
    assert any(len(set(i)) < 3 for i in seen)  # some resample repeats a seed
    assert out == se.paired_bootstrap(3, lambda idx: float(sum(idx)), 50, seed=1)  # deterministic
    assert set(se.paired_bootstrap(1, lambda idx: float(idx[0]), 10)) == {0.0}


def test_percentile_ci_by_nearest_rank():
    samples = [float(i) for i in range(1, 101)]
    assert se.percentile_ci(samples, 0.9) == (5.0, 95.0)
    assert se.percentile_ci(samples) == (3.0, 98.0)  # ceil(2.5) = 3rd and ceil(97.5) = 98th
    assert se.percentile_ci([1.0, math.inf, 2.0, math.inf], 0.5) == (1.0, math.inf)


def test_ratio_line_format():
    assert se.ratio_line(0.5, 0.4, 0.61) == "RATIO prime_vs_rloo_rollouts=0.500 ci=[0.400,0.610]"
    assert se.ratio_line(math.inf, 0.9, math.inf) == "RATIO prime_vs_rloo_rollouts=inf ci=[0.900,inf]"


def _run(algo: str, seed: int, rewards: list[float], per_step: float = 100.0) -> dict:
    steps = [_step(i + 1, per_step * (i + 1), per_step, r) for i, r in enumerate(rewards)]
    return {"algo": algo, "seed": seed, "steps": steps}


def test_compare_pairs_by_seed_and_bounds_the_ratio():
    # RLOO climbs 0.1 per step to 0.8 at step 8; PRIME twice as fast, then flat: it reaches
    # RLOO's final at step 4, half the rollouts, on every seed (offsets differ per seed)
    rloo = [_run("rloo", s, [0.1 * (i + 1) + 0.01 * s for i in range(8)]) for s in range(5)]
    prime = [_run("prime", s, [min(0.2 * (i + 1), 0.8) + 0.01 * s for i in range(8)]) for s in range(5)]
    prime.append(_run("prime", 9, [0.0] * 8))  # no RLOO partner: left out
    c = se.compare(prime, rloo, window=1, n_boot=200)
    assert c["seeds"] == [0, 1, 2, 3, 4]
    assert c["ratio"] == pytest.approx(0.5) and c["ratio_ci"] == (pytest.approx(0.5), pytest.approx(0.5))
    assert c["final_diff"] == pytest.approx(0.0) and c["censored_share"] == 0.0


def test_compare_reports_censored_resamples():
    rloo = [_run("rloo", s, [0.5, 0.6 + 0.1 * s]) for s in range(3)]
    prime = [_run("prime", s, [0.5, 0.65]) for s in range(3)]
    c = se.compare(prime, rloo, window=1, n_boot=300)
    # RLOO's mean final is 0.7 > 0.65: not reached on all seeds; a resample of seed 0 alone
    # (final 0.6) is reached
    assert math.isinf(c["ratio"]) and c["bound"] == pytest.approx(1.0)
    assert 0.0 < c["censored_share"] < 1.0 and math.isinf(c["ratio_ci"][1])
    assert c["final_diff"] == pytest.approx(-0.05)


def test_parse_seeds():
    assert se.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert se.parse_seeds("0,1,2") == [0, 1, 2]
    assert se.parse_seeds("0-2,7") == [0, 1, 2, 7]


def test_run_config_keeps_one_update_per_step_at_any_k():
    spec = {
        "algo": "prime_ref",
        "k": 16,
        "seed": 3,
        "steps": 40,
        "eval_every": 5,
        "threads": 1,
        "max_new_tokens": 128,
        "prompts_per_step": 16,
        "overrides": ["prm.lr=1e-4"],
        "out": "x",
    }
    cfg = se.run_config(spec)
    assert "rollout.n=16" in cfg and "optim.mini_batch_size=256" in cfg
    assert "algo.normalize=batch_norm" in cfg and cfg[-1] == "prm.lr=1e-4"
    from iprime.config import load_config
    from iprime.quickstart import QuickstartConfig

    loaded = load_config(None, list(QuickstartConfig().prime_overrides) + cfg)
    assert loaded.rollout.n == 16 and loaded.algo.process_baseline == "reference" and loaded.prm.lr == 1e-4


def test_ratio_line_names_the_prime_variant():
    assert se.ratio_line(0.5, 0.4, 0.61, algo="prime_mb4") == "RATIO prime_mb4_vs_rloo_rollouts=0.500 ci=[0.400,0.610]"


def test_prime_mb4_takes_a_quarter_of_the_steps_responses_per_prm_step():
    spec = {"algo": "prime_mb4", "k": 4, "prompts_per_step": 16, "out": "o", "seed": 0, "steps": 1}
    spec |= {"eval_every": 0, "threads": 1, "max_new_tokens": 8, "overrides": []}
    assert "prm.mini_batch_size=16" in se.run_config(spec)  # 16 prompts x 4 responses / 4
    assert "prm.mini_batch_size=64" in se.run_config(spec | {"k": 16})
    with pytest.raises(ValueError, match="multiple of 4"):
        se.run_config(spec | {"prompts_per_step": 6})
