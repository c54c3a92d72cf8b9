"""Implicit process rewards and the losses that train the implicit PRM.

The implicit PRM (arXiv 2412.01981) is an ordinary causal LM ``pi_phi`` read against a frozen
reference ``pi_ref``. The reward of response token ``t`` is

    r_t = beta * (log pi_phi(y_t | y_<t) - log pi_ref(y_t | y_<t))

and the sum over the response, ``beta * sum_t log(pi_phi / pi_ref)``, is the model's
outcome logit. Training that logit on outcome labels alone (cross-entropy) makes the
per-token terms a dense process reward, with no step labels.

All tensors are ``[B, T]`` over response tokens; ``mask`` marks valid tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_finite, check_groups, check_per_sequence, check_same_shape
from .masked import masked_sum, place_on_last_token, zero_outside

Tensor = torch.Tensor

GRANULARITIES = ("token", "step", "whole")


def implicit_process_rewards(
    prm_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    granularity: str = "token",
    step_ends: Tensor | Sequence[Sequence[int]] | None = None,
) -> Tensor:
    """Dense rewards ``[B, T]`` from PRM and reference log-probs of the response tokens.

    - ``"token"``: ``r_t = beta * (prm_logp_t - ref_logp_t)`` on every valid token.
    - ``"step"``: the token rewards of each step are summed onto the step's last token.
      ``step_ends`` gives the steps, either as a ``[B, T]`` bool tensor marking each step's
      last token or as a list (one per row) of end indices; tokens after the last marked end
      form a final step ending at the row's last valid token, so no reward is lost.
      :func:`step_ends_from_delimiter` finds ends from a delimiter token sequence.
    - ``"whole"``: the sum over the response on its last valid token.

    Zero outside the mask. The per-row sum is the same for all three granularities.
    """
    check_same_shape(prm_logp=prm_logp, ref_logp=ref_logp, mask=mask)
    check_choice("granularity", granularity, GRANULARITIES)
    check_finite("prm_logp", prm_logp, mask)
    check_finite("ref_logp", ref_logp, mask)
    valid = mask.bool()
    token_rewards = zero_outside(beta * (prm_logp - ref_logp), valid)
    if granularity == "token":
        return token_rewards
    if granularity == "whole":
        return place_on_last_token(token_rewards.sum(-1), valid)
    if step_ends is None:
        raise ValueError('granularity="step" needs step_ends (a [B, T] bool tensor or a list of end indices per row)')
    ends = _step_end_mask(step_ends, valid)
    return sum_into_steps(token_rewards, ends)


def sum_into_steps(token_rewards: Tensor, ends: Tensor) -> Tensor:
    """Sum ``token_rewards`` ``[B, T]`` over each step and put the sum on the step's end.

    ``ends`` ``[B, T]`` bool marks each step's last token. Token ``t`` belongs to the step
    whose end is the first marked position ``>= t``; tokens past the last end are dropped,
    so callers mark the last valid token (``_step_end_mask`` does).
    """
    ends = ends.bool()
    B, T = ends.shape
    # segment index of token t = number of ends strictly before t
    seg = ends.long().cumsum(-1) - ends.long()
    sums = torch.zeros(B, T + 1, dtype=token_rewards.dtype, device=token_rewards.device)
    sums.scatter_add_(1, seg, token_rewards)
    return torch.where(ends, sums.gather(1, seg), torch.zeros_like(token_rewards))


def _step_end_mask(step_ends: Tensor | Sequence[Sequence[int]], valid: Tensor) -> Tensor:
    B, T = valid.shape
    if isinstance(step_ends, torch.Tensor):
        if step_ends.shape != valid.shape:
            raise ValueError(f"step_ends has shape {tuple(step_ends.shape)}, expected {tuple(valid.shape)}")
        ends = step_ends.bool().to(valid.device).clone()
    else:
        if len(step_ends) != B:
            raise ValueError(f"step_ends has {len(step_ends)} rows, expected {B}")
        ends = torch.zeros(B, T, dtype=torch.bool, device=valid.device)
        for row, indices in enumerate(step_ends):
            for idx in indices:
                if not 0 <= int(idx) < T:
                    raise ValueError(f"step end index {idx} in row {row} is outside [0, {T})")
                ends[row, int(idx)] = True
    if (ends & ~valid).any():
        raise ValueError("step_ends marks a position outside the response mask")
    ends |= place_on_last_token(torch.ones(B, dtype=torch.float32, device=valid.device), valid).bool()
    return ends


def step_ends_from_delimiter(response_ids: Tensor, mask: Tensor, delimiter: int | Sequence[int]) -> Tensor:
    """``[B, T]`` bool marking the last token of every occurrence of ``delimiter`` in the response.

    ``delimiter`` is a token id or a sequence of token ids (e.g. the ids of ``"\\n\\n"``); an
    occurrence counts only when all its tokens are valid. The last valid token is always an
    end, so the final step is closed even without a trailing delimiter.
    """
    check_same_shape(response_ids=response_ids, mask=mask)
    pattern = [int(delimiter)] if isinstance(delimiter, int) else [int(d) for d in delimiter]
    if not pattern:
        raise ValueError("delimiter must contain at least one token id")
    valid = mask.bool()
    n = len(pattern)
    ends = torch.zeros_like(valid)
    if n <= response_ids.shape[1]:
        hit = torch.ones_like(valid[:, n - 1 :])
        for k, token in enumerate(pattern):
            window = slice(k, response_ids.shape[1] - n + 1 + k)
            hit &= (response_ids[:, window] == token) & valid[:, window]
        ends[:, n - 1 :] = hit
    ends |= place_on_last_token(torch.ones(valid.shape[0], device=valid.device), valid).bool()
    return ends


def sequence_logratio(prm_logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` summed log-ratio ``sum_t (prm_logp - ref_logp)`` over valid tokens."""
    return masked_sum(prm_logp - ref_logp, mask, dim=-1)


def _check_prm_inputs(prm_logp: Tensor, ref_logp: Tensor, mask: Tensor, outcome: Tensor) -> None:
    check_same_shape(prm_logp=prm_logp, ref_logp=ref_logp, mask=mask)
    check_per_sequence("outcome", outcome, prm_logp.shape[0])
    check_finite("prm_logp", prm_logp, mask)
    check_finite("ref_logp", ref_logp, mask)
    check_finite("outcome", outcome)
    if ((outcome < 0) | (outcome > 1)).any():
        raise ValueError("outcome labels must lie in [0, 1]")


def prm_ce_loss(prm_logp: Tensor, ref_logp: Tensor, mask: Tensor, outcome: Tensor, beta: float) -> Tensor:
    """Cross-entropy PRM loss, mean over the batch.

    ``L = mean_i BCE(sigmoid(beta * sum_t (prm_logp - ref_logp)), outcome_i)``, computed from
    the logit (``binary_cross_entropy_with_logits``) so large sums do not saturate to inf.
    Gradients flow into ``prm_logp`` (and ``ref_logp`` if it requires grad).
    """
    _check_prm_inputs(prm_logp, ref_logp, mask, outcome)
    logits = beta * sequence_logratio(prm_logp, ref_logp, mask)
    return F.binary_cross_entropy_with_logits(logits, outcome.to(logits.dtype))


def prm_dpo_loss(
    prm_logp: Tensor, ref_logp: Tensor, mask: Tensor, outcome: Tensor, beta: float, group_size: int
) -> Tensor:
    """Pairwise (DPO) PRM loss within each group of ``group_size`` consecutive responses.

    For every ordered pair ``(i, j)`` of the same prompt with ``outcome_i > outcome_j``:
    ``-log sigmoid(beta * (s_i - s_j))`` with ``s = sum_t (prm_logp - ref_logp)``; the loss is
    the mean over all such pairs of the batch. With no such pair (every group all-correct or
    all-wrong) the loss is a zero that still depends on ``prm_logp``, so ``backward`` works.
    """
    _check_prm_inputs(prm_logp, ref_logp, mask, outcome)
    groups = check_groups(prm_logp.shape[0], group_size)
    s = (beta * sequence_logratio(prm_logp, ref_logp, mask)).view(groups, group_size)
    o = outcome.to(s.dtype).view(groups, group_size)
    better = o.unsqueeze(2) > o.unsqueeze(1)  # [G, K, K]: pair (i, j) with i better than j
    margins = s.unsqueeze(2) - s.unsqueeze(1)
    if not better.any():
        return s.sum() * 0.0
    return -F.logsigmoid(margins[better]).mean()


def prm_pairwise_accuracy(seq_rewards: Tensor, outcome: Tensor, group_size: int) -> float:
    """How often the PRM orders a correct response above a wrong one of the same prompt.

    Over all pairs ``(i, j)`` in a group with ``outcome_i > outcome_j``: the fraction with
    ``seq_rewards_i > seq_rewards_j``, a tie counting one half. Returns ``nan`` when the batch
    has no such pair (nothing to rank). ``seq_rewards`` and ``outcome`` are ``[B]``.
    """
    if not isinstance(seq_rewards, torch.Tensor) or seq_rewards.dim() != 1:
        raise ValueError(f"seq_rewards must have shape [B], got {getattr(seq_rewards, 'shape', None)}")
    check_per_sequence("outcome", outcome, seq_rewards.shape[0])
    check_finite("seq_rewards", seq_rewards)
    check_finite("outcome", outcome)
    groups = check_groups(seq_rewards.shape[0], group_size)
    s = seq_rewards.double().view(groups, group_size)
    o = outcome.double().view(groups, group_size)
    better = o.unsqueeze(2) > o.unsqueeze(1)
    if not better.any():
        return float("nan")
    diff = (s.unsqueeze(2) - s.unsqueeze(1))[better]
    score = (diff > 0).double() + 0.5 * (diff == 0).double()
    return float(score.mean())
