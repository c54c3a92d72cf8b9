"""A stand-in for the ``vllm`` package (an optional CUDA extra, not installed here): ``LLM`` with
the methods iprime calls, sampling with the built-in HF sampler on the engine's own copy of the
model, and a record of what it was given.

``module()`` builds a fresh ``vllm`` module object; tests put it in ``sys.modules["vllm"]``
(``monkeypatch.setitem``), the distributed worker (``tests/dist_worker.py``) likewise. Named
``fake_vllm``, not ``vllm``: a ``vllm`` package on ``tests/`` would be imported by every test.

What the fake records, so tests can check iprime's side of vLLM's contract:

- ``LLM.kwargs``: the keyword arguments ``vllm.LLM(...)`` received, and ``LLM.env``: the
  ``VLLM_*`` environment at that moment (the external launcher needs the engine core in-process);
- ``calls``: ``sleep`` / ``wake_up`` / ``generate`` / ``load_weights`` / ``reset_prefix_cache``,
  in order;
- ``loads``: one entry per ``model.load_weights`` call: how many pairs it got, their dtypes, and
  how many tensors handed to ``load_weights`` so far were still alive during it (weak
  references): 1 when weights stream one at a time, the whole model when they come as a list.

The engine's model is reachable the two ways vLLM offers: ``collective_rpc(fn)`` calls
``fn(worker)`` with ``worker.model_runner.model`` (one process, the engine core in vLLM's worker),
and ``llm_engine.model_executor.driver_worker.model_runner.model`` (in-process, as with the
external launcher: TRL's colocate weight sync).
"""

from __future__ import annotations

import os
import types
import weakref
from types import SimpleNamespace

from iprime.models import load_model, load_tokenizer
from iprime.rollout import HFGenerator, SamplingParams, load_weights


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeLLM:
    """``generate`` / ``sleep`` / ``wake_up`` / ``collective_rpc`` / ``reset_prefix_cache`` like
    ``vllm.LLM``; sampling is done by an HFGenerator on the engine's own copy of the model, and
    results come back as vLLM's ``RequestOutput`` structure."""

    def __init__(self, model, tokenizer, *, sleep_mode: bool = True):
        self.model = model
        self.hf = HFGenerator(model, tokenizer)
        self.sleep_mode = sleep_mode
        self.calls: list[str] = []
        self.loads: list[dict] = []
        self._handed: list[weakref.ref] = []
        self.asleep = False
        self.last_params = None
        # what a V1 worker looks like to collective_rpc: worker.model_runner.model.load_weights
        self.model.load_weights = self._load_weights
        self.worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
        # the in-process path (external launcher): llm.llm_engine.model_executor.driver_worker
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=self.worker))

    def _load_weights(self, weights):
        """vLLM's ``model.load_weights(weights) -> set[str]``, by name, cast to the engine's dtype."""
        assert not self.asleep, "load_weights on a sleeping engine (its weights are not on the GPU)"
        pairs = list(weights)
        self._handed += [weakref.ref(t) for _, t in pairs]
        alive = sum(ref() is not None for ref in self._handed)
        self.loads.append({"pairs": len(pairs), "dtypes": {t.dtype for _, t in pairs}, "alive": alive})
        self.calls.append("load_weights")
        return load_weights(self.model, pairs)

    @property
    def max_alive(self) -> int:
        """The most tensors handed to ``load_weights`` alive at once, over all calls."""
        return max(load["alive"] for load in self.loads)

    def sleep(self, level=1):
        assert self.sleep_mode, "sleep on an engine built without enable_sleep_mode"
        assert not self.asleep and level == 1
        self.asleep = True
        self.calls.append("sleep")

    def wake_up(self):
        assert self.asleep
        self.asleep = False
        self.calls.append("wake_up")

    def collective_rpc(self, fn, args=(), kwargs=None):
        return [fn(self.worker, *args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def generate(self, prompts, sampling_params, use_tqdm=True):
        assert not self.asleep, "generate on a sleeping engine"
        self.calls.append("generate")
        sp = self.last_params = sampling_params
        ids = [p["prompt_token_ids"] for p in prompts]
        batch = self.hf.generate(
            ids,
            SamplingParams(
                n=sp.n,
                temperature=sp.temperature,
                top_p=sp.top_p,
                top_k=max(sp.top_k, 0),
                max_new_tokens=sp.max_tokens,
                seed=sp.seed,
                stop_at_eos=not sp.ignore_eos,
            ),
        )
        outputs = []
        for i in range(len(ids)):
            completions = []
            for k in range(sp.n):
                r = i * sp.n + k
                m = batch.response_mask[r].bool()
                toks = batch.response_ids[r][m].tolist()
                lps = batch.sampling_logprobs[r][m].tolist()
                completions.append(
                    SimpleNamespace(
                        index=k,
                        token_ids=toks,
                        text="",
                        logprobs=[
                            {t: SimpleNamespace(logprob=lp, rank=1, decoded_token=None)} for t, lp in zip(toks, lps)
                        ],
                        finish_reason="length" if bool(batch.truncated[r]) else "stop",
                    )
                )
            outputs.append(SimpleNamespace(prompt_token_ids=ids[i], outputs=completions[::-1]))  # any order
        return outputs


def module() -> types.ModuleType:
    """A fresh ``vllm`` module: ``LLM(**kwargs)`` loads ``kwargs["model"]`` in ``kwargs["dtype"]``
    on the CPU and records the kwargs; every engine built is appended to ``module.built``."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.0.0+fake"
    vllm.built = []

    class LLM(FakeLLM):
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
            model = load_model(kwargs["model"], dtype=kwargs["dtype"]).eval()
            super().__init__(model, load_tokenizer(kwargs["tokenizer"]), sleep_mode=kwargs["enable_sleep_mode"])
            vllm.built.append(self)

    vllm.LLM, vllm.SamplingParams = LLM, FakeSamplingParams
    return vllm
