"""The vLLM generator's contract, against a fake engine with vLLM's ``LLM`` interface (vLLM is
an optional CUDA extra and is not installed here: ``tests/fake_vllm.py``), and the
importance-sampling correction.

What the fake shows is iprime's side of the contract only: the arguments ``vllm.LLM`` gets
(one process, and under torchrun: the external launcher, a seed per rank, the engine dtype),
the calls it gets (sleep / wake around sampling and weight loads), and how weights arrive
(cast to the engine's dtype; in-process one tensor at a time). None of it has run against vLLM.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from types import SimpleNamespace

import fake_vllm
import pytest
import torch
from fake_vllm import FakeLLM, FakeSamplingParams

from iprime.algo import apply_is_weights, ppo_policy_loss, truncated_is_weights
from iprime.models import load_model, load_tokenizer
from iprime.rollout import Capability, Generator, HFGenerator, SamplingParams
from iprime.rollout.vllm import VLLMGenerator


@pytest.fixture()
def model_and_tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def make_vllm(model, tokenizer, **kw):
    return VLLMGenerator(
        FakeLLM(copy.deepcopy(model), tokenizer), tokenizer, sampling_params_cls=FakeSamplingParams, **kw
    )


def test_batch_layout_matches_hf_generator(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = ["Compute 1 + 2.", "Compute 10 + 11. Show the steps.", "Hi"]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=7)
    hf = HFGenerator(model, tok).generate(prompts, params)
    gen = make_vllm(model, tok)
    vb = gen.generate(prompts, params)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "truncated", "prompt_index"):
        assert torch.equal(getattr(vb, name), getattr(hf, name)), name
    torch.testing.assert_close(vb.sampling_logprobs, hf.sampling_logprobs)
    assert vb.texts == hf.texts and vb.prompt_texts == hf.prompt_texts and vb.pad_id == hf.pad_id


def test_finish_reasons_padding_and_sample_order(model_and_tokenizer):
    model, tok = model_and_tokenizer
    gen = make_vllm(model, tok, sleep=False)
    eos = tok.eos_token_id
    lp = lambda toks, v: [{t: SimpleNamespace(logprob=v)} for t in toks]  # noqa: E731
    out = [
        SimpleNamespace(
            outputs=[
                SimpleNamespace(index=1, token_ids=[7, 8, 9], logprobs=lp([7, 8, 9], -0.5), finish_reason="length"),
                SimpleNamespace(index=0, token_ids=[5, eos], logprobs=lp([5, eos], -0.25), finish_reason="stop"),
            ]
        )
    ]
    b = gen.to_batch([[3, 4]], ["p"], out, SamplingParams(n=2, max_new_tokens=3))
    assert b.response_ids.tolist() == [[5, eos, tok.pad_token_id], [7, 8, 9]]  # sample 0 first, right-padded
    assert b.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]  # EOS is part of the response
    assert b.truncated.tolist() == [False, True] and b.prompt_index.tolist() == [0, 0]
    assert b.sampling_logprobs.tolist() == [[-0.25, -0.25, 0.0], [-0.5, -0.5, -0.5]]


def test_sampling_params_sleep_cycle_and_weight_sync(model_and_tokenizer):
    model, tok = model_and_tokenizer
    gen = make_vllm(model, tok)
    llm = gen.llm
    assert llm.calls == ["sleep"]  # asleep until needed
    gen.generate(["Compute 1 + 2."], SamplingParams(n=2, max_new_tokens=4, seed=1, top_k=0))
    assert llm.calls[1:] == ["wake_up", "generate", "sleep"]
    sp = llm.last_params
    assert (sp.n, sp.logprobs, sp.max_tokens, sp.seed, sp.top_k, sp.ignore_eos) == (2, 0, 4, 1, -1, False)
    assert sp.stop_token_ids == [tok.eos_token_id]

    new = {k: v + 0.01 for k, v in model.state_dict().items()}
    gen.sync_weights(new)
    assert llm.calls[-4:] == ["wake_up", "load_weights", "reset_prefix_cache", "sleep"]
    for k, v in llm.model.state_dict().items():
        assert torch.equal(v, new[k]), k


def test_without_vllm_the_error_says_how_to_install(tiny_model_dir):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    from iprime.config import load_config

    with pytest.raises(ImportError, match=r"iprime\[vllm\]"):
        VLLMGenerator.from_config(str(tiny_model_dir), load_tokenizer(tiny_model_dir), load_config(None, []))


def test_missing_logprobs_is_a_clear_error(model_and_tokenizer):
    model, tok = model_and_tokenizer
    gen = make_vllm(model, tok, sleep=False)
    out = [SimpleNamespace(outputs=[SimpleNamespace(index=0, token_ids=[5, 6], logprobs=None, finish_reason="stop")])]
    with pytest.raises(ValueError, match="logprobs=0"):
        gen.to_batch([[1, 2]], ["x"], out, SamplingParams(n=1))


def test_trainer_with_a_vllm_engine_syncs_weights_and_corrects(tiny_model_dir, tmp_path):
    from tiny_runs import ROWS, tiny_config

    from iprime.train.prime import PrimeTrainer

    rows = ROWS[:8]
    cfg = tiny_config(
        tmp_path,
        "train.steps=2",
        "prm.beta=0.05",  # the default, not the tiny runs' 0.5
        "rollout.is_correction=true",
        "rollout.is_cap=2.0",
        "rollout.oversample=1.0",  # no buffered (stale) groups
    )
    tok = load_tokenizer(tiny_model_dir)
    gen = make_vllm(load_model(tiny_model_dir), tok)
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, rows, lambda text, a: float(len(text) % 2 == 0), generator=gen)
    history = trainer.train(progress=False)
    assert gen.llm.calls.count("load_weights") == 2  # once after every policy update
    for m in history:
        # the engine holds the policy's weights when it samples, so the weights are ~1
        assert m["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
        assert m["rollout/logp_abs_diff_max"] < 1e-3 and math.isfinite(m["policy/pg_loss"])
    engine = gen.llm.model.state_dict()
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(engine[k], v), k


def test_the_engine_declares_its_capabilities(model_and_tokenizer):
    model, tok = model_and_tokenizer
    assert make_vllm(model, tok).capabilities == {Capability.SYNC_WEIGHTS, Capability.SLEEP}
    awake = make_vllm(model, tok, sleep=False)
    assert awake.capabilities == {Capability.SYNC_WEIGHTS} and isinstance(awake, Generator)
    with pytest.raises(NotImplementedError, match="does not declare Capability.SLEEP"):
        awake.sleep()  # built without sleep mode: it is not asked to sleep, and refuses if asked
    awake.generate(["Hi"], SamplingParams(max_new_tokens=2, seed=0))
    awake.sync_weights(model.state_dict())
    assert awake.llm.calls == ["generate", "load_weights", "reset_prefix_cache"]  # never slept or woken


def test_the_trainer_asks_an_engine_only_for_what_it_declares(tiny_model_dir, tmp_path):
    from tiny_runs import ROWS, tiny_config

    from iprime.train.prime import PrimeTrainer

    tok = load_tokenizer(tiny_model_dir)
    gen = make_vllm(load_model(tiny_model_dir), tok, sleep=False)
    gen.capabilities = frozenset()  # as if its weights followed the policy's by themselves
    cfg = tiny_config(tmp_path, "train.steps=1", "rollout.oversample=1.0")
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS[:8], lambda text, a: float(len(text) % 2 == 0), generator=gen)
    (metrics,) = trainer.train(progress=False)
    assert "load_weights" not in gen.llm.calls and "time/sync_weights" not in metrics
    assert gen.llm.calls.count("generate") >= 1


def test_the_trainer_refuses_an_object_that_is_not_an_engine(tiny_model_dir, tmp_path):
    from tiny_runs import ROWS, tiny_config

    from iprime.train.prime import PrimeTrainer

    class OnlyGenerate:
        def generate(self, prompts, params): ...

    with pytest.raises(TypeError, match="lacks capabilities, sync_weights, sleep, wake_up"):
        PrimeTrainer(str(tiny_model_dir), tiny_config(tmp_path), ROWS[:8], lambda t, a: 0.0, generator=OnlyGenerate())


# ------------------------------------------------------------------ building the engine: vllm.LLM(...)
@pytest.fixture()
def vllm_module(monkeypatch):
    """The fake ``vllm`` package, importable as ``vllm`` for the test."""
    module = fake_vllm.module()
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def torchrun_env(monkeypatch, world: int, rank: int) -> list[int]:
    """torchrun's variables for ``rank`` of ``world`` (one node: LOCAL_RANK = RANK), a CUDA that
    says it is there, and the ``torch.cuda.set_device`` calls it records."""
    for key, value in {"WORLD_SIZE": world, "RANK": rank, "LOCAL_RANK": rank}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # vLLM's default; restored after the test
    devices: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    return devices


def test_under_torchrun_each_rank_builds_its_own_engine_with_the_external_launcher(
    tiny_model_dir, vllm_module, monkeypatch
):
    """WORLD_SIZE=2: each rank's ``vllm.LLM`` gets the external launcher, one whole engine
    (tensor_parallel_size=1), ``train.seed + rank`` and ``rollout.dtype``; ``cuda:LOCAL_RANK`` is
    made current and the engine core kept in-process before it is built."""
    from iprime.config import load_config

    cfg = load_config(None, ["rollout.engine=vllm", "train.seed=5", "model.dtype=float32"])
    tok = load_tokenizer(tiny_model_dir)
    gens = {}
    for rank in (0, 1):
        devices = torchrun_env(monkeypatch, 2, rank)
        gens[rank] = VLLMGenerator.from_config(str(tiny_model_dir), tok, cfg)
        assert devices == [rank]
    engines = {rank: gen.llm for rank, gen in gens.items()}
    for rank, llm in engines.items():
        assert llm.kwargs == {
            "model": str(tiny_model_dir),
            "tokenizer": str(tiny_model_dir),
            "dtype": "bfloat16",  # rollout.dtype's default, not model.dtype
            "seed": 5 + rank,
            "gpu_memory_utilization": 0.5,
            "enable_sleep_mode": True,
            "enforce_eager": False,
            "tensor_parallel_size": 1,
            "distributed_executor_backend": "external_launcher",
        }
        assert llm.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        assert llm.model.dtype == torch.bfloat16 and llm.calls == ["sleep"]
        gen = gens[rank]
        assert gen.in_process and gen.weights_dtype == torch.bfloat16 and gen.device == torch.device("cuda", rank)
    assert engines[0].kwargs["seed"] != engines[1].kwargs["seed"]
    # the batches go where the trainer computes, when it says so (a CPU rehearsal under gloo)
    torchrun_env(monkeypatch, 2, 1)
    assert VLLMGenerator.from_config(str(tiny_model_dir), tok, cfg, device="cpu").device == torch.device("cpu")


def test_one_process_builds_one_engine_without_the_external_launcher(tiny_model_dir, vllm_module, monkeypatch):
    from iprime.config import load_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device in one process"))
    overrides = ["rollout.engine=vllm", "train.seed=5", "rollout.dtype=auto", "rollout.vllm_sleep=false"]
    cfg = load_config(None, [*overrides, "rollout.vllm_max_model_len=256"])
    gen = VLLMGenerator.from_config(str(tiny_model_dir), load_tokenizer(tiny_model_dir), cfg)
    kwargs = gen.llm.kwargs
    assert "distributed_executor_backend" not in kwargs
    assert (kwargs["seed"], kwargs["dtype"], kwargs["max_model_len"], kwargs["tensor_parallel_size"]) == (
        5,
        "float32",  # auto: model.dtype
        256,
        1,
    )
    assert kwargs["enable_sleep_mode"] is False and gen.llm.calls == []
    assert not gen.in_process and gen.weights_dtype == torch.float32 and gen.device == torch.device("cpu")


def test_torchrun_without_cuda_is_a_clear_error(tiny_model_dir, vllm_module, monkeypatch):
    from iprime.config import load_config

    torchrun_env(monkeypatch, 2, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="one engine on each rank's GPU .* use rollout.engine='hf_sync'"):
        VLLMGenerator.from_config(
            str(tiny_model_dir), load_tokenizer(tiny_model_dir), load_config(None, ["rollout.engine=vllm"])
        )
    assert vllm_module.built == []


def test_engine_dtype_and_kwargs_refuse_what_vllm_would_not_run():
    from iprime.rollout.vllm import engine_dtype, llm_kwargs

    assert engine_dtype("auto", "bfloat16") == "bfloat16" and engine_dtype("float16", "float32") == "float16"
    with pytest.raises(ValueError, match="engine dtype must be one of"):
        engine_dtype("auto", "int8")
    common = dict(dtype="bfloat16", seed=0, gpu_memory_utilization=0.5)
    with pytest.raises(ValueError, match="one whole engine"):
        llm_kwargs("m", **common, tensor_parallel_size=2, external_launcher=True)
    assert llm_kwargs("m", **common, tensor_parallel_size=4)["tensor_parallel_size"] == 4


# ------------------------------------------------------------------ weights into the engine
def fresh_stream(state: dict, delta: float):
    """``(name, new float32 tensor)`` made on demand, as ``full_state_items`` gathers each
    FSDP2 shard: nothing of the stream exists before it is asked for."""
    for name, tensor in state.items():
        yield name, tensor + delta


def test_in_process_sync_casts_to_the_engine_dtype_and_streams_one_tensor_at_a_time(model_and_tokenizer):
    """The external launcher's path: each weight is cast to the engine's bf16 and loaded alone
    into the in-process model (TRL's ``load_weights([(name, param)])``), so one tensor is alive
    at a time; the one-process ``collective_rpc`` path, for contrast, holds them all."""
    model, tok = model_and_tokenizer
    state = model.state_dict()
    streamed = VLLMGenerator(
        FakeLLM(copy.deepcopy(model).to(torch.bfloat16), tok),
        tok,
        sampling_params_cls=FakeSamplingParams,
        weights_dtype=torch.bfloat16,
        in_process=True,
    )
    streamed.sync_weights(fresh_stream(state, 0.01))
    llm = streamed.llm
    assert llm.calls == ["sleep", "wake_up", *["load_weights"] * len(state), "reset_prefix_cache", "sleep"]
    assert [load["pairs"] for load in llm.loads] == [1] * len(state)
    assert {d for load in llm.loads for d in load["dtypes"]} == {torch.bfloat16}
    assert llm.max_alive == 1
    engine = llm.model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(engine[name], (tensor + 0.01).to(torch.bfloat16)), name

    listed = VLLMGenerator(
        FakeLLM(copy.deepcopy(model).to(torch.bfloat16), tok),
        tok,
        sampling_params_cls=FakeSamplingParams,
        weights_dtype=torch.bfloat16,
    )
    listed.sync_weights(fresh_stream(state, 0.01))
    assert [load["pairs"] for load in listed.llm.loads] == [len(state)] and listed.llm.max_alive == len(state)
    assert {d for load in listed.llm.loads for d in load["dtypes"]} == {torch.bfloat16}


def test_an_engine_not_in_this_process_cannot_be_loaded_in_process(model_and_tokenizer):
    from iprime.rollout.vllm import sync_vllm_weights

    model, tok = model_and_tokenizer
    llm = FakeLLM(copy.deepcopy(model), tok, sleep_mode=False)
    del llm.llm_engine  # the engine core in vLLM's own process: no model here
    with pytest.raises(RuntimeError, match="external launcher or VLLM_ENABLE_V1_MULTIPROCESSING=0"):
        sync_vllm_weights(llm, model.state_dict().items(), in_process=True)


def test_trainer_builds_the_vllm_engine_from_the_config_and_syncs_a_bf16_copy(
    tiny_model_dir, tmp_path, vllm_module, monkeypatch
):
    """``rollout.engine=vllm`` through the trainer (one process): the engine is built from the
    config in ``rollout.dtype`` (bf16) while the trainer keeps float32, gets every update cast to
    bf16, and samples from that copy; old log-probs are recomputed and the gap logged."""
    from tiny_runs import ROWS, parity_verifier, tiny_config

    from iprime.train.prime import PrimeTrainer

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = tiny_config(tmp_path, "train.steps=2", "rollout.engine=vllm", "rollout.oversample=1.0")
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS[:8], parity_verifier)
    (llm,) = vllm_module.built
    assert llm.kwargs["dtype"] == "bfloat16" and trainer.policy.dtype == torch.float32
    history = trainer.train(progress=False)
    assert llm.calls.count("load_weights") == 2 and llm.calls.count("generate") >= 2
    assert {d for load in llm.loads for d in load["dtypes"]} == {torch.bfloat16}
    engine = llm.model.state_dict()
    for name, tensor in trainer.policy.state_dict().items():
        assert torch.equal(engine[name], tensor.to(torch.bfloat16)), name
    gaps = [m["rollout/sampler_logprob_gap"] for m in history]
    assert all(math.isfinite(g) and g > 0 for g in gaps), gaps  # bf16 engine vs float32 trainer: not float noise


def test_two_gloo_ranks_each_build_their_engine_and_stream_every_update_into_it(tiny_model_dir, tmp_path):
    """``rollout.engine=vllm`` under a 2-rank launch (gloo, the fake vLLM, CUDA pretended while
    the engine is built): on every rank the engine gets the external launcher, that rank's seed
    and device, and after each update every FSDP2-gathered tensor, cast to bf16, one at a time
    into the in-process model; its final weights are the gathered policy's, in bf16."""
    import dist_worker as worker
    from test_distributed import launch_ranks

    launch_ranks(["vllm", str(tiny_model_dir), str(tmp_path / "vllm.pt")], timeout=300)
    names = list(load_model(tiny_model_dir).state_dict())
    for rank in range(2):
        r = torch.load(f"{tmp_path / 'vllm.pt'}.rank{rank}", weights_only=False)
        kwargs = r["kwargs"]
        assert kwargs["distributed_executor_backend"] == "external_launcher" and kwargs["tensor_parallel_size"] == 1
        assert (kwargs["seed"], kwargs["dtype"], r["devices"]) == (7 + rank, "bfloat16", [rank])
        assert r["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        assert len(r["history"]) == 3 and r["calls"].count("load_weights") == 3 * len(names)
        assert [load["pairs"] for load in r["loads"]] == [1] * (3 * len(names))
        assert max(load["alive"] for load in r["loads"]) == 1
        assert {d for load in r["loads"] for d in load["dtypes"]} == {torch.bfloat16}
        for name in names:
            assert torch.equal(r["engine"][name], r["policy"][name].to(torch.bfloat16)), (rank, name)
        assert all(math.isfinite(m["rollout/sampler_logprob_gap"]) for m in r["history"])
    assert worker.parity_verifier("ab", "") == 1.0  # the worker's module, imported as the test imports it


def test_truncated_is_weights():
    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    rollout = torch.tensor([[-1.0, -1.0, -2.0], [-1.5, 0.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    w = truncated_is_weights(trainer, rollout, mask, cap=2.0)
    expected = torch.tensor([[1.0, math.exp(-1.0), 2.0], [math.exp(0.5), math.exp(-1.0), 0.0]])
    torch.testing.assert_close(w, expected)
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(trainer, rollout, mask, cap=0.0)


def test_is_weighted_advantages_weight_the_per_token_ppo_loss():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g)
    old = logp + 0.3 * torch.randn(3, 5, generator=g)
    adv = torch.randn(3, 5, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    w = torch.rand(3, 5, generator=g) * 2
    loss, _ = ppo_policy_loss(logp, old, apply_is_weights(adv, w), mask, 0.2, 0.2, dual_clip=3.0)
    # reference: per-token loss of the unweighted advantages, times w, token-mean
    per_token = torch.stack(
        [
            ppo_policy_loss(
                logp[i : i + 1, t : t + 1],
                old[i : i + 1, t : t + 1],
                adv[i : i + 1, t : t + 1],
                mask[i : i + 1, t : t + 1],
                0.2,
                0.2,
                dual_clip=3.0,
            )[0]
            for i in range(3)
            for t in range(5)
        ]
    ).view(3, 5)
    torch.testing.assert_close(loss, (per_token * w).mean())
