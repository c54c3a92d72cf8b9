"""Diagnostics of a training step: observers that read the step record and return metrics.

They change nothing the step computes, and the stages they observe do not call them: the trainer
runs :func:`step_diagnostics` once the step's stages are done.

- :func:`prm_ranking_metrics`: how well the PRM's rewards rank a group's responses, and their
  scale (``prm/pairwise_acc``, ``prm/*_reward_*``);
- :func:`process_share_metrics`: how much of PRIME's advantage comes from the PRM
  (``adv/process_share`` and its parts);
- :func:`first_error_metrics`: on the built-in arithmetic task, where every line can be checked,
  whether the PRM puts its lowest step reward on the first wrong line (``prm/first_error_*``).
  This is the only module of the trainer that knows that task.
- :func:`sampler_gap_metrics`: how far the rollout engine's sampling log-probs are from the
  trainer's recomputed ones on the same tokens (``rollout/sampler_logprob_gap``): float noise when
  every rank's engine samples the current policy, far more when one missed a weight sync.

Under torchrun every rank calls them (their statistics are over the global batch).
"""

from __future__ import annotations

from typing import Any

import torch

from iprime import algo
from iprime.config import PrimeConfig
from iprime.data.arithmetic import first_wrong_step, problem_in_text
from iprime.rollout import RolloutBatch
from iprime.train import distributed as D
from iprime.train.advantages import advantage_inputs
from iprime.train.passes import ForwardPasses
from iprime.train.record import StepRecord


def step_diagnostics(passes: ForwardPasses, step: StepRecord, tokenizer) -> dict[str, Any]:
    """Every diagnostic that applies to ``step``: the PRM's when it gave token rewards, the
    process share with the ``prime`` estimator. Collective under torchrun."""
    if step.token_rewards is None:
        return {}
    cfg, rewards, mask, outcome = passes.cfg, step.token_rewards, step.mask, step.outcome
    metrics = prm_ranking_metrics(passes, rewards, mask, outcome, cfg.rollout.n)
    if cfg.algo.estimator == "prime":
        metrics.update(process_share_metrics(cfg, outcome, mask, rewards, passes.global_stats))
    metrics.update(first_error_metrics(passes, step.batch, rewards, mask, outcome, tokenizer))
    return metrics


def local_sampler_gap(sampled: torch.Tensor, recomputed: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> float:
    """``max |sampled - recomputed|`` over the tokens of ``mask`` [B, T] in the rows ``rows`` [B]
    (bool), in float64; ``-1.0`` when no token qualifies (a gap is never negative)."""
    keep = mask & rows.to(mask.device)[:, None]
    if not bool(keep.any()):
        return -1.0
    return float((sampled.double() - recomputed.double()).abs()[keep].max())


def sampler_gap_metrics(passes: ForwardPasses, step: StepRecord) -> dict[str, float]:
    """``rollout/sampler_logprob_gap``: the largest ``|log pi_engine(token) - log pi_old(token)|``
    between the log-probs the engine recorded while sampling (``batch.sampling_logprobs``) and
    the trainer's recomputed old log-probs (``step.old_logp``), over this step's response tokens
    on every rank (all-reduced max). Only rows sampled by the policy this step trains
    (``meta["sampled_step"]`` = the steps done): groups served from the ``rollouts`` buffer came
    from an older policy and differ by design. Nothing is logged when no rank holds such a row
    (a step served from the buffer, or a batch given to ``train_on_batch``).

    The engine and the trainer run the same weights in the same dtype, so the gap is float noise
    (~1e-6 in float32: a KV-cache decode against one full forward); an engine on weights one
    update old differs by the update's effect on the log-probs. Collective under torchrun."""
    batch = step.batch
    sampled = batch.meta.get("sampled_step")
    fresh = [s == step.index - 1 for s in sampled] if sampled is not None else [False] * len(batch)
    rows = torch.tensor(fresh, dtype=torch.bool)
    local = local_sampler_gap(batch.sampling_logprobs, step.old_logp, step.mask, rows)
    gap = float(D.all_reduce(torch.tensor([local], dtype=torch.float64, device=passes.device), "max")[0])
    return {"rollout/sampler_logprob_gap": gap} if gap >= 0 else {}


def prm_ranking_metrics(
    passes: ForwardPasses, token_rewards: torch.Tensor, mask: torch.Tensor, outcome: torch.Tensor, group_size: int
) -> dict[str, float]:
    """Pairwise accuracy within groups (does a right response get a higher summed reward than a
    wrong one of the same prompt?) and reward statistics, over the global batch."""
    seq = algo.masked_sum(token_rewards, mask, dim=-1)
    stats = passes.global_stats(token_rewards, mask)
    return {
        "prm/pairwise_acc": passes.global_mean(algo.prm_pairwise_accuracy(seq, outcome, group_size)),
        "prm/seq_reward_mean": passes.global_mean(float(seq.mean())),
        "prm/token_reward_mean": stats["mean"],
        "prm/token_reward_abs_max": max(abs(stats["max"]), abs(stats["min"])),
    }


# ------------------------------------------------------------------ the process share
def _local_stats(values: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``{"std"}`` (Bessel) of ``values[mask]`` in this process (the shape of ``ForwardPasses.global_stats``)."""
    v = values[mask.bool()].double()
    return {"std": float(v.std()) if v.numel() > 1 else 0.0}


def process_share_metrics(
    cfg: PrimeConfig,
    outcome: torch.Tensor,
    mask: torch.Tensor,
    token_rewards: torch.Tensor,
    stats=_local_stats,
) -> dict[str, float]:
    """How much of PRIME's advantage comes from the implicit PRM, over the batch's valid tokens.

    With ``P, O`` = :func:`iprime.algo.advantages.prime_parts` (``rm_coef`` times the
    process return, ``outcome_coef`` times the RLOO outcome advantage, ``[B, T]``, before
    whitening, which scales both alike) and ``A = P + O``:

    - ``adv/process_std``, ``adv/outcome_std``: ``std(P)``, ``std(O)`` over valid tokens;
    - ``adv/process_share``: ``std(P) / std(A)``; ~0 when the process term is negligible, ~1
      when it dominates (it can exceed 1 when ``P`` and ``O`` partly cancel);
    - ``adv/process_outcome_corr``: the correlation of ``P`` and ``O`` over tokens (near 1: the
      process term mostly repeats the outcome);
    - ``adv/dense_share``: ``std(A - its response's mean) / std(A)``, the share of the advantage
      that varies *within* a response: what a dense reward adds (0 for outcome-only RLOO).

    A ratio whose denominator is 0 is left out (``std(A) = 0``: nothing to share; the
    correlation when ``P`` or ``O`` is constant, e.g. the first step, whose PRM is still the
    reference), so no metric is NaN.

    ``stats(values, mask) -> {"std": ...}`` gives the statistics (``ForwardPasses.global_stats``
    under torchrun, where every rank must call this). Only the ``prime`` estimator's split is
    known; a KL penalty in the reward (``algo.kl_mode=reward``) is left out of both parts.
    """
    if cfg.algo.estimator != "prime":
        raise ValueError(f"process_share_metrics splits the prime estimator's advantage, not {cfg.algo.estimator!r}")
    process, outcome_part = algo.advantages.prime_parts(advantage_inputs(cfg, outcome, mask, token_rewards))
    total = process + outcome_part
    sp, so, sa = stats(process, mask)["std"], stats(outcome_part, mask)["std"], stats(total, mask)["std"]
    within = stats(algo.advantages.within_response_deviation(total, mask), mask)["std"]
    metrics = {"adv/process_std": sp, "adv/outcome_std": so}
    if sa > 0:
        metrics.update({"adv/process_share": sp / sa, "adv/dense_share": within / sa})
    if sp > 0 and so > 0:
        metrics["adv/process_outcome_corr"] = (sa * sa - sp * sp - so * so) / (2 * sp * so)
    return metrics


# ------------------------------------------------------------------ first-error localisation
def token_newlines(tokenizer, response_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` number of newline characters in each token's text (decoded one id at a time)."""
    ids = response_ids.tolist()
    table = {i: tokenizer.decode([i]).count("\n") for i in {i for row in ids for i in row}}
    return torch.tensor([[table[i] for i in row] for row in ids], dtype=torch.long)


def line_rewards(token_rewards: list[float], newlines: list[int]) -> list[float]:
    """Sum of token rewards per text line: a token counts to the line it starts on, and a
    token holding ``k`` newlines ends ``k`` lines. Inputs are one row's valid tokens."""
    lines = [0.0]
    for r, k in zip(token_rewards, newlines):
        lines[-1] += r
        lines.extend([0.0] * k)
    return lines


def first_error_hit(step_rewards: list[float], first_wrong: int | None) -> tuple[float, float] | None:
    """``(hit, chance)`` for one wrong response: ``hit`` is 1 when its lowest step reward (first
    lowest on ties) is on the first wrong line, ``chance`` is ``1 / len(step_rewards)``, what a
    random line scores. None when there is nothing to locate: no wrong line among the steps."""
    if first_wrong is None or first_wrong >= len(step_rewards):
        return None
    lowest = min(range(len(step_rewards)), key=step_rewards.__getitem__)
    return float(lowest == first_wrong), 1.0 / len(step_rewards)


def first_error_metrics(
    passes: ForwardPasses,
    batch: RolloutBatch,
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    outcome: torch.Tensor,
    tokenizer,
) -> dict[str, float]:
    """Does the PRM put its lowest step reward on the first wrong line? (arithmetic rows only)

    For every wrong response (``outcome == 0``) to an arithmetic prompt
    (:func:`iprime.data.arithmetic.problem_in_text` finds one in the rendered prompt), the step
    rewards are the token rewards summed per line (:func:`line_rewards`) over the problem's
    step lines, and :func:`iprime.data.arithmetic.first_wrong_step` gives the first wrong one
    (free filler words allowed). Over the global batch:

    - ``prm/first_error_hit``: share of such responses whose lowest-reward step line is the
      first wrong one; ``prm/first_error_chance``: the same for a uniformly random line
      (``mean 1 / lines``);
    - ``prm/first_error_rows``: how many responses were scored (the two shares are left out
      when none was). Rows whose tokens' newlines do not match their text's (a tokenizer that
      merges a newline across a decode) are skipped.

    Returns ``{}`` when no row of the global batch holds an arithmetic prompt.
    """
    newlines = token_newlines(tokenizer, batch.response_ids)
    valid = mask.bool().cpu()
    rewards = token_rewards.detach().float().cpu()
    hits = chance = rows = 0.0
    arithmetic = 0
    for b in range(len(batch)):
        problem = problem_in_text(batch.prompt_texts[b])
        if problem is None:
            continue
        arithmetic += 1
        text, n = batch.texts[b], newlines[b][valid[b]]
        if float(outcome[b]) != 0.0 or int(n.sum()) != text.count("\n"):
            continue
        steps = line_rewards(rewards[b][valid[b]].tolist(), n.tolist())[: len(problem.ops)]
        scored = first_error_hit(steps, first_wrong_step(problem, text, filler=True))
        if scored is not None:
            hits, chance, rows = hits + scored[0], chance + scored[1], rows + 1
    t = D.all_reduce(torch.tensor([hits, chance, rows, arithmetic], dtype=torch.float64, device=passes.device))
    if float(t[3]) == 0:
        return {}
    n_rows = float(t[2])
    if n_rows == 0:
        return {"prm/first_error_rows": 0.0}
    return {
        "prm/first_error_hit": float(t[0]) / n_rows,
        "prm/first_error_chance": float(t[1]) / n_rows,
        "prm/first_error_rows": n_rows,
    }
