"""The implicit PRM in the training step: token rewards, and its online update on outcome labels.

Rewards ``r_t = beta * (log pi_phi(y_t|y<t) - log pi_ref(y_t|y<t))`` (per token, summed per step,
or on the last token: ``prm.granularity``); the update minimises
``BCE(sigmoid(beta * sum_t log-ratio), outcome)`` (``prm.loss=ce``) or the pairwise DPO loss
within a group (``dpo``), ``prm.epochs`` passes over the step's rollouts.

Its metrics (:func:`prm_metrics`) say how well the PRM ranks responses, how much of the
advantage it contributes (``adv/process_share``) and, on the built-in arithmetic task where
every line can be checked, whether it puts its lowest step reward on the first wrong line
(:func:`first_error_metrics`).
"""

from __future__ import annotations

import math

import torch

from iprime import algo
from iprime.config import PrimeConfig
from iprime.data.arithmetic import first_wrong_step, problem_in_text
from iprime.rollout import RolloutBatch
from iprime.train import distributed as D
from iprime.train.advantages import process_share_metrics
from iprime.train.passes import ForwardPasses


def step_delimiter_ids(tokenizer, cfg: PrimeConfig) -> list[int] | None:
    """Token ids of ``prm.step_delimiter`` for step granularity (``None`` otherwise)."""
    if cfg.prm.granularity != "step":
        return None
    ids = tokenizer.encode(cfg.prm.step_delimiter, add_special_tokens=False)
    if not ids:
        raise ValueError(f"prm.step_delimiter {cfg.prm.step_delimiter!r} encodes to no tokens")
    return ids


def process_rewards(
    cfg: PrimeConfig,
    batch: RolloutBatch,
    prm_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    delimiter_ids: list[int] | None,
) -> torch.Tensor:
    """``[B, T]`` implicit process rewards at ``prm.granularity``."""
    step_ends = None
    if cfg.prm.granularity == "step":
        step_ends = algo.step_ends_from_delimiter(batch.response_ids, mask, delimiter_ids)
    return algo.implicit_process_rewards(prm_logp, ref_logp, mask, cfg.prm.beta, cfg.prm.granularity, step_ends)


def prm_metrics(
    passes: ForwardPasses,
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    outcome: torch.Tensor,
    group_size: int,
    *,
    batch: RolloutBatch | None = None,
    tokenizer=None,
) -> dict[str, float]:
    """Pairwise accuracy within groups and reward statistics, over the global batch; with the
    ``prime`` estimator the process term's share of the advantage (:func:`process_share_metrics`);
    given the ``batch`` and the ``tokenizer``, the first-error localisation on arithmetic rows
    (:func:`first_error_metrics`)."""
    seq = algo.masked_sum(token_rewards, mask, dim=-1)
    stats = passes.global_stats(token_rewards, mask)
    metrics = {
        "prm/pairwise_acc": passes.global_mean(algo.prm_pairwise_accuracy(seq, outcome, group_size)),
        "prm/seq_reward_mean": passes.global_mean(float(seq.mean())),
        "prm/token_reward_mean": stats["mean"],
        "prm/token_reward_abs_max": max(abs(stats["max"]), abs(stats["min"])),
    }
    if passes.cfg.algo.estimator == "prime":
        metrics.update(process_share_metrics(passes.cfg, outcome, mask, token_rewards, passes.global_stats))
    if batch is not None and tokenizer is not None:
        metrics.update(first_error_metrics(passes, batch, token_rewards, mask, outcome, tokenizer))
    return metrics


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


def _prm_loss(cfg: PrimeConfig, prm_logp, ref_logp, mask, outcome) -> torch.Tensor:
    if cfg.prm.loss == "ce":
        return algo.prm_ce_loss(prm_logp, ref_logp, mask, outcome, cfg.prm.beta)
    return algo.prm_dpo_loss(prm_logp, ref_logp, mask, outcome, cfg.prm.beta, cfg.rollout.n)


def prm_pass(
    passes: ForwardPasses, prm, optimizer, batch: RolloutBatch, ref_logp: torch.Tensor, n_global: int, return_logp: bool
) -> tuple[dict[str, float], torch.Tensor | None]:
    """One optimizer step of the PRM over this rank's rows of the step's batch.

    Each micro-batch's mean loss is weighted by its share of the ``n_global`` rows, so N ranks
    compute the 1-process gradient. With ``return_logp`` also returns the PRM's ``[B, T]``
    log-probs from this (pre-update) forward, detached; ``None`` when the update was skipped."""
    cfg, K, W = passes.cfg, passes.cfg.rollout.n, passes.dist.world_size
    mask, outcome = batch.response_mask.bool(), batch.tensors["outcome"]
    optimizer.zero_grad(set_to_none=True)
    micro = max(K, (cfg.prm.micro_batch_size // K) * K)  # DPO pairs live within a group: whole groups
    plans = passes.plan(batch, list(range(len(batch))), micro, unit=K)
    plans = plans + [None] * passes.pad_count(len(plans))
    total = 0.0
    scored = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device) if return_logp else None
    for plan in plans:
        rows = torch.tensor(plan if plan is not None else list(range(K)))
        prm_logp = passes.logprobs(prm, batch, rows)
        if plan is None:  # a dummy: keeps this rank in step with the others' collectives
            loss = (prm_logp.nan_to_num() * 0.0).sum()
        else:
            if scored is not None:
                scored[rows] = prm_logp.detach()
            loss = _prm_loss(cfg, prm_logp, ref_logp[rows], mask[rows], outcome[rows]) * (len(rows) / n_global)
        if not passes.all_finite(bool(torch.isfinite(loss))):
            optimizer.zero_grad(set_to_none=True)
            return {"prm/loss": float("nan"), "prm/skipped": 1.0}, None
        (loss * W).backward()  # FSDP averages gradients over ranks; the losses are already global shares
        total += loss.item()
    total = float(D.all_reduce(torch.tensor([total], dtype=torch.float64, device=passes.device))[0])
    grad_norm = D.to_float(torch.nn.utils.clip_grad_norm_(prm.parameters(), cfg.prm.grad_clip))
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return {"prm/loss": total, "prm/grad_norm": grad_norm, "prm/skipped": 1.0}, None
    optimizer.step()
    return {"prm/loss": total, "prm/grad_norm": grad_norm, "prm/skipped": 0.0}, scored


def update_prm(
    passes: ForwardPasses,
    prm,
    optimizer,
    batch: RolloutBatch,
    ref_logp: torch.Tensor,
    n_global: int,
    *,
    return_logp: bool = False,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """``prm.epochs`` passes of :func:`prm_pass`. ``prm/loss`` is the first pass's (the PRM's loss
    on data it has not seen), ``prm/loss_last`` the last's.

    With ``return_logp`` the first pass runs in eval mode, so its log-probs equal a scoring pass
    (dropout off) and serve as the rewards of the PRM before its update."""
    was_training = prm.training
    if return_logp:
        prm.eval()
    try:
        metrics, scored = prm_pass(passes, prm, optimizer, batch, ref_logp, n_global, return_logp)
        for _ in range(passes.cfg.prm.epochs - 1):
            if metrics.get("prm/skipped"):
                break
            last, _ = prm_pass(passes, prm, optimizer, batch, ref_logp, n_global, False)
            metrics["prm/loss_last"] = last["prm/loss"]
            metrics["prm/skipped"] = last["prm/skipped"]
    finally:
        prm.train(was_training)
    return metrics, scored
