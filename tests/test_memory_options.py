"""Memory options: LoRA PRM on the reference, gradient checkpointing, bf16 autocast (CUDA only),
token-budget micro-batches."""

from __future__ import annotations

import math

import dist_worker as worker
import pytest
import torch

from iprime.config import ConfigError, load_config
from iprime.models import load_model, response_logprobs
from iprime.train.memory import is_gradient_checkpointing, plan_micro_batches
from iprime.train.prime import PrimeTrainer

ROWS = worker.ROWS


def config(tmp_path, *extra):
    return load_config(
        None,
        worker.base_overrides(tmp_path)
        + [
            "train.steps=2",
            "train.save_every=0",
            "rollout.prompts_per_step=2",
            "optim.micro_batch_size=4",
            "optim.mini_batch_size=8",
            *extra,
        ],
    )


def test_lora_prm_shares_the_reference_weights(tiny_model_dir, tmp_path):
    trainer = PrimeTrainer(
        str(tiny_model_dir), config(tmp_path, "prm.lora=true", "prm.lora_r=4"), ROWS, worker.parity_verifier
    )
    assert trainer.reference is None and trainer.has_reference  # no separate reference model
    before = {k: v.clone() for k, v in trainer.prm.state_dict().items()}
    history = trainer.train(progress=False)
    assert all(math.isfinite(m["prm/loss"]) and math.isfinite(m["policy/pg_loss"]) for m in history)
    after = trainer.prm.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)  # only the adapter learned
    assert all(p.requires_grad == ("lora_" in n) for n, p in trainer.prm.named_parameters())

    batch = worker.fixed_batch(trainer.tokenizer, n_groups=2)
    ref = trainer._reference_logprobs(batch, None)  # adapter switched off
    base = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        expected = response_logprobs(base, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1])
    mask = batch.response_mask.bool()
    torch.testing.assert_close(ref[mask], expected[mask], rtol=1e-5, atol=1e-5)
    prm = trainer.passes.all_logprobs(trainer.prm, batch, 4)  # adapter on: a different model now
    assert (prm[mask] - expected[mask]).abs().max() > 1e-6


def test_lora_prm_config_checks():
    with pytest.raises(ConfigError, match="prm.lora"):
        load_config(None, ["prm.lora=true", "model.reference=policy"])
    with pytest.raises(ConfigError, match="prm.lora"):
        load_config(None, ["prm.lora=true", "model.prm=/some/prm"])


def test_gradient_checkpointing_reaches_policy_and_prm(tiny_model_dir, tmp_path):
    trainer = PrimeTrainer(
        str(tiny_model_dir),
        config(tmp_path, "model.gradient_checkpointing=true", "train.steps=1"),
        ROWS,
        worker.parity_verifier,
    )
    assert is_gradient_checkpointing(trainer.policy) and is_gradient_checkpointing(trainer.prm)
    (m,) = trainer.train(progress=False)
    assert math.isfinite(m["policy/pg_loss"]) and math.isfinite(m["prm/loss"])


def test_autocast_is_cuda_only():
    with pytest.raises(ConfigError, match="model.autocast: bf16 autocast needs a CUDA device"):
        load_config(None, ["model.autocast=bf16"])
    assert load_config(None, ["model.autocast=bf16", "model.device=cuda"]).model.autocast == "bf16"


def test_plan_micro_batches_respects_the_token_budget():
    prompt = [3, 3, 10, 3, 3, 3, 3, 3]
    resp = [2, 5, 1, 20, 1, 1, 1, 1]
    order = [7, 0, 1, 2, 3, 4, 5, 6]
    plans = plan_micro_batches(order, max_rows=8, max_tokens=30, prompt_len=prompt, response_len=resp)
    assert [i for p in plans for i in p] == order  # order kept, every row once
    for p in plans:
        width = max(prompt[i] for i in p) + max(resp[i] for i in p)
        assert len(p) * width <= 30 or len(p) == 1  # a row over budget runs alone
    assert [3] in plans and len(plans) > 2
    grouped = plan_micro_batches(list(range(8)), 8, 30, prompt, resp, unit=4)
    assert all(len(p) % 4 == 0 for p in grouped)  # whole groups (PRM micro-batches)
    assert plan_micro_batches(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


def _one_update(tiny_model_dir, tmp_path, *extra):
    cfg = load_config(
        None,
        worker.base_overrides(tmp_path)
        + [
            "rollout.prompts_per_step=4",
            "optim.loss_scope=mini_batch",
            "optim.mini_batch_size=8",
            "algo.entropy_coef=0.01",
            "optim.epochs=2",
            # the paper's formula: batch_norm divides the process rewards by the batch's largest
            # return, which before the PRM's first update is float noise around 0 that the
            # forwards' grouping changes, so it would compare noise scaled up to O(1)
            "algo.normalize=null",
            "algo.process_baseline=paper",
            *extra,
        ],
    )
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, ROWS, worker.parity_verifier)
    trainer.optimizers.policy = torch.optim.SGD(trainer.policy.parameters(), lr=0.5)
    trainer.optimizers.prm = torch.optim.SGD(trainer.prm.parameters(), lr=0.5)
    calls = []
    real = trainer.passes.logprobs
    trainer.passes.logprobs = lambda model, batch, rows, **kw: calls.append(len(rows)) or real(model, batch, rows, **kw)
    metrics = trainer.train_on_batch(worker.fixed_batch(trainer.tokenizer))
    return metrics, trainer.policy.state_dict(), trainer.prm.state_dict(), calls


def test_token_budget_micro_batches_give_the_same_update(tiny_model_dir, tmp_path):
    fixed = _one_update(tiny_model_dir, tmp_path / "a", "optim.micro_batch_size=8")
    budget = _one_update(
        tiny_model_dir,
        tmp_path / "b",
        "optim.micro_batch_size=8",
        "optim.micro_batch_tokens=70",
        "prm.micro_batch_size=16",
    )
    assert len(budget[3]) > len(fixed[3])  # the budget really split the forwards further
    # the PRM equals the reference before its first update: its rewards are float noise around 0,
    # and the pairwise accuracy ranks that noise, which the forwards' grouping changes
    for key, value in fixed[0].items():
        if not key.startswith("time/") and key not in ("tokens_per_s", "prm/pairwise_acc"):
            assert budget[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for a, b in ((fixed[1], budget[1]), (fixed[2], budget[2])):
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)
