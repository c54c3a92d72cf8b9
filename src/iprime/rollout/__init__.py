"""Rollouts: sampling settings, the RolloutBatch passed through a training step, generators."""

from iprime.rollout.hf import HFGenerator, filter_logits, sample_categorical
from iprime.rollout.types import Generator, RolloutBatch, SamplingParams

__all__ = ["Generator", "HFGenerator", "RolloutBatch", "SamplingParams", "filter_logits", "sample_categorical"]
