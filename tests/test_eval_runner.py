"""The eval runner: agreement with the trainer's evaluation, resume, PRM scores, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from iprime.cli import app
from iprime.eval.benchmarks import load_benchmark
from iprime.eval.runner import EvalConfig, read_generations, run_eval
from iprime.models import load_model, load_tokenizer
from iprime.rollout import HFGenerator


@pytest.fixture(scope="module")
def boxed8(boxed8_model_dir):
    torch.set_num_threads(2)
    return load_model(boxed8_model_dir), load_tokenizer(boxed8_model_dir)


def _config(tmp_path, model_dir, **kw) -> EvalConfig:
    base = dict(
        model=str(model_dir),
        benchmarks=["arithmetic"],
        out=str(tmp_path),
        max_new_tokens=16,
        batch_size=50,
        verify_workers=0,
    )
    return EvalConfig(**{**base, **kw})


def test_eval_agrees_with_the_trainers_evaluation(tmp_path, boxed8, boxed8_model_dir):
    from iprime.presets import QUICKSTART
    from iprime.train.evaluate import evaluate_accuracy

    model, tok = boxed8
    task = QUICKSTART.make_task()
    rows = task.rows("test", QUICKSTART.eval_prompts, seed=QUICKSTART.seed + 1)
    ref = evaluate_accuracy(model, tok, rows, task.verify, max_new_tokens=16, batch_size=50, return_samples=True)
    summary = run_eval(_config(tmp_path, boxed8_model_dir), model=model, tokenizer=tok, progress=False)
    assert ref["accuracy"] > 0  # the model answers 8 to everything: right on the rows whose answer is 8
    assert summary["arithmetic"]["pass@1"] == ref["accuracy"]
    assert summary["arithmetic"]["avg@1"] == ref["accuracy"]
    records = read_generations(tmp_path / "generations.jsonl")
    assert [r["scores"][0] for r in records] == [s["score"] for s in ref["samples"]]
    assert [r["responses"][0] for r in records] == [s["response"] for s in ref["samples"]]


def test_iprime_eval_and_the_trainers_evaluation_are_one_loop(tmp_path, boxed8, boxed8_model_dir):
    """Sampled (2 per row at temperature 1) in 3 chunks, each with its own seed: ``iprime eval``
    and evaluation during training give the same numbers on the same benchmark rows."""
    from tiny_runs import tiny_config

    from iprime.rollout import HFGenerator
    from iprime.train.evaluate import build_eval_sets, chunk_rows, run_evals
    from iprime.train.scoring import RolloutScorer

    model, tok = boxed8
    overrides = ["train.eval_every=1", "train.eval_benchmarks=[arithmetic]", "train.eval_limit=6", "train.seed=3"]
    overrides += ["train.eval_n=2", "train.eval_temperature=1.0", "train.eval_max_new_tokens=16", "rollout.n=2"]
    cfg = tiny_config(tmp_path / "run", *overrides, "rollout.prompts_per_step=2", "rollout.oversample=1.0")
    assert chunk_rows(cfg) == 2
    scorer = RolloutScorer(cfg)
    during = run_evals(HFGenerator(model, tok), tok, build_eval_sets(cfg, None, tok, scorer), scorer, cfg)
    config = _config(tmp_path / "eval", boxed8_model_dir, n=2, temperature=1.0, limit=6, batch_size=2, seed=3, ks=[2])
    summary = run_eval(config, model=model, tokenizer=tok, progress=False)["arithmetic"]
    assert during["eval/arithmetic/acc"] == summary["avg@2"] > 0
    assert during["eval/arithmetic/pass@2"] == summary["pass@2"]
    assert during["eval/arithmetic/truncated_frac"] == summary["truncated_frac"]


def test_eval_does_not_need_the_trainer():
    """The import map: iprime.eval never imports iprime.train (training imports eval.loop)."""
    code = "import sys, iprime.eval.runner, iprime.eval.loop; print(sorted(m for m in sys.modules if 'train' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "iprime.train" not in out, out


def test_interrupted_eval_resumes_without_redoing_rows(tmp_path, boxed8, boxed8_model_dir, monkeypatch):
    model, tok = boxed8
    kw = dict(n=2, temperature=1.0, limit=12, batch_size=4, ks=[1, 2])
    full = run_eval(_config(tmp_path / "full", boxed8_model_dir, **kw), model=model, tokenizer=tok, progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(benchmark, chunk):
        raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        run_eval(
            _config(out, boxed8_model_dir, **kw), model=model, tokenizer=tok, progress=False, on_chunk=stop_after_first
        )
    assert len(read_generations(out / "generations.jsonl")) == 4
    with (out / "generations.jsonl").open("a") as f:  # a kill in the middle of the next write
        f.write('{"benchmark": "arithmetic", "id": "4:')

    with pytest.raises(FileExistsError, match="--resume"):
        run_eval(_config(out, boxed8_model_dir, **kw), model=model, tokenizer=tok, progress=False)
    with pytest.raises(ValueError, match="temperature"):
        run_eval(
            _config(out, boxed8_model_dir, **{**kw, "temperature": 0.5}, resume=True),
            model=model,
            tokenizer=tok,
            progress=False,
        )

    generated = []
    original = HFGenerator.generate

    def counting(self, prompts, params):
        generated.extend(prompts)
        return original(self, prompts, params)

    monkeypatch.setattr(HFGenerator, "generate", counting)
    resumed = run_eval(_config(out, boxed8_model_dir, **kw, resume=True), model=model, tokenizer=tok, progress=False)
    assert len(generated) == 8  # only the 8 rows the first run did not finish
    assert resumed == full
    a = {r["id"]: r["responses"] for r in read_generations(tmp_path / "full" / "generations.jsonl")}
    b = {r["id"]: r["responses"] for r in read_generations(out / "generations.jsonl")}
    assert a == b  # chunks and their seeds do not depend on the interruption
    assert json.loads((out / "summary.json").read_text()) == full
    assert "| arithmetic | 12 |" in (out / "summary.md").read_text()


def test_eval_with_the_implicit_prm(tmp_path, tiny_model_dir, tiny_prm_dir):
    from iprime.prm.scoring import ImplicitPRM

    cfg = EvalConfig(
        model=str(tiny_model_dir),
        benchmarks=["math500"],
        out=str(tmp_path),
        n=2,
        temperature=1.0,
        max_new_tokens=8,
        limit=2,
        batch_size=2,
        prm=str(tiny_prm_dir),
        ref=str(tiny_model_dir),
        beta=0.5,
        verify_workers=0,
    )
    summary = run_eval(cfg, progress=False)["math500"]
    assert {"pass@1", "pass@2", "maj@2", "bon@1", "bon@2", "wvote@2"} <= set(summary)
    records = read_generations(tmp_path / "generations.jsonl")
    prm = ImplicitPRM.from_pretrained(tiny_prm_dir, tiny_model_dir, beta=0.5)
    for rec in records:
        ended = [not t for t in rec["truncated"]]
        direct = prm.sequence_rewards([rec["prompt"]] * 2, rec["responses"], ended=ended)
        assert rec["prm_rewards"] == pytest.approx(direct, abs=1e-5)


@pytest.mark.sandbox  # the code verifier's first call starts a probe sandbox
def test_code_benchmark_rows_do_not_vote(tmp_path, tiny_model_dir):
    cfg = EvalConfig(
        model=str(tiny_model_dir),
        benchmarks=["humaneval"],
        out=str(tmp_path),
        max_new_tokens=4,
        limit=2,
        verify_workers=0,
    )
    summary = run_eval(cfg, progress=False)["humaneval"]
    assert summary["pass@1"] == 0.0 and "maj@1" not in summary
    assert all(r["reasons"] == ["no code block found"] for r in read_generations(tmp_path / "generations.jsonl"))


def test_cli_eval_on_a_custom_jsonl(tmp_path, tiny_model_dir):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"q": f"What is {i}+1?", "a": i + 1}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--benchmarks",
        f"arithmetic,{data}",
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
        "--prompt-key",
        "q",
        "--answer-key",
        "a",
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"arithmetic", "mine"} and summary["mine"]["rows"] == 3
    assert CliRunner().invoke(app, args).exit_code == 2  # exists: needs --resume
    result = CliRunner().invoke(app, args + ["--resume"])
    assert result.exit_code == 0, result.output
    assert len(read_generations(out / "generations.jsonl")) == 6
    bad = CliRunner().invoke(app, ["eval", "--model", "x", "--benchmarks", "nope", "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "unknown benchmark" in bad.output


def test_cli_eval_with_the_vllm_engine_gives_the_hf_engines_numbers(tmp_path, boxed8_model_dir, monkeypatch):
    """``--engine vllm`` samples through :class:`VLLMGenerator` (here on the fake ``vllm`` of
    ``tests/fake_vllm.py``, which samples greedily with the built-in sampler): the same rows,
    responses and accuracy as ``--engine hf``; one process, ``--tensor-parallel-size`` passed on,
    no external launcher. The engine is a generation setting: a run resumes only on its own."""
    import fake_vllm

    vllm = fake_vllm.module()
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    base = ["eval", "--model", str(boxed8_model_dir), "--benchmarks", "arithmetic", "--limit", "12"]
    base += ["--max-new-tokens", "16", "--batch-size", "5", "--workers", "0"]
    summaries, responses = {}, {}
    for engine, extra in (("hf", []), ("vllm", ["--tensor-parallel-size", "2"])):
        out = tmp_path / engine
        result = CliRunner().invoke(app, [*base, "--out", str(out), "--engine", engine, *extra])
        assert result.exit_code == 0, result.output
        summaries[engine] = json.loads((out / "summary.json").read_text())
        responses[engine] = [r["responses"] for r in read_generations(out / "generations.jsonl")]
        assert json.loads((out / "config.json").read_text())["engine"] == engine
    assert summaries["vllm"] == summaries["hf"] and summaries["hf"]["arithmetic"]["pass@1"] > 0
    assert responses["vllm"] == responses["hf"]
    (llm,) = vllm.built
    kwargs = llm.kwargs
    assert (kwargs["tensor_parallel_size"], kwargs["dtype"], kwargs["gpu_memory_utilization"]) == (2, "float32", 0.9)
    assert "distributed_executor_backend" not in kwargs and llm.calls.count("generate") == 3  # 3 chunks of 5 rows
    assert "sleep" not in llm.calls and "load_weights" not in llm.calls

    # a run saved before the engine was a setting resumed as hf, and only as hf
    hf = tmp_path / "hf"
    saved = json.loads((hf / "config.json").read_text())
    del saved["engine"]
    (hf / "config.json").write_text(json.dumps(saved))
    other = CliRunner().invoke(app, [*base, "--out", str(hf), "--engine", "vllm", "--resume"])
    assert other.exit_code == 2 and "'engine': ('hf', 'vllm')" in other.output
    assert CliRunner().invoke(app, [*base, "--out", str(hf), "--resume"]).exit_code == 0


def test_cli_eval_without_vllm_says_how_to_install_it_before_loading_a_model(tmp_path, monkeypatch):
    import iprime.eval.runner as runner

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    for name in ("load_model", "load_tokenizer", "load_benchmark"):
        monkeypatch.setattr(runner, name, lambda *a, **k: pytest.fail("loaded before the vLLM check"))
    out = tmp_path / "out"
    args = ["eval", "--model", "m", "--benchmarks", "math500", "--out", str(out), "--engine", "vllm"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "iprime eval --engine vllm needs vLLM (CUDA): pip install 'iprime[vllm]'" in " ".join(result.output.split())
    assert not out.exists()


def test_config_validation():
    with pytest.raises(ValueError, match="identical"):
        EvalConfig(model="m", benchmarks=["math500"], out="o", n=4)
    with pytest.raises(ValueError, match="both prm and ref"):
        EvalConfig(model="m", benchmarks=["math500"], out="o", prm="p")
    with pytest.raises(ValueError, match=r"k must be in \[1, n=4\]"):
        EvalConfig(model="m", benchmarks=["math500"], out="o", n=4, temperature=1.0, ks=[8])
    assert EvalConfig(model="m", benchmarks=["x"], out="o", n=4, temperature=1.0).ks == [1, 4]
    with pytest.raises(ValueError, match="engine must be one of"):
        EvalConfig(model="m", benchmarks=["x"], out="o", engine="sglang")
    with pytest.raises(ValueError, match="above 1 only with engine vllm"):
        EvalConfig(model="m", benchmarks=["x"], out="o", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        EvalConfig(model="m", benchmarks=["x"], out="o", engine="vllm", gpu_memory_utilization=1.5)
    assert load_benchmark("arithmetic", limit=2)[0]["verifier"] == "arithmetic"
