"""What a run writes to read and reuse its rollouts and models: samples.jsonl rows (prompt, reference,
response, score, the verifier's reason, the PRM's per-token rewards) and each checkpoint in Hugging
Face format (checkpoints/step-N/hf/{policy,prm})."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import ROWS, parity_verifier, tiny_config

from iprime.data.chat import render_prompt
from iprime.rollout.types import RolloutBatch
from iprime.train.collect import sample_records, token_reward_fields
from iprime.train.prime import PrimeTrainer
from iprime.verifiers import RowScoring, score_row_detailed

pytestmark = pytest.mark.usefixtures("one_thread")


def make_config(out_dir, *overrides: str):
    return tiny_config(out_dir, "train.steps=2", "train.progress=none", "rollout.max_new_tokens=6", *overrides)


def read_samples(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ the rows, from a hand-made batch


def test_token_reward_fields_all_or_the_most_negative():
    tokens, rewards = ["a", "b", "c", "d"], [0.5, -0.123456, -0.00001, -2.0]
    full = token_reward_fields(tokens, rewards)
    assert full == {"token_rewards": [["a", 0.5], ["b", -0.1235], ["c", 0.0], ["d", -2.0]]}
    assert json.dumps(full["token_rewards"][2]) == '["c", 0.0]'  # not -0.0
    assert token_reward_fields(tokens, rewards, lowest=2) == {"lowest_tokens": [[3, "d", -2.0], [1, "b", -0.1235]]}
    assert token_reward_fields(tokens, rewards, lowest=9)["lowest_tokens"][-1] == [0, "a", 0.5]  # all, sorted
    with pytest.raises(ValueError, match="4 tokens but 3 rewards"):
        token_reward_fields(tokens, rewards[:3])


def test_sample_records_of_a_batch(tok):
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in ("one", " two", " three")]
    eos = tok.eos_token_id
    B, K = 6, 2  # three groups of two
    response_ids = torch.tensor([[ids[0], ids[1], eos]] * B)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]] * 3)
    rewards = torch.tensor([[0.1, -0.2, 0.333333], [-1.0, 0.5, 0.0]] * 3) * mask
    batch = RolloutBatch(
        prompt_ids=torch.ones(B, 2, dtype=torch.long),
        prompt_mask=torch.ones(B, 2),
        response_ids=response_ids,
        response_mask=mask,
        sampling_logprobs=torch.zeros(B, 3),
        truncated=torch.tensor([False, True] * 3),
        prompt_index=torch.arange(B) // K,
        texts=[f"response {i}" for i in range(B)],
        prompt_texts=[f"prompt {i // K}" for i in range(B)],
        pad_id=0,
        tensors={"outcome": torch.tensor([1.0, 0.0, 0.5, 0.25, 1.0, 1.0])},
        meta={"row": [7, 7, 3, 3, 5, 5], "reason": [f"reason {i}" for i in range(B)]},
    )
    references = [f"ref {i}" for i in range(10)]
    rows = sample_records(batch, references, tok, groups=2, group_size=K, token_rewards=rewards)
    assert len(rows) == 4  # two groups of K
    one, two, eos_text = (tok.decode([i]) for i in (ids[0], ids[1], eos))
    assert rows[0] == {
        "group": 0,
        "row": 7,
        "prompt": "prompt 0",
        "reference": "ref 7",
        "response": "response 0",
        "score": 1.0,
        "reason": "reason 0",
        "ended": True,
        "token_rewards": [[one, 0.1], [two, -0.2], [eos_text, 0.3333]],
    }
    assert rows[1]["token_rewards"] == [[one, -1.0], [two, 0.5]] and rows[1]["ended"] is False  # the mask ends it
    assert [(r["group"], r["row"], r["reference"]) for r in rows[2:]] == [(1, 3, "ref 3"), (1, 3, "ref 3")]
    lowest = sample_records(batch, references, tok, groups=1, group_size=K, token_rewards=rewards, lowest_tokens=1)
    assert [r["lowest_tokens"] for r in lowest] == [[[1, two, -0.2]], [[0, one, -1.0]]]
    plain = sample_records(batch, references, tok, groups=5, group_size=K)  # no PRM; more groups than there are
    assert len(plain) == B and not any("token_rewards" in r or "lowest_tokens" in r for r in plain)


# ------------------------------------------------------------------ samples.jsonl of a run


def test_samples_jsonl_rows_have_what_a_debugger_needs(tiny_model_dir, tiny_prm_dir, tok, tmp_path):
    from iprime.models import load_model

    cfg = make_config(
        tmp_path, "train.steps=3", "train.log_samples_every=2", "train.log_sample_groups=2", "data.verifier=math"
    )
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, prm_model=load_model(tiny_prm_dir))
    trainer.train(progress=False)
    rows = read_samples(tmp_path)
    assert [r["step"] for r in rows] == [2] * 8  # every 2 steps: 2 groups of K=4
    assert [r["group"] for r in rows] == [0] * 4 + [1] * 4
    scoring = RowScoring(verifier="math")
    for r in rows:
        source = ROWS[r["row"]]
        assert r["prompt"] == render_prompt(tok, source["prompt"]) and r["reference"] == source["answer"]
        again = score_row_detailed(r["response"], source, scoring)  # what the verifier says, recorded
        assert r["score"] == again.score and r["reason"] == again.reason and r["reason"]
        rewards = [x for _, x in r["token_rewards"]]
        assert 1 <= len(rewards) <= 6 and all(isinstance(t, str) for t, _ in r["token_rewards"])
        assert all(x == round(x, 4) for x in rewards)
    # a PRM other than the reference gives non-zero rewards
    assert any(x != 0 for r in rows for _, x in r["token_rewards"])
    assert all(len({r["row"] for r in rows[g * 4 : g * 4 + 4]}) == 1 for g in range(2))  # whole groups


def test_lowest_tokens_are_the_most_negative_of_the_same_run(tiny_model_dir, tiny_prm_dir, tmp_path):
    from iprime.models import load_model

    runs = {}
    for k in (0, 2):
        cfg = make_config(
            tmp_path / str(k), "train.steps=1", "train.log_samples_every=1", f"train.log_sample_tokens={k}"
        )
        PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier, prm_model=load_model(tiny_prm_dir)).train(
            progress=False
        )
        runs[k] = read_samples(tmp_path / str(k))
    assert len(runs[0]) == len(runs[2]) == 2 * 4  # the default: 2 groups
    for full, short in zip(runs[0], runs[2]):
        assert full["response"] == short["response"] and "token_rewards" not in short
        ranked = sorted(enumerate(full["token_rewards"]), key=lambda p: (p[1][1], p[0]))[:2]
        assert short["lowest_tokens"] == [[i, t, x] for i, (t, x) in ranked]


def test_without_a_prm_rows_have_no_token_rewards(tiny_model_dir, tmp_path):
    cfg = make_config(
        tmp_path, "train.steps=1", "train.log_samples_every=1", "prm.enabled=false", "algo.estimator=rloo"
    )
    PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier).train(progress=False)
    rows = read_samples(tmp_path)
    assert len(rows) == 8 and all("token_rewards" not in r and "lowest_tokens" not in r for r in rows)
    assert all(r["score"] == parity_verifier(r["response"], r["reference"]) for r in rows)


# ------------------------------------------------------------------ checkpoints in Hugging Face format


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_each_checkpoint_is_also_a_hugging_face_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from iprime.prm.metadata import load_prm_metadata

    cfg = make_config(tmp_path, "train.steps=3", "train.save_every=1")
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)
    trainer.train(progress=False)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000002", "step-000003"]  # pruned as before
    for step in ("step-000002", "step-000003"):
        hf = root / step / "hf"
        assert sorted(p.name for p in hf.iterdir()) == ["policy", "prm"] and not (root / step / ".hf-partial").exists()
        saved = torch.load(root / step / "state.pt", weights_only=True)
        for role in ("policy", "prm"):
            loaded = AutoModelForCausalLM.from_pretrained(hf / role).state_dict()
            assert all(torch.equal(loaded[k], v) for k, v in saved[role].items()), (step, role)
        assert load_prm_metadata(hf / "prm").beta == 0.5
    # the newest one is the trained policy: the same log-probs from plain transformers
    ids = torch.tensor([trainer.tokenizer("Compute 2 + 3.")["input_ids"]])
    policy = AutoModelForCausalLM.from_pretrained(root / "step-000003" / "hf" / "policy")
    torch.testing.assert_close(logits(policy, ids), logits(trainer.policy.eval(), ids), rtol=0, atol=0)
    # hf/ is no part of the checkpoint proper: it verifies and resumes as before
    again = PrimeTrainer(str(tiny_model_dir), make_config(tmp_path, "train.steps=4"), ROWS, parity_verifier)
    assert again.resume() and again.step == 3


def test_a_prm_read_against_the_policy_names_the_checkpoints_policy(tiny_model_dir, tmp_path):
    from iprime.prm.metadata import load_prm_metadata

    cfg = make_config(tmp_path, "train.steps=1", "train.save_every=1", "model.reference=policy")
    PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier).train(progress=False)
    hf = tmp_path / "checkpoints" / "step-000001" / "hf"
    assert load_prm_metadata(hf / "prm").reference == str((hf / "policy").resolve())  # not the partial directory


def test_save_hf_false_writes_the_checkpoint_only(tiny_model_dir, tmp_path):
    cfg = make_config(tmp_path, "train.steps=1", "train.save_every=1", "train.save_hf=false")
    PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier).train(progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "step-000001").iterdir()) == ["manifest.json", "state.pt"]
