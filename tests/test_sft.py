"""SFT: example encoding, jsonl loading, the training loop and accuracy evaluation (the schedule: test_optim.py)."""

from __future__ import annotations

import json

import pytest
import torch

from iprime.data import ArithmeticConfig, ArithmeticTask, JsonlError
from iprime.data.chat import render_prompt
from iprime.models import load_model, load_tokenizer, make_tiny_model
from iprime.train import (
    IGNORE_INDEX,
    SFTConfig,
    collate,
    encode_sft_example,
    evaluate_accuracy,
    load_sft_rows,
    run_sft,
)

# One-step single-digit addition: small enough that a tiny model learns it in seconds.
EASY = ArithmeticTask(ArithmeticConfig(min_ops=1, max_ops=1, digits=1, operators=("+",), test_fraction=0.3))


@pytest.fixture(scope="module")
def easy_model_dir(tmp_path_factory):
    """A tiny model whose tokenizer was fit to the easy task's text."""
    corpus = EASY.corpus(60, seed=0)
    return make_tiny_model(
        tmp_path_factory.mktemp("sft_model"), corpus=corpus, hidden_size=64, intermediate_size=256, seed=0
    )


@pytest.fixture
def model_and_tokenizer(easy_model_dir):
    torch.manual_seed(0)
    return load_model(easy_model_dir), load_tokenizer(easy_model_dir)


# --------------------------------------------------------------------- encoding


def test_encode_masks_the_prompt_and_ends_with_eos(model_and_tokenizer):
    _, tok = model_and_tokenizer
    row = {"prompt": "Compute 3 + 4.", "response": "3 + 4 = 7\nThe answer is \\boxed{7}"}
    ids, labels, truncated = encode_sft_example(tok, row, max_length=256)
    prompt_ids = tok(render_prompt(tok, row["prompt"]), add_special_tokens=False)["input_ids"]
    assert not truncated and len(ids) == len(labels)
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    target = labels[len(prompt_ids) :]
    assert target == ids[len(prompt_ids) :] and target[-1] == tok.eos_token_id
    assert tok.decode(target[:-1]) == row["response"]
    assert render_prompt(tok, row["prompt"]).endswith("<|im_start|>assistant\n")


def test_messages_rows_encode_like_prompt_response_rows(model_and_tokenizer):
    _, tok = model_and_tokenizer
    flat = {"prompt": "Compute 3 + 4.", "response": "\\boxed{7}"}
    chat = {"messages": [{"role": "user", "content": "Compute 3 + 4."}, {"role": "assistant", "content": "\\boxed{7}"}]}
    assert encode_sft_example(tok, flat, 256) == encode_sft_example(tok, chat, 256)


def test_overlong_examples_are_truncated_and_counted(model_and_tokenizer):
    _, tok = model_and_tokenizer
    row = {"prompt": "Compute 3 + 4.", "response": "3 + 4 = 7\n" * 20}
    ids, labels, truncated = encode_sft_example(tok, row, max_length=40)
    assert truncated and len(ids) == len(labels) == 40
    with pytest.raises(ValueError, match="prompt alone"):
        encode_sft_example(tok, row, max_length=5)


def test_collate_right_pads():
    batch = collate([([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [8])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_render_prompt_requires_a_chat_template(model_and_tokenizer):
    _, tok = model_and_tokenizer
    template, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match="chat_template"):
            render_prompt(tok, "hi")
    finally:
        tok.chat_template = template


# ------------------------------------------------------------------------ jsonl


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_sft_rows_reads_both_formats(tmp_path):
    rows = [
        {"prompt": "p", "response": "r"},
        {"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]},
    ]
    path = _write(tmp_path / "ok.jsonl", [json.dumps(r) for r in rows[:1]] + [""] + [json.dumps(r) for r in rows[1:]])
    assert load_sft_rows(path) == rows


@pytest.mark.parametrize(
    "bad, match",
    [
        ('{"prompt": "p", "response": ', "invalid JSON"),
        ('{"prompt": "p"}', "missing field 'response'"),
        ('{"prompt": "p", "response": 3}', "must be a string"),
        ("[1, 2]", "JSON object"),
        ('{"messages": [{"role": "user", "content": "p"}]}', "at least 2"),
        ('{"messages": [{"role": "user", "content": "p"}, {"role": "user", "content": "q"}]}', "assistant"),
        ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "q"}]}', r"messages\[0\]"),
    ],
)
def test_malformed_sft_row_raises_with_line_number(tmp_path, bad, match):
    good = json.dumps({"prompt": "p", "response": "r"})
    path = _write(tmp_path / "bad.jsonl", [good, "", good, bad, good])
    with pytest.raises(JsonlError, match=match) as info:
        load_sft_rows(path)
    assert info.value.line == 4 and "bad.jsonl:4:" in str(info.value)


# ----------------------------------------------------------------- config, schedule


@pytest.mark.parametrize(
    "kwargs",
    [{"lr": 0}, {"epochs": 0}, {"max_steps": 0}, {"batch_size": 0}, {"schedule": "step"}, {"min_lr_ratio": 2.0}],
)
def test_bad_sft_config_raises(kwargs):
    with pytest.raises(ValueError):
        SFTConfig(**kwargs)


def test_num_steps_from_epochs_or_max_steps():
    assert SFTConfig(epochs=2, batch_size=10).num_steps(95) == 19
    assert SFTConfig(epochs=2, batch_size=10, max_steps=7).num_steps(95) == 7


# ---------------------------------------------------------------- training loop


def test_run_sft_is_deterministic_and_logs(easy_model_dir):
    rows = EASY.sft_rows(64, seed=0)
    cfg = SFTConfig(max_steps=6, batch_size=8, log_every=2, warmup_steps=2)
    results = []
    for _ in range(2):
        torch.manual_seed(123)  # a different global seed must not matter
        logs = []
        m = run_sft(load_model(easy_model_dir), load_tokenizer(easy_model_dir), rows, cfg, log=logs.append)
        results.append((m["first_loss"], m["final_loss"], [d["loss"] for d in logs]))
        assert [d["step"] for d in logs] == [2, 4, 6]
        assert set(logs[0]) >= {"step", "loss", "lr", "tokens_per_s", "elapsed_s"}
        assert m["steps"] == 6 and m["examples"] == 64 and m["truncated"] == 0
    assert results[0] == results[1]


def test_run_sft_rejects_bad_rows(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with pytest.raises(ValueError, match="empty"):
        run_sft(model, tok, [], SFTConfig(max_steps=1))
    with pytest.raises(ValueError, match="row 1: missing field 'response'"):
        run_sft(model, tok, [{"prompt": "a", "response": "b"}, {"prompt": "a"}], SFTConfig(max_steps=1))


def test_sft_lowers_loss_and_raises_accuracy(model_and_tokenizer):
    """A short SFT on the easy task: from garbage to mostly-correct boxed answers."""
    torch.set_num_threads(2)
    model, tok = model_and_tokenizer
    test_rows = EASY.rows("test", 24, seed=0)
    before = evaluate_accuracy(model, tok, test_rows, EASY.verify, max_new_tokens=24)
    rows = EASY.sft_rows(400, seed=1)
    m = run_sft(model, tok, rows, SFTConfig(lr=3e-3, max_steps=300, batch_size=32, warmup_steps=10, log_every=50))
    after = evaluate_accuracy(model, tok, test_rows, EASY.verify, max_new_tokens=24, return_samples=True)
    assert m["final_loss"] < 0.5 * m["first_loss"]
    assert before["accuracy"] == 0.0
    assert after["accuracy"] > before["accuracy"]
    assert after["accuracy"] >= 0.3, after["samples"][:4]
    # the format is learned: every greedy answer is boxed and stops before the token limit
    assert after["truncated_frac"] == 0.0
    assert all("\\boxed{" in s["response"] for s in after["samples"])


# ------------------------------------------------------------------- evaluation


def test_evaluate_accuracy_counts_samples(model_and_tokenizer):
    model, tok = model_and_tokenizer
    rows = EASY.rows("test", 5, seed=0)
    calls = []

    def always_right(response, answer):
        calls.append(answer)
        return 1.0

    r = evaluate_accuracy(model, tok, rows, always_right, n=3, temperature=1.0, max_new_tokens=4, batch_size=2)
    assert r["accuracy"] == 1.0 and r["pass_at_n"] == 1.0
    assert r["n_rows"] == 5 and r["n_samples"] == 15 and len(calls) == 15
    assert sorted(calls) == sorted(row["answer"] for row in rows for _ in range(3))
    assert r["truncated_frac"] == 1.0  # an untrained model never stops within 4 tokens
    assert model.training is False


def test_evaluate_accuracy_pass_at_n_and_bad_input(model_and_tokenizer):
    model, tok = model_and_tokenizer
    rows = [{"prompt": "Compute 1 + 1.", "answer": "2"}, {"prompt": "Compute 2 + 2.", "answer": "4"}]
    r = evaluate_accuracy(model, tok, rows, lambda resp, ans: float(ans == "2"), n=2, temperature=1.0, max_new_tokens=2)
    assert r["accuracy"] == 0.5 and r["pass_at_n"] == 0.5
    with pytest.raises(ValueError, match="row 0"):
        evaluate_accuracy(model, tok, [{"prompt": "x"}], lambda *a: 1.0)
    with pytest.raises(ValueError):
        evaluate_accuracy(model, tok, rows, lambda *a: 1.0, n=0)
