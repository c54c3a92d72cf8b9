"""``iprime train --dry-run`` and the pre-flight check in the commands: the Eurus recipe on this
CPU machine lists every problem in one message and exits 2 without loading a model; the
quickstart settings pass; ``iprime train`` stops before the out-dir and the model; code rows
without a sandbox stop before the model; ``iprime config show`` ends with the memory estimate;
``iprime eval --device cuda`` is checked too."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from iprime import preflight
from iprime.cli import app
from iprime.data.arithmetic import ArithmeticTask

ROOT = Path(__file__).resolve().parents[1]
EURUS = ROOT / "configs" / "eurus2_7b_prime.yaml"
QUICKSTART = ROOT / "src" / "iprime" / "configs" / "cpu_quickstart.yaml"
SRC = str(Path(preflight.__file__).resolve().parents[1])  # this iprime, from any working directory
ENV = {"COLUMNS": "200"}
NO_CUDA = not torch.cuda.is_available()
NO_VLLM = importlib.util.find_spec("vllm") is None

# The command in a fresh interpreter; afterwards, which heavy modules it loaded. Without
# transformers (or vLLM) imported, no model can have been loaded.
RUN_AND_REPORT_MODULES = """
import sys
from iprime.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print("EXIT", code)
print("LOADED", sorted(m for m in ("transformers", "vllm", "safetensors") if m in sys.modules))
"""


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def tiny_model_config(directory: Path) -> Path:
    """A model directory holding only the config.json of make_tiny_model's Qwen2 (0.43M
    parameters): the pre-flight check reads the size from it, and never needs the weights."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "qwen2",
        "vocab_size": 512,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def arithmetic_rows(path: Path, n: int = 32) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in ArithmeticTask().rows("train", n, seed=0)))
    return path


@pytest.mark.skipif(not (NO_CUDA and NO_VLLM), reason="the must-show case: a machine without CUDA and vLLM")
def test_eurus_dry_run_on_a_cpu_lists_every_problem_in_one_message_and_loads_no_model(tmp_path):
    """``iprime train --config configs/eurus2_7b_prime.yaml --dry-run`` here: no CUDA, no bf16
    on CUDA, no vLLM, no data (data/train.parquet is relative to a fresh folder), all in one
    numbered message; exit 2; transformers never imported."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT_MODULES, "train", "--config", str(EURUS), "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    seconds = time.perf_counter() - start
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "EXIT 2" in out and "LOADED []" in out, out
    assert out.count("pre-flight check") == 1  # one message
    numbered = [line.split(".", 1)[0].strip() for line in out.splitlines() if line[:5].strip()[:1].isdigit()]
    assert numbered == ["1", "2", "3", "4"], out
    assert "pre-flight check (iprime train --dry-run): 4 problems, no model loaded" in out
    assert "1. model.device=cuda: no CUDA: torch" in out
    assert "2. model.autocast=bf16: bfloat16 on CUDA is unavailable here" in out
    assert "3. rollout.engine=vllm: vLLM is not installed" in out
    assert "4. data.train_path=data/train.parquet: data file 'data/train.parquet' does not exist" in out
    assert out.count("fix: ") >= 4 + 1  # each problem's fix, and the warnings'
    assert "7.62B parameters" in out and "fits from world size 8" in out
    assert not (tmp_path / "runs").exists()  # nothing written
    print(f"dry run: {seconds:.1f} s")  # the must-show's time, seen with -s (no timing is asserted)


def test_quickstart_settings_pass_the_dry_run(tmp_path):
    model = tiny_model_config(tmp_path / "model")
    data = arithmetic_rows(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    result = invoke(
        "train",
        "--config",
        QUICKSTART,
        f"model.policy={model}",
        f"data.train_path={data}",
        "data.verifier=arithmetic",
        f"train.out_dir={out}",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "pre-flight check (iprime train --dry-run): OK"
    assert f"  data: 32 rows from {data} (32 usable); verifiers: arithmetic 32" in lines
    assert any(line.endswith(f"{model}, 427.14K parameters ({model / 'config.json'})") for line in lines)
    assert not out.exists()


def test_train_stops_before_the_out_dir_and_the_model(tmp_path, monkeypatch):
    """Without --dry-run the same machine check runs first: exit 2 before train.out_dir is made
    and before the trainer (which loads the models) is built."""
    import iprime.train.prime

    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer must not be built")

    monkeypatch.setattr(iprime.train.prime, "PrimeTrainer", no_trainer)
    monkeypatch.setattr(
        preflight, "probe_machine", lambda device, world_size=None: preflight.Machine("2.13.0+cpu", None)
    )
    out = tmp_path / "run"
    result = invoke("train", "--config", EURUS, f"train.out_dir={out}", f"data.train_path={tmp_path / 'x.jsonl'}")
    assert result.exit_code == 2, result.output
    assert "pre-flight check: 3 problems, no model loaded" in result.output
    assert "3. rollout.engine=vllm: vLLM is not installed" in result.output
    assert not out.exists()


def test_world_size_is_for_the_dry_run_and_is_checked(tmp_path):
    result = invoke("train", "--config", EURUS, "--world-size", "8")
    assert result.exit_code == 2 and "--world-size is for --dry-run" in result.output
    result = invoke("train", "--config", EURUS, "--dry-run", "--world-size", "3", f"train.out_dir={tmp_path / 'r'}")
    assert result.exit_code == 2
    assert "world size 3: rollout.prompts_per_step=256 must be a multiple of the world size 3" in result.output
    assert "per GPU (FSDP2): 85.1 GiB at world size 3, 31.9 GiB at 8" in result.output


def test_dry_run_reports_a_used_out_dir_and_deletes_nothing(tmp_path):
    model = tiny_model_config(tmp_path / "model")
    data = arithmetic_rows(tmp_path / "train.jsonl", 8)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  steps: 1\n")
    (run / "metrics.jsonl").write_text("{}\n")
    args = [
        "train",
        f"model.policy={model}",
        f"data.train_path={data}",
        "data.verifier=arithmetic",
        f"train.out_dir={run}",
    ]
    result = invoke(*args, "--dry-run")
    assert result.exit_code == 2
    assert f"train.out_dir={run}: train.out_dir {run} is not empty" in " ".join(result.output.split())
    result = invoke(*args, "--dry-run", "--overwrite")
    assert result.exit_code == 0, result.output
    assert f"--overwrite would delete the previous run in {run}" in result.output
    assert (run / "metrics.jsonl").is_file()


def code_rows(path: Path) -> Path:
    row = {
        "prompt": "Write f(x) returning x + 1.",
        "ability": "code",
        "answer": json.dumps({"fn_name": "f", "inputs": [[1]], "outputs": [2]}),
    }
    path.write_text(json.dumps(row) + "\n")
    return path


def test_code_rows_without_a_sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "sandbox_reason", lambda: "isolation='userns' does not work here")
    model = tiny_model_config(tmp_path / "model")
    data = code_rows(tmp_path / "code.jsonl")
    args = ["train", f"model.policy={model}", f"data.train_path={data}", f"train.out_dir={tmp_path / 'run'}"]
    result = invoke(*args, "--dry-run")
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "verify (code rows): 1 rows are scored by running code, but the code sandbox cannot run here" in text

    import iprime.train.prime

    monkeypatch.setattr(iprime.train.prime, "PrimeTrainer", lambda *a, **k: pytest.fail("no trainer"))
    result = invoke(*args)  # the run itself: stopped after reading the rows, before the model
    assert result.exit_code == 2 and "the code sandbox cannot run here" in " ".join(result.output.split())


def test_config_show_ends_with_the_memory_estimate():
    result = CliRunner().invoke(app, ["config", "show", "--config", str(EURUS), "--no-docs"], env=ENV)
    assert result.exit_code == 0
    tail = result.output.rstrip("\n").splitlines()[-6:]
    assert tail[0].startswith('# memory estimate (docs/scaling.md "Memory estimate"): PRIME-RL/Eurus-2-7B-SFT, 7.62B')
    assert "#   per GPU (FSDP2): 255.3 GiB at world size 1, 31.9 GiB at 8" in tail
    result = CliRunner().invoke(app, ["config", "show", "--no-docs"], env=ENV)
    assert "memory estimate" not in result.output  # a CPU run: no per-GPU estimate


@pytest.mark.skipif(not NO_CUDA, reason="checks a machine without CUDA")
def test_eval_on_cuda_is_checked_before_the_model_loads(tmp_path):
    result = invoke(
        "eval",
        "--model",
        "no/model",
        "--benchmarks",
        "arithmetic",
        "--out",
        tmp_path / "ev",
        "--device",
        "cuda",
        "--dtype",
        "bfloat16",
    )
    assert result.exit_code == 2
    assert "pre-flight check (iprime eval): 2 problems, no model loaded" in result.output
    assert "1. --device=cuda: no CUDA" in result.output and "2. --dtype=bfloat16: bfloat16 on CUDA" in result.output
    assert not (tmp_path / "ev").exists()


def test_dry_run_without_a_model_or_data_lists_both(tmp_path):
    result = invoke("train", "--dry-run", f"train.out_dir={tmp_path / 'run'}")
    assert result.exit_code == 2
    assert result.output.splitlines()[:5] == [
        "pre-flight check (iprime train --dry-run): 2 problems, no model loaded",
        "  1. model.policy: not set",
        "     fix: the path (or hub id) of the SFT model the policy starts from",
        "  2. data.train_path=None: not set: give the training data (file, directory or hf:NAME)",
        "     fix: point it at the training data (file, directory or hf:NAME); iprime data check PATH",
    ]
