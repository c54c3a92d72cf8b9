"""Rollouts: sampling settings, the RolloutBatch passed through a training step, generators."""

from iprime.rollout.hf import HFGenerator, filter_logits, sample_categorical
from iprime.rollout.types import Capability, Generator, GeneratorBase, RolloutBatch, SamplingParams, check_generator

__all__ = [
    "Capability",
    "Generator",
    "GeneratorBase",
    "HFGenerator",
    "RolloutBatch",
    "SamplingParams",
    "check_generator",
    "filter_logits",
    "sample_categorical",
]
