"""The PRIME algorithm as pure tensor functions (no models, no I/O).

Shapes: response tensors are ``[B, T]``; ``mask`` marks valid response tokens; per-sequence
tensors are ``[B]``; rows are grouped consecutively, ``group_size`` responses per prompt.
"""

from .advantages import (
    AdvantageInputs,
    AdvantageOutput,
    EstimatorSpec,
    advantage_estimator_names,
    batch_norm_process_rewards,
    gae_advantages,
    gae_advantages_and_returns,
    get_advantage_estimator,
    grpo_advantages,
    leave_one_out_baseline,
    prime_rloo_advantages,
    process_rloo_rewards,
    register_advantage_estimator,
    reinforce_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from .correction import apply_is_weights, truncated_is_weights
from .distributed import distributed_masked_whiten, distributed_max, distributed_mean
from .filters import filter_groups, group_accuracy
from .losses import (
    aggregate_loss,
    kl_loss,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
)
from .masked import discounted_returns, masked_mean, masked_sum, masked_whiten, place_on_last_token, zero_outside
from .rewards import (
    implicit_process_rewards,
    prm_ce_loss,
    prm_dpo_loss,
    prm_pairwise_accuracy,
    sequence_logratio,
    step_ends_from_delimiter,
    sum_into_steps,
)

__all__ = [
    "AdvantageInputs",
    "AdvantageOutput",
    "EstimatorSpec",
    "distributed_mean",
    "apply_is_weights",
    "distributed_masked_whiten",
    "distributed_max",
    "truncated_is_weights",
    "advantage_estimator_names",
    "aggregate_loss",
    "batch_norm_process_rewards",
    "discounted_returns",
    "filter_groups",
    "gae_advantages",
    "gae_advantages_and_returns",
    "get_advantage_estimator",
    "group_accuracy",
    "grpo_advantages",
    "implicit_process_rewards",
    "kl_loss",
    "kl_penalty",
    "leave_one_out_baseline",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "place_on_last_token",
    "ppo_policy_loss",
    "ppo_value_loss",
    "prime_rloo_advantages",
    "prm_ce_loss",
    "prm_dpo_loss",
    "prm_pairwise_accuracy",
    "process_rloo_rewards",
    "register_advantage_estimator",
    "reinforce_advantages",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "sequence_logratio",
    "step_ends_from_delimiter",
    "sum_into_steps",
    "zero_outside",
]
