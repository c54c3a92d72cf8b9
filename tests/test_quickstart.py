"""The quickstart pipeline wired end to end on a shrunken preset (the real one runs in `make run`)."""

import json

import torch

from iprime.data import ArithmeticTask
from iprime.models import load_model, load_tokenizer
from iprime.presets import QuickstartPreset
from iprime.quickstart import QuickstartConfig, run_quickstart
from iprime.train.evaluate import evaluate_accuracy
from iprime.train.sft import SFTConfig


def length_answer_parity(response: str, answer) -> float:
    """A stand-in verifier that depends on the rows (their answers) and on the model (its
    responses' lengths): a 4-step SFT model scores 0 with the task's real verifier, which would
    make every accuracy check below vacuous; with this one the accuracies lie strictly between
    0 and 1."""
    return float((len(response) + int(answer)) % 2 == 0)


def test_quickstart_writes_summary_metrics_plots_and_model(tmp_path, monkeypatch):
    monkeypatch.setattr(ArithmeticTask, "verify", staticmethod(length_answer_parity))
    preset = QuickstartPreset(
        sft_examples=64,
        sft=SFTConfig(lr=3e-3, max_steps=4, batch_size=16, warmup_steps=1),
        eval_prompts=8,
        corpus_examples=100,
        max_new_tokens=24,
    )
    qc = QuickstartConfig(preset=preset, train_prompts=32, curve_eval_prompts=4)
    overrides = ("train.steps=2", "train.eval_every=1", "rollout.prompts_per_step=2", "filter.enabled=false")
    summary = run_quickstart(tmp_path / "qs", qc, overrides, log=lambda *a: None)
    out = tmp_path / "qs"
    saved = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "steps", "seconds"):
        assert key in saved and saved[key] == summary[key]
    assert saved["steps"] == 2
    # The reported accuracies are those of the saved models on the held-out rows, re-evaluated here.
    tok = load_tokenizer(out / "sft")
    rows = preset.held_out_rows()
    assert len(rows) == saved["eval_prompts"] == 8
    for key, model_dir in (("accuracy_before", out / "sft"), ("accuracy_after", out / "final" / "policy")):
        again = evaluate_accuracy(
            load_model(model_dir),
            tok,
            rows,
            length_answer_parity,
            max_new_tokens=preset.max_new_tokens,
            return_samples=True,
        )
        assert 0.0 < saved[key] < 1.0, (key, saved[key])  # informative, not 0 or 1
        assert again["accuracy"] == saved[key], key
        by_hand = [length_answer_parity(s["response"], row["answer"]) for s, row in zip(again["samples"], rows)]
        assert sum(by_hand) / len(rows) == saved[key], key
    policy, sft = load_model(out / "final" / "policy"), load_model(out / "sft")
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), sft.parameters()))  # PRIME moved it
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2] and all("eval/accuracy" in m for m in lines)
    for name in saved["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(saved["plots"]) == 4
    assert (out / "final" / "policy" / "config.json").is_file() and (out / "final" / "prm" / "config.json").is_file()
