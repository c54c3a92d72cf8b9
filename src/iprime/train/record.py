"""The record of one training step: the data each stage reads and fills in.

Like torchtune's ``GRPOTrajectory`` or OpenRLHF's ``Experience``, one object carries a step from
stage to stage (:meth:`iprime.train.prime.PrimeTrainer.train_step`) instead of loose tensors:

=============  ====================================================  ===========================
field          what                                                  filled in by
=============  ====================================================  ===========================
rollouts       the global batch: prompts, responses, masks and the   collect (verify, filter)
               outcome rewards (``tensors["outcome"]``); identical
               on every rank
batch          this rank's contiguous share of ``rollouts``          collect
old_logp       the sampling policy's log-probs (PPO's old policy)    log-probs
ref_logp       the reference's log-probs (the policy's own when the  log-probs
               reference is the policy)
kl_ref_logp    ``ref_logp`` where a reference model exists, else     log-probs
               ``None``: the KL terms' reference
prm_logp       the PRM's log-probs before its update (with           PRM
               ``prm.mini_batch_size``: before the step on the
               row's mini-batch)
token_rewards  implicit process rewards                              PRM
values         the value model's estimates before its update         advantages
advantages     what the policy update weighs (after the importance   advantages
               correction, if any)
returns        the value model's targets                             advantages
samples        ``samples.jsonl`` rows, on the steps that log them    diagnostics
metrics        what every stage measured, in the order they ran      every stage
stop           why the run must stop after this step (raised once    end, review
               the step is logged)
=============  ====================================================  ===========================

Per-token tensors are ``[B, T]`` over this rank's ``B`` rows (``batch``) and ``T`` response
tokens; ``None`` until their stage ran, or when the run has no such model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from iprime.rollout import RolloutBatch


@dataclass
class StepRecord:
    """One step's data, filled in stage by stage (the table in this module's docstring)."""

    index: int  # the step's number as logged: 1 for the first step
    metrics: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)
    rollouts: RolloutBatch | None = None
    batch: RolloutBatch | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    kl_ref_logp: torch.Tensor | None = None
    prm_logp: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    samples: list[dict] | None = None
    stop: Exception | None = None  # why the run must stop after this step; raised once it is logged

    @property
    def mask(self) -> torch.Tensor:
        """``[B, T]`` bool: the valid response tokens of this rank's rows."""
        return self.batch.response_mask.bool()

    @property
    def outcome(self) -> torch.Tensor:
        """``[B]`` outcome rewards in [0, 1] of this rank's rows (the verifiers' scores)."""
        return self.batch.tensors["outcome"]

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Record the seconds the ``with`` block takes as ``metrics[key]``."""
        t0 = time.perf_counter()
        yield
        self.metrics[key] = time.perf_counter() - t0
