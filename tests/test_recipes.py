"""Run configs: every recipe loads and carries the paper's values; ``iprime config show`` prints
every key with its documentation; the quickstart's settings have one source; the GPU check
refuses to run without CUDA, and its CPU mode runs the weight-sync engine's check; ``make
setup-gpu`` installs vLLM before iprime."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from iprime.config import PrimeConfig, load_config
from iprime.config_show import config_app, field_docs
from iprime.quickstart import QuickstartConfig, packaged_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
PACKAGED = sorted((ROOT / "src" / "iprime" / "configs").glob("*.yaml"))
EURUS = ROOT / "configs" / "eurus2_7b_prime.yaml"
SINGLE_GPU = ROOT / "configs" / "qwen2.5_1.5b_single_gpu.yaml"
EURUS_SOURCES = ROOT / "tests" / "data" / "eurus_sources.json"
G_NO_VLLM = "vLLM not installed"  # benchmarks/gpu_check.py's NO_VLLM


def leaf_keys(cls: type = PrimeConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree, from the dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def flat_keys(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        out += flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


# ------------------------------------------------------------------------------------ recipes
def test_the_recipes_are_there():
    assert {p.name for p in RECIPES} >= {"eurus2_7b_prime.yaml", "qwen2.5_1.5b_single_gpu.yaml"}
    assert [p.name for p in PACKAGED] == ["cpu_quickstart.yaml"]


@pytest.mark.parametrize("path", RECIPES + PACKAGED, ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, PrimeConfig)
    data = yaml.safe_load(path.read_text())
    # every key the file sets is a config key and took the file's value
    for key in flat_keys(data):
        assert key in leaf_keys(), key
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        assert value == data[section][name], key


def test_eurus_recipe_has_the_papers_values():
    cfg = load_config(EURUS)
    assert cfg.model.policy == "PRIME-RL/Eurus-2-7B-SFT"
    assert cfg.model.prm is None and cfg.model.reference == "sft"  # PRM and reference start as the SFT model
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_steps) == (5e-7, "constant", 0)
    assert (cfg.prm.lr, cfg.prm.grad_clip, cfg.prm.beta) == (1e-6, 10.0, 0.05)
    assert (cfg.rollout.n, cfg.rollout.prompts_per_step) == (4, 256)
    # the fork's ppo_mini_batch_size=256 counts rows (responses): 1024 responses -> 4 updates per step
    assert cfg.optim.mini_batch_size == 256
    assert cfg.rollout.prompts_per_step * cfg.rollout.n // cfg.optim.mini_batch_size == 4
    assert (cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens) == (1024, 3072)
    assert cfg.rollout.vllm_max_model_len >= cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    assert (cfg.algo.estimator, cfg.algo.rm_coef, cfg.algo.outcome_coef) == ("prime", 5.0, 5.0)
    assert (cfg.filter.enabled, cfg.filter.low, cfg.filter.high, cfg.filter.drop_truncated) == (True, 0.2, 0.8, False)
    assert (cfg.algo.gamma, cfg.algo.outcome_gamma) == (1.0, 1.0)
    assert (cfg.algo.kl_coef, cfg.algo.kl_mode, cfg.algo.entropy_coef) == (0.0, "none", 0.0)
    assert (cfg.prm.granularity, cfg.prm.update, cfg.prm.loss, cfg.prm.lora) == ("token", "after", "ce", False)
    assert (cfg.rollout.engine, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k) == ("vllm", 1.0, 1.0, 0)
    assert (cfg.model.device, cfg.model.dtype, cfg.model.autocast) == ("cuda", "float32", "bf16")
    assert (cfg.optim.clip_low, cfg.optim.clip_high, cfg.optim.grad_clip, cfg.optim.epochs) == (0.2, 0.2, 1.0, 1)
    assert (cfg.data.train_path, cfg.data.reference_key, cfg.data.verifier) == ("data/train.parquet", "auto", "auto")
    assert cfg.rollout.prompts_per_step % 8 == 0  # torchrun over 8 GPUs: equal shares of whole groups


def setting_value(text: str):
    """The value of a recorded ``name=value`` (script) or ``name: value`` (YAML) line, typed the
    way Hydra / YAML read it: booleans, integers, floats, else the string."""
    raw = re.split(r"=|:\s", text, maxsplit=1)[1].strip()
    if raw in ("True", "False"):
        return raw == "True"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def key_comment(text: str, key: str) -> str:
    """The comment that documents ``section.name`` in a recipe: the comment lines right above
    its line and the comment on it, joined with single spaces."""
    section, name = key.split(".")
    lines = text.splitlines()
    start = lines.index(f"{section}:")
    i = next(j for j in range(start + 1, len(lines)) if re.match(rf"  {re.escape(name)}:", lines[j]))
    parts = [lines[i].split("#", 1)[1] if "#" in lines[i] else ""]
    j = i - 1
    while lines[j].startswith("  #"):
        parts.insert(0, lines[j].split("#", 1)[1])
        j -= 1
    return " ".join(" ".join(parts).split())


def test_eurus_recipe_values_from_the_original_match_the_recorded_lines():
    """Every value the recipe takes from the original run (the recorded lines of the launch
    script and the fork: tests/data/eurus_sources.json) is the recorded line's value, unless the
    row says why iprime's spelling differs; and the recipe's comment on the key cites that line."""
    table = json.loads(EURUS_SOURCES.read_text())
    cfg, text = load_config(EURUS), EURUS.read_text()
    keys = [row["key"] for row in table["rows"]]
    assert len(keys) == len(set(keys)) >= 40
    for row in table["rows"]:
        key, value, source = row["key"], row["value"], row["source"]
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key
        if "maps" not in row:
            assert setting_value(row["text"]) == value, (key, row["text"])
        comment = key_comment(text, key)
        file, line = source.split(":")
        cited = f"[script:{line}]" if file == "script" else source
        assert cited in comment, (key, cited, comment)
        if not row.get("maps", "").startswith("code:"):  # a setting: the comment quotes it
            assert row["text"] in comment, (key, row["text"], comment)
    # the issue-22 points, each the original's choice
    by_key = {row["key"]: row for row in table["rows"]}
    assert by_key["prm.mini_batch_size"]["value"] * 4 == cfg.rollout.prompts_per_step * cfg.rollout.n
    assert cfg.filter.drop_truncated is False and cfg.rollout.buffer == "prompts"
    assert (cfg.algo.batch_norm_scope, cfg.optim.agg) == ("rank", "seq-mean-token-mean")


def test_the_recorded_lines_parse_as_hydra_and_yaml_read_them():
    assert setting_value("data.n_samples=4") == 4
    assert setting_value("data.filter_accuracy=True") is True
    assert setting_value("actor_rollout_ref.actor.entropy_coeff=0.") == 0.0
    assert setting_value("filter_truncated: False") is False
    assert setting_value("top_k: -1") == -1
    assert setting_value("reward_model.prime_model.path=$SFT_MODEL_PATH") == "$SFT_MODEL_PATH"
    text = "a:\n  b: 1\n  # [script:3] x=1\n  # more\n  c: 2  # inline\n"
    assert key_comment(text, "a.c") == "[script:3] x=1 more inline" and key_comment(text, "a.b") == ""


def test_single_gpu_recipe_keeps_to_its_assumptions():
    cfg = load_config(SINGLE_GPU)
    assert cfg.model.policy.startswith("Qwen/Qwen2.5-")
    assert cfg.prm.lora or cfg.model.reference == "policy"  # one set of base weights fewer
    assert cfg.model.gradient_checkpointing and cfg.model.autocast == "bf16"
    assert cfg.rollout.engine == "vllm" and 0.0 < cfg.rollout.vllm_gpu_memory_utilization <= 0.5
    assert cfg.rollout.prompts_per_step < 256 and cfg.rollout.n == 4 and cfg.prm.beta == 0.05
    # Qwen2.5-Math-1.5B has a 4096-token window: prompt + response must fit the engine's length
    assert cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens <= cfg.rollout.vllm_max_model_len <= 4096


# --------------------------------------------------------------------- quickstart: one source
def test_the_quickstart_settings_have_one_source():
    assert not (ROOT / "configs" / "cpu_quickstart.yaml").exists()  # no copy beside the recipes
    assert packaged_config().read_text() == (ROOT / "src/iprime/configs/cpu_quickstart.yaml").read_text()
    qc = QuickstartConfig()
    with qc.prime_config_path() as path:
        cfg = load_config(path, ["train.steps=7"])
    assert (cfg.train.steps, cfg.optim.lr, cfg.prm.lr, cfg.rollout.prompts_per_step) == (7, 3e-5, 3e-4, 16)
    # the override form that older callers compose gives the same config
    assert load_config(None, [*qc.prime_overrides, "train.steps=7"]) == cfg


def test_a_quickstart_settings_file_can_be_swapped(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("optim:\n  lr: 1.0e-4\n")
    qc = QuickstartConfig(prime_config=str(mine))
    with qc.prime_config_path() as path:
        assert load_config(path).optim.lr == 1e-4
    assert qc.prime_overrides == ("optim.lr=0.0001",)


# --------------------------------------------------------------------------------- config show
def show(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(config_app, ["show", *args])
    return result.exit_code, result.output


def entries(output: str) -> dict[str, tuple[str, str]]:
    """``{key: (value, documentation)}`` from ``config show`` output."""
    out: dict[str, list] = {}
    key = None
    for line in output.splitlines():
        if line.startswith("    ") and key is not None:
            out[key][1].append(line.strip())
        elif " = " in line and not line.startswith(("#", "[")):
            key, value = line.split(" = ", 1)
            out[key] = [value.split("    (default: ")[0], []]
        else:
            key = None
    return {k: (v, " ".join(doc)) for k, (v, doc) in out.items()}


def test_config_show_prints_every_key_with_its_value_and_doc():
    code, output = show("--config", str(EURUS))
    assert code == 0, output
    shown = entries(output)
    assert sorted(shown) == sorted(leaf_keys())
    assert shown["model.policy"][0] == "PRIME-RL/Eurus-2-7B-SFT"
    assert shown["optim.lr"][0] == "5e-07" and shown["rollout.max_new_tokens"][0] == "3072"
    assert shown["model.prm"][0] == "null" and shown["filter.enabled"][0] == "true"
    assert shown["verify.code_prelude"][0] == "prime" and "testing_util.py:120" in shown["verify.code_prelude"][1]
    # documented keys show their docstring, whole; the others their type
    assert shown["rollout.n"][1] == "K, responses per prompt (the paper uses 4)."
    assert shown["prm.beta"][1] == "Scale of the implicit reward ``beta * log(pi_phi / pi_ref)``."
    assert shown["filter.low"][1] == "type: float"
    assert shown["model.dtype"][1] == "type: one of: float32, bfloat16, float16"
    assert shown["rollout.vllm_max_model_len"][1] == "type: int or null"
    assert all(doc for _, doc in shown.values())
    documented = 0
    hints = typing.get_type_hints(PrimeConfig)
    for section in dataclasses.fields(PrimeConfig):
        for name, doc in field_docs(hints[section.name]).items():
            assert shown[f"{section.name}.{name}"][1] == doc
            documented += 1
    assert documented == sum(not doc.startswith("type: ") for _, doc in shown.values()) >= 40


def test_config_show_applies_overrides_and_marks_what_differs_from_the_default():
    code, output = show("--config", str(EURUS), "rollout.n=8", "algo.rm_coef=2")
    assert code == 0, output
    shown = entries(output)
    assert shown["rollout.n"][0] == "8" and shown["algo.rm_coef"][0] == "2.0"
    assert "rollout.n = 8    (default: 4)" in output.splitlines()
    code, output = show("--changed", "--no-docs", "rollout.n=8", "model.policy=a/b")
    assert code == 0
    assert output.splitlines()[1:] == [
        "[model] Which models play the three roles.",
        'model.policy = a/b    (default: "")',
        "",
        "[rollout] Sampling of K responses per prompt.",
        "rollout.n = 8    (default: 4)",
    ]


def test_config_show_does_not_cut_long_docs():
    code, output = show("--width", "40")
    assert code == 0
    doc = entries(output)["data.train_path"][1]
    assert doc.endswith("``None`` when rows are passed in Python.") and len(doc) > 200
    code, output = show("--width", "0")
    lines = output.splitlines()
    i = lines.index("data.train_path = null")
    assert lines[i + 1].strip() == doc  # one line, unwrapped


def test_config_show_refuses_an_unknown_key_like_train_does():
    code, output = show("rollout.nn=8")
    assert code == 2
    assert "config error" in output and "rollout.nn" in output


# ---------------------------------------------------------------------------------- GPU path
def test_gpu_check_without_cuda_exits_2_with_its_message(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, on any machine
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "gc")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA device" in proc.stderr and "make setup-gpu" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "gc").exists()


def load_gpu_check():
    """benchmarks/gpu_check.py as a module (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_skips_vllm_checks_without_vllm_and_only_then_passes():
    G = load_gpu_check()
    args = G.parse_args(["--device", "cpu"])
    ok = {"status": "ok"}
    assert G.skip_reason("vllm_sync", args, {"model": ok}, 400.0, have_vllm=False) == G.NO_VLLM
    assert G.skip_reason("vllm_sync", args, {"model": ok}, 400.0, have_vllm=True) is None
    assert G.skip_reason("torchrun", args, {"model": ok}, 400.0, have_vllm=False) is None  # hf rollouts
    vllm_torchrun = G.parse_args(["--torchrun-engine", "vllm"])
    assert G.skip_reason("torchrun", vllm_torchrun, {"model": ok}, 400.0, have_vllm=False) == G.NO_VLLM
    failed = {"status": "failed", "error": "x"}
    assert G.skip_reason("hf_sync_bf16", args, {"model": failed}, 400.0, True) == "needs the model check to pass"
    # a check starts only with MIN_START_S (30 s) of the budget left
    assert G.skip_reason("hf_sync_bf16", args, {"model": ok}, 30.0, True) is None
    assert G.skip_reason("hf_sync_bf16", args, {"model": ok}, 29.0, True).startswith("over the time budget (480 s)")
    no_vllm = {"status": "skipped", "error": G.NO_VLLM}
    budget = {"status": "skipped", "error": "over the time budget (480 s): 3 s left"}
    assert G.run_ok({"model": ok, "hf_sync_bf16": ok, "vllm_sync": no_vllm})  # exit 0
    assert not G.run_ok({"model": ok, "hf_sync_bf16": budget, "vllm_sync": no_vllm})  # exit 1
    assert not G.run_ok({"model": ok, "hf_sync_bf16": failed})
    assert not G.run_ok({"vllm_sync": no_vllm}) and not G.run_ok({})  # nothing ran


def test_gpu_check_sampler_gap_limit_by_precision_and_after_the_first_update():
    G = load_gpu_check()
    assert G.gap_limit(G.parse_args(["--device", "cpu"])) == G.FP32_NOISE_MAX == 1e-3
    assert G.gap_limit(G.parse_args([])) == G.GAP_LIMIT_BF16 == 1.0  # cuda: bf16 autocast
    assert G.gap_limit(G.parse_args(["--bf16-gap-limit", "0.2"])) == 0.2
    steps = [{"step": i + 1, "rollout/sampler_logprob_gap": g} for i, g in enumerate([0.5, 2e-4, 9e-4])]
    got = G.sampler_gaps(steps, 1e-3)  # step 1 (no update yet) is reported, not judged
    assert got["sampler_gap_first_step"] == 0.5 and got["sampler_gap_max_after_update"] == 9e-4
    steps[2]["rollout/sampler_logprob_gap"] = 0.02  # an engine one update behind
    with pytest.raises(RuntimeError, match="reached 0.02 after an update, over the limit 0.001"):
        G.sampler_gaps(steps, 1e-3)
    with pytest.raises(RuntimeError, match="missing or not finite"):
        G.sampler_gaps([{"step": 1}, {"step": 2, "rollout/sampler_logprob_gap": 0.0}], 1e-3)
    with pytest.raises(RuntimeError, match="at least 2 steps"):
        G.sampler_gaps(steps[:1], 1e-3)


@pytest.fixture(scope="module")
def gpu_check_cpu(tmp_path_factory):
    """The check's CPU development mode: the model, then the weight-sync engine (float32)."""
    out = tmp_path_factory.mktemp("gpu_check_cpu")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out), "--device", "cpu"]
    cmd += ["--only", "model,hf_sync_bf16,vllm_sync", "--hidden-size", "64", "--layers", "2", "--sft-steps", "5"]
    cmd += ["--timeout-scale", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return out, proc


def test_gpu_check_cpu_mode_runs_the_weight_sync_engine(gpu_check_cpu):
    out, proc = gpu_check_cpu
    assert proc.returncode == (1 if importlib.util.find_spec("vllm") else 0), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report == json.loads((out / "gpu_check.json").read_text())
    assert list(report["checks"]) == ["model", "hf_sync_bf16", "vllm_sync"]  # the script's order
    assert report["checks"]["model"]["status"] == "ok"
    sync = report["checks"]["hf_sync_bf16"]
    assert sync["status"] == "ok", sync.get("error")
    assert sync["steps"] == 3 and sync["engine_syncs"] == 3  # one sync per update
    assert (sync["engine_dtype"], sync["trainer_autocast"]) == ("float32", "none")  # no bf16 on the CPU
    gaps = sync["sampler_gap_per_step"]
    assert gaps == [m["rollout/sampler_logprob_gap"] for m in sync["per_step"]] and len(gaps) == 3
    assert sync["sampler_gap_limit"] == 1e-3 and max(gaps) < 1e-4  # float32: float noise (~1e-6)
    assert sync["sampler_gap_max_after_update"] == max(gaps[1:])
    # the control: fresh samples match the trained policy to float noise, not the SFT model
    assert sync["sync_logp_abs_max_vs_trained"] < 1e-4 < 1e-3 < sync["sync_logp_abs_max_vs_sft"]
    assert sync["sync_ratio"] == sync["sync_logp_abs_diff_vs_trained"] / sync["sync_logp_abs_diff_vs_sft"] < 0.5
    assert sync["sync_policy_moved"] >= 1e-3 and "sync_logp_abs_max_vs_trained_autocast" not in sync
    assert sync["peak_memory_gb"] is None and sync["peak_rss_gb"] > 0.1  # CUDA peaks need CUDA
    assert sync["generation_tokens_per_s"] == pytest.approx(
        sync["generated_tokens"] / sum(m["time/generate"] for m in sync["per_step"])
    )
    assert report["environment"]["vllm"] == G_NO_VLLM or importlib.util.find_spec("vllm")
    if not importlib.util.find_spec("vllm"):
        assert report["checks"]["vllm_sync"] == {"status": "skipped", "error": G_NO_VLLM}  # no process started
        assert report["skipped_without_vllm"] == ["vllm_sync"] and report["ok"] is True
        assert not (out / "vllm_sync.log").exists()


def test_gpu_check_fails_an_engine_that_drops_its_updates(gpu_check_cpu, monkeypatch):
    """The weight-sync check in-process on the model above, with an engine whose sync takes the
    weights, reports success and loads nothing. On this 5-step SFT model every reward of step 1
    is 0 and the PRM starts as the reference, so the first update does not move the policy: the
    gap shows at step 3 only, and a 2-step run is caught by the control after training."""
    from iprime.rollout import SyncedHFGenerator

    out, proc = gpu_check_cpu
    assert (out / "model" / "sft" / "config.json").is_file(), proc.stderr[-3000:]
    G = load_gpu_check()

    def dropped(self, weights):
        for _ in weights:  # the whole stream taken, none of it loaded
            pass
        self.syncs += 1

    monkeypatch.setattr(SyncedHFGenerator, "sync_weights", dropped)
    args = G.parse_args(["--device", "cpu", "--hidden-size", "64", "--layers", "2", "--steps", "3"])
    with pytest.raises(RuntimeError, match=r"rollout/sampler_logprob_gap reached .* over the limit 0.001") as err:
        G.check_hf_sync_bf16(out, args)
    gaps = json.loads(str(err.value).split("no longer holds. ", 1)[1])["sampler_gap_per_step"]
    assert max(gaps[:2]) < 1e-4 and gaps[2] > 1e-2
    args.steps = 2
    with pytest.raises(RuntimeError, match="not closer to the trained policy than to the SFT model") as err:
        G.check_hf_sync_bf16(out, args)
    control = json.loads(str(err.value).split("did not reach the engine. ", 1)[1])
    assert control["sync_logp_abs_max_vs_sft"] < 1e-4 < 1e-2 < control["sync_logp_abs_max_vs_trained"]


def test_setup_gpu_installs_vllm_first_and_pins_its_torch():
    proc = subprocess.run(["make", "-n", "setup-gpu"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    vllm = next(i for i, line in enumerate(lines) if 'install -q "vllm' in line)
    freeze = next(i for i, line in enumerate(lines) if "freeze" in line and "constraints-gpu.txt" in line)
    iprime = next(i for i, line in enumerate(lines) if "-c constraints-gpu.txt -e" in line)
    assert vllm < freeze < iprime
    assert ".venv-gpu" in lines[iprime] and "-c constraints.txt" not in proc.stdout  # not the CPU pin
    pins = [x for x in (ROOT / "constraints-gpu.txt").read_text().splitlines() if x and not x.startswith("#")]
    assert any(p.startswith("torch==") for p in pins) and any(p.startswith("vllm==") for p in pins)
