"""Rollout data types: sampling settings, the batch every training step passes along, and
the generator interface (what a rollout engine is, and the capabilities it declares)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class SamplingParams:
    """How to sample responses.

    n: samples per prompt; the n samples of a prompt are consecutive rows.
    temperature: 0 means greedy; log-probs are then recorded at temperature 1.
    top_p: nucleus sampling mass in (0, 1]; 1 = off.
    top_k: keep the k most likely tokens; 0 = off.
    max_new_tokens: response length cap; rows that hit it without EOS are `truncated`.
    seed: seeds a private torch.Generator (same seed -> same samples); None = global RNG.
    stop_at_eos: False keeps sampling past EOS up to max_new_tokens (benchmarks); every
        row is then `truncated` and fully masked in.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int | None = None
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingParams.n must be an int >= 1, got {self.n!r}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"SamplingParams.seed must be an int or None, got {self.seed!r}")


# Fields of RolloutBatch that are [B, ...] tensors, in declaration order.
_TENSOR_FIELDS = (
    "prompt_ids",
    "prompt_mask",
    "response_ids",
    "response_mask",
    "sampling_logprobs",
    "truncated",
    "prompt_index",
)
_LIST_FIELDS = ("texts", "prompt_texts")


@dataclass
class RolloutBatch:
    """B sampled responses with their prompts; the object a training step passes along.

    prompt_ids        [B, P] long, left-padded with `pad_id`
    prompt_mask       [B, P] long, 1 on real prompt tokens
    response_ids      [B, T] long, right-padded with `pad_id`
    response_mask     [B, T] long, 1 on generated tokens (including the EOS token, if any)
    sampling_logprobs [B, T] float32, log pi_old(token) at sampling time, 0 outside the mask
    truncated         [B] bool, True if the row never stopped at EOS
    prompt_index      [B] long, index of the row's prompt in the generator's input list
    texts             B decoded responses (special tokens skipped)
    prompt_texts      B prompt strings
    pad_id            pad token id used in both paddings
    tensors           extra [B, ...] tensors added later (scores, rewards, advantages, ...);
                      per-token ones are [B, T] and, like the response, right-padded with 0
    meta              extra per-sample lists of length B (gold answers, ...)

    Masks given as bool are stored as long (the transformers attention-mask convention).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    sampling_logprobs: Tensor
    truncated: Tensor
    prompt_index: Tensor
    texts: list[str]
    prompt_texts: list[str]
    pad_id: int
    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prompt_mask = self.prompt_mask.long()
        self.response_mask = self.response_mask.long()
        self.texts, self.prompt_texts = list(self.texts), list(self.prompt_texts)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose shape/dtype/length is wrong."""
        if self.prompt_ids.dim() != 2 or self.response_ids.dim() != 2:
            raise ValueError(
                f"prompt_ids and response_ids must be 2-D [B, P] / [B, T]; got "
                f"{tuple(self.prompt_ids.shape)} and {tuple(self.response_ids.shape)}"
            )
        B = self.prompt_ids.shape[0]
        expected = {
            "prompt_mask": tuple(self.prompt_ids.shape),
            "response_ids": (B, self.response_ids.shape[1]),
            "response_mask": tuple(self.response_ids.shape),
            "sampling_logprobs": tuple(self.response_ids.shape),
            "truncated": (B,),
            "prompt_index": (B,),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"RolloutBatch.{name} must have shape {shape}, got {got}")
        for name in ("prompt_ids", "response_ids", "prompt_index"):
            if getattr(self, name).dtype != torch.long:
                raise ValueError(f"RolloutBatch.{name} must be torch.long, got {getattr(self, name).dtype}")
        if not self.sampling_logprobs.is_floating_point():
            raise ValueError(f"RolloutBatch.sampling_logprobs must be float, got {self.sampling_logprobs.dtype}")
        if self.truncated.dtype != torch.bool:
            raise ValueError(f"RolloutBatch.truncated must be torch.bool, got {self.truncated.dtype}")
        for name in _LIST_FIELDS:
            if len(getattr(self, name)) != B:
                raise ValueError(f"RolloutBatch.{name} must have {B} entries, got {len(getattr(self, name))}")
        if not isinstance(self.pad_id, int):
            raise ValueError(f"RolloutBatch.pad_id must be an int, got {self.pad_id!r}")
        for key, t in self.tensors.items():
            if not isinstance(t, Tensor) or t.dim() == 0 or t.shape[0] != B:
                raise ValueError(f"RolloutBatch.tensors[{key!r}] must be a tensor with first dim {B}")
        for key, values in self.meta.items():
            if len(values) != B:
                raise ValueError(f"RolloutBatch.meta[{key!r}] must have {B} entries, got {len(values)}")

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def input_ids(self) -> Tensor:
        """[B, P+T] prompt then response: the layout `response_logprobs` expects."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """[B, P+T] long."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def response_lengths(self) -> Tensor:
        """[B] long: number of generated tokens per row (EOS included)."""
        return self.response_mask.sum(-1)

    def select(self, index: Tensor | Sequence[int] | int | slice) -> RolloutBatch:
        """Rows `index` (bool mask [B], integer indices, an int, or a slice) of every field."""
        B = len(self)
        if isinstance(index, slice):
            idx = torch.arange(B)[index]
        elif isinstance(index, int):
            idx = torch.tensor([index])
        else:
            idx = torch.as_tensor(index)
            if idx.dtype == torch.bool:
                if idx.shape != (B,):
                    raise ValueError(f"bool mask must have shape ({B},), got {tuple(idx.shape)}")
                idx = idx.nonzero().squeeze(-1)
            elif idx.is_floating_point() and idx.numel() > 0:
                raise ValueError(f"index must be a bool mask or integers, got {idx.dtype}")
            idx = idx.long().reshape(-1)
        if idx.numel() and (idx.min() < -B or idx.max() >= B):
            raise ValueError(f"index out of range for a batch of {B}: {idx.tolist()}")
        idx_list = idx.tolist()
        dev_idx = idx.to(self.prompt_ids.device)
        return RolloutBatch(
            **{name: getattr(self, name)[dev_idx] for name in _TENSOR_FIELDS},
            **{name: [getattr(self, name)[i] for i in idx_list] for name in _LIST_FIELDS},
            pad_id=self.pad_id,
            tensors={k: v[idx.to(v.device)] for k, v in self.tensors.items()},
            meta={k: [v[i] for i in idx_list] for k, v in self.meta.items()},
        )

    @classmethod
    def cat(cls, batches: Sequence[RolloutBatch]) -> RolloutBatch:
        """Concatenate rows; prompts are re-padded on the left and responses (and per-token
        extra tensors, with 0) on the right to the longest. `prompt_index` is kept as is."""
        batches = list(batches)
        if not batches:
            raise ValueError("RolloutBatch.cat needs at least one batch")
        pad_id = batches[0].pad_id
        if any(b.pad_id != pad_id for b in batches):
            raise ValueError(f"cannot cat batches with different pad ids: {[b.pad_id for b in batches]}")
        keys = set(batches[0].tensors)
        mkeys = set(batches[0].meta)
        for b in batches[1:]:
            if set(b.tensors) != keys or set(b.meta) != mkeys:
                raise ValueError("cannot cat batches with different `tensors`/`meta` keys")
        P = max(b.prompt_ids.shape[1] for b in batches)
        T = max(b.response_ids.shape[1] for b in batches)

        def left(x: Tensor, width: int, value) -> Tensor:
            return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

        def right(x: Tensor, width: int, value) -> Tensor:
            return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

        tensors = {}
        for k in sorted(keys):
            parts = [b.tensors[k] for b in batches]
            if len({p.shape[1:] for p in parts}) > 1:
                # Only per-token tensors ([B, T_i, ...], T_i = that batch's response width)
                # may differ in shape; they are right-padded with 0 like the response.
                if not all(p.dim() >= 2 and p.shape[1] == b.response_ids.shape[1] for p, b in zip(parts, batches)):
                    raise ValueError(
                        f"cannot cat tensors[{k!r}]: shapes {[tuple(p.shape) for p in parts]} differ "
                        "and are not per-token [B, T, ...]"
                    )
                parts = [torch.nn.functional.pad(p.movedim(1, -1), (0, T - p.shape[1])).movedim(-1, 1) for p in parts]
            tensors[k] = torch.cat(parts)
        return cls(
            prompt_ids=torch.cat([left(b.prompt_ids, P, pad_id) for b in batches]),
            prompt_mask=torch.cat([left(b.prompt_mask, P, 0) for b in batches]),
            response_ids=torch.cat([right(b.response_ids, T, pad_id) for b in batches]),
            response_mask=torch.cat([right(b.response_mask, T, 0) for b in batches]),
            sampling_logprobs=torch.cat([right(b.sampling_logprobs, T, 0.0) for b in batches]),
            truncated=torch.cat([b.truncated for b in batches]),
            prompt_index=torch.cat([b.prompt_index for b in batches]),
            texts=[t for b in batches for t in b.texts],
            prompt_texts=[t for b in batches for t in b.prompt_texts],
            pad_id=pad_id,
            tensors=tensors,
            meta={k: [v for b in batches for v in b.meta[k]] for k in sorted(mkeys)},
        )

    def to(self, device: str | torch.device) -> RolloutBatch:
        """A copy with every tensor (extras included) on `device`."""
        return RolloutBatch(
            **{name: getattr(self, name).to(device) for name in _TENSOR_FIELDS},
            texts=list(self.texts),
            prompt_texts=list(self.prompt_texts),
            pad_id=self.pad_id,
            tensors={k: v.to(device) for k, v in self.tensors.items()},
            meta={k: list(v) for k, v in self.meta.items()},
        )


class Capability(str, Enum):
    """What a rollout engine can do beyond sampling, declared in its ``capabilities``.

    ``SYNC_WEIGHTS``: the engine samples from its own copy of the policy's weights (vLLM,
    :class:`~iprime.rollout.SyncedHFGenerator`), so the trainer hands it the updated weights after
    every policy update, on every rank (``sync_weights``). An engine that samples the live policy
    module (:class:`~iprime.rollout.HFGenerator`) does not declare it.

    ``SLEEP``: the engine can release its accelerator memory between rollouts (``sleep``) and
    take it back (``wake_up``)."""

    SYNC_WEIGHTS = "sync_weights"
    SLEEP = "sleep"


@runtime_checkable
class Generator(Protocol):
    """A rollout engine: samples responses for prompts (:class:`~iprime.rollout.HFGenerator`,
    :class:`~iprime.rollout.vllm.VLLMGenerator`, or your own).

    - ``generate(prompts, params)``: ``params.n`` responses per prompt as a :class:`RolloutBatch`,
      the ``n`` samples of a prompt consecutive rows (``prompt_index``), prompts left-padded,
      responses right-padded, the EOS token inside the response mask.
    - ``capabilities``: the optional :class:`Capability` members it has. The optional methods are
      called only on an engine that declares their capability; callers never probe for them.
    - ``sync_weights(weights)``: load the policy's full, Hugging Face-named weights
      (``SYNC_WEIGHTS``): ``(name, tensor)`` pairs, as vLLM's ``model.load_weights`` takes them,
      or a mapping (:func:`named_tensors`). The trainer passes a lazy stream whose every item is
      gathered across ranks (:func:`iprime.train.distributed.full_state_items`): take every
      item, in order, on every rank.
    - ``sleep()`` / ``wake_up()``: release / take back accelerator memory (``SLEEP``).

    :class:`GeneratorBase` supplies ``capabilities = frozenset()`` and the optional methods
    refusing to run, so an engine implements ``generate`` and what it declares."""

    capabilities: frozenset[Capability]

    def generate(self, prompts: list[list[int]] | list[str], params: SamplingParams) -> RolloutBatch: ...

    def sync_weights(self, weights: Iterable[tuple[str, Tensor]] | Mapping[str, Tensor]) -> None: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...


class GeneratorBase:
    """The :class:`Generator` protocol's defaults: no capabilities, and each optional method an
    error naming the capability the engine would have to declare (a caller that asks an engine
    for what it did not declare is a bug)."""

    capabilities: frozenset[Capability] = frozenset()

    def generate(self, prompts: list[list[int]] | list[str], params: SamplingParams) -> RolloutBatch:
        raise NotImplementedError(f"{type(self).__name__} must implement generate")

    def _undeclared(self, capability: Capability) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} does not declare Capability.{capability.name} (its capabilities: "
            f"{sorted(c.value for c in self.capabilities)})"
        )

    def sync_weights(self, weights: Iterable[tuple[str, Tensor]] | Mapping[str, Tensor]) -> None:
        raise self._undeclared(Capability.SYNC_WEIGHTS)

    def sleep(self) -> None:
        raise self._undeclared(Capability.SLEEP)

    def wake_up(self) -> None:
        raise self._undeclared(Capability.SLEEP)


def named_tensors(weights: Iterable[tuple[str, Tensor]] | Mapping[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
    """What ``sync_weights`` was given, as ``(name, tensor)`` pairs in order: a mapping's items,
    else the pairs themselves (not listed: a lazy stream stays lazy)."""
    return iter(weights.items()) if isinstance(weights, Mapping) else iter(weights)


def check_generator(generator: object) -> Generator:
    """``generator`` if it implements :class:`Generator`, else a ``TypeError`` naming what it lacks."""
    missing = [
        name
        for name in ("capabilities", "generate", "sync_weights", "sleep", "wake_up")
        if not hasattr(generator, name)
    ]
    if missing:
        raise TypeError(
            f"{type(generator).__name__} is not an iprime.rollout.Generator: it lacks {', '.join(missing)}; "
            "subclass iprime.rollout.GeneratorBase and implement generate (and what its capabilities declare)"
        )
    unknown = [c for c in generator.capabilities if not isinstance(c, Capability)]
    if unknown:
        raise TypeError(f"{type(generator).__name__}.capabilities must hold Capability members, got {unknown}")
    return generator


def encode_prompts(tokenizer, prompts: Sequence[Sequence[int]] | Sequence[str]) -> tuple[list[list[int]], list[str]]:
    """Prompts as given to a :class:`Generator` -> (token ids, texts).

    Strings are encoded verbatim (no special tokens added: chat templates are rendered by the
    caller); token-id lists are decoded for the texts. Mixed or empty input is an error.
    """
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings or of token-id lists")
    if all(isinstance(p, str) for p in prompts):
        ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        texts = list(prompts)
    elif all(isinstance(p, (list, tuple, Tensor)) for p in prompts):
        ids = [[int(t) for t in p] for p in prompts]
        texts = [tokenizer.decode(p, skip_special_tokens=False) for p in ids]
    else:
        raise ValueError("prompts must be all strings or all token-id lists, not a mix")
    for i, p in enumerate(ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: need at least one token to condition on")
    return ids, texts
