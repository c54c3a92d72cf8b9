"""The command line: ``iprime train``'s output folder rules, its log without a terminal, its
last words and hub push; ``sft``, ``prm train`` / ``prm rerank`` summaries as tables; ``prm score
--samples`` drawing a run's recorded token rewards."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iprime import cli
from iprime.cli import app, is_iprime_run, prepare_out_dir
from iprime.config import load_config, save_config

ENV = {"COLUMNS": "200"}  # rich wraps at the terminal width; keep messages on one line


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def one_line(text: str) -> str:
    """Output with rich's line wrapping undone, for substring checks."""
    return " ".join(text.split())


def test_algo_demo_prints_the_worked_group():
    result = invoke("algo-demo", "--beta", "0.5")
    assert result.exit_code == 0, result.output
    assert "PRIME on one group" in result.output and "PRM CE loss: 0.5180" in result.output
    assert "[0.2, 0.8] accuracy filter" in result.output  # printed as text, not eaten as markup


def test_train_reports_config_errors_by_key():
    result = invoke("train", "algo.estimatr=rloo")
    assert result.exit_code == 2 and "unknown config key 'algo.estimatr'" in result.output
    result = invoke("train", "rollout.n=abc")
    assert result.exit_code == 2 and "rollout.n" in result.output


def test_train_needs_a_model_and_data():
    result = invoke("train")
    assert result.exit_code == 2 and "model.policy" in result.output


# ----------------------------------------------------------------------------- the output folder
def make_run_dir(path: Path) -> Path:
    """A folder as ``iprime train`` leaves it: config.yaml, metrics.jsonl, a checkpoint dir."""
    path.mkdir(parents=True)
    save_config(load_config(None, [f"train.out_dir={path}"]), path / "config.yaml")
    (path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (path / "checkpoints" / "step-000001").mkdir(parents=True)
    return path


def train_args(out_dir: Path, data: Path | str = "data.jsonl", *extra: str) -> list[str]:
    return ["train", "model.policy=some/model", f"data.train_path={data}", f"train.out_dir={out_dir}", *extra]


def test_a_second_train_into_a_used_folder_is_refused(tmp_path):
    run = make_run_dir(tmp_path / "run")
    result = invoke(*train_args(run))
    text = one_line(result.output)
    assert result.exit_code == 2, result.output
    assert f"train.out_dir {run} is not empty" in text and "--resume" in text and "--overwrite" in text
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'  # untouched


def test_overwrite_refuses_a_folder_that_is_not_an_iprime_run(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    (home / "checkpoints").mkdir()  # other tools make one too: not enough to call it a run
    result = invoke(*train_args(home), "--overwrite")
    assert result.exit_code == 2 and "does not look like an iprime run" in one_line(result.output)
    assert (home / "notes.txt").read_text() == "mine"
    (home / "config.yaml").write_text("learning_rate: 0.1\n")  # someone else's config
    assert not is_iprime_run(home)
    assert invoke(*train_args(home), "--overwrite").exit_code == 2 and (home / "notes.txt").exists()


def test_overwrite_never_deletes_the_working_directory(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run")
    monkeypatch.chdir(run)
    result = invoke(*train_args(Path("."), "x.jsonl", "--overwrite"))
    assert result.exit_code == 2 and "working directory" in one_line(result.output)
    monkeypatch.chdir(run / "checkpoints")
    assert invoke(*train_args(run, "x.jsonl", "--overwrite")).exit_code == 2
    assert (run / "config.yaml").is_file()


def test_overwrite_keeps_the_config_file_it_reads(tmp_path):
    run = make_run_dir(tmp_path / "run")
    mine = run / "my_run.yaml"
    mine.write_text(f"train:\n  out_dir: {run}\n")
    with pytest.raises(ValueError, match="the config this command reads"):
        prepare_out_dir(run, resume=False, overwrite=True, config_file=str(mine))
    assert mine.is_file()


def test_prepare_out_dir(tmp_path):
    assert prepare_out_dir(tmp_path / "new", resume=False, overwrite=False) is None  # a new folder
    (tmp_path / "empty").mkdir()
    assert prepare_out_dir(tmp_path / "empty", resume=False, overwrite=False) is None
    run = make_run_dir(tmp_path / "run")
    assert is_iprime_run(run)
    assert prepare_out_dir(run, resume=True, overwrite=False) is None  # has a checkpoint
    note = prepare_out_dir(run, resume=False, overwrite=True)
    assert note == f"--overwrite: deleted the previous run in {run}" and list(run.iterdir()) == []  # emptied
    with pytest.raises(ValueError, match="give one of them"):
        prepare_out_dir(run, resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        prepare_out_dir(tmp_path / "file", resume=False, overwrite=False)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    result = invoke(*train_args(tmp_path / "nothing"), "--resume")
    text = one_line(result.output)
    assert result.exit_code == 2 and "--resume: no checkpoint in" in text and "does not exist" in text
    run = tmp_path / "started"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    result = invoke(*train_args(run), "--resume")
    assert result.exit_code == 2 and f"no checkpoint in {run / 'checkpoints'}" in one_line(result.output)


class FakeTrainer:
    """Stands in for PrimeTrainer: records what the command asks of it, writes a run folder."""

    calls: list = []

    def __init__(self, model, cfg, records, log=None):
        self.cfg, self.prm = cfg, object()
        self.dist = types.SimpleNamespace(is_main=True)
        FakeTrainer.calls.append(("init", model, len(records)))

    def train(self, *, resume, progress, allow_change=()):
        FakeTrainer.calls.append(("train", resume, progress))
        out = Path(self.cfg.train.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, out / "config.yaml")
        return []  # the metrics of the steps run: none here

    def save_pretrained(self, directory):
        for name in ("policy", "prm"):
            (Path(directory) / name).mkdir(parents=True)
        return Path(directory)


@pytest.fixture
def fake_trainer(monkeypatch, tmp_path):
    import iprime.train.prime

    FakeTrainer.calls = []
    monkeypatch.setattr(iprime.train.prime, "PrimeTrainer", FakeTrainer)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Compute {i} + 1.", "answer": str(i + 1)}) + "\n" for i in range(3)))
    return data


def test_overwrite_replaces_the_run_and_the_end_says_where_final_is(fake_trainer, tmp_path):
    run = make_run_dir(tmp_path / "run")
    result = invoke(*train_args(run, fake_trainer, "train.progress=lines"), "--overwrite")
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    assert f"deleted the previous run in {run}" in text
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()  # the old run is gone
    assert FakeTrainer.calls == [("init", "some/model", 3), ("train", False, "lines")]
    assert f"final policy: {run / 'final' / 'policy'}" in text and f"final PRM: {run / 'final' / 'prm'}" in text


def test_resume_continues_the_run_in_place(fake_trainer, tmp_path):
    run = make_run_dir(tmp_path / "run")
    result = invoke(*train_args(run, fake_trainer), "--resume")
    assert result.exit_code == 0, result.output
    assert ("train", True, "auto") in FakeTrainer.calls and (run / "metrics.jsonl").is_file()


def test_push_to_hub_after_training(fake_trainer, tmp_path, monkeypatch):
    pushed = []

    def push_to_hub(final_dir, repo_id, *, private):
        pushed.append((Path(final_dir), repo_id, private))
        return [f"https://huggingface.co/{repo_id}", f"https://huggingface.co/{repo_id}-prm"]

    monkeypatch.setattr(cli, "push_to_hub", push_to_hub)
    run = tmp_path / "run"
    result = invoke(*train_args(run, fake_trainer, "train.push_to_hub=me/tiny", "train.hub_private=false"))
    assert result.exit_code == 0, result.output
    assert pushed == [(run / "final", "me/tiny", False)]
    assert "pushed: https://huggingface.co/me/tiny-prm" in result.output

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(cli, "push_to_hub", offline)
    result = invoke(*train_args(tmp_path / "run2", fake_trainer, "train.push_to_hub=me/tiny"))
    text = one_line(result.output)
    assert result.exit_code == 1 and "push to the hub failed: no network" in text and "final" in text


# ---------------------------------------------------------------------- a real run into a log file
STEP_LINE = re.compile(r"^(?:\w+ )?step (\d+)/(\d+)\b")


def test_train_into_a_log_file_prints_one_line_per_step(tiny_model_dir, tmp_path):
    """The way jobs run (nohup, a scheduler): stdout and stderr go to a file, no terminal."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Compute {i} + 1.", "answer": str(i + 1)}) + "\n" for i in range(8)))
    run = tmp_path / "run"
    overrides = [
        f"model.policy={tiny_model_dir}",
        f"data.train_path={data}",
        f"train.out_dir={run}",
        "data.verifier=math",
        "train.steps=3",
        "train.save_every=0",
        "train.tensorboard=false",
        "verify.workers=0",
        "rollout.n=2",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=4",
        "filter.enabled=false",
        "optim.micro_batch_size=4",
        "optim.mini_batch_size=4",
    ]
    log = tmp_path / "train.log"
    env = {
        k: v for k, v in __import__("os").environ.items() if k not in ("FORCE_COLOR", "HF_HUB_DISABLE_PROGRESS_BARS")
    }
    with log.open("w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "iprime", "train", *overrides],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**env, "OMP_NUM_THREADS": "1"},
            timeout=600,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    steps = [int(m.group(1)) for line in text.splitlines() if (m := STEP_LINE.match(line))]
    assert steps == [1, 2, 3], text[-3000:]
    assert "\x1b[" not in text and "\r" not in text  # no terminal codes, no redrawn bars
    assert "Loading weights" not in text and "Writing model shards" not in text
    assert f"final policy: {run / 'final' / 'policy'}" in text
    assert (run / "final" / "policy" / "config.json").is_file()

    again = subprocess.run(
        [sys.executable, "-m", "iprime", "train", *overrides], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 2 and "is not empty" in again.stdout + again.stderr


# ----------------------------------------------------------------------------- tables, not dicts
def test_sft_takes_a_max_length_and_ends_with_a_table(tiny_model_dir, tmp_path, monkeypatch):
    import iprime.train.sft as sft

    seen = {}
    real = sft.SFTRun.train

    def spy(run, **kwargs):
        seen["config"], seen["kwargs"] = run.config, kwargs
        return real(run, **kwargs)

    monkeypatch.setattr(sft.SFTRun, "train", spy)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} + 1 =", "response": str(i + 1)}) + "\n" for i in range(8)))
    result = invoke(
        "sft",
        "--model",
        tiny_model_dir,
        "--data",
        data,
        "--out",
        tmp_path / "out",
        "--batch-size",
        "4",
        "--max-length",
        "32",
    )
    assert result.exit_code == 0, result.output
    assert seen["config"].max_length == 32 and seen["config"].lr == 1e-5
    assert seen["kwargs"] == {"resume": False, "progress": "auto"}
    assert "{'" not in result.output and "'step':" not in result.output  # no raw dicts
    assert re.search(r"final_loss\s+\S*\s*\d+\.\d{4}\b", result.output), result.output
    assert re.search(r"^SFT step 2/2\b", result.output, re.M), result.output  # lines: not a terminal
    assert (tmp_path / "out" / "config.json").is_file()


def test_prm_train_and_rerank_print_tables(tiny_model_dir, tmp_path):
    rows = [
        {"prompt_id": "p", "prompt": "q", "response": r, "label": lab, "reference": "6"}
        for r, lab in (("\\boxed{6}", 1), ("\\boxed{7}", 0), ("so \\boxed{6}", 1), ("\\boxed{8}", 0))
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prm"
    result = invoke("prm", "train", "--model", tiny_model_dir, "--data", data, "--out", out, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "{'" not in result.output and re.search(r"^PRM step 2\b.*loss \d+\.\d{4}", result.output, re.M)
    assert re.search(r"final_loss\s+\S*\s*\d+\.\d{4}\b", result.output), result.output
    result = invoke("prm", "rerank", "--prm", out, "--data", data, "--out", tmp_path / "rr", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "{'" not in result.output and re.search(r"mean_accuracy\s+\S*\s*0\.5000", result.output), result.output


# ------------------------------------------------------------------------- prm score --samples
def sample_rows() -> list[dict]:
    """Rows as a run writes them to samples.jsonl: step 2 has full token rewards (one of them
    null: a non-finite reward), step 4 only the most negative tokens, step 6 nothing (no PRM)."""
    full = [["The", 0.1], [" answer", -0.2], [" is\n", 0.05], ["\\boxed{", -0.9], ["7}", None], ["", 0.3]]
    common = {"group": 0, "prompt": [{"role": "user", "content": "What is 3 + 4?"}], "reference": "7"}
    return [
        {
            "step": 2,
            **common,
            "response": "The answer is\n\\boxed{7}",
            "score": 1.0,
            "reason": "correct",
            "token_rewards": full,
        },
        {
            "step": 4,
            **common,
            "response": "It is 8",
            "score": 0.0,
            "reason": "wrong answer",
            "lowest_tokens": [[2, " 8", -1.25]],
        },
        {"step": 6, **common, "response": "9", "score": 0.0, "reason": "wrong answer"},
    ]


def write_samples(run: Path, rows: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    save_config(load_config(None, ["prm.beta=0.25"]), run / "config.yaml")  # step delimiter: "\n"
    path = run / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prm_score_draws_the_rewards_a_run_recorded(tmp_path):
    samples = write_samples(tmp_path / "run", sample_rows())
    result = invoke("prm", "score", "--samples", samples)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "run" / "samples.html").read_text()
    assert page.count('class="tok"') == 6 + 1  # six heat-map tokens, one lowest-token cell
    assert 'data-r="-0.9"' in page and "r = -0.9000" in page and "log pi_phi" not in page  # no log-probs known
    assert ">step 1: -0.050</span>" in page and ">step 2: -0.600</span>" in page  # split after " is\n"
    assert "beta=0.25" in page and "score 1.0" in page and "correct" in page and "What is 3 + 4?" in page
    assert "only the 1 most negative token rewards" in page and "-1.2500" in page
    text = one_line(result.output)
    assert "1 of 3 rows have no token rewards" in text and "'\\\\boxed{' -0.9000" in text

    result = invoke("prm", "score", "--samples", samples, "--step", "2", "--out", tmp_path / "heat.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "heat.html").read_text()
    assert page.count("<h2>") == 1 and "step 2 · group 0" in page and "most negative token rewards" not in page


def test_prm_score_says_when_a_run_recorded_no_token_rewards(tmp_path):
    samples = write_samples(tmp_path / "run", [sample_rows()[2]])
    result = invoke("prm", "score", "--samples", samples)
    text = one_line(result.output)
    assert result.exit_code == 2 and "has PRM token rewards" in text and "prm.enabled=false" in text
    result = invoke("prm", "score", "--samples", samples, "--step", "3")
    assert result.exit_code == 2 and "no rows of step 3 (steps there: 6)" in one_line(result.output)
    result = invoke("prm", "score", "--samples", samples, "--prm", "x")
    assert result.exit_code == 2 and "takes no --prm" in one_line(result.output)
    result = invoke("prm", "score", "--data", samples)
    assert result.exit_code == 2 and "give --prm and --out" in one_line(result.output)
