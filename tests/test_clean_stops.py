"""Every failure of ``iprime train`` is a clean stop (issue 25), as an operator meets it: real
``iprime train`` processes, real signals, a full disk and a deleted run folder injected into the
real process, reward functions that fail. Each stop: one message on the terminal naming the
cause and what to do, no traceback there, the traceback in ``out_dir/error.log``, exit status 2
(1 for a bug, 128 + signum for a signal)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iprime.cli import app
from iprime.data.sources import DataWarning, read_records
from iprime.train.run_lock import RunLockedError

ENV = {"COLUMNS": "200"}

REWARDS = '''
import os, time
from pathlib import Path

def fails_on_multiples_of_3(response, row):
    """Raises on the rows whose answer is a multiple of 3: a third of them."""
    if int(row["answer"]) % 3 == 0:
        raise ZeroDivisionError("division by zero")
    return 0.0

def always_fails(response, row):
    raise KeyError("score")

_calls = 0

def pause_once(response, row):
    """0 (changes no score). With PAUSE_DIR set: on the 7th call (the first sample of step 2: step 1
    scores 6) write PAUSE_DIR/ready and wait for PAUSE_DIR/go: a run held at a known
    point while the test sends its signal."""
    global _calls
    _calls += 1
    where = os.environ.get("PAUSE_DIR")
    if where and _calls == 7:
        Path(where, "ready").write_text("")
        while not Path(where, "go").exists():
            time.sleep(0.02)
    return 0.0
'''


def rows(n: int = 12) -> list[dict]:
    return [{"prompt": f"Compute {i} + 1.", "answer": str(i + 1)} for i in range(n)]


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    """(data file, folder holding the reward-function module ``stop_rewards``)."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "stop_rewards.py").write_text(textwrap.dedent(REWARDS))
    return data, mods


def overrides(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.policy={model}",
        f"data.train_path={data}",
        f"train.out_dir={out}",
        "data.verifier=math",
        "train.steps=3",
        "train.save_every=0",
        "train.tensorboard=false",
        "train.log_samples_every=1",
        "verify.workers=0",
        "rollout.n=2",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=4",
        "filter.enabled=false",
        "optim.micro_batch_size=4",
        "optim.mini_batch_size=4",
        *extra,
    ]


def child_env(mods: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "RANK", "WORLD_SIZE")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, str(mods), env.get("PYTHONPATH", "")])
    return {**env, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **extra}


def command(args: list[str], inject: str = "") -> list[str]:
    """``iprime ARGS`` in a new process; ``inject``: Python run first (a fault put into that process)."""
    run = f"import sys\nfrom iprime.cli import main\nsys.argv = {['iprime', *args]!r}\nmain()\n"
    code = f"{textwrap.dedent(inject)}\n{run}"
    return [sys.executable, "-c", code]


def iprime(args: list[str], mods: Path, inject: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(args, inject), capture_output=True, text=True, env=child_env(mods, **env), timeout=600
    )


def terminal(proc) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


def assert_clean_stop(proc, out: Path, *texts: str, code: int = 2) -> str:
    """Exit ``code``, no traceback on the terminal, each of ``texts`` in the message, the traceback in error.log."""
    said = terminal(proc)
    assert proc.returncode == code, said[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, said[-3000:]
    for text in texts:
        assert text in said, (text, said[-3000:])
    assert f"the full traceback: {out / 'error.log'}" in said
    assert "Traceback (most recent call last)" in (out / "error.log").read_text()
    return said


# --------------------------------------------------------------------------- checks up front
def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=0", "train.steps: must be >= 1, got 0"),
        ("optim.lr=nan", "optim.lr: must be a finite number > 0, got nan"),
        ("optim.lr=inf", "optim.lr: must be a finite number > 0, got inf"),
        ("optim.lr=-0.001", "optim.lr: must be a finite number > 0, got -0.001"),
        ("optim.lr=0", "optim.lr: must be a finite number > 0, got 0.0"),
        ("prm.lr=nan", "prm.lr: must be a finite number > 0, got nan"),
        ("verify.max_failed_share=1.5", "verify.max_failed_share: must lie in [0, 1]"),
    ],
)
def test_bad_numbers_are_refused_naming_the_key(tmp_path, override, message):
    result = invoke("train", "model.policy=x/y", "data.train_path=d.jsonl", f"train.out_dir={tmp_path}/run", override)
    assert result.exit_code == 2 and f"config error: {message}" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_a_yaml_file_whose_top_level_is_not_a_mapping_is_a_config_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("- model\n- data\n")
    result = invoke("train", "--config", config, "train.steps=3")  # an override too: it once gave AttributeError
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "the top level must be a mapping of sections" in text and "got a list" in text


def test_model_folders_without_config_json_are_named(tmp_path, tiny_model_dir):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "README.md").write_text("notes")
    for key in ("model.policy", "model.prm", "model.reference"):
        policy = empty if key == "model.policy" else tiny_model_dir
        extra = [] if key == "model.policy" else [f"{key}={empty}"]
        result = invoke("train", f"model.policy={policy}", "data.train_path=d.jsonl", *extra)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and f"{key}={empty}: no config.json in {empty}" in text, text
        assert "sentencepiece" not in text


def test_an_unwritable_out_dir_is_found_before_any_model_loads(setup, tmp_path, tiny_model_dir):
    data, mods = setup
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a path under a regular file cannot be made, by root either
    out = blocker / "run"
    start = time.monotonic()
    proc = iprime(["train", *overrides(tiny_model_dir, data, out)], mods)
    said = terminal(proc)
    assert proc.returncode == 2 and f"train.out_dir {out} cannot be written (Not a directory" in said, said
    assert "Traceback" not in said and "PRIME step" not in said
    assert time.monotonic() - start < 60
    dry = invoke("train", *overrides(tiny_model_dir, data, out), "--dry-run")
    assert dry.exit_code == 2 and f"cannot be made: {blocker} is a file, not a folder" in " ".join(dry.output.split())
    if os.geteuid() == 0:
        return  # root writes through permissions; the read-only case is shown by the file above
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    proc = iprime(["train", *overrides(tiny_model_dir, data, locked / "run")], mods)
    assert proc.returncode == 2 and "cannot be written (Permission denied" in terminal(proc)
    dry = invoke("train", *overrides(tiny_model_dir, data, locked / "run"), "--dry-run")
    assert dry.exit_code == 2 and "no permission to write in" in " ".join(dry.output.split())


def test_a_data_folder_names_the_files_it_skips_once(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(rows(1)[0]) + "\n")
    (folder / "README.md").write_text("about the data")
    (folder / "plot.png").write_bytes(b"\x89PNG")
    (folder / "more").mkdir()
    (folder / ".hidden").write_text("")
    with pytest.warns(DataWarning) as caught:
        assert len(read_records(folder)) == 1
    assert len(caught) == 1
    assert "skipped 3 other entries: README.md, more/, plot.png" in str(caught[0].message)


# --------------------------------------------------------------------------- reward functions
def test_a_reward_function_failing_on_a_third_of_samples_is_counted_not_fatal(setup, tmp_path, tiny_model_dir):
    data, mods = setup
    out = tmp_path / "run"
    args = overrides(tiny_model_dir, data, out, "data.reward_functions=[stop_rewards:fails_on_multiples_of_3]")
    proc = iprime(["train", *args], mods)
    assert proc.returncode == 0, terminal(proc)[-3000:]
    failed = [json.loads(line).get("verify/failed", 0) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(failed) == 3 and sum(failed) > 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    bad = [s for s in samples if int(s["reference"]) % 3 == 0]
    assert bad and all(s["score"] == 0 for s in bad)
    assert all(
        s["reason"]
        == "verifier failed: reward function 'stop_rewards:fails_on_multiples_of_3' raised ZeroDivisionError: "
        "division by zero"
        for s in bad
    )
    # the same function past a stricter share stops the run, naming the function and the first error
    out2 = tmp_path / "strict"
    strict = overrides(tiny_model_dir, data, out2, "data.reward_functions=[stop_rewards:fails_on_multiples_of_3]") + [
        "verify.max_failed_share=0.1"
    ]
    assert_clean_stop(
        iprime(["train", *strict], mods),
        out2,
        "run stopped: scoring failed on",
        "(more than verify.max_failed_share=0.1 of the samples)",
        "reward function 'stop_rewards:fails_on_multiples_of_3' raised ZeroDivisionError: division by zero",
        f"no checkpoint in {out2 / 'checkpoints'}",
    )


def test_a_reward_function_failing_on_every_sample_stops_the_run(setup, tmp_path, tiny_model_dir):
    data, mods = setup
    out = tmp_path / "run"
    args = overrides(tiny_model_dir, data, out, "data.reward_functions=[stop_rewards:always_fails]")
    assert_clean_stop(
        iprime(["train", *args], mods),
        out,
        "run stopped: scoring failed on",
        "samples of step 1's round 1 (every sample)",
        "data.reward_functions=['stop_rewards:always_fails']",
        "the first failure: reward function 'stop_rewards:always_fails' raised KeyError: 'score'",
    )


# --------------------------------------------------------------------------- failures during the run
def test_a_full_disk_while_writing_hf_is_the_checkpoints_no_space_message(setup, tmp_path, tiny_model_dir):
    data, mods = setup
    out = tmp_path / "run"
    full = """
        import transformers
        from safetensors import SafetensorError

        def full(self, *args, **kwargs):  # what safetensors raises on a full disk
            raise SafetensorError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                'message: "No space left on device" })'
            )

        transformers.PreTrainedModel.save_pretrained = full
    """
    said = assert_clean_stop(
        iprime(["train", *overrides(tiny_model_dir, data, out, "train.save_every=1")], mods, full),
        out,
        "disk full: No space left on device: cannot write the Hugging Face copy of the checkpoint's models",
        "the previous checkpoint is intact, free some space and resume",
        f"the newest checkpoint: {out / 'checkpoints' / 'step-000001'}; continue with: iprime train",
    )
    assert "--resume" in said and "SafetensorError" not in said
    step = out / "checkpoints" / "step-000001"
    assert sorted(p.name for p in step.iterdir()) == ["manifest.json", "state.pt"]  # no .hf-partial left


def test_a_run_folder_deleted_under_a_live_run_is_named(setup, tmp_path, tiny_model_dir):
    data, mods = setup
    out = tmp_path / "run"
    delete = f"""
        import shutil
        from iprime.train.prime import PrimeTrainer

        real = PrimeTrainer.save

        def save(self):  # someone removes the run folder just before the checkpoint of step 1
            shutil.rmtree({str(out)!r})
            return real(self)

        PrimeTrainer.save = save
    """
    proc = iprime(["train", *overrides(tiny_model_dir, data, out, "train.save_every=1")], mods, delete)
    said = terminal(proc)
    assert proc.returncode == 2 and "Traceback" not in said, said[-3000:]
    assert f"run folder gone: train.out_dir {out} was deleted or moved while the run was using it" in said
    assert "put the folder back and resume, or start the run again" in said
    log = Path(said.split("the full traceback: ")[1].split()[0])
    assert log.parent != out and "FileNotFoundError" in log.read_text()  # out_dir is gone: the temporary folder
    log.unlink()


def test_the_guards_stop_says_no_checkpoint_exists_yet(setup, tmp_path, tiny_model_dir):
    data, mods = setup
    out = tmp_path / "run"
    args = overrides(tiny_model_dir, data, out, "optim.lr=1e10", "train.max_bad_steps=1", "train.save_every=5")
    assert_clean_stop(
        iprime(["train", *args], mods),
        out,
        "run stopped: 1 updates in a row were far outside the run's history",
        "no checkpoint has been written yet (the first is due at step 5)",
        "Lower optim.lr / prm.lr",
    )
    assert "checkpoints" not in os.listdir(out)


def test_a_bug_exits_1_and_says_so(setup, tmp_path, tiny_model_dir):
    data, mods = setup
    out = tmp_path / "run"
    bug = """
        from iprime.train.prime import PrimeTrainer

        def broken(self, step):
            return None + 1

        PrimeTrainer._advantages = broken
    """
    assert_clean_stop(
        iprime(["train", *overrides(tiny_model_dir, data, out)], mods, bug),
        out,
        "internal error: TypeError: unsupported operand type(s)",
        "this looks like a bug",
        code=1,
    )


# --------------------------------------------------------------------------- signals
def start_paused(args: list[str], mods: Path, pause: Path) -> subprocess.Popen:
    pause.mkdir()
    return subprocess.Popen(
        command(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(mods, PAUSE_DIR=str(pause)),
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < end, "the run never reached the pause"
        time.sleep(0.05)


def finals(out: Path) -> dict:
    from safetensors.torch import load_file

    return {role: load_file(out / "final" / role / "model.safetensors") for role in ("policy", "prm")}


def run_args(model, data, out, *extra):
    return overrides(
        model, data, out, "train.steps=4", "data.reward_functions=[stop_rewards:pause_once]", "rollout.oversample=1.5"
    ) + list(extra)


def test_sigterm_checkpoints_the_step_exits_143_and_the_resume_is_bitwise_uninterrupted(
    setup, tmp_path, tiny_model_dir
):
    import torch

    data, mods = setup
    full = tmp_path / "full"
    assert iprime(["train", *run_args(tiny_model_dir, data, full)], mods).returncode == 0

    out, pause = tmp_path / "run", tmp_path / "pause"
    proc = start_paused(["train", *run_args(tiny_model_dir, data, out)], mods, pause)
    wait_for(pause / "ready", proc)  # inside step 2's verification
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the handler runs in the paused process
    (pause / "go").write_text("")
    said = " ".join(proc.communicate(timeout=300)[0].split())
    assert proc.returncode == 143, said[-3000:]
    assert "SIGTERM: finishing the step under way, then writing a checkpoint" in said
    assert f"stopped by SIGTERM after step 2: saved the checkpoint {out / 'checkpoints' / 'step-000002'}" in said
    assert "continue with: iprime train" in said and "--resume" in said and "Traceback" not in said
    assert not (out / "final").exists()

    resumed = iprime(["train", *run_args(tiny_model_dir, data, out), "--resume"], mods)
    assert resumed.returncode == 0, terminal(resumed)[-3000:]
    a, b = finals(full), finals(out)
    for role in a:
        assert a[role].keys() == b[role].keys() and all(torch.equal(a[role][k], b[role][k]) for k in a[role]), role

    def comparable(path):
        lines = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in m.items() if not k.startswith("time/") and k != "tokens_per_s"} for m in lines]

    assert comparable(full) == comparable(out)


def test_a_second_signal_stops_at_once_and_with_the_key_off_the_first_does(setup, tmp_path, tiny_model_dir):
    data, mods = setup
    out, pause = tmp_path / "twice", tmp_path / "pause"
    proc = start_paused(["train", *run_args(tiny_model_dir, data, out)], mods, pause)
    wait_for(pause / "ready", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    said = " ".join(proc.communicate(timeout=120)[0].split())
    assert proc.returncode == -signal.SIGINT, said[-3000:]  # killed by the signal itself: a shell says 130
    assert "SIGINT again: stopping at once, without a checkpoint" in said
    assert not (out / "checkpoints").exists()

    out, pause = tmp_path / "off", tmp_path / "pause_off"
    proc = start_paused(
        ["train", *run_args(tiny_model_dir, data, out, "train.checkpoint_on_signal=false")], mods, pause
    )
    wait_for(pause / "ready", proc)
    proc.send_signal(signal.SIGTERM)
    said = " ".join(proc.communicate(timeout=120)[0].split())
    assert proc.returncode == 143, said[-3000:]
    assert "stopped by SIGTERM: train.checkpoint_on_signal=false: no checkpoint written" in said
    assert f"no checkpoint in {out / 'checkpoints'}" in said and "Traceback" not in said
    assert not (out / "checkpoints").exists()


# --------------------------------------------------------------------------- the classification
def test_failures_are_classified_with_what_to_do(tmp_path):
    from iprime.clean_stop import classify

    out = tmp_path / "run"
    out.mkdir()
    full = classify(OSError(errno.ENOSPC, "No space left on device", str(out / "metrics.jsonl")), out)
    assert (full.code, full.label) == (2, "disk full") and str(out / "metrics.jsonl") in full.message
    assert "free some space and resume" in full.hint
    ro = classify(OSError(errno.EROFS, "Read-only file system", str(out / "checkpoints")), out)
    assert (ro.code, ro.label) == (2, "cannot write") and f"make {out} writable" in ro.hint
    assert classify(PermissionError(errno.EACCES, "Permission denied", "x"), out).label == "cannot write"
    assert classify(ValueError("data.reference_key: ..."), out).code == 2
    assert classify(MemoryError(), out).label == "out of memory"
    oom = type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2 GiB")
    assert classify(oom, out).code == 2 and "micro_batch_size" in classify(oom, out).hint
    assert classify(RunLockedError("run/ is used by pid 7"), out).code == 2
    assert classify(KeyError("policy"), out).code == 1 and classify(RuntimeError("x"), out).label == "internal error"
    (out / "gone").mkdir()
    gone = out / "gone"
    gone.rmdir()
    assert classify(FileNotFoundError(errno.ENOENT, "No such file or directory", str(gone / "x")), gone).label == (
        "run folder gone"
    )
