"""The quickstart pipeline wired end to end on a shrunken preset (the real one runs in `make run`)."""

import json

from iprime.presets import QuickstartPreset
from iprime.quickstart import QuickstartConfig, run_quickstart
from iprime.train.sft import SFTConfig


def test_quickstart_writes_summary_metrics_plots_and_model(tmp_path):
    preset = QuickstartPreset(
        sft_examples=64, sft=SFTConfig(lr=3e-3, max_steps=4, batch_size=16, warmup_steps=1),
        eval_prompts=8, corpus_examples=100, max_new_tokens=24,
    )
    qc = QuickstartConfig(preset=preset, train_prompts=32, curve_eval_prompts=4)
    overrides = ("train.steps=2", "train.eval_every=1", "rollout.prompts_per_step=2", "filter.enabled=false")
    summary = run_quickstart(tmp_path / "qs", qc, overrides, log=lambda *a: None)
    out = tmp_path / "qs"
    saved = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "steps", "seconds"):
        assert key in saved and saved[key] == summary[key]
    assert saved["steps"] == 2 and 0.0 <= saved["accuracy_after"] <= 1.0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2] and all("eval/accuracy" in m for m in lines)
    for name in saved["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(saved["plots"]) == 4
    assert (out / "final" / "policy" / "config.json").is_file() and (out / "final" / "prm" / "config.json").is_file()
