"""SFT at scale: `iprime sft` under torchrun (2 gloo ranks on the CPU) gives the 1-process loss
curve and weights, on every rank; a run resumes from its checkpoints to the uninterrupted result
(bit for bit in one process); and the checks that run before any model loads.

The 2-rank runs are real processes: ``tests/dist_worker.py sft`` with torchrun's environment
(RANK / WORLD_SIZE / MASTER_*), and ``python -m torch.distributed.run -m iprime sft``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import dist_worker as worker
import pytest
import torch
from test_distributed import child_env, free_port, launch_ranks
from typer.testing import CliRunner

from iprime.cli import app
from iprime.models import load_model, load_tokenizer
from iprime.train import distributed as D
from iprime.train.sft import (
    IGNORE_INDEX,
    SFTBatch,
    SFTConfig,
    SFTRun,
    ShuffledBatches,
    check_world_size,
    collate,
    prepare_sft_data,
    sft_loss,
    sft_loss_share,
)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

# seen on 2 gloo ranks vs one process (tiny Qwen2, 10 AdamW steps at lr 3e-3): losses within
# 1.7e-7 relative, weights within 3.7e-6 (the steps move them by up to 1.9e-2)
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-5


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def write_rows(path, rows=worker.SFT_ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """:func:`dist_worker.sft_results` in this process: uninterrupted, interrupted + resumed."""
    return worker.sft_results(str(tiny_model_dir), str(tmp_path_factory.mktemp("sft_one") / "run"))


# ------------------------------------------------------------------ the global batch, the loss
def toy_encoded(n: int = 10) -> list[tuple[list[int], list[int]]]:
    """Row i: i + 2 prompt tokens, then i % 3 + 1 response tokens (so the counts differ by row)."""
    out = []
    for i in range(n):
        prompt, response = [7] * (i + 2), [9] * (i % 3 + 1)
        out.append((prompt + response, [IGNORE_INDEX] * len(prompt) + response))
    return out


def test_ranks_split_the_one_process_global_batches():
    """At any world size the global batches come in the same seeded order; rank r collates the
    r-th contiguous share, and every rank knows the global batch's response and total tokens."""
    encoded = toy_encoded()
    one = ShuffledBatches(encoded, 4, 0, "cpu", seed=3)
    ranks = [ShuffledBatches(encoded, 4, 0, "cpu", seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):  # across epochs: 10 rows, batches of 4, tails join the next epoch
        whole, parts = one.next_batch(), [r.next_batch() for r in ranks]
        ids = whole.tensors["input_ids"]
        assert [p.tensors["input_ids"].shape[0] for p in parts] == [2, 2]
        for k, part in enumerate(parts):  # right padding: the share's rows are the whole batch's rows
            got = part.tensors["input_ids"]
            assert torch.equal(got, ids[2 * k : 2 * k + 2, : got.shape[1]])
        n_resp = int((whole.tensors["labels"][:, 1:] != IGNORE_INDEX).sum())
        assert all(p.response_tokens == whole.response_tokens == n_resp for p in parts)
        assert all(p.tokens == whole.tokens == int(whole.tensors["attention_mask"].sum()) for p in parts)
    assert ranks[0].response_tokens == one.response_tokens
    with pytest.raises(ValueError, match="multiple of the world size 3"):
        ShuffledBatches(encoded, 4, 0, "cpu", seed=3, rank=0, world_size=3)


def test_the_stream_continues_from_its_state():
    encoded = toy_encoded()
    a = ShuffledBatches(encoded, 4, 0, "cpu", seed=5)
    for _ in range(3):
        a.next_batch()
    b = ShuffledBatches(encoded, 4, 0, "cpu", seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x.tensors["input_ids"], y.tensors["input_ids"]) and x.response_tokens == y.response_tokens
    assert a.response_tokens == b.response_tokens


def test_a_ranks_loss_part_is_the_mean_in_one_process_bit_for_bit(tiny_model_dir):
    """:func:`sft_loss_share` with W=1 through the unsharded root is :func:`sft_loss` (PyTorch's
    cross-entropy mean), loss and gradient; with W=2 the two shares' parts sum to 2x the mean."""
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    data = prepare_sft_data(tok, worker.SFT_ROWS[:6], 256)
    whole = collate(data.encoded, data.pad_id)
    n = int((whole["labels"][:, 1:] != IGNORE_INDEX).sum())
    mean = sft_loss(model, whole)
    want = torch.autograd.grad(mean, list(model.parameters()))
    part = sft_loss_share(D.LogitsModule(model), SFTBatch(whole, n, 0), 1)
    got = torch.autograd.grad(part, list(model.parameters()))
    assert torch.equal(part, mean) and all(torch.equal(a, b) for a, b in zip(got, want))
    halves = [SFTBatch(collate(data.encoded[k : k + 3], data.pad_id), n, 0) for k in (0, 3)]
    with torch.no_grad():
        total = sum(sft_loss_share(D.LogitsModule(model), h, 2) for h in halves)
    assert float(total) == pytest.approx(2 * float(mean.detach()), rel=1e-6)


# ------------------------------------------------------------------ one process: resume
def test_one_process_resume_is_the_uninterrupted_run_bit_for_bit(one_process, tmp_path_factory):
    """Killed after step 7 (last checkpoint: step 6), resumed by a new run from a fresh model:
    every step's loss, the summary and every weight equal the uninterrupted run's exactly."""
    a, b = one_process["uninterrupted"], one_process["resumed"]
    assert len(a["losses"]) == 10 and a["losses"][-1] < 0.6 * a["losses"][0]
    assert b["losses"] == a["losses"] and b["summary"] == a["summary"]
    for name, w in a["weights"].items():
        assert torch.equal(b["weights"][name], w), name


def test_a_resumed_run_logs_every_step_once_and_keeps_two_checkpoints(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(worker.Interrupted):
        worker.sft_run(str(tiny_model_dir), str(out), stop=worker.SFT_STOP)
    assert (out / "checkpoints" / "LATEST").read_text() == "step-000006"
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 8))
    run, summary = worker.sft_run(str(tiny_model_dir), str(out), resume=True)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 11))  # step 7 again, once: the resumed run's
    assert [m["loss"] for m in lines] == pytest.approx(run.losses, rel=1e-12)
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000009", "step-000010"]
    assert summary["final_loss"] == run.losses[-1]  # log_every=1: the last window is the last step


def test_resume_refuses_a_checkpoint_of_other_settings_or_data(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    data = prepare_sft_data(tok, worker.SFT_ROWS, 256)
    config = SFTConfig(lr=1e-3, max_steps=2, batch_size=4, save_every=1)
    SFTRun(load_model(tiny_model_dir), data, config, out_dir=tmp_path).train()
    other = SFTConfig(lr=2e-3, max_steps=2, batch_size=4, save_every=1, log_every=1)  # log_every may change
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 -> 0.002\)"):
        SFTRun(load_model(tiny_model_dir), data, other, out_dir=tmp_path).train(resume=True)
    fewer = prepare_sft_data(tok, worker.SFT_ROWS[:-1], 256)
    with pytest.raises(ValueError, match="other data"):
        SFTRun(load_model(tiny_model_dir), fewer, config, out_dir=tmp_path).train(resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        SFTRun(load_model(tiny_model_dir), data, config, out_dir=tmp_path / "empty").train(resume=True)


# ------------------------------------------------------------------ two ranks
def test_two_ranks_give_the_one_process_loss_curve_and_weights_on_every_rank(one_process, tiny_model_dir, tmp_path):
    """The must-show: 2 gloo ranks, each on half of every global batch of 8, FSDP2-sharded:
    every step's (all-reduced) loss and the final weights as each rank gathers them equal the
    1-process run's to float noise; and a 2-rank run killed after step 7 and resumed from its
    DCP checkpoint ends where the uninterrupted 2-rank run does."""
    launch_ranks(["sft", str(tiny_model_dir), str(tmp_path / "two.pt")], timeout=300)
    ranks = [torch.load(f"{tmp_path / 'two.pt'}.rank{r}", weights_only=False) for r in range(2)]
    ckpt = tmp_path / "two.pt.run" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-000009", "step-000010"]
    assert len(list((ckpt / "step-000010").glob("*.distcp"))) == 2  # sharded: one file per rank
    one = one_process["uninterrupted"]
    for rank, two in enumerate(ranks):
        for case in ("uninterrupted", "resumed"):
            got = two[case]
            assert got["losses"] == pytest.approx(one["losses"], rel=LOSS_RTOL), (rank, case)
            assert got["weights"].keys() == one["weights"].keys()
            for name, w in one["weights"].items():
                where = f"rank {rank} {case} {name}"
                torch.testing.assert_close(got["weights"][name], w, rtol=0, atol=WEIGHT_ATOL, msg=where)
            summary = {k: v for k, v in got["summary"].items() if not k.endswith("_loss")}
            assert summary == {k: v for k, v in one["summary"].items() if not k.endswith("_loss")}
        resumed, straight = two["resumed"], two["uninterrupted"]
        assert resumed["losses"] == pytest.approx(straight["losses"], rel=1e-6, abs=0)
        for name, w in straight["weights"].items():
            torch.testing.assert_close(resumed["weights"][name], w, rtol=1e-6, atol=1e-7)
    start = load_model(tiny_model_dir).state_dict()
    assert max(float((one["weights"][k] - v).abs().max()) for k, v in start.items()) > 100 * WEIGHT_ATOL


def test_torchrun_iprime_sft_matches_one_process(tiny_model_dir, tmp_path):
    """`torchrun --nproc_per_node=2 -m iprime sft` and `iprime sft` in one process on the same
    global batches: the same metrics.jsonl loss curve (rank 0 alone writes and prints), DCP
    checkpoints, and the same saved model; the DCP checkpoint resumes in one process."""
    data = write_rows(tmp_path / "rows.jsonl")
    args = ["--model", tiny_model_dir, "--data", data, "--batch-size", "8", "--max-steps", "6", "--lr", "3e-3"]
    args += ["--save-every", "3", "--log-every", "1"]
    one = invoke("sft", *args, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={free_port()}", "-m", "iprime", "sft", *map(str, args), "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("SFT step 6/6") == 1 and proc.stdout.count("saved the fine-tuned model") == 1

    curves = {}
    for name in ("one", "two"):
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in lines] == list(range(1, 7)), name
        curves[name] = [m["loss"] for m in lines]
    assert curves["two"] == pytest.approx(curves["one"], rel=LOSS_RTOL)
    ckpt = tmp_path / "two" / "checkpoints" / "step-000006"
    assert (ckpt / ".metadata").is_file() and len(list(ckpt.glob("*.distcp"))) == 2
    assert (tmp_path / "one" / "checkpoints" / "step-000006" / "state.pt").is_file()
    want = load_model(tmp_path / "one").state_dict()
    got = load_model(tmp_path / "two").state_dict()
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=0, atol=WEIGHT_ATOL, msg=name)

    # the 2 ranks' DCP checkpoint of step 3, resumed by one process: the same steps 4-6 and model
    shutil.rmtree(ckpt)
    (tmp_path / "two" / "checkpoints" / "LATEST").write_text("step-000003")
    again = invoke("sft", *args, "--out", tmp_path / "two", "--resume")
    assert again.exit_code == 0, again.output
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 7))
    assert [m["loss"] for m in lines] == pytest.approx(curves["one"], rel=LOSS_RTOL)
    got = load_model(tmp_path / "two").state_dict()
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=0, atol=WEIGHT_ATOL, msg=name)


# ------------------------------------------------------------------ the checks before a model loads
def test_world_size_must_divide_the_batch():
    check_world_size(SFTConfig(batch_size=8), 4)
    with pytest.raises(ValueError, match=r"batch_size=6 must be a multiple of the world size 4.*batch_size=4\)"):
        check_world_size(SFTConfig(batch_size=6), 4)


def test_iprime_sft_checks_settings_world_size_and_data_before_any_model_loads(tmp_path, monkeypatch):
    import iprime.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(iprime.models, "load_model", no_model)
    data = write_rows(tmp_path / "rows.jsonl")
    base = ["sft", "--model", tmp_path / "no-such-model", "--data", data, "--out", tmp_path / "out"]
    bad = invoke(*base, "--lr", "0")
    assert bad.exit_code == 2 and "config error: lr must be > 0" in bad.output
    monkeypatch.setenv("WORLD_SIZE", "4")
    bad = invoke(*base, "--batch-size", "6")
    assert bad.exit_code == 2 and "config error: batch_size=6 must be a multiple of the world size 4" in bad.output
    monkeypatch.delenv("WORLD_SIZE")
    bad = invoke(*base, "--resume")
    assert bad.exit_code == 2 and "--resume: no checkpoint" in bad.output
    (tmp_path / "out" / "checkpoints" / "step-000002").mkdir(parents=True)
    bad = invoke(*base)
    assert bad.exit_code == 2 and "holds the checkpoints of an earlier run (step-000002)" in bad.output


def test_iprime_sft_refuses_a_bad_row_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    import iprime.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(iprime.models, "load_model", no_model)
    data = write_rows(tmp_path / "rows.jsonl", worker.SFT_ROWS[:3] + [{"prompt": "x " * 300, "response": "y"}])
    bad = invoke("sft", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "out", "--max-length", "64")
    assert bad.exit_code == 2, bad.output
    assert "data error" in bad.output and "row 3: prompt alone is" in bad.output
