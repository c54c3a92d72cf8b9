"""Rollouts: sampling settings, the RolloutBatch passed through a training step, generators."""

from iprime.rollout.hf import HFGenerator, filter_logits, sample_categorical
from iprime.rollout.hf_sync import SyncedHFGenerator, load_weights
from iprime.rollout.types import (
    Capability,
    Generator,
    GeneratorBase,
    RolloutBatch,
    SamplingParams,
    check_generator,
    named_tensors,
)

__all__ = [
    "Capability",
    "Generator",
    "GeneratorBase",
    "HFGenerator",
    "RolloutBatch",
    "SamplingParams",
    "SyncedHFGenerator",
    "check_generator",
    "filter_logits",
    "load_weights",
    "named_tensors",
    "sample_categorical",
]
