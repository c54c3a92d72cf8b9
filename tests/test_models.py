"""iprime.models: tiny model build/load, loader checks, LoRA, chunked log-probs."""

from __future__ import annotations

import json
import shutil
import string

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from iprime.models import (
    LoraSettings,
    load_model,
    load_tokenizer,
    make_tiny_model,
    position_ids_from_mask,
    response_logprobs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------- tiny model


def test_tiny_model_round_trip(tiny_model_dir, model, tok):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(plain).__name__ == "Qwen2ForCausalLM"
    n_params = sum(p.numel() for p in plain.parameters())
    # Defaults (hidden 128, 2 layers, ffn 256, vocab 512) give ~0.43M parameters.
    assert 300_000 < n_params < 5_000_000

    ids = torch.tensor([tok("Compute 1 + 2.\nStep 1:")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=0, atol=0)

    cfg = plain.config
    assert cfg.vocab_size == len(tok) == 512
    assert cfg.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert plain.generation_config.eos_token_id == tok.eos_token_id
    assert type(AutoTokenizer.from_pretrained(tiny_model_dir)) is type(tok)


def test_chat_template_renders(tok):
    messages = [{"role": "user", "content": "Compute 2 + 3."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nCompute 2 + 3.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(messages, tokenize=False) == "<|im_start|>user\nCompute 2 + 3.<|im_end|>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # The chat markers are single special tokens, not byte sequences.
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "user\nCompute 2 + 3.\nassistant\n"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable, max_size=80))
def test_tokenizer_round_trips_printable_ascii(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", ["", " ", "\\boxed{", "  a  \n\n\t b\r\n", "x" * 300, string.printable])
def test_tokenizer_round_trip_edge_cases(tok, text):
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_tokenizer_is_compact_on_arithmetic(tok):
    text = "Compute 12 + 7 * 3.\nStep 1: 7 * 3 = 21\nStep 2: 12 + 21 = 33\nThe answer is \\boxed{33}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) / len(text) < 0.65
    pieces = [tok.decode([i]) for i in ids]
    assert "\\boxed{" in pieces and "Step" in pieces and " answer" in pieces


def test_make_tiny_model_is_deterministic(tmp_path):
    small = dict(hidden_size=32, intermediate_size=64, num_layers=1, vocab_size=300)
    a = make_tiny_model(tmp_path / "a", seed=3, **small)
    b = make_tiny_model(tmp_path / "b", seed=3, **small)
    c = make_tiny_model(tmp_path / "c", seed=4, **small)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    ma, mb, mc = (AutoModelForCausalLM.from_pretrained(p) for p in (a, b, c))
    for (name, pa), pb in zip(ma.named_parameters(), mb.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(ma.lm_head.weight, mc.lm_head.weight)
    assert ma.config.vocab_size == 300


def test_make_tiny_model_custom_corpus(tmp_path):
    out = make_tiny_model(tmp_path / "m", corpus=["hello world"] * 10, hidden_size=32, intermediate_size=64)
    tok = load_tokenizer(out)
    # A tiny corpus cannot fill 512 slots: the model vocab follows the tokenizer.
    assert len(tok) < 512
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(tok)
    assert tok.decode(tok("hello 42 ~")["input_ids"]) == "hello 42 ~"
    with pytest.raises(ValueError, match="corpus"):
        make_tiny_model(tmp_path / "e", corpus=[])


# -------------------------------------------------------------------- loaders


def test_missing_paths_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        load_model("./no/such/model")


def _save_plain_tokenizer(path, **kwargs):
    """A tokenizer dir with no model config, so AutoTokenizer loads tokenizer.json as is."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel()
    t.train_from_iterator(["a b c"], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>", "<pad>"]))
    PreTrainedTokenizerFast(tokenizer_object=t, **kwargs).save_pretrained(path)
    return path


def test_tokenizer_checks(tmp_path):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="no eos token"):
        load_tokenizer(_save_plain_tokenizer(tmp_path / "no_eos", pad_token="<pad>", chat_template=template))
    with pytest.raises(ValueError, match="no chat template"):
        load_tokenizer(_save_plain_tokenizer(tmp_path / "no_tpl", eos_token="<eos>", pad_token="<pad>"))
    # eos but no pad: pad becomes eos (documented standard fix).
    t = load_tokenizer(_save_plain_tokenizer(tmp_path / "no_pad", eos_token="<eos>", chat_template=template))
    assert t.pad_token == t.eos_token == "<eos>"


def test_tiny_tokenizer_without_template_is_rejected(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="chat template"):
        load_tokenizer(d)


def test_load_model_dtype_and_checkpointing(tiny_model_dir):
    m = load_model(tiny_model_dir, dtype="bfloat16", gradient_checkpointing=True)
    assert next(m.parameters()).dtype == torch.bfloat16
    assert m.config.use_cache is False
    assert all(layer.gradient_checkpointing for layer in m.model.layers)
    assert next(load_model(tiny_model_dir, dtype=torch.float16).parameters()).dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny_model_dir, dtype="float8")

    # Checkpointed training forward + backward through the chunked log-probs.
    m = load_model(tiny_model_dir, gradient_checkpointing=True).train()
    ids = torch.randint(3, 500, (2, 8))
    logp = response_logprobs(m, ids, torch.ones_like(ids), 3)
    logp.sum().backward()
    assert m.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------- LoRA


def test_lora_only_adapters_trainable(tiny_model_dir, model):
    m = load_model(tiny_model_dir, lora=LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert any(f"{proj}.lora_" in n for n in trainable), proj

    batch = _left_padded_batch(prompt_lens=[4, 2], T=3)
    # Make the adapter non-trivial (LoRA B starts at zero) so peft must actually be applied.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    logp = response_logprobs(m, *batch, 3)
    torch.testing.assert_close(logp, _naive_logp(m, *batch, 3)[0], rtol=0, atol=1e-5)
    with torch.no_grad():  # the adapters really are in the computation
        assert (logp - response_logprobs(model, *batch, 3)).abs().max() > 1e-3
    logp.sum().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="LoraSettings.r"):
        LoraSettings(r=0)


# -------------------------------------------------------------- log-probs


def _left_padded_batch(prompt_lens, T, resp_lens=None, pad=0, seed=0):
    """[B, P+T] ids/mask: left-padded prompts of `prompt_lens`, right-padded responses."""
    g = torch.Generator().manual_seed(seed)
    B, P = len(prompt_lens), max(prompt_lens)
    resp_lens = resp_lens or [T] * B
    ids = torch.randint(3, 500, (B, P + T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompt_lens, resp_lens)):
        mask[b, : P - p] = 0
        mask[b, P + r :] = 0
    return ids.masked_fill(mask == 0, pad), mask


def _naive_logp(model, ids, mask, T, temperature=1.0):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float() / temperature
    logp_all = F.log_softmax(logits[:, -T - 1 : -1], dim=-1)
    return logp_all.gather(-1, ids[:, -T:, None]).squeeze(-1), logp_all


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_match_naive(model, chunk_size, temperature):
    T = 5
    ids, mask = _left_padded_batch(prompt_lens=[6, 1, 3, 6], T=T, resp_lens=[5, 2, 4, 1])
    logp, ent = response_logprobs(
        model, ids, mask, T, temperature=temperature, chunk_size=chunk_size, return_entropy=True
    )
    naive, logp_all = _naive_logp(model, ids, mask, T, temperature)
    naive_ent = -(logp_all.exp() * logp_all).sum(-1)
    assert logp.shape == ent.shape == (4, T) and logp.dtype == torch.float32
    torch.testing.assert_close(logp, naive, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, naive_ent, rtol=0, atol=1e-5)


def test_left_padding_does_not_change_logprobs(model):
    ids, mask = _left_padded_batch(prompt_lens=[2, 6], T=4)
    padded = response_logprobs(model, ids, mask, 4)
    alone = response_logprobs(model, ids[:1, 4:], mask[:1, 4:], 4)  # row 0 without its padding
    torch.testing.assert_close(padded[:1], alone, rtol=0, atol=1e-5)


def test_logprob_gradients_match_naive(tiny_model_dir):
    m = load_model(tiny_model_dir)
    ids, mask = _left_padded_batch(prompt_lens=[3, 5], T=4, resp_lens=[4, 2])
    w = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))

    def grads(fn):
        m.zero_grad()
        fn().backward()
        return [p.grad.clone() for p in (m.lm_head.weight, m.model.layers[1].mlp.up_proj.weight)]

    chunked = grads(lambda: (w * response_logprobs(m, ids, mask, 4, chunk_size=3, temperature=0.7)).sum())
    naive = grads(lambda: (w * _naive_logp(m, ids, mask, 4, 0.7)[0]).sum())
    for a, b in zip(chunked, naive):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    _, ent = response_logprobs(m, ids, mask, 4, chunk_size=2, return_entropy=True)
    assert ent.requires_grad


def test_logprobs_input_errors(model):
    ids, mask = _left_padded_batch(prompt_lens=[2], T=2)
    with pytest.raises(ValueError, match="response_len"):
        response_logprobs(model, ids, mask, 4)
    with pytest.raises(ValueError, match="response_len"):
        response_logprobs(model, ids, mask, 0)
    with pytest.raises(ValueError, match="attention_mask"):
        response_logprobs(model, ids, mask[:, 1:], 2)
    with pytest.raises(ValueError, match="temperature"):
        response_logprobs(model, ids, mask, 2, temperature=0.0)
    with pytest.raises(ValueError, match="decoder body and lm_head"):
        response_logprobs(torch.nn.Linear(2, 2), ids, mask, 2)


def test_position_ids_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]
