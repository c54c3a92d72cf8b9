"""Shared pytest fixtures, and the markers that split the suite (``slow``, ``sandbox``)."""

from __future__ import annotations

import pytest

# ------------------------------------------------------------------ markers
#
# `make test-fast` runs `pytest -m "not slow"`: the algorithm, config, data, and the verifiers'
# unit tests, in under a minute on 2 cores; `make test` runs everything. A file is slow when its
# tests build a model or a trainer, start processes (torchrun, a verifier pool, the CLI, the
# golden runs' child) or start the code sandbox many times (its containment and attack suites);
# so is any test that uses a tiny-model fixture, wherever it lives. Anything else counts as fast:
# keep `make test-fast` under a minute (`--durations=10` shows what costs).
SLOW_FILES = frozenset(
    {
        "test_checkpoints.py",
        "test_cli.py",
        "test_credit_assignment.py",
        "test_distributed.py",
        "test_eval_runner.py",
        "test_example_minimal.py",
        "test_export.py",
        "test_golden_runs.py",
        "test_host_bounds.py",
        "test_memory_options.py",
        "test_models.py",
        "test_plots.py",
        "test_preflight_cli.py",
        "test_prm_metadata.py",
        "test_prm_offline.py",
        "test_prm_scoring.py",
        "test_progress_output.py",
        "test_quickstart.py",
        "test_recipes.py",
        "test_rollout.py",
        "test_sandbox.py",
        "test_sandbox_attacks.py",
        "test_sft.py",
        "test_sft_distributed.py",
        "test_train_eval.py",
        "test_train_real_data.py",
        "test_train_samples.py",
        "test_trainer.py",
        "test_verifiers_batch.py",
        "test_verifiers_math_benchmarks.py",
        "test_vllm_adapter.py",
        "test_weight_sync.py",
    }
)
MODEL_FIXTURES = frozenset({"tiny_model_dir", "tiny_prm_dir", "boxed8_model_dir"})

# Files whose tests start the code sandbox (single tests elsewhere carry `@pytest.mark.sandbox`).
# Under pytest-xdist they all run on one worker (`--dist loadgroup`): test_sandbox.py checks that
# no sandbox process outlives its sample, and another worker's live sandbox would look like one.
SANDBOX_FILES = frozenset(
    {
        "test_host_bounds.py",
        "test_sandbox.py",
        "test_sandbox_attacks.py",
        "test_verifiers_batch.py",
        "test_verifiers_code.py",
        "test_verifiers_dispatch.py",
    }
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES or MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.path.name in SANDBOX_FILES:
            item.add_marker(pytest.mark.sandbox)
        if item.get_closest_marker("sandbox") is not None:
            item.add_marker(pytest.mark.xdist_group("sandbox"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny Qwen2 model + tokenizer (iprime.models.make_tiny_model defaults), built
    once per test session. Treat as read-only: load it, do not write into it."""
    from iprime.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_prm_dir(tmp_path_factory, tiny_model_dir):
    """A second tiny model with the *same tokenizer* as ``tiny_model_dir`` but other random
    weights (seed 1): a (PRM, reference) pair whose implicit rewards are not all zero."""
    from iprime.models import default_corpus, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_prm"), corpus=default_corpus(seed=0), seed=1)


@pytest.fixture(scope="session")
def boxed8_model_dir(tmp_path_factory, tiny_model_dir):
    """``tiny_model_dir`` fine-tuned for 25 steps to answer every prompt with
    "The answer is \\boxed{8}": a model with a known, non-zero accuracy on the arithmetic task
    (the rows whose answer is 8) that costs ~10 s to build. Read-only."""
    import torch

    from iprime.models import load_model, load_tokenizer
    from iprime.presets import QUICKSTART
    from iprime.train.sft import SFTConfig, run_sft

    torch.manual_seed(0)
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    rows = [
        {"prompt": r["prompt"], "response": "The answer is \\boxed{8}"}
        for r in QUICKSTART.make_task().rows("train", 64, seed=0)
    ]
    run_sft(model, tok, rows, SFTConfig(lr=3e-3, max_steps=25, batch_size=16, warmup_steps=5, log_every=25))
    out = tmp_path_factory.mktemp("boxed8")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def direct_response_logp():
    """``f(model, tokenizer, prompt, response, ended=True) -> [T] tensor``: log-probs of the
    response tokens (+ EOS) from one unpadded full forward pass, independent of
    ``iprime.models.response_logprobs`` (a reference to test scorers against)."""
    import torch

    from iprime.data.chat import render_prompt

    def logp(model, tokenizer, prompt, response, ended=True):
        p = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if ended else [])
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()[0]
        lp = torch.log_softmax(logits[len(p) - 1 : -1], dim=-1)
        return lp.gather(-1, torch.tensor(r).unsqueeze(-1)).squeeze(-1)

    return logp


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's matmuls are far too small to gain from intra-op threads, and on a
    busy machine extra threads spin and make tests several times slower. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    """The tiny model's tokenizer, loaded once per module."""
    from iprime.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model, loaded once per module (tests that change it must copy it first)."""
    from iprime.models import load_model

    return load_model(tiny_model_dir)
