"""Checkpoints that load safely (issue 14): plain data only, checksums, fallback to the previous
good checkpoint, clear errors for empty files and full disks, partial directories cleaned, torn
metrics lines tolerated, and the update guard that keeps a ruinous step out of the newest
checkpoint."""

from __future__ import annotations

import errno
import json
import math
import random
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import ROWS, make_config, parity_verifier

from iprime.rollout.types import RolloutBatch
from iprime.train import checkpoint as C
from iprime.train import checkpoint_store as S
from iprime.train.checkpoint_plain import from_plain, to_plain
from iprime.train.distributed import DistContext
from iprime.train.guards import UpdateGuard, param_norm
from iprime.train.logging import MetricsLogger, MetricsWarning

pytestmark = pytest.mark.usefixtures("one_thread")
ONE = DistContext()


# ---------------------------------------------------------------------------------------------
# small parts: two tiny models with Adam state, a buffer, RNG
def small_parts(seed: int = 0):
    torch.manual_seed(seed)
    models = {"policy": torch.nn.Linear(4, 3), "prm": torch.nn.Linear(4, 3)}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=0.1) for k, m in models.items()}
    for k, m in models.items():
        m(torch.randn(5, 4)).pow(2).sum().backward()
        optimizers[k].step()
    return models, optimizers


def small_batch(B: int = 4) -> RolloutBatch:
    return RolloutBatch(
        prompt_ids=torch.arange(B * 3).view(B, 3),
        prompt_mask=torch.ones(B, 3),
        response_ids=torch.arange(B * 2).view(B, 2),
        response_mask=torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]][:B]),
        sampling_logprobs=-torch.linspace(0.1, 2.0, B * 2).view(B, 2),
        truncated=torch.tensor([True, False, False, True][:B]),
        prompt_index=torch.arange(B),
        texts=[f"r{i}" for i in range(B)],
        prompt_texts=[f"p{i}" for i in range(B)],
        pad_id=0,
        tensors={"outcome": torch.tensor([1.0, 0.0, 1.0, 0.0][:B]), "rewards": torch.linspace(-1, 1, B * 2).view(B, 2)},
        meta={"row": list(range(B))},
    )


def small_meta(step: int) -> dict:
    return {
        "step": step,
        "bad_steps": 0,
        "config": {"train": {"out_dir": "x", "steps": 3}, "optim": {"betas": [0.9, 0.99]}, "none": None},
        "scheduler": {"last_epoch": step, "base_lrs": [0.1]},
        "stream": {"epoch": 0, "position": step, "num_rows": 8},
        "buffer": small_batch(),
        "rng": C.rng_state(),
        "world_size": 1,
    }


def write_small_run(out: Path, steps=(1, 2), fmt: str = "torch") -> tuple[dict, dict]:
    models, optimizers = small_parts()
    for step in steps:
        for m in models.values():
            with torch.no_grad():
                m.weight.add_(1.0)
        C.save_run_checkpoint(out, step, fmt, models, optimizers, small_meta(step), ONE)
    return models, optimizers


def load_small(out: Path):
    models, optimizers = small_parts(seed=1)
    return C.load_run_checkpoint(out, models, optimizers, ONE), models


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def batches_equal(a: RolloutBatch, b: RolloutBatch) -> bool:
    tensors = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "sampling_logprobs", "truncated")
    return (
        all(torch.equal(getattr(a, f), getattr(b, f)) for f in (*tensors, "prompt_index"))
        and (a.texts, a.prompt_texts, a.pad_id, a.meta) == (b.texts, b.prompt_texts, b.pad_id, b.meta)
        and a.tensors.keys() == b.tensors.keys()
        and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    )


# ---------------------------------------------------------------------------------------------
# plain data only
class Planted:
    """A pickle payload: unpickling it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    write_small_run(out, steps=(1,))
    ckpt = out / "checkpoints" / "step-000001"
    state = torch.load(ckpt / "state.pt", weights_only=True)
    state["payload"] = Planted(marker)
    torch.save(state, ckpt / "state.pt")
    S.write_manifest(ckpt, 1)  # even with a matching checksum (whoever plants a file can write one)
    with pytest.raises(C.CheckpointError, match=r"state\.pt: refused.*plain data"):
        C.load_checkpoint(ckpt)
    with pytest.warns(C.CheckpointWarning, match="skipping bad checkpoint step-000001"):
        with pytest.raises(C.CheckpointError, match="no usable checkpoint"):
            load_small(out)
    assert not marker.exists()


def test_saved_state_is_plain_data_and_round_trips(tmp_path):
    out = tmp_path / "run"
    models, optimizers = small_parts()
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    meta = small_meta(1)  # captures the RNG states
    expected_rng = (random.random(), np.random.rand(), torch.rand(1))
    C.save_run_checkpoint(out, 1, "torch", models, optimizers, meta, ONE)
    # the file loads with weights_only=True: tensors and plain containers only
    raw = torch.load(out / "checkpoints" / "step-000001" / "state.pt", weights_only=True)
    assert isinstance(raw["buffer"], dict) and isinstance(raw["rng"]["numpy"][1], torch.Tensor)
    got_meta, loaded = load_small(out)
    assert batches_equal(got_meta["buffer"], small_batch())
    assert got_meta["config"] == meta["config"] and got_meta["stream"] == meta["stream"]
    for role in models:
        assert torch.equal(loaded[role].weight, models[role].weight)
        a, b = optimizers[role].state_dict()["state"][0], got_meta[f"{role}_optimizer"]["state"][0]
        assert all(torch.equal(a[k], b[k]) for k in a)
    C.set_rng_state(got_meta["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[:2] == expected_rng[:2] and torch.equal(got[2], expected_rng[2])


def test_the_buffer_survives_a_round_trip_exactly():
    batch = small_batch()
    state_dict = torch.nn.BatchNorm1d(3).state_dict()  # an OrderedDict with module versions in _metadata
    plain = to_plain({"buffer": batch, "arr": np.arange(5, dtype=np.uint32), "bn": state_dict})
    back = from_plain(torch.load(_saved(plain), weights_only=True))
    assert batches_equal(back["buffer"], batch)
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2, 3, 4]
    assert back["bn"]._metadata == state_dict._metadata and list(back["bn"]) == list(state_dict)


def test_a_value_that_is_not_plain_data_is_refused_at_save_naming_its_key(tmp_path):
    models, optimizers = small_parts()
    meta = small_meta(1)
    meta["stream"]["sampler"] = object()
    with pytest.raises(TypeError, match=r"\['stream'\]\['sampler'\].*builtins.object"):
        C.save_run_checkpoint(tmp_path, 1, "torch", models, optimizers, meta, ONE)
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


# ---------------------------------------------------------------------------------------------
# checksums and the fallback
def test_flipped_bytes_fail_the_checksum_and_resume_falls_back(tmp_path):
    out = tmp_path / "run"
    models, _ = write_small_run(out, steps=(1, 2, 3))
    root = out / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000002", "step-000003"]  # keep=2: a fallback
    step2 = torch.load(root / "step-000002" / "state.pt", weights_only=True)["policy"]
    flip_byte(root / "step-000003" / "state.pt")
    with pytest.raises(C.CheckpointError, match=r"step-000003/state\.pt: checksum mismatch"):
        C.load_checkpoint(root / "step-000003")
    with pytest.warns(C.CheckpointWarning) as caught:
        meta, loaded = load_small(out)
    text = "\n".join(str(w.message) for w in caught)
    assert "step-000003/state.pt: checksum mismatch" in text and "resumed from" in text
    assert meta["step"] == 2
    assert torch.equal(loaded["policy"].weight, step2["weight"])


def test_every_checkpoint_bad_is_an_error_listing_each(tmp_path):
    out = tmp_path / "run"
    write_small_run(out, steps=(1, 2))
    root = out / "checkpoints"
    flip_byte(root / "step-000002" / "state.pt")
    (root / "step-000001" / "state.pt").write_bytes(b"")
    with pytest.warns(C.CheckpointWarning):
        with pytest.raises(C.CheckpointError) as err:
            load_small(out)
    assert "step-000002/state.pt: checksum mismatch" in str(err.value)
    assert "step-000001/state.pt: empty" in str(err.value)


def test_an_empty_file_is_a_clear_error_naming_it(tmp_path):
    out = tmp_path / "run"
    write_small_run(out, steps=(1, 2))
    ckpt = out / "checkpoints" / "step-000002"
    (ckpt / "state.pt").write_bytes(b"")
    with pytest.raises(C.CheckpointError, match=r"step-000002/state\.pt: empty \(0 bytes"):
        C.load_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()  # even unverified: not torch's bare EOFError ("Aborted.")
    with pytest.raises(C.CheckpointError, match=r"step-000002/state\.pt: empty file"):
        C.load_checkpoint(ckpt, verify=False)
    with pytest.warns(C.CheckpointWarning) as caught:
        meta, _ = load_small(out)
    assert meta["step"] == 1
    assert "step-000002/manifest.json: missing" in str(caught[0].message)


def test_a_missing_or_broken_latest_marker_still_finds_the_newest(tmp_path):
    out = tmp_path / "run"
    write_small_run(out, steps=(1, 2))
    (out / "checkpoints" / "LATEST").write_text("step-000009")
    with pytest.warns(C.CheckpointWarning, match="does not exist"):
        meta, _ = load_small(out)
    assert meta["step"] == 2
    (out / "checkpoints" / "LATEST").unlink()
    assert load_small(out)[0]["step"] == 2


def test_a_save_after_a_fallback_replaces_the_abandoned_newer_checkpoint(tmp_path):
    out = tmp_path / "run"
    models, optimizers = write_small_run(out, steps=(2, 4))
    root = out / "checkpoints"
    flip_byte(root / "step-000004" / "state.pt")
    with pytest.warns(C.CheckpointWarning):
        assert load_small(out)[0]["step"] == 2
    C.save_run_checkpoint(out, 3, "torch", models, optimizers, small_meta(3), ONE)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000002", "step-000003"]
    assert (root / "LATEST").read_text() == "step-000003"


def test_dcp_checkpoints_are_checksummed_plain_data_too(tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP: "torch.distributed is disabled..."
        models, _ = write_small_run(out, steps=(1, 2), fmt="dcp")
        root = out / "checkpoints"
        files = json.loads((root / "step-000002" / "manifest.json").read_text())["files"]
        assert {".metadata", "meta.pt", "__0_0.distcp"} <= set(files)
        torch.load(root / "step-000002" / "meta.pt", weights_only=True)
        meta, loaded = load_small(out)
        assert meta["step"] == 2 and batches_equal(meta["buffer"], small_batch())
        assert torch.equal(loaded["policy"].weight, models["policy"].weight)
        flip_byte(root / "step-000002" / "__0_0.distcp")
        with pytest.warns(C.CheckpointWarning) as caught:
            meta, _ = load_small(out)
    assert meta["step"] == 1
    assert "step-000002/__0_0.distcp: checksum mismatch" in str(caught[0].message)


# ---------------------------------------------------------------------------------------------
# partial directories, full disks
def test_partial_directories_are_cleaned_on_save_and_on_resume(tmp_path):
    out = tmp_path / "run"
    write_small_run(out, steps=(1,))
    root = out / "checkpoints"
    for name in (".tmp-step-000002-4242", ".tmp-step-000002-dcp"):
        (root / name).mkdir()
        (root / name / "state.pt").write_bytes(b"partial")
    (root / ".LATEST.4242").write_text("step-000002")
    with pytest.warns(C.CheckpointWarning, match="partial"):
        meta, _ = load_small(out)
    assert meta["step"] == 1 and sorted(p.name for p in root.iterdir()) == ["LATEST", "step-000001"]
    (root / ".tmp-step-000002-4242").mkdir()
    models, optimizers = small_parts()
    with pytest.warns(C.CheckpointWarning, match="partial"):
        C.save_run_checkpoint(out, 2, "torch", models, optimizers, small_meta(2), ONE)
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step-000001", "step-000002"]


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (root with mount rights), else ``None``."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    except OSError:
        done = None
    if done is None or done.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def assert_previous_intact(out: Path) -> None:
    root = out / "checkpoints"
    assert (root / "LATEST").read_text() == "step-000001"
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step-000001"]  # no partial directory left
    S.verify_checkpoint(root / "step-000001")
    assert load_small(out)[0]["step"] == 1


def big_meta(step: int) -> dict:
    return dict(small_meta(step), ballast=torch.randn(600_000))  # 2.4 MB: more than the disk holds


def test_a_full_disk_says_no_space_left_and_keeps_the_previous_checkpoint(full_disk, tmp_path):
    if full_disk is None:
        pytest.skip("cannot mount a tmpfs here (simulated in the next tests)")
    out = full_disk / "run"
    models, optimizers = write_small_run(out, steps=(1,))
    with pytest.raises(OSError, match="No space left on device") as err:
        C.save_run_checkpoint(out, 2, "torch", models, optimizers, big_meta(2), ONE)
    assert err.value.errno == errno.ENOSPC and "step-000002" in str(err.value) and "state.pt" in str(err.value)
    assert_previous_intact(out)


def test_enospc_from_a_write_is_reported_as_such(tmp_path, monkeypatch):
    out = tmp_path / "run"
    models, optimizers = write_small_run(out, steps=(1,))

    def full(obj, fh, *args, **kwargs):  # what torch.save through a file object gives on a full disk
        fh.write(b"PK\x03\x04 partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534") from None

    monkeypatch.setattr(C.torch, "save", full)
    with pytest.raises(OSError, match=r"No space left on device: cannot write the checkpoint file .*state\.pt"):
        C.save_run_checkpoint(out, 2, "torch", models, optimizers, small_meta(2), ONE)
    monkeypatch.undo()
    assert_previous_intact(out)


def test_torchs_iostream_error_on_a_full_disk_is_reported_as_no_space(tmp_path, monkeypatch):
    out = tmp_path / "run"
    models, optimizers = write_small_run(out, steps=(1,))

    def full(obj, fh, *args, **kwargs):  # torch's path-based writer: the errno is lost
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(C.torch, "save", full)
    monkeypatch.setattr(S.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    with pytest.raises(OSError, match="No space left on device") as err:
        C.save_run_checkpoint(out, 2, "torch", models, optimizers, small_meta(2), ONE)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert_previous_intact(out)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
def test_torn_and_invalid_metrics_lines_are_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": oops}\n[1, 2]\n{"step": 3, "x": 3}\n{"step": 4, "x')
    logger = MetricsLogger(tmp_path, tensorboard=False)
    with pytest.warns(MetricsWarning) as caught:
        logger.truncate_after(3)
    messages = [str(w.message) for w in caught]
    assert any("metrics.jsonl:2: dropping an invalid line" in m for m in messages)
    assert any("metrics.jsonl:3: dropping an invalid line" in m for m in messages)
    assert any("metrics.jsonl:5: dropping a torn last line" in m for m in messages)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3]
    logger.log({"step": 4, "x": 4.0})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3, 4]
    assert not list(tmp_path.glob(".metrics*"))


# ---------------------------------------------------------------------------------------------
# the whole trainer: round trip, resume = uninterrupted, fallback, torn metrics
def _comparable(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("time/") and k != "tokens_per_s"}


def trainer(tiny_model_dir, out: Path, *overrides: str):
    from iprime.train.prime import PrimeTrainer

    cfg = make_config(out, "rollout.oversample=2.0", *overrides)  # surplus groups: a non-empty buffer
    return PrimeTrainer(str(tiny_model_dir), cfg, ROWS, parity_verifier)


def test_trainer_state_round_trips_and_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    full = trainer(tiny_model_dir, tmp_path / "run", "train.steps=1")
    full.train(progress=False)
    assert full.collector.buffer is not None and len(full.collector.buffer)  # surplus groups wait
    rng_at_save = C.rng_state()
    raw = torch.load(tmp_path / "run" / "checkpoints" / "step-000001" / "state.pt", weights_only=True)
    assert raw["step"] == 1

    resumed = trainer(tiny_model_dir, tmp_path / "run", "train.steps=3")
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert resumed.resume() and resumed.step == 1
    for role in ("policy", "prm"):
        a, b = getattr(full, role).state_dict(), getattr(resumed, role).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), role
        sa = getattr(full.optimizers, role).state_dict()["state"]
        sb = getattr(resumed.optimizers, role).state_dict()["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert resumed.optimizers.scheduler.state_dict() == full.optimizers.scheduler.state_dict()
    assert resumed.collector.stream.state_dict() == full.collector.stream.state_dict()
    assert batches_equal(resumed.collector.buffer, full.collector.buffer)
    now = C.rng_state()
    assert now["python"] == rng_at_save["python"] and torch.equal(now["torch"], rng_at_save["torch"])
    assert now["numpy"][0] == rng_at_save["numpy"][0] and torch.equal(now["numpy"][1], rng_at_save["numpy"][1])
    assert now["numpy"][2:] == rng_at_save["numpy"][2:]

    # the next two steps (one served from the restored buffer, one sampled) are the uninterrupted run's
    C.set_rng_state(rng_at_save)
    a = [_comparable(full.train_step()) for _ in range(2)]
    C.set_rng_state(rng_at_save)
    b = [_comparable(resumed.train_step()) for _ in range(2)]
    assert b[0].pop("config/changed") == "train.steps: 1 -> 3"  # a changeable key, said at the step it applies
    assert a[0]["rollout/rounds"] == 0  # served from the buffer
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6, nan_ok=True), key


def test_resume_falls_back_from_a_bad_newest_checkpoint_and_tolerates_a_torn_metrics_line(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    trainer(tiny_model_dir, out, "train.steps=2").train(progress=False)
    root = out / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000001", "step-000002"]
    flip_byte(root / "step-000002" / "state.pt")
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "policy/pg_loss": 0.1')  # a kill mid-line
    again = trainer(tiny_model_dir, out, "train.steps=3")
    with pytest.warns(UserWarning) as caught:
        history = again.train(resume=True, progress=False)
    text = "\n".join(str(w.message) for w in caught)
    assert "step-000002/state.pt: checksum mismatch" in text
    assert "metrics.jsonl:3: dropping a torn last line" in text
    assert [m["step"] for m in history] == [2, 3]  # resumed from step 1
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert (root / "LATEST").read_text() == "step-000003"
    S.verify_checkpoint(root / "step-000002")  # rewritten: good again


# ---------------------------------------------------------------------------------------------
# the update guard
def noisy(n: int, center: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [center * (1 + 0.3 * (2 * rng.random() - 1)) for _ in range(n)]


def feed(guard: UpdateGuard, grad_norms, losses=None) -> list[str | None]:
    losses = losses or [0.69] * len(grad_norms)
    return [
        guard.check({"policy/grad_norm": g, "prm/loss": lo, "policy/pg_loss": 0.01})
        for g, lo in zip(grad_norms, losses)
    ]


def test_the_guard_passes_an_ordinary_run():
    guard = UpdateGuard()
    assert feed(guard, noisy(300, 1.0), noisy(300, 0.6, seed=1)) == [None] * 300
    assert guard.rejected_in_a_row == 0 and len(guard.history["policy/grad_norm"]) == guard.window


def test_the_guard_flags_an_lr_1e10_like_spike():
    guard = UpdateGuard()
    assert feed(guard, noisy(10, 1.0)) == [None] * 10
    reason = guard.check({"policy/grad_norm": 1e6, "prm/loss": 0.7})
    assert reason is not None and "policy/grad_norm" in reason and "absolute limit" in reason
    # the spike is not history: the next ordinary step passes, a second spike is still flagged
    assert guard.check({"policy/grad_norm": 1.1}) is None
    assert max(guard.history["policy/grad_norm"]) < 2
    # even before any history (no warm-up needed for the absolute backstop)
    assert UpdateGuard().check({"policy/grad_norm": 1e6}) is not None


def test_the_guard_flags_a_relative_spike_only_after_warm_up():
    assert feed(UpdateGuard(warmup=5), [1.0, 1.0, 30.0]) == [None, None, None]  # warming up
    guard = UpdateGuard(warmup=5)
    assert feed(guard, [1.0] * 5) == [None] * 5
    assert guard.check({"policy/grad_norm": 9.0}) is None  # < 10x the median
    reason = guard.check({"policy/grad_norm": 30.0})
    assert reason is not None and "10x the median" in reason
    # a loss near 0 never trips the ratio below its floor
    guard = UpdateGuard()
    for _ in range(10):
        assert guard.check({"policy/pg_loss": 1e-4}) is None
    assert guard.check({"policy/pg_loss": 0.5}) is None
    assert guard.check({"policy/pg_loss": 50.0}) is not None


def test_the_guard_flags_non_finite_values_and_counts_rejections_in_a_row():
    guard = UpdateGuard()
    assert "is nan" in guard.check({"prm/loss": float("nan")})
    assert "is inf" in guard.check({"policy/grad_norm": math.inf})
    assert guard.rejected_in_a_row == 2
    assert guard.check({"policy/grad_norm": 1.0}) is None and guard.rejected_in_a_row == 0
    assert guard.check({"step": 3, "lr": 1e10, "skipped": "no group passed the filter"}) is None


def test_the_guard_sees_wrecked_weights_on_the_step_that_wrecks_them():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    guard = UpdateGuard()
    guard.begin({"policy": model})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))  # an ordinary step
    assert guard.check({"policy/grad_norm": 1.0, **guard.measure({"policy": model})}) is None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e10 * torch.sign(torch.randn_like(p)))  # Adam with lr 1e10: every weight moves by 1e10
    reason = guard.check({"policy/grad_norm": 1.0, **guard.measure({"policy": model})})
    assert reason is not None and "policy/param_norm" in reason and "wrecked" in reason
    # the weights stay wrecked: every later step is rejected until the caller stops the run
    assert guard.check({"policy/grad_norm": 1.0, **guard.measure({"policy": model})}) is not None
    assert guard.rejected_in_a_row == 2
    assert param_norm(torch.nn.Module()) == 0.0


def test_the_guard_survives_a_resume():
    guard = UpdateGuard()
    feed(guard, noisy(8, 1.0))
    guard.param_norms["policy"] = 28.0
    state = guard.state_dict()
    plain = torch.load(_saved(state), weights_only=True)  # plain data: fits a weights_only checkpoint
    again = UpdateGuard()
    again.load_state_dict(plain)
    assert again.state_dict() == state
    for value in (1.2, 15.0, 1e5):
        assert again.check({"policy/grad_norm": value}) == guard.check({"policy/grad_norm": value})


def _saved(obj) -> object:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_the_guard_catches_lr_1e10_on_the_first_step_of_a_real_run(tiny_model_dir, tmp_path):
    t = trainer(tiny_model_dir, tmp_path / "run", "optim.lr=1e10", "train.steps=1")
    guard = UpdateGuard()
    models = {"policy": t.policy, "prm": t.prm}
    guard.begin(models)
    metrics = t.train_step()
    assert math.isfinite(metrics["policy/grad_norm"]) and metrics["policy/grad_norm"] < 1e3  # looks ordinary
    metrics.update(guard.measure(models))
    reason = guard.check(metrics)
    assert reason is not None and reason.startswith("policy/param_norm")
