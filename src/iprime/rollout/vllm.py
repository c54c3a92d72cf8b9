"""Rollouts with a colocated vLLM engine (optional: ``pip install 'iprime[vllm]'``, CUDA).

The engine shares the GPU with the trainer: it sleeps between rollouts (``level=1``: weights
offloaded to CPU memory, KV cache freed) and wakes up to sample; after every policy update the
trainer's weights are loaded into it (:func:`sync_vllm_weights`). Responses come back as a
:class:`RolloutBatch` laid out exactly like :class:`HFGenerator`'s: the ``n`` samples of a
prompt are consecutive rows, prompts left-padded, responses right-padded, the EOS token kept
in the response mask, ``truncated`` for rows that stopped on the length limit.

Log-probs: ``SamplingParams(logprobs=0)`` returns the sampled token's log-prob. Depending on the
vLLM version and the engine's ``logprobs_mode`` these are the raw model's (temperature 1) or
the processed distribution's; iprime's trainer recomputes ``log pi_old`` itself, and
``rollout.is_correction`` re-weights tokens by ``min(exp(trainer - vllm), rollout.is_cap)``.
Build the engine with ``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2) to get the
temperature-scaled values HFGenerator records.

This module never imports vLLM at import time; only :meth:`VLLMGenerator.from_config` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from iprime.rollout.types import (
    Capability,
    GeneratorBase,
    RolloutBatch,
    SamplingParams,
    encode_prompts,
    named_tensors,
)

_INSTALL_HINT = (
    "rollout.engine='vllm' needs vLLM (CUDA): pip install 'iprime[vllm]'. Use rollout.engine='hf' without it."
)


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return vllm


def sync_vllm_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load ``(name, tensor)`` pairs (Hugging Face names, as in the trainer's state dict) into
    the engine's model, then drop the prefix cache (its KV blocks came from the old weights).

    vLLM >= 0.8 (V1 engine): ``LLM.collective_rpc`` runs a function on every worker, which calls
    the model's own ``load_weights`` (it maps HF names onto fused/sharded vLLM parameters).
    Older engines expose the in-process model at ``llm_engine.model_executor.driver_worker``."""
    weights = [(name, t.detach()) for name, t in weights]
    if hasattr(llm, "collective_rpc"):

        def _load(worker, weights=weights):  # runs inside each worker
            worker.model_runner.model.load_weights(weights=weights)

        llm.collective_rpc(_load)
    else:
        llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()


def _top_logprob(entry: Any, token: int) -> float:
    """The sampled token's log-prob out of one position's ``{token_id: Logprob}`` mapping."""
    value = entry[token]
    return float(getattr(value, "logprob", value))


class VLLMGenerator(GeneratorBase):
    """The :class:`~iprime.rollout.types.Generator` protocol on a ``vllm.LLM``.

    ``llm``: a ``vllm.LLM`` (or anything with the same ``generate`` / ``sleep`` / ``wake_up``).
    ``sleep``: sleep the engine between rollouts (it must have been built with
    ``enable_sleep_mode=True``). ``sampling_params_cls``: vLLM's ``SamplingParams`` (looked up
    lazily; tests pass a stand-in).

    Capabilities: ``SYNC_WEIGHTS`` always (the engine holds its own copy of the weights), and
    ``SLEEP`` with ``sleep=True``; ``generate`` and ``sync_weights`` then wake the engine for the
    call and put it back to sleep."""

    def __init__(
        self,
        llm: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        sleep: bool = True,
        device: str | torch.device = "cpu",
        sampling_params_cls: Any = None,
    ) -> None:
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("tokenizer needs pad and eos tokens; load it with iprime.models.load_tokenizer")
        self.llm, self.tokenizer, self.sleep_between = llm, tokenizer, sleep
        self.device = torch.device(device)
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_ids = [int(tokenizer.eos_token_id)]
        self._sampling_params_cls = sampling_params_cls
        self._asleep = False
        self.capabilities = frozenset({Capability.SYNC_WEIGHTS} | ({Capability.SLEEP} if sleep else set()))
        if sleep:
            self.sleep()

    @classmethod
    def from_config(cls, model_path: str, tokenizer: PreTrainedTokenizerBase, cfg) -> VLLMGenerator:
        """A colocated engine for ``model_path`` from ``cfg.rollout`` / ``cfg.model``."""
        vllm = _import_vllm()
        r = cfg.rollout
        kwargs: dict[str, Any] = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=cfg.model.dtype,
            seed=cfg.train.seed,
            gpu_memory_utilization=r.vllm_gpu_memory_utilization,
            enable_sleep_mode=r.vllm_sleep,
            enforce_eager=r.vllm_enforce_eager,
        )
        if r.vllm_max_model_len is not None:
            kwargs["max_model_len"] = r.vllm_max_model_len
        return cls(
            vllm.LLM(**kwargs),
            tokenizer,
            sleep=r.vllm_sleep,
            device=cfg.model.device,
            sampling_params_cls=vllm.SamplingParams,
        )

    # ------------------------------------------------------------------ engine state
    def sleep(self) -> None:
        """Offload the weights to CPU memory and free the KV cache (vLLM's ``level=1``)."""
        if Capability.SLEEP not in self.capabilities:
            raise self._undeclared(Capability.SLEEP)
        if not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        """Take the GPU memory back: weights onto the GPU, a fresh KV cache."""
        if Capability.SLEEP not in self.capabilities:
            raise self._undeclared(Capability.SLEEP)
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    @contextlib.contextmanager
    def _awake(self) -> Iterator[None]:
        """Awake for the body, asleep again after it (with sleep mode; else nothing to do)."""
        if not self.sleep_between:
            yield
            return
        self.wake_up()
        try:
            yield
        finally:
            self.sleep()

    def sync_weights(self, weights: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> None:
        """Load the trainer's (full, Hugging Face-named) policy weights into the engine: ``(name,
        tensor)`` pairs or a mapping (:func:`~iprime.rollout.types.named_tensors`)."""
        with self._awake():
            sync_vllm_weights(self.llm, named_tensors(weights))

    # ------------------------------------------------------------------ sampling
    def vllm_sampling_params(self, params: SamplingParams):
        cls = self._sampling_params_cls
        if cls is None:
            cls = _import_vllm().SamplingParams
        return cls(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,  # -1: off (accepted by every vLLM version)
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            logprobs=0,
            ignore_eos=not params.stop_at_eos,
            stop_token_ids=list(self.eos_ids),
            skip_special_tokens=True,
            detokenize=False,
        )

    def generate(self, prompts: list[list[int]] | list[str], params: SamplingParams) -> RolloutBatch:
        """Sample ``params.n`` responses per prompt; rows ``[i*n, (i+1)*n)`` belong to prompt ``i``."""
        prompt_ids, prompt_texts = encode_prompts(self.tokenizer, prompts)
        with self._awake():
            outputs = self.llm.generate(
                [{"prompt_token_ids": p} for p in prompt_ids], self.vllm_sampling_params(params), use_tqdm=False
            )
        return self.to_batch(prompt_ids, prompt_texts, outputs, params)

    def to_batch(
        self, prompt_ids: list[list[int]], prompt_texts: list[str], outputs: list[Any], params: SamplingParams
    ) -> RolloutBatch:
        """vLLM ``RequestOutput``s (one per prompt, in order) -> a :class:`RolloutBatch`."""
        if len(outputs) != len(prompt_ids):
            raise ValueError(f"vLLM returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
        rows, responses, logps, truncated = [], [], [], []
        for i, out in enumerate(outputs):
            samples = list(out.outputs)
            if len(samples) != params.n:
                raise ValueError(f"prompt {i}: vLLM returned {len(samples)} samples, expected n={params.n}")
            samples.sort(key=lambda c: getattr(c, "index", 0))
            for c in samples:
                tokens = [int(t) for t in c.token_ids]
                if c.logprobs is None or len(c.logprobs) != len(tokens):
                    raise ValueError("vLLM output has no per-token log-probs; sample with logprobs=0")
                rows.append(i)
                responses.append(tokens)
                logps.append([_top_logprob(entry, t) for entry, t in zip(c.logprobs, tokens)])
                truncated.append(c.finish_reason == "length")
        B, dev = len(rows), self.device
        P = max(len(prompt_ids[i]) for i in rows)
        T = max(1, max(len(r) for r in responses))
        prompt = torch.full((B, P), self.pad_id, dtype=torch.long)
        pmask = torch.zeros((B, P), dtype=torch.long)
        response = torch.full((B, T), self.pad_id, dtype=torch.long)
        rmask = torch.zeros((B, T), dtype=torch.long)
        logp = torch.zeros((B, T), dtype=torch.float32)
        for b, (i, toks, lps) in enumerate(zip(rows, responses, logps)):
            p = prompt_ids[i]
            prompt[b, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            pmask[b, P - len(p) :] = 1
            if toks:
                response[b, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                rmask[b, : len(toks)] = 1
                logp[b, : len(toks)] = torch.tensor(lps, dtype=torch.float32)
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        return RolloutBatch(
            prompt_ids=prompt.to(dev),
            prompt_mask=pmask.to(dev),
            response_ids=response.to(dev),
            response_mask=rmask.to(dev),
            sampling_logprobs=logp.to(dev),
            truncated=torch.tensor(truncated, dtype=torch.bool, device=dev),
            prompt_index=torch.tensor(rows, dtype=torch.long, device=dev),
            texts=texts,
            prompt_texts=[prompt_texts[i] for i in rows],
            pad_id=self.pad_id,
        )
