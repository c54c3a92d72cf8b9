"""A run you can trust (issue 25): a resume never changes the run silently, one writer per run
folder, and a resume falls back past any unreadable checkpoint.

The operator's view first: real ``iprime train`` processes on one folder (a live run blocked at
a known point, a second process, ``--overwrite``, ``kill -9``, the stale lock taken over, the
resumed run bitwise equal to the uninterrupted one), resumes with changed configs; then the
pieces (the key groups, the optimizer and scheduler following a new learning rate, the lock's
fallback without ``flock``, each kind of unusable checkpoint)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_checkpoints import load_small, small_parts, write_small_run
from tiny_runs import ROWS, parity_verifier, tiny_config

from iprime.config import load_config
from iprime.optim import lr_factor
from iprime.train import checkpoint as C
from iprime.train import checkpoint_store as S
from iprime.train import identity as I
from iprime.train import run_lock as L
from iprime.train.build import build_optimizers
from iprime.train.distributed import DistContext

pytestmark = pytest.mark.usefixtures("one_thread")
ONE = DistContext()

# ---------------------------------------------------------------------------------------------
# real `iprime train` processes
GATE_MODULE = '''
import os, time
from pathlib import Path

def gate(response, row):
    """0.0 (no effect on the score); inside step 3 (once step 2's checkpoint exists) it waits for
    the file $IPRIME_TEST_GATE, after touching $IPRIME_TEST_GATE.blocked: a live run held at a known point."""
    run, gate = Path(os.environ["IPRIME_TEST_RUN"]), Path(os.environ["IPRIME_TEST_GATE"])
    if (run / "checkpoints" / "step-000002").is_dir():
        while not gate.exists():
            Path(str(gate) + ".blocked").touch()
            time.sleep(0.05)
    return 0.0
'''


def overrides(model: Path, data: Path, run: Path, *extra: str) -> list[str]:
    return [
        f"model.policy={model}",
        f"data.train_path={data}",
        f"train.out_dir={run}",
        "data.verifier=math",
        "data.reward_functions=[iprime_test_gate:gate]",
        "train.steps=3",
        "train.save_every=1",
        "train.save_hf=false",
        "train.tensorboard=false",
        "train.progress=lines",
        "verify.workers=0",
        "rollout.n=2",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=4",
        "filter.enabled=false",
        "optim.lr=1e-3",
        "optim.micro_batch_size=4",
        "optim.mini_batch_size=4",
        *extra,
    ]


@pytest.fixture
def op(tmp_path, tiny_model_dir):
    """An operator's shell: ``op.train(run, *args)`` runs ``iprime train`` and returns the
    completed process; ``op.start`` starts one without waiting."""
    (tmp_path / "iprime_test_gate.py").write_text(GATE_MODULE)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Compute {i} + 1.", "answer": str(i + 1)}) + "\n" for i in range(8)))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"

    class Operator:
        model = tiny_model_dir

        def command(self, run: Path, *args: str) -> tuple[list[str], dict]:
            first = next((i for i, a in enumerate(args) if a.startswith("--")), len(args))
            keys, options = args[:first], args[first:]  # key=value words, then the options and their values
            gate = tmp_path / f"gate-{run.name}"
            cmd = [sys.executable, "-m", "iprime", "train", *overrides(self.model, data, run, *keys), *options]
            return cmd, {**env, "IPRIME_TEST_RUN": str(run), "IPRIME_TEST_GATE": str(gate)}

        def train(self, run: Path, *args: str) -> subprocess.CompletedProcess:
            cmd, e = self.command(run, *args)
            done = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)
            done.text = " ".join((done.stdout + done.stderr).split())  # one line: messages wrap
            return done

        def start(self, run: Path, *args: str) -> subprocess.Popen:
            cmd, e = self.command(run, *args)
            return subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def open_gate(self, run: Path) -> None:
            (tmp_path / f"gate-{run.name}").touch()

        def blocked(self, run: Path) -> Path:
            return tmp_path / f"gate-{run.name}.blocked"

    return Operator()


def metrics(run: Path) -> list[dict]:
    drop = ("time/", "tokens_per_s", "config/changed")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows]


def test_one_writer_per_run_folder_and_a_kill_9_resumes_bitwise(op, tmp_path):
    """A live run holds its folder: a second ``--resume`` and an ``--overwrite`` are refused,
    naming its pid and host, and change nothing; after ``kill -9`` its stale lock is taken over
    by the resume, which ends bitwise where the uninterrupted run ends."""
    whole = tmp_path / "whole"
    op.open_gate(whole)
    done = op.train(whole)
    assert done.returncode == 0, done.text[-3000:]
    assert not (whole / L.LOCK_NAME).exists()  # a clean end removes the lock file

    run = tmp_path / "run"
    live = op.start(run)
    try:
        deadline = time.monotonic() + 240
        while not op.blocked(run).exists():  # held inside step 3, checkpoints 1 and 2 written
            assert live.poll() is None and time.monotonic() < deadline, "the first run did not reach step 3"
            time.sleep(0.1)
        holder = f"pid {live.pid} on host {socket.gethostname()}"
        second = op.train(run, "--resume")
        assert second.returncode == 2, second.text[-3000:]
        assert f"{run} is in use by a live run: {holder}" in second.text, second.text[-3000:]
        assert "Traceback" not in second.text
        overwrite = op.train(run, "--overwrite")
        assert (
            overwrite.returncode == 2
            and holder in overwrite.text
            and "--overwrite will not delete it" in (overwrite.text)
        ), overwrite.text[-3000:]
        assert (run / "checkpoints" / "step-000002" / "state.pt").is_file()  # nothing deleted
        assert live.poll() is None  # the live run is untouched
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait(timeout=60)
    stale = json.loads((run / L.LOCK_NAME).read_text())
    assert stale["pid"] == live.pid and stale["host"] == socket.gethostname()  # left by the dead process

    op.open_gate(run)
    resumed = op.train(run, "--resume")
    assert resumed.returncode == 0, resumed.text[-3000:]
    assert not (run / L.LOCK_NAME).exists()
    assert metrics(run) == metrics(whole)  # steps 1-3, to the last bit of every number logged


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / I.HISTORY).read_text().splitlines()]


def test_a_resume_refuses_fixed_keys_and_applies_changeable_ones(op, tmp_path, tiny_prm_dir):
    run = tmp_path / "run"
    op.open_gate(run)
    first = op.train(run, "train.steps=2")
    assert first.returncode == 0, first.text[-3000:]
    saved = (run / "config.yaml").read_text()

    # another model of the same shape, another beta, another seed: refused, each old -> new, nothing written
    changed = (f"model.policy={tiny_prm_dir}", "prm.beta=0.1", "train.seed=7", "train.steps=3")
    refused = op.train(run, *changed, "--resume")
    assert refused.returncode == 2, refused.text[-3000:]
    text = refused.text
    assert "resume refused: this config changes 3 key(s) that cannot change in the middle of a run" in text
    assert f"model.policy: '{op.model}' -> '{tiny_prm_dir}'" in text
    assert "prm.beta: 0.05 -> 0.1" in text and "train.seed: 0 -> 7" in text
    assert "--allow-change model.policy --allow-change prm.beta --allow-change train.seed" in text
    assert "Traceback" not in text
    assert (run / "config.yaml").read_text() == saved and not (run / I.HISTORY).exists()
    assert [m["step"] for m in metrics(run)] == [1, 2]

    # the same, accepted on purpose: applied and recorded
    allowed = op.train(
        run,
        *changed,
        "--resume",
        "--allow-change",
        "model.policy",
        "--allow-change",
        "prm.beta",
        "--allow-change",
        "train.seed",
    )
    assert allowed.returncode == 0, allowed.text[-3000:]
    config = read_yaml(run / "config.yaml")
    assert config["model"]["policy"] == str(tiny_prm_dir) and config["prm"]["beta"] == 0.1
    assert config["train"]["seed"] == 7 and config["train"]["steps"] == 3
    rows = {r["key"]: r for r in history(run)}
    assert rows["prm.beta"] | {"time": None} == {
        "step": 2,
        "key": "prm.beta",
        "old": 0.05,
        "new": 0.1,
        "by": "--allow-change",
        "time": None,
    }
    assert rows["model.policy"]["by"] == "--allow-change" and rows["train.seed"]["new"] == 7
    assert rows["train.steps"]["by"] == "changeable"
    step3 = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert step3["step"] == 3 and "prm.beta: 0.05 -> 0.1" in step3["config/changed"]
    assert "accepted with --allow-change" in allowed.text and "[config changed:" in allowed.text


def test_a_resume_with_a_new_learning_rate_trains_with_it(op, tmp_path):
    """The issue's case: ``optim.lr=5e-2`` on resume kept the restored 1e-3 while config.yaml
    said 0.05. Now the next step runs at 0.05 and config.yaml and the history say so."""
    run = tmp_path / "run"
    op.open_gate(run)
    first = op.train(run, "train.steps=2")
    assert first.returncode == 0, first.text[-3000:]
    again = op.train(run, "optim.lr=5e-2", "--resume")
    assert again.returncode == 0, again.text[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [1e-3, 1e-3, 5e-2]
    assert rows[2]["config/changed"] == "optim.lr: 0.001 -> 0.05; train.steps: 2 -> 3"
    assert read_yaml(run / "config.yaml")["optim"]["lr"] == 0.05
    assert [(r["key"], r["old"], r["new"], r["by"]) for r in history(run)] == [
        ("optim.lr", 0.001, 0.05, "changeable"),
        ("train.steps", 2, 3, "changeable"),
    ]
    assert "resume at step 2: optim.lr: 0.001 -> 0.05 (applied" in again.text


def test_allow_change_needs_resume_and_a_real_key(op, tmp_path):
    run = tmp_path / "run"
    done = op.train(run, "--allow-change", "prm.beta")
    assert done.returncode == 2 and "--allow-change is for --resume" in done.text
    done = op.train(run, "--resume", "--allow-change", "prm.betta")
    assert done.returncode == 2 and "--allow-change prm.betta: not a config key" in done.text
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# the key groups and the optimizer following the config
def test_every_config_key_is_either_fixed_or_changeable():
    assert I.unsorted_keys() == []  # a new config key needs a decision here
    assert "model.reference" in I.FIXED[next(g for g in I.FIXED if g.startswith("the models"))]
    assert I.Change("optim.lr", 1e-3, 5e-2).fixed is False and I.Change("prm.beta", 0.05, 0.1).fixed is True


def test_config_changes_lists_old_and_new_and_the_refusal_names_each():
    old = load_config(None, ["prm.beta=0.05", "optim.lr=1e-3"]).to_dict()
    new = load_config(None, ["prm.beta=0.1", "optim.lr=5e-2", "rollout.n=8"]).to_dict()
    changes = I.config_changes(old, new)
    assert [c.text() for c in changes] == ["rollout.n: 4 -> 8", "prm.beta: 0.05 -> 0.1", "optim.lr: 0.001 -> 0.05"]
    with pytest.raises(I.ConfigChangeError) as err:
        I.check_changes(changes, ["rollout.n"], "the checkpoint")
    text = str(err.value)
    assert "changes 1 key(s)" in text and "prm.beta: 0.05 -> 0.1   [the algorithm" in text
    assert "rollout.n" not in text and "optim.lr" not in text  # allowed, changeable
    I.check_changes(changes, ["rollout.n", "prm.beta"], "the checkpoint")  # nothing refused
    assert I.config_changes({"train": {"gone": 1}}, {"train": {"new": 2}}) == []  # one side only: not compared


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_new_learning_rate_reaches_the_optimizer_and_the_schedule_at_the_step_reached(schedule):
    """After 3 of 10 steps at 1e-3, a resume with 5e-2 (and 12 steps): the next step runs at
    ``5e-2 * lr_factor(3, 12, 2, schedule)`` and the one after at ``lr_factor(4, ...)``."""
    models = type("M", (), {"policy": torch.nn.Linear(2, 2), "prm": None, "value": None})()
    base = ["optim.warmup_steps=2", f"optim.schedule={schedule}"]
    old = build_optimizers(load_config(None, base + ["optim.lr=1e-3", "train.steps=10"]), models)
    for _ in range(3):
        old.policy.step()
        old.scheduler.step()
    cfg = load_config(None, base + ["optim.lr=5e-2", "train.steps=12", "optim.weight_decay=0.1"])
    new = build_optimizers(cfg, models)
    new.policy.load_state_dict(old.policy.state_dict())
    new.scheduler.load_state_dict(old.scheduler.state_dict())
    assert new.policy.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(3, 10, 2, schedule))  # restored: old
    I.follow_optimizer_settings(cfg, new, ["optim.lr", "train.steps", "optim.weight_decay"])
    group = new.policy.param_groups[0]
    assert group["lr"] == 5e-2 * lr_factor(3, 12, 2, schedule) and group["weight_decay"] == 0.1
    assert new.scheduler.get_last_lr() == [group["lr"]] and new.scheduler.last_epoch == 3
    new.policy.step()
    new.scheduler.step()
    assert new.policy.param_groups[0]["lr"] == pytest.approx(5e-2 * lr_factor(4, 12, 2, schedule), rel=1e-12)


def test_the_trainer_resumes_with_the_new_rates_in_its_optimizers(tiny_model_dir, tmp_path):
    from iprime.train.prime import PrimeTrainer

    run = tmp_path / "run"
    cfg = tiny_config(run, "train.steps=1", "train.save_every=1", "optim.schedule=linear")
    PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier).train(progress=False)
    cfg = tiny_config(
        run, "train.steps=4", "train.save_every=1", "optim.schedule=linear", "optim.lr=2e-2", "prm.lr=3e-3"
    )
    resumed = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)
    assert resumed.resume() and resumed.step == 1
    assert resumed.optimizers.policy.param_groups[0]["lr"] == 2e-2 * lr_factor(1, 4, 0, "linear")
    assert resumed.optimizers.prm.param_groups[0]["lr"] == 3e-3
    assert {c.key for c in resumed.config_changes} == {"optim.lr", "prm.lr", "train.steps"}
    with pytest.raises(I.ConfigChangeError, match=r"rollout.n: 4 -> 2"):
        PrimeTrainer(str(tiny_model_dir), tiny_config(run, "rollout.n=2"), ROWS, parity_verifier).resume()


# ---------------------------------------------------------------------------------------------
# the lock
HOLD = (
    "import sys, time; from iprime.train.run_lock import acquire_run_lock as a; a(sys.argv[1], 'holder'); "
    "print('held', flush=True); time.sleep(120)"
)


def test_the_lock_refuses_a_second_process_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(L.RunLockedError, match=rf"in use by a live run: pid {holder.pid} on host "):
            L.acquire_run_lock(run, "me")
        assert L.lock_holder(run).startswith(f"pid {holder.pid} on host {socket.gethostname()}")
    finally:
        holder.kill()
        holder.wait()
    assert L.lock_holder(run) is None  # the kernel dropped the dead process's flock
    with L.acquire_run_lock(run, "me") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (run / L.LOCK_NAME).exists()


def test_without_flock_the_file_is_the_lock_and_a_dead_pid_is_stale(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (run / L.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": host, "started": "-", "command": "x"}))
    with L.acquire_run_lock(run, "me") as lock:  # its pid is gone on this host: stale, taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(L.RunLockedError, match=f"pid {os.getpid()} on host {host}"):
            L.acquire_run_lock(run, "second")
    (run / L.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "started": "-", "command": "x"}))
    with pytest.raises(L.RunLockedError, match="on host elsewhere"):  # another host: cannot tell, refused
        L.acquire_run_lock(run, "me")


# ---------------------------------------------------------------------------------------------
# any unusable checkpoint is skipped
def replace_state(ckpt: Path, state) -> None:
    """Write ``state`` as the checkpoint's state.pt *with a matching manifest*: readable, verified, wrong."""
    torch.save(state, ckpt / "state.pt")
    S.write_manifest(ckpt, S.step_of(ckpt))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        ("directory", r"step-000002/state.pt: a directory, not a checkpoint file"),
        ("no_policy", r"step-000002/state.pt: holds no 'policy' model"),
        ("wrong_shape", r"step-000002: RuntimeError: Error\(s\) in loading state_dict"),
        ("no_rng", r"step-000002: KeyError: 'rng'"),
        ("truncated", r"step-000002/state.pt: truncated"),
    ],
)
def test_resume_skips_any_unusable_checkpoint_naming_it(tmp_path, spoil, reason):
    out = tmp_path / "run"
    write_small_run(out, steps=(1, 2))
    ckpt = out / "checkpoints" / "step-000002"
    state = torch.load(ckpt / "state.pt", weights_only=True)
    if spoil == "directory":
        (ckpt / "state.pt").unlink()
        (ckpt / "state.pt").mkdir()
    elif spoil == "no_policy":
        replace_state(ckpt, {k: v for k, v in state.items() if k != "policy"})
    elif spoil == "wrong_shape":
        replace_state(ckpt, {**state, "policy": {k: v[:1] for k, v in state["policy"].items()}})
    elif spoil == "no_rng":
        replace_state(ckpt, {k: v for k, v in state.items() if k != "rng"})
    else:
        data = (ckpt / "state.pt").read_bytes()
        (ckpt / "state.pt").write_bytes(data[: len(data) // 2])

    def restore(meta):  # what the trainer restores besides the models: the RNG here
        meta["rng"]

    with pytest.warns(C.CheckpointWarning) as caught:
        meta = C.load_run_checkpoint(out, *small_parts(seed=1), ONE, restore)
    warned = "\n".join(str(w.message) for w in caught)
    assert meta["step"] == 1
    assert "skipping bad checkpoint step-000002" in warned and re.search(reason, warned), warned
    assert f"resumed from {out / 'checkpoints' / 'step-000001'} instead of the newest checkpoint" in warned


def test_no_loadable_checkpoint_is_an_error_listing_each(tmp_path):
    out = tmp_path / "run"
    write_small_run(out, steps=(1, 2))
    root = out / "checkpoints"
    (root / "step-000002" / "state.pt").unlink()
    (root / "step-000002" / "state.pt").mkdir()
    state = torch.load(root / "step-000001" / "state.pt", weights_only=True)
    replace_state(root / "step-000001", {k: v for k, v in state.items() if k != "policy"})
    with pytest.warns(C.CheckpointWarning), pytest.raises(C.CheckpointError) as err:
        load_small(out)
    assert "step-000002/state.pt: a directory" in str(err.value)
    assert "step-000001/state.pt: holds no 'policy' model" in str(err.value)


def test_a_trainer_resume_past_a_directory_state_pt_equals_the_uninterrupted_run(tiny_model_dir, tmp_path):
    """In one process, bitwise: 3 steps straight, against 2 steps whose newest checkpoint is then
    a directory and a resume that falls back to step 1 and runs steps 2 and 3 again."""
    from iprime.train.prime import PrimeTrainer

    def run(out: Path, steps: int, resume: bool = False) -> None:
        cfg = tiny_config(out, f"train.steps={steps}", "train.save_every=1", "train.save_hf=false")
        PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier).train(resume=resume, progress=False)

    run(tmp_path / "whole", 3)
    out = tmp_path / "run"
    run(out, 2)
    state = out / "checkpoints" / "step-000002" / "state.pt"
    state.unlink()
    state.mkdir()
    with pytest.warns(C.CheckpointWarning, match="step-000002/state.pt: a directory"):
        run(out, 3, resume=True)
    assert metrics(out) == metrics(tmp_path / "whole")


def test_sft_and_a_dry_run_name_the_live_holder_of_a_folder(tmp_path):
    from typer.testing import CliRunner

    from iprime.cli import app, prepare_out_dir

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        data = tmp_path / "sft.jsonl"
        data.write_text(json.dumps({"prompt": "1 + 1 =", "response": "2"}) + "\n")
        result = CliRunner().invoke(app, ["sft", "--model", "some/model", "--data", str(data), "--out", str(run)])
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and f"is in use by a live run: pid {holder.pid} on host" in text, text
        with pytest.raises(ValueError, match=rf"in use by a live run: pid {holder.pid} .*--overwrite will not delete"):
            prepare_out_dir(run, resume=False, overwrite=True, dry_run=True)
    finally:
        holder.kill()
        holder.wait()
