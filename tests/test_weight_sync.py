"""The weight-sync engine (``rollout.engine=hf_sync``) and the weights every rank's engine gets.

A GPU run under torchrun has one vLLM engine per rank, each holding its own copy of the policy
and updated only by ``sync_weights``. Here the same path runs on the CPU with gloo: FSDP2 shards
gathered on every rank (:func:`iprime.train.distributed.full_state_items`), loaded by name into
each rank's own model (:func:`iprime.rollout.load_weights`, vLLM's ``load_weights`` contract), and
the engine's sampling log-probs compared with the trainer's (``rollout/sampler_logprob_gap``).

The distributed tests launch ``tests/dist_worker.py sync`` once per world size (2 and 4 gloo
ranks) and check what **every** rank wrote, against a single-process run of the same update.
"""

from __future__ import annotations

import copy

import dist_worker as worker
import pytest
import torch
from test_distributed import launch_ranks

from iprime.config import ConfigError, load_config
from iprime.models import load_model, load_tokenizer
from iprime.rollout import Capability, HFGenerator, SamplingParams, SyncedHFGenerator, check_generator, load_weights
from iprime.train import distributed as D
from iprime.train.diagnostics import local_sampler_gap
from iprime.train.prime import PrimeTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = 1e-4  # float32 noise between a KV-cache decode and one full forward is ~1e-6
STALE = 1e-2


# ------------------------------------------------------------------ the engine, one process
def test_load_weights_copies_by_name_and_refuses_what_does_not_fit(tiny_model_dir):
    model = load_model(tiny_model_dir)
    source = {k: torch.full_like(v, 0.25) for k, v in model.state_dict().items()}
    name = "model.layers.0.mlp.up_proj.weight"
    pairs = ((k, v.to(torch.bfloat16)) for k, v in source.items())  # a lazy stream, another dtype
    assert load_weights(model, pairs) == set(source)
    assert model.get_parameter(name).dtype == torch.float32 and bool((model.get_parameter(name) == 0.25).all())
    with pytest.raises(KeyError, match="no parameter or buffer named 'model.layers.9.mlp.up_proj.weight'"):
        load_weights(model, [("model.layers.9.mlp.up_proj.weight", source[name])])
    with pytest.raises(ValueError, match=r"has shape \(3,\), the engine's \(256, 128\)"):
        load_weights(model, [(name, torch.zeros(3))])


def test_the_engine_samples_its_own_copy_until_synced(tiny_model_dir):
    """The engine's model is not the trainer's: a change to the trainer's weights reaches it
    only through ``sync_weights``, after which it samples exactly what the built-in sampler on
    the trainer's model samples (same seed: same tokens, same log-probs)."""
    tok = load_tokenizer(tiny_model_dir)
    trainer_model = load_model(tiny_model_dir)
    engine = SyncedHFGenerator(load_model(tiny_model_dir), tok)
    assert check_generator(engine) is engine and engine.capabilities == {Capability.SYNC_WEIGHTS}
    params = SamplingParams(n=2, max_new_tokens=6, seed=3)
    prompts = ["Compute 1 + 2.", "Compute 7 + 8."]
    before = engine.generate(prompts, params)
    with torch.no_grad():
        for p in trainer_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = HFGenerator(trainer_model, tok).generate(prompts, params)
    stale = engine.generate(prompts, params)
    assert torch.equal(stale.response_ids, before.response_ids)
    assert torch.equal(stale.sampling_logprobs, before.sampling_logprobs)
    assert not torch.equal(stale.sampling_logprobs, reference.sampling_logprobs)

    engine.sync_weights(trainer_model.state_dict())  # a mapping, or (name, tensor) pairs
    synced = engine.generate(prompts, params)
    assert torch.equal(synced.response_ids, reference.response_ids)
    torch.testing.assert_close(synced.sampling_logprobs, reference.sampling_logprobs, rtol=0, atol=1e-5)
    assert engine.syncs == 1 and engine.model is not trainer_model
    with pytest.raises(ValueError, match="left 1 of the engine's 27 tensors unloaded"):
        engine.sync_weights(list(trainer_model.state_dict().items())[1:])
    with pytest.raises(NotImplementedError, match="does not declare Capability.SLEEP"):
        engine.sleep()


def test_local_sampler_gap_is_the_largest_difference_on_the_rows_asked_for():
    sampled = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.25, -3.0]])
    recomputed = torch.tensor([[-1.25, -2.0, 9.0], [-0.5, -1.25, -3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])  # the 9.0 is padding
    assert local_sampler_gap(sampled, recomputed, mask, torch.tensor([True, True])) == 1.0
    assert local_sampler_gap(sampled, recomputed, mask, torch.tensor([True, False])) == 0.25
    assert local_sampler_gap(sampled, recomputed, mask, torch.tensor([False, False])) == -1.0


def sync_config(tmp_path, *extra):
    return load_config(None, [*worker.sync_run_overrides(tmp_path, ["rollout.engine=hf_sync"]), *extra])


def test_engine_choice_and_its_checks(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="rollout.old_logprobs"):
        load_config(None, ["rollout.engine=hf_sync", "rollout.old_logprobs=sampling"])
    with pytest.raises(ValueError, match='rollout.engine="hf_sync" loads the policy from its path'):
        PrimeTrainer(
            load_model(tiny_model_dir),
            sync_config(tmp_path),
            worker.ROWS,
            worker.parity_verifier,
            tokenizer=load_tokenizer(tiny_model_dir),
        )


def test_one_process_run_syncs_every_update_and_a_resumed_run_syncs_first(tiny_model_dir, tmp_path):
    """In one process: the engine gets every update (its weights equal the policy's after each
    step, the gap stays at float noise); a run resumed from a checkpoint hands the engine the
    checkpoint's policy before sampling (the engine loaded the starting weights from the path)."""
    cfg = sync_config(tmp_path / "run", "train.steps=2", "train.save_every=1")
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, worker.ROWS, worker.parity_verifier)
    history = trainer.train(progress=False)
    assert trainer.generator.syncs == 2 and trainer.generator.model is not trainer.policy
    assert [m["rollout/sampler_logprob_gap"] < GOOD for m in history] == [True, True]
    for name, w in trainer.policy.state_dict().items():
        assert torch.equal(trainer.generator.model.state_dict()[name], w), name
    start = load_model(tiny_model_dir).state_dict()
    assert max(float((trainer.policy.state_dict()[k] - v).abs().max()) for k, v in start.items()) > 1e-3

    cfg = sync_config(tmp_path / "run", "train.steps=3", "train.save_every=1")
    resumed = PrimeTrainer(str(tiny_model_dir), cfg, worker.ROWS, worker.parity_verifier)
    assert resumed.resume() and resumed.generator.syncs == 1
    for name, w in trainer.policy.state_dict().items():
        assert torch.equal(resumed.generator.model.state_dict()[name], w), name
    assert resumed.train_step()["rollout/sampler_logprob_gap"] < GOOD


def test_full_state_items_in_one_process_are_the_live_tensors(tiny_model_dir):
    model = load_model(tiny_model_dir)
    items = list(D.full_state_items(model))
    state = model.state_dict()
    assert [k for k, _ in items] == list(state)
    assert all(v.data_ptr() == state[k].data_ptr() for k, v in items)
    assert D.full_state_dict(copy.deepcopy(model)).keys() == state.keys()


# ------------------------------------------------------------------ 2 and 4 gloo ranks
@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, tmp_path_factory) -> list[dict]:
    """Every rank's results of a 2-rank launch: the update, the good and stale runs, and the
    built-in sampler's run (same seeds)."""
    out = tmp_path_factory.mktemp("sync2") / "res"
    launch_ranks(["sync", str(tiny_model_dir), str(out), "update,good,stale,hf"], world=2, timeout=300)
    return [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def four_ranks(tiny_model_dir, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sync4") / "res"
    launch_ranks(["sync", str(tiny_model_dir), str(out), "update,good,stale"], world=4, timeout=400)
    return [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(4)]


@pytest.fixture(scope="module")
def one_process_update(tiny_model_dir, tmp_path_factory) -> dict:
    return worker.run_sync_update(str(tiny_model_dir), str(tmp_path_factory.mktemp("sync1")))


@pytest.fixture(params=[2, 4], ids=["2ranks", "4ranks"])
def ranks(request) -> list[dict]:
    return request.getfixturevalue({2: "two_ranks", 4: "four_ranks"}[request.param])


def test_every_rank_gathers_and_its_engine_loads_the_updated_policy(ranks, one_process_update, tiny_model_dir):
    """After one update on a fixed batch, EVERY rank's gathered state dict and its engine's own
    weights equal the single-process policy after the same update (not only rank 0's)."""
    want = one_process_update["policy"]
    start = load_model(tiny_model_dir).state_dict()
    assert max(float((want[k] - v).abs().max()) for k, v in start.items()) > 1e-3  # the update moved them
    for rank, result in enumerate(ranks):
        got = result["update"]
        assert got["syncs"] == 1 and not got["engine_is_policy"], rank
        for role in ("policy", "engine"):
            assert got[role].keys() == want.keys(), (rank, role)
            for name, w in want.items():
                torch.testing.assert_close(got[role][name], w, rtol=1e-4, atol=1e-5, msg=f"rank {rank} {role} {name}")


def gaps(result: dict) -> list[float]:
    return [m["rollout/sampler_logprob_gap"] for m in result["history"]]


def test_the_sampler_gap_is_float_noise_on_every_rank_and_every_step(ranks):
    """With every engine synced: every step's logged gap (the max over ranks) and each rank's own
    gap stay below 1e-4, on every rank; every rank logged the same all-reduced value."""
    logged = gaps(ranks[0]["good"])
    assert len(logged) == 3
    for rank, result in enumerate(ranks):
        assert gaps(result["good"]) == logged, rank
        assert len(result["good"]["local_gaps"]) == 3
        assert all(0 <= g < GOOD for g in result["good"]["local_gaps"]), (rank, result["good"]["local_gaps"])
    assert max(logged) < GOOD and max(logged) == max(max(r["good"]["local_gaps"]) for r in ranks)


def test_a_rank_whose_engine_skips_the_sync_shows_a_gap_on_every_rank(ranks):
    """The same run with rank 1's engine dropping every update: step 1 (no update yet) is float
    noise; from step 2 on, every rank logs a gap above 1e-2, and it is rank 1's own gap."""
    stale = worker.STALE_RANK
    for rank, result in enumerate(ranks):
        logged = gaps(result["stale"])
        assert logged[0] < GOOD and min(logged[1:]) > STALE, (rank, logged)
        local = result["stale"]["local_gaps"]
        if rank == stale:
            assert local[0] < GOOD and min(local[1:]) > STALE, local
        else:
            assert max(local) < GOOD, (rank, local)


def comparable(metrics: dict) -> dict:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not k.startswith("time/") and k not in ("tokens_per_s",)
    }


def test_the_sync_engine_trains_like_the_built_in_sampler(two_ranks):
    """2 ranks, same seeds: sampling from each rank's synced engine gives the run the built-in
    sampler (on the FSDP policy itself) gives: every metric and the final weights, to float noise."""
    for rank, result in enumerate(two_ranks):
        sync, hf = result["good"], result["hf"]
        assert len(sync["history"]) == len(hf["history"]) == 3
        for step, (a, b) in enumerate(zip(sync["history"], hf["history"]), start=1):
            a, b = comparable(a), comparable(b)
            assert a.keys() == b.keys(), (rank, step, a.keys() ^ b.keys())
            for key, value in b.items():
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (rank, step, key)
        for name, w in hf["policy"].items():
            torch.testing.assert_close(sync["policy"][name], w, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {name}")
