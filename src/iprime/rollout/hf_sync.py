"""A rollout engine that takes the policy's weights the way a vLLM engine does, on any device.

:class:`SyncedHFGenerator` (``rollout.engine=hf_sync``) holds its **own** copy of the model, a
separate ``nn.Module`` loaded from the policy's path like ``vllm.LLM(model=path)``, samples from
that copy with the built-in KV-cache loop (:class:`~iprime.rollout.HFGenerator`), and learns of
a policy update only through ``sync_weights``: the trainer's full, Hugging Face-named weights
streamed as ``(name, tensor)`` pairs into :func:`load_weights`, the counterpart of vLLM's
``model.load_weights(weights: Iterable[tuple[str, Tensor]]) -> set[str]`` that
:func:`iprime.rollout.vllm.sync_vllm_weights` calls on a GPU.

So a CPU run under ``torchrun`` goes through every step a GPU run with one vLLM engine per rank
goes through except vLLM's own kernels: FSDP2 shards gathered one tensor at a time on every
rank, handed to that rank's engine, loaded by name into a model the trainer never touches,
sampled from with per-rank seeds, and the engine's sampling log-probs compared with the
trainer's recomputed ones (``rollout/sampler_logprob_gap``). A rank whose engine missed an
update samples from old weights, and that gap shows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from iprime.rollout.hf import HFGenerator
from iprime.rollout.types import Capability, GeneratorBase, RolloutBatch, SamplingParams, named_tensors


def load_weights(model: nn.Module, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
    """Copy each ``(name, tensor)`` into ``model``'s parameter or buffer of that name, cast to its
    dtype and device; returns the names loaded (vLLM's ``load_weights`` contract, for a model
    whose parameters carry the Hugging Face names unchanged: no fused or sharded parameters).

    Pairs are taken one at a time, so a lazy stream is never held whole. A name the model does
    not have is a ``KeyError`` (as in vLLM, whose loaders index their parameter dict by name),
    a shape that differs a ``ValueError``. Tied parameters (one tensor under two names) take the
    value under either name."""
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(model.named_buffers(remove_duplicate=False))
    loaded: set[str] = set()
    with torch.no_grad():
        for name, tensor in weights:
            dest = targets.get(name)
            if dest is None:
                raise KeyError(f"load_weights: the engine's model has no parameter or buffer named {name!r}")
            if dest.shape != tensor.shape:
                raise ValueError(
                    f"load_weights: {name!r} has shape {tuple(tensor.shape)}, the engine's {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            loaded.add(name)
    return loaded


class SyncedHFGenerator(GeneratorBase):
    """HF sampling from the engine's own model, kept current only by ``sync_weights``.

    ``model``: the engine's copy (not the trainer's policy module: a copy that the trainer's
    optimizer never reaches is the point), on the device it samples on; it is put in eval mode
    without gradients. ``batch_size``: rows per decoding batch, as :class:`HFGenerator`'s.

    Capabilities: ``SYNC_WEIGHTS``. ``sync_weights`` must bring every entry of the engine's
    state dict: a partial update would leave it sampling a mix of two policies."""

    capabilities = frozenset({Capability.SYNC_WEIGHTS})

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, batch_size: int | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self._sampler = HFGenerator(self.model, tokenizer, batch_size=batch_size)
        self.tokenizer, self.device = tokenizer, self._sampler.device
        self._required = frozenset(self.model.state_dict())
        self.syncs = 0  # completed weight loads (the trainer's updates that reached this engine)

    def generate(self, prompts: list[list[int]] | list[str], params: SamplingParams) -> RolloutBatch:
        """:meth:`HFGenerator.generate` on the engine's own model: ``params.n`` responses per
        prompt with the sampling log-probs ``log_softmax(logits / temperature)[token]``."""
        return self._sampler.generate(prompts, params)

    def sync_weights(self, weights: Iterable[tuple[str, Tensor]] | Mapping[str, Tensor]) -> None:
        """Load the policy's full weights by name (:func:`load_weights`); every entry of the
        engine's state dict must arrive, else a ``ValueError`` naming what did not."""
        missing = self._required - load_weights(self.model, named_tensors(weights))
        if missing:
            raise ValueError(
                f"sync_weights left {len(missing)} of the engine's {len(self._required)} tensors unloaded "
                f"(first: {sorted(missing)[:3]}): the engine would sample a mix of two policies"
            )
        self.syncs += 1
