"""Offline implicit PRM training (CE and DPO) and reranking (best-of-N, weighted vote)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from iprime.cli import app
from iprime.eval.rerank import rerank_groups
from iprime.models import load_model, load_tokenizer
from iprime.prm.offline import OfflinePRMConfig, build_pairs, evaluate_prm_loss, load_labelled_rows, train_prm_offline
from iprime.prm.scoring import ImplicitPRM


def labelled_rows() -> list[dict]:
    """Per prompt: the right answer (label 1) and a carry-dropping wrong one (label 0)."""
    rows = []
    for a, b in [(17, 25), (38, 44), (29, 53), (46, 37), (58, 26), (19, 64)]:
        wrong = (a + b) - 10  # the carry dropped
        for value, label in ((a + b, 1), (wrong, 0)):
            rows.append(
                {
                    "prompt_id": f"{a}+{b}",
                    "prompt": f"Compute {a} + {b}.",
                    "response": f"{a} + {b} = {value}\nThe answer is \\boxed{{{value}}}",
                    "label": label,
                }
            )
    return rows


@pytest.mark.parametrize("loss,steps", [("ce", 6), ("dpo", 3)])
def test_offline_training_lowers_the_loss_and_saves_a_loadable_prm(loss, steps, tiny_model_dir, tmp_path):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    prm, ref, tok = load_model(tiny_model_dir), load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    rows = labelled_rows()[:6]  # 3 prompts: one full batch per step
    config = OfflinePRMConfig(beta=0.5, loss=loss, lr=2e-3, epochs=steps, batch_size=6, seed=0)
    before = evaluate_prm_loss(prm, ref, tok, rows, config)
    result = train_prm_offline(prm, ref, tok, rows, config)
    after = evaluate_prm_loss(prm, ref, tok, rows, config)
    assert before == pytest.approx(math.log(2), abs=1e-5)  # PRM == reference: every logit is 0
    assert result["steps"] == len(result["losses"]) == steps
    assert after < 0.5 * before, (before, after, result["losses"])
    ref_before = load_model(tiny_model_dir)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), ref_before.parameters()))  # never updated

    prm.save_pretrained(tmp_path / "prm")
    tok.save_pretrained(tmp_path / "prm")
    scorer = ImplicitPRM.from_pretrained(tmp_path / "prm", tiny_model_dir, beta=0.5)
    rewards = scorer.sequence_rewards([r["prompt"] for r in rows], [r["response"] for r in rows])
    # the saved PRM ranks each right answer above the wrong one of its prompt
    assert all(rewards[i] > rewards[i + 1] for i in range(0, len(rows), 2)), rewards


def test_a_frozen_prm_is_refused_with_a_clear_error(tiny_model_dir):
    ref, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    prm = load_model(tiny_model_dir).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_prm_offline(prm, ref, tok, labelled_rows(), OfflinePRMConfig(epochs=1))


def test_build_pairs_and_row_loading(tmp_path):
    import random

    rows = labelled_rows() + [{"prompt": "Compute 1 + 1.", "response": "2", "label": 1.0}]
    pairs = build_pairs(rows, max_pairs_per_prompt=16, rng=random.Random(0))
    assert sorted(pairs) == [(i, i + 1) for i in range(0, 12, 2)]  # winner first, same prompt only
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "response": "r", "label": True})
        + "\n"
        + json.dumps({"prompt": "p", "response": "r", "label": 2})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"rows.jsonl:2: 'label' must be a number in \[0, 1\]"):
        load_labelled_rows(path)
    with pytest.raises(ValueError, match="dpo needs"):
        train_prm_offline(None, None, load_tokenizer_stub(), [rows[-1]], OfflinePRMConfig(loss="dpo"))


def load_tokenizer_stub():
    class Tok:  # encode_response needs a chat template, ids and an eos id
        eos_token_id, pad_token_id, chat_template = 1, 0, "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return messages[0]["content"]

        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            ids = [2 + (ord(c) % 50) for c in text]
            out = {"input_ids": ids}
            if return_offsets_mapping:
                out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
            return out

    return Tok()


def test_cli_prm_train(tmp_path, tiny_model_dir):
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in labelled_rows()))
    out = tmp_path / "prm"
    result = CliRunner().invoke(
        app,
        [
            "prm",
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--loss",
            "dpo",
            "--lr",
            "1e-3",
            "--epochs",
            "1",
            "--batch-size",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert load_model(out) is not None and json.loads((out / "prm_training.json").read_text())["steps"] == 2


ROWS = [  # two prompts, four candidates each; the gold of p1 is 6, of p2 is 1/2
    {"prompt_id": "p1", "prompt": "q1", "response": "\\boxed{6}", "reference": "6"},
    {"prompt_id": "p1", "prompt": "q1", "response": "\\boxed{7}", "reference": "6"},
    {"prompt_id": "p1", "prompt": "q1", "response": "\\boxed{7}", "reference": "6"},
    {"prompt_id": "p1", "prompt": "q1", "response": "so \\boxed{6.0}", "reference": "6"},
    {"prompt_id": "p2", "prompt": "q2", "response": "\\boxed{0.5}", "reference": "\\frac{1}{2}"},
    {"prompt_id": "p2", "prompt": "q2", "response": "\\boxed{\\frac{1}{2}}", "reference": "\\frac{1}{2}"},
    {"prompt_id": "p2", "prompt": "q2", "response": "\\boxed{3}", "reference": "\\frac{1}{2}"},
    {"prompt_id": "p2", "prompt": "q2", "response": "no answer", "reference": "\\frac{1}{2}"},
]
REWARDS = [-1.0, 2.0, -4.0, 0.5, 0.0, 0.0, 1.0, 8.0]


def test_rerank_picks_by_hand():
    scores = [1, 0, 0, 1, 1, 1, 0, 0]
    picks, summary = rerank_groups(ROWS, REWARDS, scores=scores)
    p1, p2 = picks
    assert p1["prompt_id"] == "p1" and p1["n"] == 4
    # p1 best-of-N: reward 2.0 (row 1, wrong). Weighted: "6": s(-1)+s(.5)=0.891 > "7": s(2)+s(-4)=0.899? no:
    # s(-1)=0.269, s(0.5)=0.622 -> 0.891; s(2)=0.881, s(-4)=0.018 -> 0.899: "7" wins by weight
    assert p1["best_of_n"]["row"] == 1 and p1["best_of_n"]["correct"] is False
    assert p1["weighted_vote"]["answer"] == "7" and p1["weighted_vote"]["row"] == 1
    # majority: "6" and "6.0" normalize to the same answer: 2-2 tie, "6" was seen first
    assert p1["majority"]["row"] == 0 and p1["majority"]["correct"] is True
    # p2 best-of-N: row 7 (8.0) has no answer -> wrong; "0.5" and "\frac{1}{2}" merge by math
    # equivalence: 2 x s(0) = 1.0 > s(1) = 0.731, and it also wins the majority 2-1
    assert p2["best_of_n"]["row"] == 7 and p2["best_of_n"]["answer"] is None and not p2["best_of_n"]["correct"]
    assert p2["weighted_vote"]["row"] == 4 and p2["weighted_vote"]["correct"]
    assert p2["majority"]["row"] == 4
    assert summary == {
        "groups": 2,
        "responses": 8,
        "mean_accuracy": 0.5,
        "best_of_n_accuracy": 0.0,
        "weighted_vote_accuracy": 0.5,
        "majority_accuracy": 1.0,
    }
    exact, _ = rerank_groups(ROWS, REWARDS, equivalence="exact")
    assert exact[1]["majority"]["row"] == 4  # three singletons tie: the first wins
    assert exact[1]["weighted_vote"]["row"] == 6  # unmerged, 3 (s(1)) beats each half (s(0))


def test_cli_rerank_matches_directly_computed_rewards(tmp_path, tiny_prm_dir, tiny_model_dir, direct_response_logp):
    rows = [{k: v for k, v in r.items() if k != "reference"} for r in ROWS]
    data = tmp_path / "samples.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "prm",
            "rerank",
            "--prm",
            str(tiny_prm_dir),
            "--ref",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--beta",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    picks = [json.loads(line) for line in (out / "picks.jsonl").read_text().splitlines()]
    prm, ref, tok = load_model(tiny_prm_dir), load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    direct = [
        float(
            0.5
            * (
                direct_response_logp(prm, tok, r["prompt"], r["response"])
                - direct_response_logp(ref, tok, r["prompt"], r["response"])
            ).sum()
        )
        for r in rows
    ]
    for pick, start in zip(picks, (0, 4)):
        group = direct[start : start + 4]
        assert pick["best_of_n"]["row"] == start + max(range(4), key=lambda i: (group[i], -i))
        assert pick["best_of_n"]["reward"] == pytest.approx(max(group), abs=1e-4)
    assert "mean_accuracy" not in json.loads((out / "summary.json").read_text())
