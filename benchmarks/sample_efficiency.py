"""Training reward against rollouts seen: PRIME vs. RLOO (outcome only) vs. GRPO, paired by seed.

Every run of one preset starts from the same SFT model (``--preset``, from
:data:`iprime.presets.BENCHMARK_PRESETS`: the quickstart task, or tasks where credit assignment
matters more) and uses the same rollouts per step (16 prompts x K samples per round,
oversampling 2, the accuracy filter [0.2, 0.8]); only the advantage estimator (and PRIME's
implicit PRM) differs. A seed fixes the prompt order and the sampling seeds, so PRIME and
RLOO with one seed start from the same prompts: runs are *paired* by seed.

``--algos``: ``prime`` (the quickstart's PRIME settings: ``rm_coef = outcome_coef = 5``,
whitened, no normalisation), ``prime_ref`` (the reference code's pipeline: ``batch_norm``
process rewards, its leave-one-out baseline), ``prime_mb4`` (``prime_ref`` with the
repository's PRM schedule: 4 PRM optimizer steps per training step, ``prm.mini_batch_size`` a
quarter of the step's responses), ``prime_warm`` (a PRM first trained offline on
``--warmup-rollouts`` SFT samples, counted as rollouts seen), ``rloo``, ``grpo``. ``--ops N``
gives the quickstart task N operations (the runs of ``docs/benchmarks.md``).

Metrics, per run and step:

- **training reward**: the sampled accuracy of everything the step generated, before the
  filter (``rollout/acc_before_filter``): the paper's metric. **Rollouts seen**: every
  response generated so far (rounds x prompts per round x K), filtered ones included.
- held-out accuracy every ``--eval-every`` steps on ``--eval-prompts`` test problems: greedy,
  or with ``--eval-n N > 1`` the mean over N samples at temperature 1 (the decisive presets'
  slip rates are below 0.5, so their greedy accuracy starts near 1 and says little);
- PRIME only: ``adv/process_share`` (std of the process part of the advantage over that of
  the whole), ``adv/dense_share`` (the share that varies within a response), the PRM's
  pairwise accuracy and its first-error localisation (``prm/first_error_hit`` beside
  ``prm/first_error_chance``), as logged by :mod:`iprime.train.diagnostics`.

Statistics (pure functions below, tested in ``tests/test_sample_efficiency_stats.py``):

- a run's **smoothed curve**: after each step that generated, the accuracy of the samples of
  its last ``--window`` generating steps (their rewards weighted by rollouts; a step served
  from the buffer adds no point), against rollouts seen. **Final training reward**: its last
  value. An algorithm's **mean curve** averages its seeds' curves at equal rollouts (linear
  interpolation, over the range every seed covers).
- **rollouts to reach** a target: where the mean curve first reaches it, linearly interpolated
  between the two points around the crossing. **Rollouts ratio** = rollouts PRIME needs to
  reach RLOO's final training reward (the end of RLOO's mean curve) / rollouts RLOO needs to
  reach it (< 1: PRIME is more sample-efficient). When PRIME's mean curve never reaches it the
  ratio is *censored*: reported as ``inf``, with the lower bound ``PRIME's last rollouts /
  RLOO's`` ("> x" in the table).
- **paired bootstrap**: ``--boot`` resamples of the seeds with replacement, the same seeds
  for both algorithms; 95% percentile intervals of the final-reward difference (PRIME - RLOO)
  and of the ratio (a resample where PRIME never reaches the target counts as ``inf``).

    .venv/bin/python benchmarks/sample_efficiency.py [--preset decisive7] [--k 4,16]
        [--algos prime,prime_ref,rloo,grpo] [--seeds 0-4] [--steps 40] [--jobs 2]
        [--eval-n 4] [--out DIR] [--set prm.lr=1e-4]

Each run is saved to ``DIR/runs/<algo>-k<K>-s<seed>.json`` as it finishes and reused by a
later call with the same ``--out`` (so a stopped sweep resumes; delete the file to rerun).
Prints a table per K, writes ``DIR/sample_efficiency.json`` and ``DIR/sample_efficiency.png``;
the last line printed is ``RATIO <algo>_vs_rloo_rollouts=<x> ci=[<lo>,<hi>]`` for ``--ratio-k``
(``<algo>``: the first PRIME variant of ``--algos``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ALGOS = {
    # the paper's formula as written: unnormalised process rewards, the paper's baseline
    "prime": ["algo.estimator=prime", "algo.normalize=null", "algo.process_baseline=paper"],
    # the PRIME repository's pipeline (iprime's default since this measurement): process rewards
    # scaled by the batch's largest return, and its leave-one-out baseline (docs/benchmarks.md)
    "prime_ref": ["algo.estimator=prime", "algo.normalize=batch_norm", "algo.process_baseline=reference"],
    # PRIME whose PRM starts from an offline warm-up on SFT rollouts (--warmup-rollouts); those
    # rollouts are counted: its curve starts at that many rollouts seen
    "prime_warm": ["algo.estimator=prime", "algo.normalize=null", "algo.process_baseline=paper"],
    # process credit kept near the token that earned it: the process return discounted by 0.9
    # (a horizon of ~10 tokens, about one line of the arithmetic task), so a slip's negative
    # reward reaches back only to its own line and not to the correct decisions before it (the
    # outcome term stays undiscounted); rm_coef 10 makes up for the shorter sums
    "prime_local": [
        "algo.estimator=prime",
        "algo.normalize=null",
        "algo.process_baseline=paper",
        "algo.gamma=0.9",
        "algo.outcome_gamma=1.0",
        "algo.rm_coef=10",
    ],
    # the reference pipeline with the PRIME repository's PRM schedule: the step's responses in 4
    # mini-batches, one PRM optimizer step each, each mini-batch rewarded by the PRM as it is at its
    # turn (ppo_trainer.yaml:125 mini_batch_size 256 of 1024 responses; dp_prime.py:162-202);
    # ``{quarter}`` is filled in by run_config with a quarter of the step's responses
    "prime_mb4": [
        "algo.estimator=prime",
        "algo.normalize=batch_norm",
        "algo.process_baseline=reference",
        "prm.mini_batch_size={quarter}",
    ],
    "rloo": ["algo.estimator=rloo", "prm.enabled=false"],
    "grpo": ["algo.estimator=grpo", "prm.enabled=false"],
}

# per-step metrics kept in a run's record (besides step, rollouts and the training reward)
STEP_KEYS = (
    "rollout/rounds",
    "rollout/kept_group_frac",
    "prm/pairwise_acc",
    "prm/first_error_hit",
    "prm/first_error_chance",
    "prm/first_error_rows",
    "prm/loss",
    "prm/updates",
    "adv/process_share",
    "adv/dense_share",
    "adv/process_outcome_corr",
    "time/step",
)


# ---------------------------------------------------------------------------------- statistics


def smooth(values: Sequence[float], window: int, weights: Sequence[float] | None = None) -> list[float]:
    """Trailing moving average: ``out[i]`` is the mean of ``values[max(0, i - window + 1) : i + 1]``,
    weighted by ``weights`` when given (rollouts per step: the accuracy of those steps' samples)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    w = [1.0] * len(values) if weights is None else [float(x) for x in weights]
    if len(w) != len(values) or any(x <= 0 for x in w):
        raise ValueError("weights must be positive, one per value")
    out = []
    for i in range(len(values)):
        lo = max(0, i - window + 1)
        out.append(sum(v * x for v, x in zip(values[lo : i + 1], w[lo : i + 1])) / sum(w[lo : i + 1]))
    return out


def generation_points(steps: Sequence[dict]) -> tuple[list[float], list[float], list[float]]:
    """``(rollouts seen, training reward, rollouts generated)`` of the steps that generated:
    a step served entirely from the buffer has no training reward and adds no rollouts."""
    xs, rewards, counts = [], [], []
    for s in steps:
        if s.get("train_reward") is None:
            continue
        if s["generated"] <= 0:
            raise ValueError(f"step {s.get('step')} has a training reward but generated no rollouts")
        xs.append(float(s["rollouts"]))
        rewards.append(float(s["train_reward"]))
        counts.append(float(s["generated"]))
    if not xs:
        raise ValueError("no step generated anything: no training reward to plot")
    return xs, rewards, counts


def reward_curve(steps: Sequence[dict], window: int) -> tuple[list[float], list[float]]:
    """One run's ``(rollouts seen, smoothed training reward)``: at each step that generated, the
    accuracy of the samples of the last ``window`` such steps (:func:`smooth`, by rollouts)."""
    xs, rewards, counts = generation_points(steps)
    return xs, smooth(rewards, window, counts)


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """The piecewise-linear curve through ``(xs, ys)`` (``xs`` increasing) at ``xs[0] <= x <= xs[-1]``."""
    if not xs[0] - 1e-9 <= x <= xs[-1] + 1e-9:
        raise ValueError(f"{x} is outside the curve's range [{xs[0]}, {xs[-1]}]")
    i = next(j for j in range(len(xs)) if xs[j] >= x - 1e-9)
    if i == 0 or xs[i] == x:
        return float(ys[i])
    return float(ys[i - 1] + (x - xs[i - 1]) / (xs[i] - xs[i - 1]) * (ys[i] - ys[i - 1]))


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[list[float], list[float]]:
    """Mean over runs of ``(rollouts, reward)`` curves at equal rollouts: on every rollouts value
    any curve has, between the latest start and the earliest end of the curves, each curve
    interpolated linearly (:func:`interpolate`)."""
    if not curves:
        raise ValueError("no curves to average")
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    if lo > hi:
        raise ValueError(f"the curves share no range of rollouts (latest start {lo}, earliest end {hi})")
    grid = sorted({float(x) for c in curves for x in c[0] if lo <= x <= hi})
    return grid, [statistics.fmean(interpolate(c[0], c[1], x) for c in curves) for x in grid]


def rollouts_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """Rollouts where the curve first reaches ``target``, interpolated linearly between the
    step before the crossing and the step at it; None if it never does."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target - 1e-12:
            if i == 0 or y == ys[i - 1]:
                return float(x)
            frac = (target - ys[i - 1]) / (y - ys[i - 1])
            return float(xs[i - 1] + frac * (x - xs[i - 1]))
    return None


def rollouts_ratio(prime: Sequence[tuple], rloo: Sequence[tuple]) -> dict:
    """PRIME's rollouts to reach RLOO's final training reward over RLOO's, from the mean curves
    of the given (smoothed) runs. ``{"ratio", "bound", "target", "prime", "rloo"}``: ``ratio`` is
    ``inf`` when PRIME's mean curve never reaches the target, and ``bound`` is then the lower
    bound ``PRIME's last rollouts / RLOO's`` (``bound == ratio`` otherwise)."""
    px, py = mean_curve(prime)
    rx, ry = mean_curve(rloo)
    target = ry[-1]
    r_reach = rollouts_to_reach(rx, ry, target)  # RLOO's own final: reached by its last step
    p_reach = rollouts_to_reach(px, py, target)
    if p_reach is None:
        return {"ratio": math.inf, "bound": px[-1] / r_reach, "target": target, "prime": None, "rloo": r_reach}
    ratio = p_reach / r_reach
    return {"ratio": ratio, "bound": ratio, "target": target, "prime": p_reach, "rloo": r_reach}


def final_difference(prime: Sequence[tuple], rloo: Sequence[tuple]) -> float:
    """Mean over paired runs of PRIME's final smoothed training reward minus RLOO's."""
    if len(prime) != len(rloo):
        raise ValueError(f"paired runs needed: {len(prime)} PRIME vs {len(rloo)} RLOO")
    return statistics.fmean(p[1][-1] - r[1][-1] for p, r in zip(prime, rloo))


def paired_bootstrap(n: int, stat: Callable[[list[int]], float], n_boot: int, seed: int = 0) -> list[float]:
    """``stat(indices)`` on ``n_boot`` resamples of ``range(n)`` with replacement: the same
    indices (seeds) for both algorithms of a pair."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 and n_boot >= 1, got {n}, {n_boot}")
    rng = random.Random(seed)
    return [stat([rng.randrange(n) for _ in range(n)]) for _ in range(n_boot)]


def percentile_ci(samples: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile interval by nearest rank: the ``ceil(q * n)``-th smallest for
    ``q = (1 - level) / 2`` and ``1 - q``; ``inf`` samples sort last."""
    if not samples:
        raise ValueError("no samples")
    s, q = sorted(samples), (1.0 - level) / 2.0

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(p * len(s) - 1e-9) - 1))]

    return rank(q), rank(1.0 - q)


def ratio_line(ratio: float, lo: float, hi: float, algo: str = "prime") -> str:
    """The benchmark's last line: ``RATIO <algo>_vs_rloo_rollouts=<x> ci=[<lo>,<hi>]``."""

    def fmt(v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:.3f}"

    return f"RATIO {algo}_vs_rloo_rollouts={fmt(ratio)} ci=[{fmt(lo)},{fmt(hi)}]"


def compare(prime_runs: Sequence[dict], rloo_runs: Sequence[dict], window: int, n_boot: int) -> dict:
    """Ratio and final-reward difference with paired bootstrap intervals; runs paired by seed."""
    by_seed = {r["seed"]: r for r in rloo_runs}
    seeds = sorted(r["seed"] for r in prime_runs if r["seed"] in by_seed)
    if not seeds:
        raise ValueError("no seed has both a PRIME and an RLOO run")
    p_by = {r["seed"]: r for r in prime_runs}
    prime = [reward_curve(p_by[s]["steps"], window) for s in seeds]
    rloo = [reward_curve(by_seed[s]["steps"], window) for s in seeds]

    def pick(curves, idx):
        return [curves[i] for i in idx]

    point = rollouts_ratio(prime, rloo)
    ratios = paired_bootstrap(len(seeds), lambda i: rollouts_ratio(pick(prime, i), pick(rloo, i))["ratio"], n_boot)
    diffs = paired_bootstrap(len(seeds), lambda i: final_difference(pick(prime, i), pick(rloo, i)), n_boot)
    return {
        "seeds": seeds,
        **point,
        "ratio_ci": percentile_ci(ratios),
        "censored_share": sum(math.isinf(r) for r in ratios) / len(ratios),
        "final_diff": final_difference(prime, rloo),
        "final_diff_ci": percentile_ci(diffs),
    }


# ---------------------------------------------------------------------------------- runs


def warm_up_prm(preset, sft_dir: Path, out: Path, rollouts: int, n: int, beta: float, lr: float, epochs: float) -> Path:
    """Offline CE warm-up of a PRM (a copy of the SFT model) on ``rollouts`` SFT samples
    (``n`` per training prompt, temperature 1); saved to ``out`` and reused if present."""
    import copy

    from prm_diagnostics import sample

    from iprime.models import load_model, load_tokenizer
    from iprime.prm import OfflinePRMConfig, train_prm_offline

    if (out / "config.json").is_file():
        return out
    ref, tok = load_model(sft_dir).eval(), load_tokenizer(sft_dir)
    rows = sample(
        ref, tok, preset.make_task().rows("train", math.ceil(rollouts / n), seed=123), n, preset.max_new_tokens, seed=0
    )[:rollouts]
    prm = copy.deepcopy(ref).requires_grad_(True)
    res = train_prm_offline(prm, ref, tok, rows, OfflinePRMConfig(beta=beta, lr=lr, epochs=epochs, batch_size=32))
    print(
        f"  PRM warm-up: {len(rows)} rollouts, loss {res['first_loss']:.3f} -> {res['final_loss']:.3f} "
        f"in {res['train_time_s']:.0f} s",
        flush=True,
    )
    prm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_config(spec: dict) -> list[str]:
    """The config overrides of one run: the quickstart's PRIME settings, the algorithm's, K."""
    k, prompts = spec["k"], spec["prompts_per_step"]
    if spec["algo"] == "prime_mb4" and prompts % 4:
        raise ValueError(f"prompts_per_step must be a multiple of 4 (prime_mb4's mini-batches), got {prompts}")
    return [o.format(quarter=prompts * k // 4) for o in ALGOS[spec["algo"]]] + [
        f"train.out_dir={spec['out']}",
        f"train.seed={spec['seed']}",
        f"train.steps={spec['steps']}",
        "train.save_every=0",
        f"train.eval_every={spec['eval_every']}",
        "train.tensorboard=false",
        "train.log_samples_every=0",
        f"train.num_threads={spec['threads']}",
        f"rollout.max_new_tokens={spec['max_new_tokens']}",
        f"rollout.n={k}",
        f"rollout.prompts_per_step={prompts}",
        f"optim.mini_batch_size={prompts * k}",  # one policy update per step, whatever K
        *spec["overrides"],
    ]


def run_setting(spec: dict) -> dict:
    """What a finished run's record must match to be reused for ``spec``."""
    return {
        "overrides": run_config(spec),
        **{k: spec[k] for k in ("preset", "ops", "sft", "eval_prompts", "eval_n", "start_rollouts")},
    }


def run_one(spec: dict) -> dict:
    """One training run; its record (also written to ``spec["record"]``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from iprime.config import load_config
    from iprime.models import load_model, load_tokenizer
    from iprime.presets import benchmark_preset, preset_with_ops
    from iprime.quickstart import QuickstartConfig
    from iprime.train.evaluate import evaluate_accuracy
    from iprime.train.prime import PrimeTrainer

    torch.set_num_threads(spec["threads"])
    preset = preset_with_ops(benchmark_preset(spec["preset"]), spec["ops"])
    task = preset.make_task()
    model, tok = load_model(spec["sft"]), load_tokenizer(spec["sft"])
    test = task.rows("test", spec["eval_prompts"], seed=preset.seed + 1)
    cfg = load_config(None, list(QuickstartConfig().prime_overrides) + run_config(spec))
    per_round = math.ceil(cfg.rollout.prompts_per_step * cfg.rollout.oversample) * cfg.rollout.n

    # greedy (eval_n == 1), or the mean over eval_n samples at temperature 1, as in training
    sampled = {"n": spec["eval_n"], "temperature": 1.0 if spec["eval_n"] > 1 else 0.0, "seed": 0}

    def evaluate(m) -> float:
        return evaluate_accuracy(m, tok, test, task.verify, max_new_tokens=preset.max_new_tokens, **sampled)["accuracy"]

    t0 = time.perf_counter()
    trainer = PrimeTrainer(
        model,
        cfg,
        task.rows("train", 3000, seed=preset.seed + 2),
        task.verify,
        tokenizer=tok,
        eval_fn=lambda tr: {"accuracy": evaluate(tr.policy)},
    )
    seen = spec["start_rollouts"]
    evals = [{"step": 0, "rollouts": seen, "accuracy": evaluate(model)}]
    steps = []
    for m in trainer.train(progress=False):
        generated = m.get("rollout/rounds", 0) * per_round
        seen += generated
        steps.append(
            {
                "step": m["step"],
                "rollouts": seen,
                "generated": generated,
                "train_reward": m.get("rollout/acc_before_filter"),
                **{k: m[k] for k in STEP_KEYS if isinstance(m.get(k), (int, float))},
            }
        )
        if "eval/accuracy" in m:
            evals.append({"step": m["step"], "rollouts": seen, "accuracy": m["eval/accuracy"]})
    record = {
        **{k: spec[k] for k in ("algo", "k", "seed", "preset", "ops", "eval_n")},
        "n_steps": spec["steps"],
        "setting": run_setting(spec),
        "wall_s": time.perf_counter() - t0,
        "steps": steps,
        "evals": evals,
    }
    Path(spec["record"]).write_text(json.dumps(record))
    return record


def run_all(specs: list[dict], jobs: int, log: Callable[[str], None]) -> list[dict]:
    """Run (or reuse) every spec; ``jobs`` processes at a time (spawned: one torch each)."""
    todo = []
    for s in specs:
        path = Path(s["record"])
        if not path.is_file():
            todo.append(s)
        elif json.loads(path.read_text()).get("setting") != run_setting(s):
            raise SystemExit(f"{path} is a run of another setting than asked; use another --out or delete it")
    if len(todo) < len(specs):
        log(f"  reusing {len(specs) - len(todo)} finished runs")
    t0 = time.perf_counter()

    def done(rec: dict) -> None:
        final = reward_curve(rec["steps"], 5)[1][-1]
        log(
            f"  {rec['algo']} K={rec['k']} seed {rec['seed']}: training reward {final:.3f} (last 5 steps), "
            f"held-out {rec['evals'][-1]['accuracy']:.3f}, {rec['wall_s']:.0f} s "
            f"({time.perf_counter() - t0:.0f} s total)"
        )

    if jobs <= 1:
        for s in todo:
            done(run_one(s))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(run_one, s) for s in todo]):
                done(fut.result())
    return [json.loads(Path(s["record"]).read_text()) for s in specs]


# ---------------------------------------------------------------------------------- report


def _mean_sd(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {sd:.3f}"


def _window_mean(runs: Sequence[dict], key: str, first: bool, n: int = 10) -> float:
    vals = [s[key] for r in runs for s in (r["steps"][:n] if first else r["steps"][-n:]) if key in s]
    vals = [v for v in vals if not math.isnan(v)]
    return statistics.fmean(vals) if vals else float("nan")


def summarize(runs: list[dict], algos: list[str], k: int, window: int, n_boot: int, log) -> dict:
    """The table for one K: per algorithm final training reward, held-out accuracy, rollouts
    to reach RLOO's final training reward, PRIME-side diagnostics; and the PRIME vs RLOO
    comparison with bootstrap intervals."""
    mine = {a: sorted((r for r in runs if r["algo"] == a and r["k"] == k), key=lambda r: r["seed"]) for a in algos}
    curves = {a: [reward_curve(r["steps"], window) for r in rs] for a, rs in mine.items() if rs}
    target = mean_curve(curves["rloo"])[1][-1] if "rloo" in curves else None
    table: dict[str, dict] = {}
    log(f"\nK={k}, seeds {[r['seed'] for r in next(iter(mine.values()))]}, smoothing window {window} steps")
    log(
        f"{'algo':12s} {'train reward':>16s} {'held-out':>16s} {'rollouts to RLOO final':>23s} "
        f"{'proc share':>10s} {'dense share':>11s} {'PRM pair':>13s} {'first err (chance)':>22s}"
    )
    for a, rs in mine.items():
        if not rs:
            continue
        mx, my = mean_curve(curves[a])
        reach = rollouts_to_reach(mx, my, target) if target is not None else None
        row = {
            "final_train_reward": [c[1][-1] for c in curves[a]],
            "final_heldout": [r["evals"][-1]["accuracy"] for r in rs],
            "rollouts_to_rloo_final": reach,
            "total_rollouts": mx[-1],
            "mean_curve": {"rollouts": mx, "train_reward": my},
        }
        for key in ("adv/process_share", "adv/dense_share", "prm/pairwise_acc", "prm/first_error_hit"):
            row[key] = {"first10": _window_mean(rs, key, True), "last10": _window_mean(rs, key, False)}
        row["prm/first_error_chance"] = _window_mean(rs, "prm/first_error_chance", False, n=len(rs[0]["steps"]))
        table[a] = row
        shown = f"{reach:.0f}" if reach is not None else f"> {mx[-1]:.0f}"

        def pair(key: str) -> str:
            v = row[key]
            return "-" if math.isnan(v["last10"]) else f"{v['first10']:.2f}->{v['last10']:.2f}"

        log(
            f"{a:12s} {_mean_sd(row['final_train_reward']):>16s} {_mean_sd(row['final_heldout']):>16s} {shown:>23s} "
            f"{pair('adv/process_share'):>10s} {pair('adv/dense_share'):>11s} {pair('prm/pairwise_acc'):>13s} "
            f"{pair('prm/first_error_hit'):>13s} ({row['prm/first_error_chance']:.2f})".replace("(nan)", "")
        )
    out = {"algos": table, "target": target}
    for a in [a for a in algos if a.startswith("prime") and mine.get(a)]:
        if not mine.get("rloo"):
            break
        c = compare(mine[a], mine["rloo"], window, n_boot)
        out[f"{a}_vs_rloo"] = c
        shown = f"{c['ratio']:.3f}" if math.isfinite(c["ratio"]) else f"> {c['bound']:.3f} (not reached)"
        log(
            f"{a} vs rloo, paired over seeds {c['seeds']}: rollouts ratio {shown}, 95% CI "
            f"[{c['ratio_ci'][0]:.3f}, {c['ratio_ci'][1]:.3f}] (not reached in {c['censored_share']:.0%} of "
            f"{n_boot} resamples); final training reward difference {c['final_diff']:+.3f}, 95% CI "
            f"[{c['final_diff_ci'][0]:+.3f}, {c['final_diff_ci'][1]:+.3f}]"
        )
    return out


def plot(runs: list[dict], algos: list[str], ks: list[int], window: int, path: Path, eval_kind: str) -> None:
    """Per K: mean smoothed training reward and mean held-out accuracy against rollouts seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(ks), figsize=(5.5 * len(ks), 7), squeeze=False)
    for j, k in enumerate(ks):
        for a in algos:
            rs = [r for r in runs if r["algo"] == a and r["k"] == k]
            if not rs:
                continue
            x, y = mean_curve([reward_curve(r["steps"], window) for r in rs])
            axes[0][j].plot(x, y, label=f"{a} ({len(rs)} seeds)")
            ex = [statistics.fmean(r["evals"][i]["rollouts"] for r in rs) for i in range(len(rs[0]["evals"]))]
            ey = [statistics.fmean(r["evals"][i]["accuracy"] for r in rs) for i in range(len(rs[0]["evals"]))]
            axes[1][j].plot(ex, ey, marker="o", ms=3, label=a)
        axes[0][j].set_title(f"K={k}: training reward (before filter, last {window} sampling steps)")
        axes[1][j].set_title(f"K={k}: held-out accuracy ({eval_kind})")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xlabel("rollouts seen")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sft_model(out: Path, preset, setting: dict) -> Path:
    """``out/sft``: the preset's SFT model, trained on first use; refuses one of another setting."""
    sft_dir, stamp = out / "sft", out / "sft_setting.json"
    if (sft_dir / "config.json").is_file():
        found = json.loads(stamp.read_text()) if stamp.is_file() else None
        if found != setting:
            raise SystemExit(f"{sft_dir} was trained for {found}, not {setting}: use another --out")
        return sft_dir
    from iprime.presets import run_preset_sft

    t0 = time.perf_counter()
    res = run_preset_sft(out, preset, log=lambda *a: None)
    stamp.write_text(json.dumps(setting))
    print(f"SFT {setting}: held-out greedy {res['accuracy']:.3f} in {time.perf_counter() - t0:.0f} s", flush=True)
    return sft_dir


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix: ``"0-2,7"``."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    return seeds


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="quickstart", help="a name in iprime.presets.BENCHMARK_PRESETS")
    ap.add_argument("--ops", type=int, default=None, help="operations per problem (the preset's by default)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--eval-n", type=int, default=1, help="held-out samples per prompt (1: greedy; >1: temperature 1)")
    ap.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,1,2")
    ap.add_argument("--k", default="4", help="samples per prompt, comma-separated (e.g. 4,16)")
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--algos", default="prime,rloo,grpo", help=f"from {sorted(ALGOS)}")
    ap.add_argument("--out", default="runs/sample_efficiency")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one process each)")
    ap.add_argument("--window", type=int, default=5, help="steps in the training reward's moving mean")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--ratio-k", type=int, default=None, help="K of the final RATIO line (default: the first)")
    ap.add_argument("--set", action="append", default=[], help="extra config override for every run")
    ap.add_argument("--warmup-rollouts", type=int, default=2048, help="SFT rollouts for prime_warm's PRM warm-up")
    ap.add_argument("--warmup-lr", type=float, default=1e-4)
    ap.add_argument("--warmup-epochs", type=float, default=3.0)
    args = ap.parse_args()
    algos, ks, seeds = args.algos.split(","), [int(k) for k in args.k.split(",")], parse_seeds(args.seeds)
    unknown = sorted(set(algos) - set(ALGOS))
    if unknown:
        raise SystemExit(f"unknown --algos {unknown}; known: {sorted(ALGOS)}")
    if not any(a.startswith("prime") for a in algos) or "rloo" not in algos:
        raise SystemExit("--algos needs a PRIME variant (prime, prime_ref, prime_mb4, ...) and rloo for the ratio")
    ratio_k = args.ratio_k if args.ratio_k is not None else ks[0]
    if ratio_k not in ks:
        raise SystemExit(f"--ratio-k {ratio_k} is not one of --k {ks}")

    if args.ops is not None and args.preset != "quickstart":
        raise SystemExit("--ops changes the quickstart task only (a decisive preset's slip rate is set by its steps)")

    from iprime.presets import benchmark_preset, preset_with_ops

    preset = preset_with_ops(benchmark_preset(args.preset), args.ops)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    sft_dir = sft_model(out, preset, {"preset": args.preset, "ops": args.ops})
    start = dict.fromkeys(algos, 0)
    extra: dict[str, list[str]] = {a: [] for a in algos}
    if "prime_warm" in algos:
        from iprime.config import load_config
        from iprime.quickstart import QuickstartConfig

        beta = load_config(None, list(QuickstartConfig().prime_overrides) + args.set).prm.beta  # as the runs use
        warm = warm_up_prm(
            preset, sft_dir, out / f"prm_warm_{args.warmup_rollouts}", args.warmup_rollouts, 8, beta,
            args.warmup_lr, args.warmup_epochs,
        )  # fmt: skip
        extra["prime_warm"], start["prime_warm"] = [f"model.prm={warm}"], args.warmup_rollouts
    specs = [
        {
            "algo": a,
            "k": k,
            "seed": s,
            "preset": args.preset,
            "ops": args.ops,
            "sft": str(sft_dir),
            "steps": args.steps,
            "eval_every": args.eval_every,
            "eval_prompts": args.eval_prompts,
            "eval_n": args.eval_n,
            "prompts_per_step": args.prompts_per_step,
            "threads": args.threads,
            "max_new_tokens": preset.max_new_tokens,
            "start_rollouts": start[a],
            "overrides": args.set + extra[a],
            "out": str(out / f"{a}-k{k}-s{s}"),
            "record": str(out / "runs" / f"{a}-k{k}-s{s}.json"),
        }
        for k in ks
        for s in seeds
        for a in algos
    ]
    runs = run_all(specs, args.jobs, lambda msg: print(msg, flush=True))
    summaries = {k: summarize(runs, algos, k, args.window, args.boot, print) for k in ks}
    (out / "sample_efficiency.json").write_text(
        json.dumps({"args": vars(args), "summaries": summaries, "runs": runs}, indent=1, default=str)
    )
    eval_kind = "greedy" if args.eval_n == 1 else f"{args.eval_n} samples at temperature 1"
    plot(runs, algos, ks, args.window, out / "sample_efficiency.png", eval_kind)
    print(f"\nwrote {out / 'sample_efficiency.json'} and {out / 'sample_efficiency.png'}")
    # the first PRIME variant asked for (``--algos`` order) against RLOO
    first = next(a for a in algos if a.startswith("prime"))
    c = summaries[ratio_k][f"{first}_vs_rloo"]
    print(ratio_line(c["ratio"], *c["ratio_ci"], algo=first))


if __name__ == "__main__":
    main()
