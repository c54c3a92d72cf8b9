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

Under torchrun (``WORLD_SIZE`` > 1) every rank builds its own engine, as TRL's colocate mode
and vLLM's torchrun example do: ``distributed_executor_backend="external_launcher"`` makes the
engine a single worker inside this rank's process (vLLM's ``ExecutorWithExternalLauncher``, which
reads torchrun's ``RANK`` / ``LOCAL_RANK`` and runs on ``cuda:LOCAL_RANK``),
``tensor_parallel_size=1`` (one whole engine per rank, as the PRIME repository's script sets
``tensor_model_parallel_size=1``, ``run_prime_main.sh:32``), a seed per rank, and the weights
synced in-process, one tensor at a time (:func:`sync_vllm_weights`). None of this has run against
a real vLLM here: the tests check the arguments and calls against a stand-in engine
(``tests/test_vllm_adapter.py``).

This module never imports vLLM at import time; only the constructors
(:meth:`VLLMGenerator.from_config`, :meth:`VLLMGenerator.for_eval`) and :func:`require_vllm` do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
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

TRAIN_HINT = (
    "rollout.engine='vllm' needs vLLM (CUDA): pip install 'iprime[vllm]'. "
    "Use rollout.engine='hf' (or 'hf_sync', which takes weights the way vLLM does) without it."
)
EVAL_HINT = "iprime eval --engine vllm needs vLLM (CUDA): pip install 'iprime[vllm]'. Use --engine hf without it."

ENGINE_DTYPES = ("bfloat16", "float16", "float32")


class VLLMNotInstalled(ImportError):
    """vLLM was asked for and cannot be imported; the message says how to install it."""


def require_vllm(hint: str = TRAIN_HINT):
    """The ``vllm`` module, or :class:`VLLMNotInstalled` saying how to install it (``hint``).
    Callers run it before loading any model, so a missing vLLM costs no model load."""
    try:
        import vllm
    except ImportError as e:
        raise VLLMNotInstalled(hint) from e
    return vllm


def engine_dtype(rollout_dtype: str, model_dtype: str) -> str:
    """The engine's dtype name: ``rollout.dtype``, with ``auto`` meaning ``model.dtype`` (not
    vLLM's own ``auto``, which reads the checkpoint's ``torch_dtype``)."""
    name = model_dtype if rollout_dtype == "auto" else rollout_dtype
    if name not in ENGINE_DTYPES:
        raise ValueError(f"engine dtype must be one of {ENGINE_DTYPES} (or auto), got {name!r}")
    return name


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a torchrun launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``;
    1, 0, 0 without torchrun)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def external_launcher(self) -> bool:
        """One engine per rank, in the rank's own process: vLLM's ``external_launcher``."""
        return self.world_size > 1


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read torchrun's variables (the ones vLLM's external launcher reads too)."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return LaunchEnv()
    return LaunchEnv(world, int(env["RANK"]), int(env.get("LOCAL_RANK", "0")))


def llm_kwargs(
    model_path: str,
    *,
    dtype: str,
    seed: int,
    gpu_memory_utilization: float,
    enable_sleep_mode: bool = False,
    enforce_eager: bool = False,
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    external_launcher: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM(...)`` (vLLM's ``EngineArgs`` names).

    ``external_launcher``: under torchrun, one engine per rank, built in the rank's process with
    ``distributed_executor_backend="external_launcher"`` and ``tensor_parallel_size=1`` (TRL's
    colocate mode, ``trl/generation/vllm_generation.py`` ``_init_vllm``; vLLM's
    ``examples/offline_inference/torchrun_example.py``). vLLM then lays its parallel groups over
    the torchrun world (``tensor_parallel_size=1``: every rank its own group of one), so each
    rank's engine samples its own prompts. ``seed``: the engine's default sampling seed; TRL gives
    rank ``r`` seed ``r // tensor_parallel_size`` (ranks of one tensor-parallel group must sample
    alike), here one engine per rank, so a different seed per rank. iprime's requests carry their
    own per-rank seed as well (``SamplingParams.seed``)."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if external_launcher and tensor_parallel_size != 1:
        raise ValueError(
            f"under torchrun every rank holds one whole engine (tensor_parallel_size=1), got {tensor_parallel_size}"
        )
    kwargs: dict[str, Any] = dict(
        model=model_path,
        tokenizer=model_path,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        enable_sleep_mode=enable_sleep_mode,
        enforce_eager=enforce_eager,
        tensor_parallel_size=tensor_parallel_size,
    )
    if external_launcher:
        kwargs["distributed_executor_backend"] = "external_launcher"
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    return kwargs


def bind_rank_device(local_rank: int) -> torch.device:
    """Make ``cuda:LOCAL_RANK`` this process's current device before its engine is built: the
    external launcher's worker runs on ``cuda:LOCAL_RANK`` (vLLM ``uniproc_executor.py``
    ``ExecutorWithExternalLauncher._distributed_args``), and whatever vLLM or the trainer
    allocates on "cuda" without an index lands on the same GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "rollout.engine='vllm' under torchrun puts one engine on each rank's GPU (cuda:LOCAL_RANK), "
            "but CUDA is not available here; use rollout.engine='hf_sync' on the CPU"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def engine_model(llm: Any) -> Any:
    """The engine's model in this process: ``llm.llm_engine.model_executor.driver_worker
    .model_runner.model`` (TRL's colocate weight sync, ``_sync_fsdp2_params_to_vllm``; the
    worker wrapper forwards ``model_runner`` to its worker). It is there when the engine core
    runs in-process: always with the external launcher (vLLM sets
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` for it, ``vllm/config/parallel.py``)."""
    try:
        return llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError as e:
        raise RuntimeError(
            "the vLLM engine's model is not in this process (llm.llm_engine.model_executor.driver_worker"
            ".model_runner.model); in-process weight loading needs the external launcher or "
            "VLLM_ENABLE_V1_MULTIPROCESSING=0"
        ) from e


def sync_vllm_weights(
    llm: Any,
    weights: Iterable[tuple[str, torch.Tensor]],
    *,
    dtype: torch.dtype | None = None,
    in_process: bool = False,
) -> int:
    """Load ``(name, tensor)`` pairs (Hugging Face names, as in the trainer's state dict) into
    the engine's model, each cast to ``dtype`` (the engine's; ``None``: as given), then drop the
    prefix cache (its KV blocks came from the old weights). Returns the number of pairs loaded.

    ``in_process`` (the external launcher, or any engine without ``collective_rpc``): the
    model's own ``load_weights`` (it maps HF names onto fused / sharded vLLM parameters) is
    called with one pair at a time as the stream yields it, as TRL's colocate sync does
    (``llm_model.load_weights([(name, param)])``): with the FSDP2 stream
    (``iprime.train.distributed.full_state_items``) at most one gathered parameter and its cast
    copy exist at once, never the model.

    Otherwise (one process, the engine core in vLLM's own worker process): ``LLM.collective_rpc``
    runs a function on every worker that calls ``load_weights``; the function and its arguments
    are sent across processes, so the whole (cast) stream is collected first and every tensor is
    held at once."""
    cast = (lambda t: t.detach()) if dtype is None else (lambda t: t.detach().to(dtype))
    count = 0
    if in_process or not hasattr(llm, "collective_rpc"):
        model = engine_model(llm)
        for name, tensor in weights:
            model.load_weights([(name, cast(tensor))])
            count += 1
    else:
        pairs = [(name, cast(t)) for name, t in weights]

        def _load(worker, weights=pairs):  # runs inside each worker
            worker.model_runner.model.load_weights(weights=weights)

        llm.collective_rpc(_load)
        count = len(pairs)
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()
    return count


def _top_logprob(entry: Any, token: int) -> float:
    """The sampled token's log-prob out of one position's ``{token_id: Logprob}`` mapping."""
    value = entry[token]
    return float(getattr(value, "logprob", value))


class VLLMGenerator(GeneratorBase):
    """The :class:`~iprime.rollout.types.Generator` protocol on a ``vllm.LLM``.

    ``llm``: a ``vllm.LLM`` (or anything with the same ``generate`` / ``sleep`` / ``wake_up``).
    ``sleep``: sleep the engine between rollouts (it must have been built with
    ``enable_sleep_mode=True``). ``sampling_params_cls``: vLLM's ``SamplingParams`` (looked up
    lazily; tests pass a stand-in). ``weights_dtype``: the engine's dtype, which synced weights
    are cast to (``None``: as the trainer holds them). ``in_process``: the engine's model lives in
    this process (external launcher), so weights are loaded into it one tensor at a time.

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
        weights_dtype: torch.dtype | None = None,
        in_process: bool = False,
    ) -> None:
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("tokenizer needs pad and eos tokens; load it with iprime.models.load_tokenizer")
        self.llm, self.tokenizer, self.sleep_between = llm, tokenizer, sleep
        self.device = torch.device(device)
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_ids = [int(tokenizer.eos_token_id)]
        self._sampling_params_cls = sampling_params_cls
        self.weights_dtype, self.in_process = weights_dtype, in_process
        self._asleep = False
        self.capabilities = frozenset({Capability.SYNC_WEIGHTS} | ({Capability.SLEEP} if sleep else set()))
        if sleep:
            self.sleep()

    @classmethod
    def from_config(
        cls, model_path: str, tokenizer: PreTrainedTokenizerBase, cfg, *, device: str | torch.device | None = None
    ) -> VLLMGenerator:
        """The training engine for ``model_path`` from ``cfg.rollout`` / ``cfg.model`` /
        ``cfg.train``: in ``rollout.dtype`` (:func:`engine_dtype`), seeded ``train.seed + rank``.

        Under torchrun: ``cuda:LOCAL_RANK`` made current (:func:`bind_rank_device`), the engine
        core kept in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: what vLLM's external
        launcher requires, ``uniproc_executor.py``; recent vLLMs set it themselves) and the
        engine built with the external launcher (:func:`llm_kwargs`). One process: vLLM's own
        executor, as before. ``device``: where rollout batches are put (the trainer's device; by
        default ``model.device``, under torchrun ``cuda:LOCAL_RANK``)."""
        vllm = require_vllm(TRAIN_HINT)
        r, env = cfg.rollout, launch_env()
        dtype = engine_dtype(r.dtype, cfg.model.dtype)
        if env.external_launcher:
            rank_device = bind_rank_device(env.local_rank)
            device = device if device is not None else rank_device
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs = llm_kwargs(
            model_path,
            dtype=dtype,
            seed=cfg.train.seed + env.rank,
            gpu_memory_utilization=r.vllm_gpu_memory_utilization,
            enable_sleep_mode=r.vllm_sleep,
            enforce_eager=r.vllm_enforce_eager,
            max_model_len=r.vllm_max_model_len,
            external_launcher=env.external_launcher,
        )
        return cls(
            vllm.LLM(**kwargs),
            tokenizer,
            sleep=r.vllm_sleep,
            device=device if device is not None else cfg.model.device,
            sampling_params_cls=vllm.SamplingParams,
            weights_dtype=getattr(torch, dtype),
            in_process=env.external_launcher,
        )

    @classmethod
    def for_eval(
        cls,
        model_path: str,
        tokenizer: PreTrainedTokenizerBase,
        *,
        dtype: str,
        seed: int,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
    ) -> VLLMGenerator:
        """An engine for ``iprime eval``: one process, never asleep, no weight syncs;
        ``tensor_parallel_size`` GPUs for one model too big for one (vLLM starts its own
        workers: no torchrun, no external launcher). ``gpu_memory_utilization``: vLLM's default
        0.9 when nothing else shares the GPU; lower it when a PRM scores on the same GPU."""
        vllm = require_vllm(EVAL_HINT)
        if dtype not in ENGINE_DTYPES:
            raise ValueError(f"dtype must be one of {ENGINE_DTYPES}, got {dtype!r}")
        if launch_env().external_launcher:
            raise ValueError(
                "iprime eval runs in one process: run it without torchrun (--tensor-parallel-size N spreads "
                "one model over N GPUs)"
            )
        kwargs = llm_kwargs(
            model_path,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
        )
        return cls(vllm.LLM(**kwargs), tokenizer, sleep=False, sampling_params_cls=vllm.SamplingParams)

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
        tensor)`` pairs or a mapping (:func:`~iprime.rollout.types.named_tensors`), each cast to
        the engine's dtype (:func:`sync_vllm_weights`), with the engine awake (its weights mapped
        on the GPU) for the load."""
        with self._awake():
            sync_vllm_weights(self.llm, named_tensors(weights), dtype=self.weights_dtype, in_process=self.in_process)

    # ------------------------------------------------------------------ sampling
    def vllm_sampling_params(self, params: SamplingParams):
        cls = self._sampling_params_cls
        if cls is None:
            cls = require_vllm().SamplingParams
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
