"""What a new user meets (issue 26), as they meet it: real ``iprime`` commands, their output sent
to a file and read back. A tiny model and a Eurus-format parquet from the command line, ``train
--model/--data``, what a run says before and while it trains, empty steps that say so, ``prm
score`` and ``eval`` on Eurus-format data, ``data check`` wording, a PRM that travels with its
reference, checkpoint retention; and the README's path from nothing to a smoke-trained policy,
run from its own text."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iprime.cli import app, shortcut_overrides
from iprime.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {"COLUMNS": "200"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def iprime(*args, cwd: Path, log: Path, timeout: int = 600) -> str:
    """Run ``python -m iprime ARGS`` in ``cwd`` as a user would, stdout and stderr into ``log``;
    return what the file holds. A non-zero exit fails the test with the log."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.update(ENV)
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "iprime", *map(str, args)],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
        )
    text = log.read_text()
    assert proc.returncode == 0, f"iprime {' '.join(map(str, args))} exited {proc.returncode}:\n{text}"
    return text


# ----------------------------------------------------------------- 1. from the command line alone
def test_model_tiny_writes_a_model_both_loaders_open(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iprime.models import load_model, load_tokenizer

    result = invoke("model", "tiny", tmp_path / "tiny")
    assert result.exit_code == 0, result.output
    assert f"wrote a randomly initialised tiny model to {tmp_path / 'tiny'}" in " ".join(result.output.split())
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    assert hf.config.model_type == "qwen2" and hf.config.num_hidden_layers == 2 and hf.config.hidden_size == 128
    assert AutoTokenizer.from_pretrained(tmp_path / "tiny").chat_template is not None
    model, tok = load_model(tmp_path / "tiny"), load_tokenizer(tmp_path / "tiny")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    assert tok.decode(tok("Compute 7 + 5.")["input_ids"]) == "Compute 7 + 5."
    again = invoke("model", "tiny", tmp_path / "tiny")  # never over a model
    assert again.exit_code == 2 and "already holds a model" in again.output


@pytest.mark.slow  # a subprocess run, or SFT steps
def test_model_tiny_sft_steps_fine_tune_it(tmp_path):
    import torch

    from iprime.models import load_model

    assert invoke("model", "tiny", tmp_path / "a").exit_code == 0
    result = invoke("model", "tiny", tmp_path / "b", "--sft-steps", "3")
    assert result.exit_code == 0, result.output
    assert "fine-tuned 3 steps" in result.output
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    assert diff > 1e-4  # the same starting weights (seed 0), then 3 AdamW steps at lr up to 3e-3
    assert torch.equal(a.lm_head.weight, load_model(tmp_path / "a").lm_head.weight)  # seeded: the same again


def test_data_example_writes_eurus_rows_that_check_clean(tmp_path):
    from iprime.data.sources import read_records
    from iprime.presets import QUICKSTART
    from iprime.starter import example_rows

    result = invoke("data", "example", tmp_path / "mine.parquet", "--rows", "12")
    assert result.exit_code == 0, result.output
    rows = [r.row for r in read_records(tmp_path / "mine.parquet")]
    assert rows == example_rows(12)
    task_rows = QUICKSTART.make_task().rows("train", 12, seed=0)
    assert rows[3] == {
        "data_source": "iprime/arithmetic",
        "prompt": [{"role": "user", "content": task_rows[3]["prompt"]}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": task_rows[3]["answer"]},
        "extra_info": {"split": "train", "index": 3},
    }
    check = invoke("data", "check", tmp_path / "mine.parquet")
    assert check.exit_code == 0, check.output
    assert "│ math     │   12 │" in check.output and "OK: 12 of 12 rows usable" in check.output
    assert invoke("data", "example", tmp_path / "mine.jsonl").exit_code == 2  # parquet only, said so


def test_train_model_and_data_options_are_the_config_keys():
    assert shortcut_overrides(["train.steps=3"], model="m", data="d.parquet") == [
        "train.steps=3",
        "model.policy=m",
        "data.train_path=d.parquet",
    ]
    cfg = load_config(None, shortcut_overrides([], model="runs/sft", data=None))
    assert cfg.model.policy == "runs/sft" and cfg.model.prm is None and cfg.model.reference == "sft"
    with pytest.raises(ConfigError, match="give one of --model and model.policy="):
        shortcut_overrides(["model.policy=x"], model="y")
    result = invoke("train", "--model", "x", "model.policy=y")
    assert result.exit_code == 2 and "give one of --model and model.policy=" in result.output
    result = invoke("train", "--model", "x")
    assert result.exit_code == 2 and "data.train_path" in result.output and "--data PATH" in result.output


# ------------------------------------------- 2, 3, 7. a run on data its model cannot solve at all
@pytest.mark.slow  # a subprocess run, or SFT steps
def test_an_all_empty_run_says_so_from_start_to_end(tmp_path):
    """A random tiny model on arithmetic: every reward is 0. Issue 26 saw 90 s of silence, then
    ``final policy: ...`` as if all was well, no samples.jsonl and a torch warning."""
    invoke("model", "tiny", tmp_path / "tiny")
    invoke("data", "example", tmp_path / "mine.parquet", "--rows", "6")
    text = iprime(
        "train",
        "--model",
        "tiny",
        "--data",
        "mine.parquet",
        "train.out_dir=runs/empty",
        "train.steps=2",
        "rollout.n=2",
        "rollout.max_new_tokens=8",
        "rollout.max_rounds=1",
        "rollout.oversample=1",
        "train.log_samples_every=1",
        "train.save_every=1",
        "train.keep_checkpoints=1",
        "train.tensorboard=false",
        "optim.warmup_steps=3",
        cwd=tmp_path,
        log=tmp_path / "train.log",
    )
    lines = text.splitlines()
    # before the first step: the dataset against prompts_per_step (16 > 6), then the loads
    assert lines[0] == (
        "training data: 6 rows; a step wants 16 prompts of medium difficulty x 2 responses, from up to 1 round of 16 "
        "prompts"
    )
    assert lines[1].startswith("warning: rollout.prompts_per_step=16 exceeds the 6 rows of the training data")
    assert lines[2:5] == [
        "loading policy from tiny",
        "loading reference: a frozen copy of the starting policy (model.reference=sft)",
        "loading PRM: a copy of the starting policy (model.prm not set)",
    ]
    assert "step 1: round 1 of 1: 16 prompts x 2 sampled, accuracy 0.000, kept 0 groups (0 of 16 for the step)" in text
    for step in (1, 2):
        assert re.search(
            rf"warning: step {step} of 2 was empty: every sampled reward was 0 \(sampled accuracy 0\.000", text
        )
    assert (
        "warning: 2 of 2 steps were empty: every sampled reward was 0; the policy was never updated. See the "
        f"responses in {Path('runs/empty') / 'samples.jsonl'} (every step)" in text
    )
    assert "(unchanged: no step trained it)" in text
    assert "lr_scheduler.step()" not in text  # no scheduler step without an optimizer step
    run = tmp_path / "runs" / "empty"
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4  # 2 groups of K=2 responses per step
    assert all(s["score"] == 0.0 and s["reference"] and s["prompt"].startswith("<|im_start|>user") for s in samples)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # warm-up over 3 updates: base lr / 3 at the first; no update happened, so it stays there
    assert [m["lr"] for m in metrics] == pytest.approx([1e-6 / 3, 1e-6 / 3])
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")) == ["step-000002"]


def test_keep_checkpoints_is_checked():
    with pytest.raises(ConfigError, match="train.keep_checkpoints: must be >= 1"):
        load_config(None, ["train.keep_checkpoints=0"])
    assert load_config(None, []).train.keep_checkpoints == 2


def test_progress_none_keeps_info_lines_out_but_not_warnings(tmp_path, tiny_model_dir):
    from iprime.presets import QUICKSTART
    from iprime.train.prime import PrimeTrainer

    heard = []
    rows = [
        {"prompt": r["prompt"], "answer": r["answer"], "ability": "math"}
        for r in QUICKSTART.make_task().rows("train", 4, seed=0)
    ]
    for progress in ("lines", "none"):
        cfg = load_config(
            None, [f"train.out_dir={tmp_path / progress}", f"train.progress={progress}", "rollout.prompts_per_step=8"]
        )
        heard.append([])
        PrimeTrainer(str(tiny_model_dir), cfg, rows, log=heard[-1].append)
    assert heard[0][0].startswith("training data: 4 rows") and len(heard[0]) == 6
    assert heard[0][1].startswith("warning: rollout.prompts_per_step=8 exceeds the 4 rows")
    assert heard[1] == heard[0][1:2]  # the warning only


# ------------------------------------------------------------------------------- 4. prm score
def test_prm_score_takes_chat_prompts_and_checks_rows_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    from iprime.prm import scoring
    from iprime.prm.metadata import PRMMetadata, save_prm_metadata

    prm = tmp_path / "prm"
    shutil.copytree(tiny_model_dir, prm)
    save_prm_metadata(prm, PRMMetadata(beta=0.05, reference=str(tiny_model_dir), step_delimiter="\n"))
    chat = [{"role": "user", "content": "Compute 1 + 2."}]
    good = [
        {"prompt": chat, "response": "1 + 2 = 3\nThe answer is \\boxed{3}", "label": 1},
        {"prompt": "x", "response": "y"},
    ]
    (tmp_path / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    result = invoke("prm", "score", "--prm", prm, "--data", tmp_path / "good.jsonl", "--out", tmp_path / "view")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "view" / "scores.json").read_text())
    assert len(scores) == 2 and scores[0]["label"] == 1
    assert abs(scores[0]["seq_reward"]) < 1e-6  # the PRM is its own reference: every reward 0
    assert scores[0]["prompt"] == "<|im_start|>user\nCompute 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
    assert "&lt;|im_start|&gt;user\nCompute 1 + 2." in (tmp_path / "view" / "scores.html").read_text()

    bad = [{"prompt": [{"role": "user"}], "response": "x"}, {"prompt": "ok", "response": 3}, {"response": "r"}]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    monkeypatch.setattr(scoring.ImplicitPRM, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    result = invoke("prm", "score", "--prm", prm, "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "v2")
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "3 problem(s) in 3 of 3 rows" in out
    assert "bad.jsonl line 1: prompt[0].content: missing" in out and "line 2: response: must be a string" in out
    assert "line 3: prompt: missing" in out


# ------------------------------------------------------------------------------------ 5. eval
def eurus_validation(path: Path) -> Path:
    """Rows as PRIME's validation parquet holds them (prompt as messages, ground truth nested)."""
    from eurus_data import write_parquet

    rows = [
        {
            "data_source": "numina_olympiads",
            "prompt": [{"role": "user", "content": f"Compute {a} + 1. Present the answer in LaTex format."}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(a + 1)},
            "extra_info": {"split": "test", "index": a},
        }
        for a in range(3)
    ]
    return write_parquet(path, rows)


def test_eval_and_training_read_a_validation_parquet_alike(tmp_path, tiny_model_dir):
    from iprime.eval.benchmarks import load_benchmark
    from iprime.train.evaluate import build_eval_sets
    from iprime.train.scoring import RolloutScorer

    path = eurus_validation(tmp_path / "validation.parquet")
    rows = load_benchmark(str(path), answer_key="reward_model.ground_truth")
    assert [r["id"] for r in rows] == ["0", "1", "2"] and rows[0]["benchmark"] == "validation"
    assert rows[1]["prompt"] == [{"role": "user", "content": "Compute 1 + 1. Present the answer in LaTex format."}]
    assert [r["reference"] for r in rows] == [["1"], ["2"], ["3"]] and rows[0]["verifier"] == "math"
    assert load_benchmark(str(path)) == rows  # answer key auto: reward_model.ground_truth

    cfg = load_config(None, [f"data.eval_path={path}", "train.eval_every=1"])
    (trained,) = build_eval_sets(cfg, None, None, RolloutScorer(cfg))
    assert trained.name == "validation" and trained.prompts == [r["prompt"] for r in rows]
    assert trained.references == ["1", "2", "3"]

    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"q": {"text": "Compute 2 + 2."}, "a": 4}) + "\n")
    (row,) = load_benchmark(str(plain), prompt_key="q.text", answer_key="a", system_prompt="Be brief.")
    assert row["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compute 2 + 2.\n\nPresent the answer in LaTex format: \\boxed{Your answer}"},
    ]

    shipped = load_benchmark("arithmetic", limit=1, system_prompt="Be brief.")[0]["prompt"]
    assert shipped[0] == {"role": "system", "content": "Be brief."} and shipped[1]["content"].startswith("Compute ")

    out = tmp_path / "eval"
    result = invoke(
        "eval", "--model", tiny_model_dir, "--benchmarks", path, "--max-new-tokens", "4", "--workers", "0", "--out", out
    )
    assert result.exit_code == 0, result.output
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["id"] for g in generations] == ["0", "1", "2"] and generations[2]["reference"] == ["3"]


# ------------------------------------------------------------------------------ 6. data check
def test_data_check_words_all_bad_rows_and_an_unknown_ability(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "hi"}], "ability": "poetry", "reward_model": {"ground_truth": "x"}},
        {"prompt": 3, "ability": "math", "reward_model": {"ground_truth": "1"}},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("data", "check", path)
    assert result.exit_code == 2
    assert "prompts: none usable: all 2 rows are bad (the table below says why)" in result.output
    assert "0 strings" not in result.output
    table = [line for line in result.output.splitlines() if "bad.jsonl line 1" in line]
    assert table and "│ ability │ no verifier for this row (ability='poetry'" in table[0]


# ------------------------------------------------------------------------------- 7. portable PRM
def test_a_prm_copied_with_its_policy_finds_its_reference(tmp_path):
    from iprime.prm.metadata import load_prm_metadata, resolve_prm_settings, run_prm_metadata, save_prm_metadata

    final = tmp_path / "machine-a" / "final"
    for role in ("policy", "prm"):
        (final / role).mkdir(parents=True)
    cfg = load_config(None, ["model.reference=policy"])
    save_prm_metadata(final / "prm", run_prm_metadata(cfg, None, final))
    assert json.loads((final / "prm" / "iprime_prm.json").read_text())["reference"] == "../policy"
    copy = shutil.copytree(final, tmp_path / "machine-b" / "final")
    shutil.rmtree(tmp_path / "machine-a")
    assert load_prm_metadata(copy / "prm").reference == str((copy / "policy").resolve())
    assert resolve_prm_settings(copy / "prm").reference == str((copy / "policy").resolve())

    meta = json.loads((copy / "prm" / "iprime_prm.json").read_text())
    (copy / "prm" / "iprime_prm.json").write_text(json.dumps({**meta, "reference": "policy"}))  # edited by hand
    assert resolve_prm_settings(copy / "prm").reference == "policy"  # no prm/policy: kept (a hub id, maybe)
    (copy / "prm" / "policy").mkdir()
    assert resolve_prm_settings(copy / "prm").reference == str((copy / "prm" / "policy").resolve())  # relative first

    sft = tmp_path / "sft"  # a starting model outside the run: absolute, and missing elsewhere
    sft.mkdir()
    save_prm_metadata(copy / "prm", run_prm_metadata(load_config(None, []), str(sft), copy))
    assert load_prm_metadata(copy / "prm").reference == str(sft.resolve())
    sft.rmdir()
    with pytest.raises(ValueError, match=r"reference model .*sft .*is not on this machine: .*give its path with --ref"):
        resolve_prm_settings(copy / "prm")
    assert resolve_prm_settings(copy / "prm", reference="elsewhere").reference == "elsewhere"  # --ref wins
    hub = run_prm_metadata(load_config(None, []), "Qwen/Qwen2.5-Math-7B", copy)
    assert hub.reference == "Qwen/Qwen2.5-Math-7B"


# ------------------------------------------------------------- the README's path, from its text
README_SECTION = "### From nothing to a smoke-trained policy"
SMALLER = {  # the README's sizes -> a test's: the same commands, faster
    "--sft-steps 300": "--sft-steps 20",
    "--rows 64": "--rows 16",
    "train.steps=5": "train.steps=2",
    "--limit 50": "--limit 4",
}


def readme_commands() -> list[list[str]]:
    """The commands of the README's new-user section, as argument lists (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split(README_SECTION, 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.mark.slow  # a subprocess run, or SFT steps
def test_the_readme_path_runs_as_written(tmp_path):
    commands = readme_commands()
    assert [c[:3] for c in commands] == [
        ["iprime", "model", "tiny"],
        ["iprime", "data", "example"],
        ["iprime", "data", "check"],
        ["iprime", "train", "--model"],
        ["iprime", "eval", "--model"],
        ["iprime", "plot", "runs/smoke"],
    ]
    joined = "\n".join(" ".join(c) for c in commands)
    for size in SMALLER:
        assert size in joined, f"the README no longer says {size!r}: update SMALLER"
    for i, command in enumerate(commands):
        line = " ".join(command[1:])
        for size, small in SMALLER.items():
            line = line.replace(size, small)
        iprime(*shlex.split(line), cwd=tmp_path, log=tmp_path / f"{i}.log")
    assert (tmp_path / "runs" / "smoke" / "final" / "policy" / "config.json").is_file()
    assert json.loads((tmp_path / "runs" / "smoke-eval" / "summary.json").read_text())
    assert (tmp_path / "runs" / "smoke" / "plots.png").is_file()
