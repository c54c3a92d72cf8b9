"""The vLLM generator's contract, against a fake engine with vLLM's ``LLM`` interface (vLLM is
an optional CUDA extra and is not installed here), and the importance-sampling correction."""

from __future__ import annotations

import copy
import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from iprime.algo import apply_is_weights, ppo_policy_loss, truncated_is_weights
from iprime.models import load_model, load_tokenizer
from iprime.rollout import Capability, Generator, HFGenerator, SamplingParams
from iprime.rollout.vllm import VLLMGenerator


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeLLM:
    """``generate`` / ``sleep`` / ``wake_up`` / ``collective_rpc`` / ``reset_prefix_cache`` like
    ``vllm.LLM``; sampling is done by an HFGenerator on the engine's own copy of the model, and
    results come back as vLLM's ``RequestOutput`` structure."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.hf = HFGenerator(model, tokenizer)
        self.calls: list[str] = []
        self.asleep = False
        self.last_params = None
        # what a V1 worker looks like to collective_rpc: worker.model_runner.model.load_weights
        self.model.load_weights = self._load_weights
        self.worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))

    def _load_weights(self, weights):
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, t in weights:
                params[name].copy_(t)
        self.calls.append("load_weights")

    def sleep(self, level=1):
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
