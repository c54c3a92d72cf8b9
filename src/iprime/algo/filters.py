"""Which prompts a step trains on: PRIME's accuracy-band filter on whole groups."""

from __future__ import annotations

import torch

from ._checks import check_finite, check_groups

Tensor = torch.Tensor

# group accuracies are means of K numbers; compare with a tolerance so 1/5 == 0.2 is "inside"
_BOUND_TOL = 1e-9


def group_accuracy(outcome: Tensor, group_size: int) -> Tensor:
    """``[B]`` -> ``[G]`` mean outcome of each group of ``group_size`` consecutive rows (float64)."""
    groups = check_groups(outcome.shape[0], group_size)
    return outcome.double().view(groups, group_size).mean(1)


def filter_groups(
    outcome: Tensor,
    truncated: Tensor | None,
    group_size: int,
    low: float = 0.2,
    high: float = 0.8,
    drop_truncated: bool = True,
) -> Tensor:
    """``[B]`` bool keep-mask that keeps or drops whole groups.

    A group is kept when ``low <= mean(outcome of its K responses) <= high`` (both bounds
    inclusive) and, with ``drop_truncated``, none of its responses was truncated. Prompts
    that are always solved or never solved give no learning signal to RLOO and are dropped.
    """
    if not isinstance(outcome, torch.Tensor) or outcome.dim() != 1:
        raise ValueError(f"outcome must have shape [B], got {getattr(outcome, 'shape', None)}")
    check_finite("outcome", outcome)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    accuracy = group_accuracy(outcome, group_size)
    keep = (accuracy >= low - _BOUND_TOL) & (accuracy <= high + _BOUND_TOL)
    if drop_truncated:
        if truncated is None:
            raise ValueError("drop_truncated=True needs the truncated flags [B]")
        if truncated.shape != outcome.shape:
            raise ValueError(f"truncated must have shape {tuple(outcome.shape)}, got {tuple(truncated.shape)}")
        keep &= ~truncated.bool().view(-1, group_size).any(1)
    return keep.repeat_interleave(group_size)
