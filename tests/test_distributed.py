"""Data-parallel training on the CPU (gloo): 2 ranks compute what 1 rank does, a torchrun run
writes DCP checkpoints, and 1 process resumes them.

Each test launches real processes (like torchrun: RANK / WORLD_SIZE / MASTER_* in the
environment) running ``tests/dist_worker.py`` or ``python -m torch.distributed.run -m iprime``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import dist_worker as worker
import pytest
import torch

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")]))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch_ranks(args: list[str], world: int = 2, timeout: float = 120, script: Path = HERE / "dist_worker.py") -> None:
    """Start ``world`` ranks of ``script args`` (``tests/dist_worker.py`` unless given) and wait;
    fail with their output."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env=child_env(RANK=r, LOCAL_RANK=r, WORLD_SIZE=world, MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{out[-4000:]}"


def test_two_ranks_compute_the_one_rank_update(tiny_model_dir, tmp_path):
    """One step (PRM update, global whitening, PPO epochs over mini/micro-batches) on a fixed
    global batch: 2 ranks x half the groups give the 1-process losses, metrics and weights, on
    EVERY rank (each rank's metrics, and the full state dict each rank gathers)."""
    launch_ranks(["update", str(tiny_model_dir), str(tmp_path / "two.pt")])
    ranks = [torch.load(f"{tmp_path / 'two.pt'}.rank{r}", weights_only=False) for r in range(2)]
    one = worker.run_update(str(tiny_model_dir), str(tmp_path / "one"))
    for (case, _), (rank, two) in itertools.product(worker.UPDATE_CASES, enumerate(ranks)):
        a, b = one[case], two[case]
        assert a["metrics"]["policy/updates"] == b["metrics"]["policy/updates"] >= 1
        for key, value in a["metrics"].items():
            if key.startswith("time/") or key == "tokens_per_s":
                continue
            assert b["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (case, rank, key)
        assert a.keys() == b.keys()
        for role in set(a) - {"metrics"}:
            assert b[role].keys() == a[role].keys(), (case, rank, role)
            for name, w in a[role].items():
                torch.testing.assert_close(
                    b[role][name], w, rtol=1e-4, atol=1e-5, msg=f"{case} rank {rank} {role} {name}"
                )
    # the update really moved the weights (so the comparison is not vacuous)
    from iprime.models import load_model

    start = load_model(tiny_model_dir).state_dict()
    assert max((one["one_micro"]["policy"][k] - v).abs().max() for k, v in start.items()) > 1e-3


def test_torchrun_run_writes_dcp_and_resumes_on_one_process(tiny_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in worker.ROWS))
    out = tmp_path / "run"
    same_run = [f"model.policy={tiny_model_dir}", f"data.train_path={data}", "data.verifier=arithmetic"]
    overrides = worker.train_overrides(out, 2) + same_run + ["train.num_threads=1"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "iprime",
        "train",
        *overrides,
    ]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    ckpt = out / "checkpoints"
    assert (ckpt / "LATEST").read_text() == "step-000002"
    for step in ("step-000001", "step-000002"):
        assert (ckpt / step / ".metadata").is_file() and (ckpt / step / "meta.pt").is_file()
        assert len(list((ckpt / step).glob("*.distcp"))) == 2  # one shard file per rank
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]  # rank 0 alone logs
    assert all(m["batch/size"] == 8 for m in lines)  # global batch: 2 groups x K=4

    from iprime.config import load_config
    from iprime.models import load_model
    from iprime.train.prime import PrimeTrainer

    final = load_model(out / "final" / "policy").state_dict()  # gathered by save_pretrained
    cfg = load_config(None, worker.train_overrides(out, 3) + same_run)  # the run's models and data: its identity
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, worker.ROWS, worker.parity_verifier)
    assert trainer.resume() and trainer.step == 2
    for name, w in trainer.policy.state_dict().items():
        assert torch.equal(w, final[name]), name
    assert trainer.optimizers.policy.state  # Adam moments came back too
    history = trainer.train(progress=False)
    assert [m["step"] for m in history] == [3]
    assert (ckpt / "LATEST").read_text() == "step-000003"
    assert (ckpt / "step-000003" / ".metadata").is_file()  # train.checkpoint_format=dcp in one process too


def equal_weight_gradient(model_dir) -> dict[str, torch.Tensor]:
    """The reference: one process, a plain model, PPO's first-step loss (ratio 1) with every
    response's token mean weighing the same, ``mean_i (1/|y_i|) sum_t -A_i * ratio_it``, RLOO
    advantages computed here by hand."""
    from iprime.models import load_model, load_tokenizer
    from iprime.models.logprobs import response_logprobs

    model = load_model(model_dir)
    batch = worker.uneven_batch(load_tokenizer(model_dir))
    K, T = 4, batch.response_ids.shape[1]
    o = batch.tensors["outcome"].view(-1, K)
    advantages = (o - (o.sum(1, keepdim=True) - o) / (K - 1)).reshape(-1, 1)  # leave-one-out
    mask = batch.response_mask.float()
    logp = response_logprobs(model, batch.input_ids, batch.attention_mask, T)
    ratio = torch.exp(logp - logp.detach())
    per_response = (-advantages * ratio * mask).sum(1) / mask.sum(1)
    per_response.mean().backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def relative_error(got: dict, want: dict) -> float:
    num = sum(float((got[k] - want[k]).square().sum()) for k in want)
    return (num / sum(float(w.square().sum()) for w in want.values())) ** 0.5


def test_the_recipes_aggregation_weighs_every_response_alike_on_two_ranks(tiny_model_dir, tmp_path):
    """The Eurus recipe's optim.agg / loss_scope (read from the recipe) on 2 gloo ranks and in
    one process: the policy gradient of a mini-batch of responses 2 to 48 tokens long is, on
    every rank, the equal-weight reference; the recipe's former token-mean is not."""
    assert worker.recipe_aggregation() == [
        "optim.agg=seq-mean-token-mean",
        "optim.loss_scope=mini_batch",
        "optim.micro_batch_size=1",
    ]
    launch_ranks(["agg", str(tiny_model_dir), str(tmp_path / "agg")], timeout=300)
    ranks = [torch.load(f"{tmp_path / 'agg'}.rank{r}", weights_only=False) for r in range(2)]
    one = worker.run_agg(str(tiny_model_dir), str(tmp_path / "one"))
    want = equal_weight_gradient(tiny_model_dir)
    assert max(float(w.abs().max()) for w in want.values()) > 1e-3  # a gradient worth comparing
    for got in [*ranks, one]:
        assert got["recipe"].keys() == want.keys()
        assert relative_error(got["recipe"], want) < 1e-4
    # a token mean over the ranks' same-index rows weighs long responses more: far from equal weights
    for got in ranks:
        assert relative_error(got["token_mean_micro"], want) > 0.05


def test_batch_norm_rank_scope_divides_by_each_ranks_own_largest_return(tmp_path):
    """algo.batch_norm_scope on 2 gloo ranks: ``rank`` divides each rank's process rewards by
    its own largest |return| (the PRIME repository's dp_prime.py), ``global`` by the largest
    over both; the prime estimator then whitens over both ranks either way."""
    from iprime import algo

    launch_ranks(["batch_norm", "-", str(tmp_path / "bn")])
    ranks = [torch.load(f"{tmp_path / 'bn'}.rank{r}", weights_only=False) for r in range(2)]

    def largest_return(r, mask):  # the original's reverse cumulative sum, by hand
        r = r * mask
        return float(torch.cumsum(r.flip(1), 1).flip(1).abs().max())

    own = [largest_return(x["rewards"], x["mask"]) for x in ranks]
    assert own[1] > 1.5 * own[0]  # the ranks' divisors really differ
    for x, divisor in zip(ranks, own):
        masked = x["rewards"] * x["mask"]
        torch.testing.assert_close(x["rank"], masked / (divisor + 1e-6))
        torch.testing.assert_close(x["global"], masked / (max(own) + 1e-6))
    # the estimator with rank scope = one process whitening the rows each rank normalised itself
    rewards = torch.cat([x["rank"] for x in ranks])
    mask, outcome = torch.cat([x["mask"] for x in ranks]), torch.cat([x["outcome"] for x in ranks])
    expected = algo.prime_rloo_advantages(outcome, rewards, mask, 4, whiten=True)
    torch.testing.assert_close(torch.cat([x["prime_rank"] for x in ranks]), expected)
    rewards = torch.cat([x["global"] for x in ranks])
    expected = algo.prime_rloo_advantages(outcome, rewards, mask, 4, whiten=True)
    torch.testing.assert_close(torch.cat([x["prime_global"] for x in ranks]), expected)
