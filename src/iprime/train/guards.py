"""The update guard: a step whose update looks ruinous is not checkpointed as the newest state.

A learning rate of 1e10 gives a finite first update that ruins the model; without a guard that
state is saved as the newest checkpoint and every resume starts from it. :class:`UpdateGuard` is
fed each step's metrics and returns a reason when the step looks far outside the run's history.
The trainer then does not write that step's state as the newest checkpoint (a warning says
why), and stops after a few such steps in a row.

The rule, per step (``check``; the first that applies is the reason):

1. **non-finite**: a watched metric (``policy/grad_norm``, ``policy/pg_loss``, ``prm/loss``,
   ``prm/grad_norm``; those present) or a weight norm is NaN or infinite;
2. **absolute backstop**: a gradient norm above ``max_grad_norm`` (1e4), or a loss whose
   magnitude is above ``max_abs_loss`` (1e4);
3. **weights**: a ``<role>/param_norm`` (the L2 norm of all of a model's parameters, from
   :meth:`UpdateGuard.measure` after the update) differs from that of the last accepted step (or
   of :meth:`UpdateGuard.begin`) by more than ``max_param_change`` (50 %), either way. This is the
   rule that sees the damage *on the step that does it*: the 1e10 update is computed from
   ordinary gradients and losses, so those look normal until the next step, while the weight
   norm jumps by orders of magnitude at once (ordinary steps move it by well under 1 %);
4. **relative**: once a metric has ``warmup`` (5) accepted values, its magnitude is above
   ``factor`` (10) times the median magnitude of its last ``window`` (20) accepted values *and*
   above its ``floor`` (1.0 for the watched losses and gradient norms: values below it never
   count as spikes, so a loss hovering near 0 cannot trip the ratio).

Only accepted steps enter the history (and set the weight-norm baseline): a run of bad steps is
measured against the good ones, so once the weights are ruined every later step is rejected too
and ``rejected_in_a_row`` reaches the caller's limit. ``state_dict`` / ``load_state_dict`` (plain
data) carry the history across a resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

WATCHED = ("policy/grad_norm", "policy/pg_loss", "prm/loss", "prm/grad_norm")
DEFAULT_FLOORS = {key: 1.0 for key in WATCHED}
PARAM_NORM_SUFFIX = "/param_norm"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def param_norm(model: torch.nn.Module) -> float:
    """The L2 norm of all of ``model``'s parameters (trainable or not), as a float.

    FSDP2-sharded parameters (DTensors) contribute their local shard and the squares are
    all-reduced, so every rank gets the same value. (Replicated DTensor placements would be
    counted once per rank: a constant factor, which the guard's ratio rule does not see.)"""
    total, sharded = None, False
    with torch.no_grad():
        for p in model.parameters():
            t = p.detach()
            if hasattr(t, "to_local"):
                t, sharded = t.to_local(), True
            sq = t.double().pow(2).sum() if t.numel() else torch.zeros((), dtype=torch.float64, device=t.device)
            total = sq if total is None else total + sq.to(total.device)
    if total is None:
        return 0.0
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return math.sqrt(float(total))


class UpdateGuard:
    """Flags steps whose metrics are far outside the run's history (the rule: module docstring).

    >>> guard = UpdateGuard()
    >>> guard.begin(models)                       # once, when the loop starts (fresh or resumed)
    >>> metrics.update(guard.measure(models))     # after each step's update
    >>> reason = guard.check(metrics)             # None: fine to checkpoint as the newest state
    """

    def __init__(
        self,
        *,
        factor: float = 10.0,
        window: int = 20,
        warmup: int = 5,
        max_grad_norm: float = 1e4,
        max_abs_loss: float = 1e4,
        max_param_change: float = 0.5,
        keys: tuple[str, ...] = WATCHED,
        floors: Mapping[str, float] | None = None,
    ) -> None:
        if factor <= 1:
            raise ValueError(f"factor must be > 1, got {factor}")
        if window < 1 or warmup < 1 or warmup > window:
            raise ValueError(f"need 1 <= warmup <= window, got warmup={warmup}, window={window}")
        if max_param_change <= 0:
            raise ValueError(f"max_param_change must be > 0, got {max_param_change}")
        self.factor, self.window, self.warmup = float(factor), int(window), int(warmup)
        self.max_grad_norm, self.max_abs_loss = float(max_grad_norm), float(max_abs_loss)
        self.max_param_change = float(max_param_change)
        self.keys = tuple(keys)
        self.floors = dict(DEFAULT_FLOORS if floors is None else floors)
        self.history: dict[str, list[float]] = {}
        self.param_norms: dict[str, float] = {}
        self.rejected_in_a_row = 0
        self.last_reason: str | None = None

    # ------------------------------------------------------------------ weights
    @staticmethod
    def measure(models: Mapping[str, torch.nn.Module | None]) -> dict[str, float]:
        """``{"<role>/param_norm": norm}`` for each model (``None`` entries skipped): merge into
        the step's metrics after the update, before :meth:`check`. Collective under torchrun."""
        return {f"{role}{PARAM_NORM_SUFFIX}": param_norm(m) for role, m in models.items() if m is not None}

    def begin(self, models: Mapping[str, torch.nn.Module | None]) -> None:
        """Record the current weight norms as the baseline of the next step (call when the loop
        starts, after a resume too: the weights are then the checkpoint's)."""
        self.param_norms = {k[: -len(PARAM_NORM_SUFFIX)]: v for k, v in self.measure(models).items()}

    # ------------------------------------------------------------------ the rule
    def check(self, metrics: Mapping[str, Any]) -> str | None:
        """A reason when this step looks ruinous, else ``None``; records the step either way
        (accepted: its values join the history; rejected: ``rejected_in_a_row`` grows)."""
        reason = self._reason(metrics)
        self.last_reason = reason
        if reason is not None:
            self.rejected_in_a_row += 1
            return reason
        self.rejected_in_a_row = 0
        for key in self.keys:
            value = _number(metrics.get(key))
            if value is not None:
                values = self.history.setdefault(key, [])
                values.append(abs(value))
                del values[: -self.window]
        for key, value in metrics.items():
            if key.endswith(PARAM_NORM_SUFFIX) and _number(value) is not None:
                self.param_norms[key[: -len(PARAM_NORM_SUFFIX)]] = float(value)
        return None

    def _reason(self, metrics: Mapping[str, Any]) -> str | None:
        present = {k: _number(metrics[k]) for k in self.keys if k in metrics}
        present = {k: v for k, v in present.items() if v is not None}
        norms = {k[: -len(PARAM_NORM_SUFFIX)]: _number(v) for k, v in metrics.items() if k.endswith(PARAM_NORM_SUFFIX)}
        for key, value in [*present.items(), *((f"{r}{PARAM_NORM_SUFFIX}", v) for r, v in norms.items())]:
            if value is not None and not math.isfinite(value):
                return f"{key} is {value}"
        for key, value in present.items():
            if key.endswith("grad_norm") and value > self.max_grad_norm:
                return f"{key} = {value:.4g} is above the absolute limit {self.max_grad_norm:.4g}"
            if "loss" in key and abs(value) > self.max_abs_loss:
                return f"|{key}| = {abs(value):.4g} is above the absolute limit {self.max_abs_loss:.4g}"
        for role, value in norms.items():
            before = self.param_norms.get(role)
            if value is None or not before:
                continue
            change = abs(value / before - 1.0)
            if change > self.max_param_change:
                return (
                    f"{role}{PARAM_NORM_SUFFIX} went from {before:.4g} to {value:.4g} in one step "
                    f"(relative change {change:.3g}, limit {self.max_param_change:g}): the update wrecked the weights"
                )
        for key, value in present.items():
            past = self.history.get(key, [])
            if len(past) < self.warmup:
                continue
            median = _median(past[-self.window :])
            limit = max(self.factor * median, self.floors.get(key, 0.0))
            if abs(value) > limit:
                return (
                    f"|{key}| = {abs(value):.4g} is more than {self.factor:g}x the median {median:.4g} "
                    f"of the last {min(len(past), self.window)} accepted steps"
                )
        return None

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, ints): safe in a ``weights_only`` checkpoint."""
        return {
            "history": {k: list(v) for k, v in self.history.items()},
            "param_norms": dict(self.param_norms),
            "rejected_in_a_row": self.rejected_in_a_row,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = {str(k): [float(x) for x in v][-self.window :] for k, v in state.get("history", {}).items()}
        self.param_norms = {str(k): float(v) for k, v in state.get("param_norms", {}).items()}
        self.rejected_in_a_row = int(state.get("rejected_in_a_row", 0))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])
