"""iprime.rollout: SamplingParams, RolloutBatch, HFGenerator."""

from __future__ import annotations

import pytest
import torch

from iprime.models import LoraSettings, load_model, response_logprobs
from iprime.rollout import (
    Generator,
    GeneratorBase,
    HFGenerator,
    RolloutBatch,
    SamplingParams,
    check_generator,
    filter_logits,
    sample_categorical,
)

PROMPTS = ["Compute 1 + 2.", "What is 12 * 3 - 4?\nStep 1:", "<|im_start|>user\nHi<|im_end|>\n"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gen(model, tok):
    return HFGenerator(model, tok)


def _eos_bias_model(tiny_model_dir, tok, bias: float):
    """A fresh tiny model whose lm_head adds `bias` to the EOS logit (+inf-ish: always EOS,
    -inf-ish: never EOS, ~5: EOS with probability ~0.3 per step)."""
    m = load_model(tiny_model_dir)
    b = torch.zeros(m.config.vocab_size)
    b[tok.eos_token_id] = bias
    m.lm_head.register_forward_hook(lambda mod, inp, out: out + b.to(out.dtype))
    return m


def _recomputed(model, batch, temperature):
    with torch.no_grad():
        return response_logprobs(
            model, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1], temperature=temperature
        )


# ------------------------------------------------------------ SamplingParams


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n=0), "n"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_sampling_params_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**kwargs)


def test_filter_logits():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    inf = float("-inf")
    assert filter_logits(z, top_k=2).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(z, top_p=0.5).isinf().tolist() == [[False, True, True, True]]
    assert filter_logits(z, top_p=0.8).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(z, top_p=0.81).isinf().tolist() == [[False, False, False, True]]
    assert torch.equal(filter_logits(z), z) and inf not in filter_logits(z, top_p=1.0, top_k=4)


def test_sample_categorical_draws_from_the_distribution():
    # unnormalised rows with zero-probability tokens at both ends and in the middle
    probs = torch.tensor([[0.0, 2.0, 0.0, 6.0, 2.0, 0.0], [5.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
    n = 40_000
    g = torch.Generator().manual_seed(0)
    draws = sample_categorical(probs.repeat(n, 1), g).view(n, 2)
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=6).double() / n
        expected = probs[row].double() / probs[row].sum()
        assert torch.all(freq[expected == 0] == 0)  # never a zero-probability token
        # binomial standard error <= 0.0025 here: 0.01 is a 4-sigma band
        assert torch.allclose(freq, expected, atol=0.01), (row, freq, expected)
    again = sample_categorical(probs.repeat(n, 1), torch.Generator().manual_seed(0)).view(n, 2)
    assert torch.equal(draws, again)  # seeded: reproducible
    one_hot = torch.zeros(3, 5).index_fill_(1, torch.tensor([4]), 1.0)
    assert sample_categorical(one_hot).tolist() == [4, 4, 4]
    for bad in ([[0.5, float("nan")]], [[0.0, 0.0]], [[0.5, -0.1]], [[float("inf"), 1.0]]):
        with pytest.raises(ValueError, match="finite and non-negative"):
            sample_categorical(torch.tensor(bad))


# ---------------------------------------------------------------- generation


def test_an_engine_is_asked_only_for_what_it_declares(gen):
    # HFGenerator shares the policy module: no weights to sync, no memory of its own to release
    asks = ((lambda: gen.sync_weights({}), "SYNC_WEIGHTS"), (gen.sleep, "SLEEP"), (gen.wake_up, "SLEEP"))
    for call, capability in asks:
        with pytest.raises(NotImplementedError, match=f"HFGenerator does not declare Capability.{capability}"):
            call()
    assert check_generator(gen) is gen
    with pytest.raises(TypeError, match=r"lacks capabilities, sync_weights, sleep, wake_up; subclass .*GeneratorBase"):
        check_generator(type("OnlyGenerate", (), {"generate": lambda self, prompts, params: None})())

    class Tagged(GeneratorBase):
        capabilities = frozenset({"sleep"})  # a string, not a Capability

    with pytest.raises(TypeError, match="must hold Capability members"):
        check_generator(Tagged())


def test_generate_layout(gen, tok):
    n = 3
    batch = gen.generate(PROMPTS, SamplingParams(n=n, max_new_tokens=12, seed=0))
    assert isinstance(gen, Generator) and gen.capabilities == frozenset()  # samples the live model
    B, T = len(PROMPTS) * n, batch.response_ids.shape[1]
    assert len(batch) == B and T <= 12
    assert batch.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.prompt_texts == [p for p in PROMPTS for _ in range(n)]
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    P = max(map(len, enc))
    assert batch.prompt_ids.shape == (B, P)
    for r in range(B):
        ids = enc[r // n]
        assert batch.prompt_ids[r, P - len(ids) :].tolist() == ids  # left padded
        assert batch.prompt_mask[r].tolist() == [0] * (P - len(ids)) + [1] * len(ids)
        assert (batch.prompt_ids[r, : P - len(ids)] == tok.pad_token_id).all()
        m = batch.response_mask[r]
        L = int(m.sum())
        assert m.tolist() == [1] * L + [0] * (T - L)  # right padded
        assert (batch.response_ids[r, L:] == tok.pad_token_id).all()
        assert (batch.sampling_logprobs[r, L:] == 0).all() and (batch.sampling_logprobs[r, :L] < 0).all()
        assert batch.texts[r] == tok.decode(batch.response_ids[r, :L].tolist(), skip_special_tokens=True)
    assert batch.sampling_logprobs.dtype == torch.float32 and not batch.sampling_logprobs.requires_grad
    # The n samples of one prompt are different draws.
    assert len({tuple(batch.response_ids[r].tolist()) for r in range(n)}) == n


def test_token_id_prompts_match_string_prompts(gen, tok):
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    params = SamplingParams(n=2, max_new_tokens=6, seed=5)
    a, b = gen.generate(PROMPTS, params), gen.generate(ids, params)
    assert torch.equal(a.input_ids, b.input_ids)
    assert b.prompt_texts[::2] == [tok.decode(i) for i in ids]


def test_eos_stops_rows(tiny_model_dir, tok):
    m = _eos_bias_model(tiny_model_dir, tok, bias=3.5)
    batch = HFGenerator(m, tok).generate(PROMPTS * 4, SamplingParams(n=2, max_new_tokens=16, seed=0))
    lengths = batch.response_lengths
    eos = tok.eos_token_id
    assert 0 < int(batch.truncated.sum()) < len(batch)  # some rows stopped, some ran out
    assert len(set(lengths.tolist())) > 3
    for r in range(len(batch)):
        L = int(lengths[r])
        row = batch.response_ids[r, :L].tolist()
        if batch.truncated[r]:
            assert L == 16 and eos not in row
        else:
            assert row[-1] == eos and eos not in row[:-1]  # EOS kept, and it is the first one
        assert "<|im_end|>" not in batch.texts[r]
    # The recorded log-prob of the EOS token is consistent with a fresh forward pass.
    torch.testing.assert_close(
        batch.sampling_logprobs * batch.response_mask,
        _recomputed(m, batch, 1.0) * batch.response_mask,
        rtol=0,
        atol=1e-4,
    )


def test_certain_eos_stops_loop_early(tiny_model_dir, tok):
    m = _eos_bias_model(tiny_model_dir, tok, bias=100.0)
    g = HFGenerator(m, tok)
    batch = g.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=50, seed=0))
    assert batch.response_ids.shape == (6, 1)
    assert (batch.response_ids[:, 0] == tok.eos_token_id).all() and not batch.truncated.any()
    assert batch.texts == [""] * 6
    # stop_at_eos=False keeps going to max_new_tokens; nothing counts as stopped.
    batch = g.generate(PROMPTS, SamplingParams(max_new_tokens=7, seed=0, stop_at_eos=False))
    assert batch.response_ids.shape == (3, 7) and batch.response_mask.all() and batch.truncated.all()


def test_truncation(tiny_model_dir, tok):
    m = _eos_bias_model(tiny_model_dir, tok, bias=-1e4)
    batch = HFGenerator(m, tok).generate(PROMPTS, SamplingParams(n=2, max_new_tokens=5, seed=0))
    assert batch.response_ids.shape == (6, 5) and batch.truncated.all() and batch.response_mask.all()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=1),
        SamplingParams(n=2, temperature=0.7, max_new_tokens=10, seed=2),
        SamplingParams(n=2, temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=10, seed=3),
        SamplingParams(n=1, temperature=0.0, max_new_tokens=10),
    ],
)
def test_sampling_logprobs_match_recomputed_forward(gen, model, params):
    batch = gen.generate(PROMPTS, params)
    temperature = params.temperature or 1.0  # greedy log-probs are at temperature 1
    mask = batch.response_mask.bool()
    recomputed = _recomputed(model, batch, temperature)
    torch.testing.assert_close(batch.sampling_logprobs[mask], recomputed[mask], rtol=0, atol=1e-4)


def test_seeding(gen):
    p = SamplingParams(n=2, max_new_tokens=10, seed=7)
    a, b = gen.generate(PROMPTS, p), gen.generate(PROMPTS, p)
    c = gen.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=10, seed=8))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.sampling_logprobs, b.sampling_logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_top_k_1_is_greedy(gen):
    greedy = gen.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=8))
    top1 = gen.generate(PROMPTS, SamplingParams(temperature=1.3, top_k=1, max_new_tokens=8, seed=0))
    assert torch.equal(greedy.response_ids, top1.response_ids)


def test_greedy_matches_hf_generate(gen, model, tok):
    batch = gen.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=12))
    enc = tok(PROMPTS, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
    hf = out[:, enc["input_ids"].shape[1] :]
    assert torch.equal(batch.prompt_ids, enc["input_ids"])
    T = min(hf.shape[1], batch.response_ids.shape[1])
    assert T > 0 and torch.equal(batch.response_ids[:, :T], hf[:, :T])


def test_batch_size_chunks(model, tok):
    params = SamplingParams(n=3, temperature=0.0, max_new_tokens=6)
    whole = HFGenerator(model, tok).generate(PROMPTS, params)
    chunked = HFGenerator(model, tok, batch_size=4).generate(PROMPTS, params)
    assert torch.equal(chunked.prompt_index, whole.prompt_index)
    assert torch.equal(chunked.response_ids, whole.response_ids)
    assert torch.equal(chunked.input_ids, whole.input_ids)
    torch.testing.assert_close(chunked.sampling_logprobs, whole.sampling_logprobs, rtol=0, atol=1e-5)


def test_mode_restored_and_outputs_trainable(tiny_model_dir, tok):
    m = load_model(tiny_model_dir).train()
    batch = HFGenerator(m, tok).generate(PROMPTS, SamplingParams(max_new_tokens=5, seed=0))
    assert m.training
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "sampling_logprobs", "truncated"):
        assert not getattr(batch, name).is_inference(), name
    logp = response_logprobs(m, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1])
    (logp * batch.response_mask).sum().backward()  # would fail on inference-mode tensors
    assert m.lm_head.weight.grad is not None
    m.eval()
    HFGenerator(m, tok).generate(PROMPTS[:1], SamplingParams(max_new_tokens=2, seed=0))
    assert not m.training


def test_generate_with_lora(tiny_model_dir, tok):
    m = load_model(tiny_model_dir, lora=LoraSettings(r=4))
    batch = HFGenerator(m, tok).generate(PROMPTS, SamplingParams(n=2, temperature=0.8, max_new_tokens=6, seed=0))
    mask = batch.response_mask.bool()
    torch.testing.assert_close(batch.sampling_logprobs[mask], _recomputed(m, batch, 0.8)[mask], rtol=0, atol=1e-4)


def test_generate_input_errors(gen, model, tok):
    p = SamplingParams(max_new_tokens=2)
    with pytest.raises(ValueError, match="non-empty"):
        gen.generate([], p)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen.generate([[5, 6], []], p)
    with pytest.raises(ValueError, match="mix"):
        gen.generate(["a", [5, 6]], p)
    with pytest.raises(ValueError, match="batch_size"):
        HFGenerator(model, tok, batch_size=0)
    with pytest.raises(ValueError, match="device"):
        HFGenerator(model, tok, device="meta")


# --------------------------------------------------------------- RolloutBatch


def _batch(B=4, P=3, T=5, pad=0, seed=0, extras=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    rmask = (torch.arange(T)[None] < lengths[:, None]).long()
    pl = torch.randint(1, P + 1, (B,), generator=g)
    pmask = (torch.arange(P)[None] >= P - pl[:, None]).long()
    return RolloutBatch(
        prompt_ids=torch.randint(3, 100, (B, P), generator=g).masked_fill(pmask == 0, pad),
        prompt_mask=pmask,
        response_ids=torch.randint(3, 100, (B, T), generator=g).masked_fill(rmask == 0, pad),
        response_mask=rmask.bool(),
        sampling_logprobs=-torch.rand(B, T, generator=g) * rmask,
        truncated=lengths == T,
        prompt_index=torch.arange(B) // 2,
        texts=[f"t{i}" for i in range(B)],
        prompt_texts=[f"p{i // 2}" for i in range(B)],
        pad_id=pad,
        tensors={"score": torch.arange(B).float(), "adv": torch.rand(B, T, generator=g) * rmask} if extras else {},
        meta={"gold": [f"g{i}" for i in range(B)]} if extras else {},
    )


def test_rollout_batch_basics():
    b = _batch()
    assert len(b) == 4 and b.response_mask.dtype == torch.long  # bool masks are stored as long
    assert b.input_ids.shape == b.attention_mask.shape == (4, 8)
    assert torch.equal(b.input_ids[:, 3:], b.response_ids) and torch.equal(b.attention_mask[:, :3], b.prompt_mask)
    assert torch.equal(b.response_lengths, b.response_mask.sum(-1))
    c = b.to("cpu")
    assert c is not b and torch.equal(c.tensors["adv"], b.tensors["adv"]) and c.meta == b.meta


@pytest.mark.parametrize(
    "index, rows",
    [
        (torch.tensor([True, False, True, False]), [0, 2]),
        (torch.tensor([3, 1]), [3, 1]),
        ([2], [2]),
        (1, [1]),
        (slice(1, 3), [1, 2]),
        ([], []),
    ],
)
def test_rollout_batch_select(index, rows):
    b = _batch()
    s = b.select(index)
    assert len(s) == len(rows)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "sampling_logprobs", "truncated"):
        assert torch.equal(getattr(s, name), getattr(b, name)[rows]), name
    assert s.prompt_index.tolist() == b.prompt_index[rows].tolist()
    assert s.texts == [b.texts[i] for i in rows] and s.prompt_texts == [b.prompt_texts[i] for i in rows]
    assert torch.equal(s.tensors["adv"], b.tensors["adv"][rows]) and s.meta["gold"] == [f"g{i}" for i in rows]


def test_rollout_batch_select_errors():
    b = _batch()
    with pytest.raises(ValueError, match="bool mask"):
        b.select(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="out of range"):
        b.select([4])
    with pytest.raises(ValueError, match="integers"):
        b.select(torch.tensor([0.5]))


def test_rollout_batch_cat_repads():
    a, b = _batch(B=2, P=3, T=5, seed=1), _batch(B=3, P=6, T=2, seed=2)
    c = RolloutBatch.cat([a, b])
    assert c.prompt_ids.shape == (5, 6) and c.response_ids.shape == (5, 5)
    # Prompts: extra padding on the left; the real tokens still end at the last column.
    assert torch.equal(c.prompt_ids[:2, 3:], a.prompt_ids) and (c.prompt_ids[:2, :3] == 0).all()
    assert (c.prompt_mask[:2, :3] == 0).all() and torch.equal(c.prompt_ids[2:], b.prompt_ids)
    # Responses: extra padding on the right.
    assert torch.equal(c.response_ids[2:, :2], b.response_ids) and (c.response_ids[2:, 2:] == 0).all()
    assert (c.response_mask[2:, 2:] == 0).all() and (c.sampling_logprobs[2:, 2:] == 0).all()
    assert torch.equal(c.tensors["adv"][2:, :2], b.tensors["adv"]) and (c.tensors["adv"][2:, 2:] == 0).all()
    assert c.tensors["score"].tolist() == [0, 1, 0, 1, 2]
    assert c.texts == a.texts + b.texts and c.meta["gold"] == a.meta["gold"] + b.meta["gold"]
    assert torch.equal(c.response_lengths, torch.cat([a.response_lengths, b.response_lengths]))


def test_cat_of_generations_preserves_logprobs(gen, model):
    a = gen.generate(PROMPTS[:1], SamplingParams(n=2, max_new_tokens=4, seed=0))
    b = gen.generate(PROMPTS[1:], SamplingParams(n=2, max_new_tokens=9, seed=1))
    c = RolloutBatch.cat([a, b])
    mask = c.response_mask.bool()
    torch.testing.assert_close(c.sampling_logprobs[mask], _recomputed(model, c, 1.0)[mask], rtol=0, atol=1e-4)


def test_rollout_batch_cat_errors():
    with pytest.raises(ValueError, match="at least one"):
        RolloutBatch.cat([])
    with pytest.raises(ValueError, match="pad ids"):
        RolloutBatch.cat([_batch(pad=0), _batch(pad=1)])
    with pytest.raises(ValueError, match="keys"):
        RolloutBatch.cat([_batch(), _batch(extras=False)])
    a, b = _batch(T=5), _batch(T=3)
    a.tensors["x"], b.tensors["x"] = torch.zeros(4, 2), torch.zeros(4, 4)
    with pytest.raises(ValueError, match="per-token"):
        RolloutBatch.cat([a, b])


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(response_mask=torch.ones(4, 4)), "response_mask"),
        (dict(sampling_logprobs=torch.zeros(4, 6)), "sampling_logprobs"),
        (dict(prompt_mask=torch.ones(3, 3)), "prompt_mask"),
        (dict(truncated=torch.zeros(4)), "truncated"),
        (dict(prompt_index=torch.zeros(5, dtype=torch.long)), "prompt_index"),
        (dict(texts=["a"]), "texts"),
        (dict(response_ids=torch.zeros(4, 5)), "response_ids"),
        (dict(tensors={"x": torch.zeros(3)}), "tensors"),
        (dict(meta={"gold": [1, 2]}), "meta"),
        (dict(prompt_ids=torch.zeros(4)), "2-D"),
    ],
)
def test_rollout_batch_validation(change, match):
    b = _batch()
    fields = {k: getattr(b, k) for k in b.__dataclass_fields__}
    with pytest.raises(ValueError, match=match):
        RolloutBatch(**{**fields, **change})
