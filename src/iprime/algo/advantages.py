"""Advantage estimators: PRIME's RLOO on outcome and process rewards, and the usual baselines.

Two layers, as in verl's ``core_algos``:

- pure functions with explicit arguments (:func:`prime_rloo_advantages`,
  :func:`rloo_advantages`, ...), each of ``[B]`` outcome scores and ``[B, T]`` response
  tensors, returning advantages ``[B, T]`` zero outside ``mask``;
- a registry of estimators with **one signature**, ``estimator(inputs: AdvantageInputs) ->
  AdvantageOutput``, looked up by name (:func:`get_advantage_estimator`), so that "PRIME vs.
  baseline" is one config value apart and an estimator a user registers trains from the config.

Rows are grouped consecutively: rows ``g*K .. g*K+K-1`` are the ``K`` responses to prompt ``g``
(``K = group_size``).

Batch statistics (whitening, ``batch_norm``'s largest return, REINFORCE's batch mean) are taken
over the whole data-parallel batch: with an initialised ``torch.distributed`` process group of
more than one rank they are all-reduced (every rank must call the estimator), otherwise they are
the plain single-process statistics. Groups never span ranks, so leave-one-out terms are local.
The one exception is asked for by name: ``batch_norm_scope="rank"`` takes ``batch_norm``'s
largest return over each rank's own rows, as the PRIME repository does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import (
    check_2d,
    check_choice,
    check_finite,
    check_gamma,
    check_groups,
    check_loo_groups,
    check_per_sequence,
    check_same_shape,
)
from .distributed import distributed_masked_whiten, distributed_max, distributed_mean
from .masked import discounted_returns, masked_mean, place_on_last_token, zero_outside

Tensor = torch.Tensor

PROCESS_BASELINES = ("paper", "reference")
NORMALIZATIONS = (None, "batch_norm")
BATCH_NORM_SCOPES = ("global", "rank")


@dataclass
class AdvantageInputs:
    """Everything an estimator may read; each reads what it needs.

    ``outcome`` ``[B]`` verifier scores; ``mask`` ``[B, T]`` valid response tokens;
    ``token_rewards`` ``[B, T]`` implicit process rewards (``None`` without a PRM);
    ``values`` ``[B, T]`` a value model's estimates (``None`` without one); ``kl`` ``[B, T]``
    a per-token KL estimate to the reference, given when the KL penalty goes into the reward
    (``kl_coef`` is its weight). The rest are the estimators' hyper-parameters (see each)."""

    outcome: Tensor
    mask: Tensor
    group_size: int
    token_rewards: Tensor | None = None
    values: Tensor | None = None
    kl: Tensor | None = None
    kl_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 1.0
    rm_coef: float = 1.0
    outcome_coef: float = 1.0
    outcome_gamma: float | None = None
    normalize: str | None = None
    batch_norm_scope: str = "global"
    whiten: bool = False
    process_baseline: str = "paper"


@dataclass
class AdvantageOutput:
    """``advantages`` ``[B, T]``; ``returns`` ``[B, T]`` value targets, for estimators with a value model."""

    advantages: Tensor
    returns: Tensor | None = None


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator and what the trainer must provide for it.

    ``needs_process_rewards``: reads ``token_rewards`` (the trainer needs a PRM);
    ``needs_values``: reads ``values`` (the trainer builds a value model); ``kl_in_reward``:
    applies ``kl`` itself (``algo.kl_mode="reward"`` is allowed); ``min_group_size``: smallest
    K it accepts (2 for leave-one-out); ``data_parallel``: valid under torchrun."""

    name: str
    fn: Callable[[AdvantageInputs], AdvantageOutput]
    needs_process_rewards: bool = False
    needs_values: bool = False
    kl_in_reward: bool = False
    min_group_size: int = 2
    data_parallel: bool = True

    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput:
        return self.fn(inputs)


_REGISTRY: dict[str, EstimatorSpec] = {}


def register_advantage_estimator(
    name: str,
    *,
    needs_process_rewards: bool = False,
    needs_values: bool = False,
    kl_in_reward: bool = False,
    min_group_size: int = 2,
    data_parallel: bool = True,
) -> Callable[[Callable[[AdvantageInputs], AdvantageOutput]], Callable[[AdvantageInputs], AdvantageOutput]]:
    """Decorator: register ``fn(inputs: AdvantageInputs) -> AdvantageOutput`` under ``name``.

    >>> @register_advantage_estimator("my_rloo")
    ... def my_rloo(x: AdvantageInputs) -> AdvantageOutput:
    ...     return AdvantageOutput(rloo_advantages(x.outcome, x.mask, x.group_size, x.gamma))

    The config then accepts ``algo.estimator=my_rloo``; from the command line, where the
    registering module must be imported first, ``algo.estimator=my_package.my_module:my_rloo``."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _REGISTRY[name] = EstimatorSpec(
            name, fn, needs_process_rewards, needs_values, kl_in_reward, min_group_size, data_parallel
        )
        return fn

    return wrap


def get_advantage_estimator(name: str) -> EstimatorSpec:
    """The estimator registered under ``name`` (see :func:`advantage_estimator_names`).

    ``"package.module:name"`` imports ``package.module`` first (which registers ``name``)."""
    if ":" in name and name not in _REGISTRY:
        module, _, short = name.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"advantage estimator {name!r}: cannot import {module!r} ({err})") from None
        name = short
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(_REGISTRY)}") from None


def advantage_estimator_names() -> list[str]:
    return sorted(_REGISTRY)


def _check_outcome_inputs(outcome: Tensor, mask: Tensor) -> None:
    check_2d("mask", mask)
    check_per_sequence("outcome", outcome, mask.shape[0])
    check_finite("outcome", outcome)


def leave_one_out_baseline(values: Tensor, group_size: int) -> Tensor:
    """``[B]`` -> ``[B]``: ``b_i = mean_{j != i} v_j`` over the other members of i's group."""
    groups = check_loo_groups(values.shape[0], group_size)
    v = values.view(groups, group_size)
    return ((v.sum(1, keepdim=True) - v) / (group_size - 1)).reshape(-1)


def _broadcast_to_tokens(per_sequence: Tensor, mask: Tensor) -> Tensor:
    return zero_outside(per_sequence.unsqueeze(1).expand(mask.shape), mask)


def rloo_advantages(outcome: Tensor, mask: Tensor, group_size: int, gamma: float = 1.0) -> Tensor:
    """Outcome-only RLOO: ``A_i = r_i - mean_{j != i} r_j``, placed on the last valid token and
    carried back as the discounted return (every valid token gets ``A_i`` when ``gamma == 1``)."""
    _check_outcome_inputs(outcome, mask)
    check_gamma("gamma", gamma)
    r = outcome.to(torch.float32)
    advantage = r - leave_one_out_baseline(r, group_size)
    return discounted_returns(place_on_last_token(advantage, mask), mask, gamma)


def grpo_advantages(
    outcome: Tensor, mask: Tensor, group_size: int, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """GRPO: ``(r_i - mean_g) / (std_g + eps)`` on every valid token (std with Bessel's
    correction, as in the GRPO paper's code); ``norm_by_std=False`` is Dr. GRPO's ``r_i - mean_g``."""
    _check_outcome_inputs(outcome, mask)
    groups = check_loo_groups(outcome.shape[0], group_size)
    r = outcome.to(torch.float32).view(groups, group_size)
    centered = r - r.mean(1, keepdim=True)
    if norm_by_std:
        centered = centered / (r.std(1, keepdim=True) + eps)
    return _broadcast_to_tokens(centered.reshape(-1), mask)


def reinforce_advantages(outcome: Tensor, mask: Tensor, group_size: int = 1, gamma: float = 1.0) -> Tensor:
    """REINFORCE with the batch-mean baseline: ``A_i = r_i - mean_batch(r)``, as a discounted
    return from the last valid token. ``group_size`` is only checked (the baseline ignores groups)."""
    _check_outcome_inputs(outcome, mask)
    check_groups(outcome.shape[0], group_size)
    check_gamma("gamma", gamma)
    r = outcome.to(torch.float32)
    return discounted_returns(place_on_last_token(r - distributed_mean(r), mask), mask, gamma)


def reinforce_pp_advantages(
    outcome: Tensor,
    mask: Tensor,
    group_size: int = 1,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> Tensor:
    """REINFORCE++: token reward ``-kl_coef * kl_t`` on every valid token plus the outcome on the
    last one; the discounted return, whitened over all valid tokens of the batch.

    ``kl`` ``[B, T]`` is a per-token KL estimate to the reference (e.g. ``kl_penalty(..., "k1")``).
    """
    _check_outcome_inputs(outcome, mask)
    check_groups(outcome.shape[0], group_size)
    check_gamma("gamma", gamma)
    rewards = place_on_last_token(outcome.to(torch.float32), mask)
    if kl is not None:
        check_same_shape(kl=kl, mask=mask)
        check_finite("kl", kl, mask)
        rewards = rewards - kl_coef * zero_outside(kl.to(torch.float32), mask)
    elif kl_coef != 0.0:
        raise ValueError("reinforce_pp: kl_coef is non-zero but no kl tensor was given")
    return distributed_masked_whiten(discounted_returns(rewards, mask, gamma), mask)


def gae_advantages_and_returns(
    outcome: Tensor,
    mask: Tensor,
    values: Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    token_rewards: Tensor | None = None,
    whiten: bool = True,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation with a learned value model.

    Rewards: the outcome on the last valid token plus optional ``token_rewards`` ``[B, T]``
    (e.g. a KL penalty). Over valid tokens ``t`` with ``t'`` the next valid token:
    ``delta_t = r_t + gamma * V_{t'} - V_t`` (``V`` after the last token is 0) and
    ``A_t = delta_t + gamma * lam * A_{t'}``. Returns ``(advantages, returns)`` with
    ``returns = A + V`` (the value target, before whitening) and advantages whitened over
    valid tokens when ``whiten``.
    """
    _check_outcome_inputs(outcome, mask)
    check_same_shape(values=values, mask=mask)
    check_finite("values", values, mask)
    check_gamma("gamma", gamma)
    check_gamma("lam", lam)
    valid = mask.bool()
    v = zero_outside(values.to(torch.float32), valid)
    rewards = place_on_last_token(outcome.to(torch.float32), mask)
    if token_rewards is not None:
        check_same_shape(token_rewards=token_rewards, mask=mask)
        check_finite("token_rewards", token_rewards, mask)
        rewards = rewards + zero_outside(token_rewards.to(torch.float32), valid)
    advantages = torch.zeros_like(v)
    next_value = torch.zeros_like(v[:, 0])
    next_advantage = torch.zeros_like(v[:, 0])
    for t in range(v.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - v[:, t]
        advantage = delta + gamma * lam * next_advantage
        # padding and holes in the mask are skipped: the recursion links valid tokens only
        next_value = torch.where(valid[:, t], v[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
        advantages[:, t] = torch.where(valid[:, t], advantage, torch.zeros_like(advantage))
    returns = zero_outside(advantages + v, valid)
    if whiten:
        advantages = distributed_masked_whiten(advantages, mask)
    return advantages, returns


def gae_advantages(
    outcome: Tensor,
    mask: Tensor,
    group_size: int = 1,
    values: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    token_rewards: Tensor | None = None,
    whiten: bool = True,
) -> Tensor:
    """GAE advantages only (PPO with a value model); see :func:`gae_advantages_and_returns`."""
    if values is None:
        raise ValueError("the gae estimator needs values [B, T] from a value model")
    _check_outcome_inputs(outcome, mask)
    check_groups(outcome.shape[0], group_size)
    return gae_advantages_and_returns(outcome, mask, values, gamma, lam, token_rewards, whiten)[0]


def batch_norm_process_rewards(
    process_rewards: Tensor, mask: Tensor, eps: float = 1e-6, scope: str = "global"
) -> Tensor:
    """The reference code's ``prime_norm="batch_norm"``: divide the token rewards ``[B, T]`` by
    the largest absolute reverse cumulative sum (undiscounted return) in the batch, plus
    ``eps``, so no process return exceeds 1 in magnitude while relative values are kept.

    ``scope``: ``"global"`` takes the largest over every rank's rows (all-reduced under
    ``torch.distributed``); ``"rank"`` over this rank's rows only, as the PRIME repository's PRM
    worker does (``dp_prime.py`` ``update_policy``: ``reverse_cumsum.abs().max()`` of the
    worker's own share), so each rank has its own divisor and the result depends on the number
    of ranks. Without a process group both are the batch's largest."""
    check_choice("batch_norm scope", scope, BATCH_NORM_SCOPES)
    r = zero_outside(process_rewards, mask)
    returns = discounted_returns(r, mask, 1.0).abs()
    largest = distributed_max(returns) if scope == "global" else returns.max()
    return r / (largest + eps)


def process_rloo_rewards(process_rewards: Tensor, mask: Tensor, group_size: int, baseline: str = "paper") -> Tensor:
    """Leave-one-out centred token rewards ``[B, T]`` (before the return is taken).

    ``"paper"`` (PRIME, Eq. 5): ``r_{i,t} - b_i`` with
    ``b_i = 1/(K-1) * sum_{j != i} mean_t r_{j,t}``, the mean over valid tokens of response j.

    ``"reference"`` (the PRIME repository's ``masked_rloo``): ``r_{i,t} * K/(K-1) -
    1/(K-1) * sum_j mean_t r_{j,t}``, which equals the paper's value plus
    ``(r_{i,t} - mean_t r_{i,t}) / (K-1)``: its baseline uses the token's own reward in
    place of its response's mean. The two agree when a response's token rewards are constant.

    An empty response has mean 0 (it contributes nothing to the others' baselines).
    """
    check_choice("process_baseline", baseline, PROCESS_BASELINES)
    groups = check_loo_groups(process_rewards.shape[0], group_size)
    r = zero_outside(process_rewards, mask)
    response_mean = masked_mean(r, mask, dim=1)
    group_sum = response_mean.view(groups, group_size).sum(1).repeat_interleave(group_size)
    K = group_size
    if baseline == "paper":
        centred = r - ((group_sum - response_mean) / (K - 1)).unsqueeze(1)
    else:
        centred = r * (K / (K - 1)) - (group_sum / (K - 1)).unsqueeze(1)
    return zero_outside(centred, mask)


def prime_advantage_parts(
    outcome: Tensor,
    process_rewards: Tensor,
    mask: Tensor,
    group_size: int,
    rm_coef: float = 1.0,
    gamma: float = 1.0,
    normalize: str | None = None,
    process_baseline: str = "paper",
    outcome_coef: float = 1.0,
    outcome_gamma: float | None = None,
    batch_norm_scope: str = "global",
) -> tuple[Tensor, Tensor]:
    """The two terms of PRIME's advantage before whitening, ``(process, outcome)``, each ``[B, T]``.

    ``process = rm_coef * discounted return of the leave-one-out centred (optionally
    ``batch_norm``-scaled) process rewards`` and ``outcome = outcome_coef * RLOO outcome
    advantage``; :func:`prime_rloo_advantages` is their sum (then whitened if asked), so the
    parts say how much of the advantage the implicit PRM contributes. ``batch_norm_scope``: see
    :func:`batch_norm_process_rewards`. Zero outside ``mask``.
    """
    check_same_shape(process_rewards=process_rewards, mask=mask)
    _check_outcome_inputs(outcome, mask)
    check_finite("process_rewards", process_rewards, mask)
    check_loo_groups(outcome.shape[0], group_size)
    check_gamma("gamma", gamma)
    check_choice("normalize", normalize, NORMALIZATIONS)
    outcome_gamma = gamma if outcome_gamma is None else outcome_gamma
    check_gamma("outcome_gamma", outcome_gamma)

    r = zero_outside(process_rewards.to(torch.float32), mask)
    if normalize == "batch_norm":
        r = batch_norm_process_rewards(r, mask, scope=batch_norm_scope)
    process = discounted_returns(process_rloo_rewards(r, mask, group_size, process_baseline), mask, gamma)
    outcome_part = rloo_advantages(outcome, mask, group_size, outcome_gamma)
    return rm_coef * process, outcome_coef * outcome_part


def within_response_deviation(advantages: Tensor, mask: Tensor) -> Tensor:
    """``[B, T]``: each valid token's advantage minus the mean advantage of its response, 0
    elsewhere: the part of an advantage that differs between tokens of one response, which an
    outcome-only estimator (``gamma = 1``) never has. An empty response contributes zeros."""
    check_same_shape(advantages=advantages, mask=mask)
    a = zero_outside(advantages.to(torch.float32), mask)
    return zero_outside(a - masked_mean(a, mask, dim=1).unsqueeze(1), mask)


def prime_rloo_advantages(
    outcome: Tensor,
    process_rewards: Tensor,
    mask: Tensor,
    group_size: int,
    rm_coef: float = 1.0,
    gamma: float = 1.0,
    normalize: str | None = None,
    whiten: bool = False,
    process_baseline: str = "paper",
    outcome_coef: float = 1.0,
    outcome_gamma: float | None = None,
    batch_norm_scope: str = "global",
) -> Tensor:
    """PRIME advantages: RLOO on the outcome reward plus RLOO on the implicit process reward.

    - Outcome: ``A_o(i) = r_o(i) - mean_{j != i} r_o(j)`` on the last valid token, carried to
      every valid token as its discounted return (``outcome_gamma``, default ``gamma``).
    - Process: :func:`process_rloo_rewards` (``process_baseline``), then the discounted return
      ``sum_{s >= t} gamma^(s-t) (r_{i,s} - b_i)`` to the end of the response.
    - ``A = rm_coef * process + outcome_coef * outcome`` on valid tokens, 0 elsewhere.

    ``normalize="batch_norm"`` first scales the process rewards by
    :func:`batch_norm_process_rewards` (reference code; over the batch or, with
    ``batch_norm_scope="rank"``, over each rank's rows); ``whiten=True`` whitens ``A`` over all
    valid tokens of the batch (the reference code does, after combining).

    Shapes: ``outcome`` ``[B]``; ``process_rewards`` and ``mask`` ``[B, T]`` -> ``[B, T]``.
    """
    process, outcome_part = prime_advantage_parts(
        outcome,
        process_rewards,
        mask,
        group_size,
        rm_coef,
        gamma,
        normalize,
        process_baseline,
        outcome_coef,
        outcome_gamma,
        batch_norm_scope,
    )
    advantages = process + outcome_part
    if whiten:
        advantages = distributed_masked_whiten(advantages, mask)
    return zero_outside(advantages, mask)


# ---------------------------------------------------------------------------------------------
# the registry: one signature, AdvantageInputs -> AdvantageOutput


def _whitened(advantages: Tensor, x: AdvantageInputs) -> AdvantageOutput:
    return AdvantageOutput(distributed_masked_whiten(advantages, x.mask) if x.whiten else advantages)


def _prime_rewards(x: AdvantageInputs) -> Tensor:
    """The token rewards PRIME's process term uses: the implicit rewards minus ``kl_coef * kl`` (if given)."""
    if x.token_rewards is None:
        raise ValueError("the prime estimator needs token_rewards [B, T] from the implicit PRM")
    return x.token_rewards if x.kl is None else x.token_rewards - x.kl_coef * x.kl


def _prime_options(x: AdvantageInputs) -> dict[str, Any]:
    """The keyword options :func:`prime_advantage_parts` and :func:`prime_rloo_advantages` share."""
    return {
        "rm_coef": x.rm_coef,
        "gamma": x.gamma,
        "normalize": x.normalize,
        "batch_norm_scope": x.batch_norm_scope,
        "process_baseline": x.process_baseline,
        "outcome_coef": x.outcome_coef,
        "outcome_gamma": x.outcome_gamma,
    }


def prime_parts(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """``(process, outcome)`` of the ``prime`` estimator's advantage before whitening
    (:func:`prime_advantage_parts` on the same inputs the estimator uses)."""
    return prime_advantage_parts(x.outcome, _prime_rewards(x), x.mask, x.group_size, **_prime_options(x))


@register_advantage_estimator("prime", needs_process_rewards=True, kl_in_reward=True)
def prime_estimator(x: AdvantageInputs) -> AdvantageOutput:
    """PRIME: :func:`prime_rloo_advantages` on the token rewards minus ``kl_coef * kl`` (if given)."""
    return AdvantageOutput(
        prime_rloo_advantages(x.outcome, _prime_rewards(x), x.mask, x.group_size, whiten=x.whiten, **_prime_options(x))
    )


@register_advantage_estimator("rloo")
def rloo_estimator(x: AdvantageInputs) -> AdvantageOutput:
    """Outcome-only RLOO (:func:`rloo_advantages`), whitened when ``whiten``."""
    return _whitened(rloo_advantages(x.outcome, x.mask, x.group_size, x.gamma), x)


@register_advantage_estimator("grpo")
def grpo_estimator(x: AdvantageInputs) -> AdvantageOutput:
    """GRPO (:func:`grpo_advantages`), whitened when ``whiten``."""
    return _whitened(grpo_advantages(x.outcome, x.mask, x.group_size), x)


@register_advantage_estimator("reinforce", min_group_size=1)
def reinforce_estimator(x: AdvantageInputs) -> AdvantageOutput:
    """REINFORCE with the batch-mean baseline (:func:`reinforce_advantages`), whitened when ``whiten``."""
    return _whitened(reinforce_advantages(x.outcome, x.mask, x.group_size, x.gamma), x)


@register_advantage_estimator("reinforce_pp", kl_in_reward=True, min_group_size=1)
def reinforce_pp_estimator(x: AdvantageInputs) -> AdvantageOutput:
    """REINFORCE++ (:func:`reinforce_pp_advantages`; it always whitens)."""
    return AdvantageOutput(
        reinforce_pp_advantages(
            x.outcome, x.mask, x.group_size, kl=x.kl, kl_coef=x.kl_coef if x.kl is not None else 0.0, gamma=x.gamma
        )
    )


@register_advantage_estimator("gae", needs_values=True, kl_in_reward=True, min_group_size=1, data_parallel=False)
def gae_estimator(x: AdvantageInputs) -> AdvantageOutput:
    """PPO's GAE (:func:`gae_advantages_and_returns`) with ``-kl_coef * kl`` as token rewards;
    returns the value targets too. Single-process: the value model is not sharded."""
    if x.values is None:
        raise ValueError("the gae estimator needs values [B, T] from a value model")
    token = None if x.kl is None else -x.kl_coef * x.kl
    advantages, returns = gae_advantages_and_returns(x.outcome, x.mask, x.values, x.gamma, x.lam, token, x.whiten)
    return AdvantageOutput(advantages, returns)
