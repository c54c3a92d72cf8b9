"""Argument validation shared by the algorithm functions.

Every public function in :mod:`iprime.algo` validates its inputs up front and raises
``ValueError`` with a message naming the offending argument, because a silently broadcast
shape or a NaN that slips into an advantage corrupts a whole training run without a trace.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def check_2d(name: str, x: Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [B, T], got {tuple(x.shape)}")


def check_same_shape(**tensors: Tensor) -> None:
    """All tensors are 2-D and share one shape."""
    items = list(tensors.items())
    for name, x in items:
        check_2d(name, x)
    ref_name, ref = items[0]
    for name, x in items[1:]:
        if x.shape != ref.shape:
            raise ValueError(f"shape mismatch: {name} has shape {tuple(x.shape)} but {ref_name} has {tuple(ref.shape)}")


def check_per_sequence(name: str, x: Tensor, batch: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B]=[{batch}], got {tuple(x.shape)}")


def check_finite(name: str, x: Tensor, mask: Tensor | None = None) -> None:
    """Non-finite values are an error where they count (on valid tokens when a mask is given)."""
    values = x if mask is None else x[mask.bool()]
    if values.is_floating_point() and not torch.isfinite(values).all():
        where = "on valid tokens" if mask is not None else ""
        raise ValueError(f"{name} contains NaN or infinite values {where}".rstrip())


def check_groups(batch: int, group_size: int) -> int:
    """Rows are grouped consecutively, ``group_size`` per prompt; returns the number of groups."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if batch % group_size != 0:
        raise ValueError(f"group_size={group_size} does not divide the batch size {batch}")
    return batch // group_size


def check_loo_groups(batch: int, group_size: int) -> int:
    """Leave-one-out baselines need at least two responses per prompt."""
    groups = check_groups(batch, group_size)
    if group_size < 2:
        raise ValueError(f"leave-one-out baselines need group_size >= 2, got {group_size}")
    return groups


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_gamma(name: str, value: float) -> None:
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
