"""The pre-flight check's parts, each on made-up inputs: a :class:`Machine` that describes a CPU
box, a GPU box or an 8-GPU node; the model-size formula against hand counts (and, marked slow,
against real models built from their configs); the memory estimate against the formula worked
by hand; the report's one message."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from iprime import preflight as pf
from iprime.config import load_config
from iprime.data.sources import DataError
from iprime.data_check import DataScan

ROOT = Path(__file__).resolve().parents[1]
EURUS = ROOT / "configs" / "eurus2_7b_prime.yaml"
GiB = 1024**3

CPU_BOX = pf.Machine(torch="2.13.0+cpu", cuda=None)
H100 = pf.Gpu("NVIDIA H100 80GB HBM3", 80 * GiB, (9, 0))
V100 = pf.Gpu("Tesla V100-SXM2-32GB", 32 * GiB, (7, 0))


def gpu_box(gpu: pf.Gpu = H100, count: int = 8, world: int = 1, vllm: str | None = "0.10.1") -> pf.Machine:
    return pf.Machine(
        torch="2.8.0+cu128", cuda="12.8", gpu_count=count, gpu=gpu, vllm=vllm, world_size=world, local_world_size=world
    )


def eurus(*overrides: str):
    return load_config(EURUS, list(overrides))


def keys(findings) -> list[str]:
    return [f.key for f in findings]


# ------------------------------------------------------------------------------------ device
def test_the_cpu_needs_nothing():
    assert pf.device_findings("cpu", CPU_BOX) == []
    assert pf.device_findings("cpu", CPU_BOX, bf16=("model.dtype=bfloat16", "model.dtype=float32")) == []


def test_cuda_on_a_cpu_build_says_so_and_bf16_is_its_own_problem():
    found = pf.device_findings("cuda", CPU_BOX, bf16=("model.autocast=bf16", "model.autocast=none"))
    assert keys(found) == ["model.device=cuda", "model.autocast=bf16"]
    assert found[0].text == "no CUDA: torch 2.13.0+cpu is a CPU build"
    assert "make setup-gpu" in found[0].fix and "model.device=cpu" in found[0].fix
    assert found[1].text.startswith("bfloat16 on CUDA is unavailable here")
    assert found[1].fix.endswith("on the CPU: model.device=cpu model.autocast=none")


def test_a_cuda_build_that_sees_no_gpu_names_cuda_visible_devices():
    m = pf.Machine(torch="2.8.0+cu128", cuda="12.8", gpu_count=0, visible_devices="")
    (found,) = pf.device_findings("cuda", m, key="--device")
    assert found.key == "--device=cuda"
    assert found.text == "no CUDA device: torch 2.8.0+cu128 (CUDA 12.8) sees no GPU with CUDA_VISIBLE_DEVICES=''"


def test_a_device_index_past_the_gpus():
    (found,) = pf.device_findings("cuda:3", gpu_box(count=2))
    assert found.text == "this rank would use cuda:3, but 2 GPU(s) are visible"
    assert pf.device_index("cuda:3", local_rank=5, world_size=1) == 3
    assert pf.device_index("cuda", local_rank=5, world_size=8) == 5  # torchrun: cuda:LOCAL_RANK


def test_bf16_needs_compute_capability_8():
    bf16 = ("model.autocast=bf16", "model.autocast=none")
    (found,) = pf.device_findings("cuda", gpu_box(V100), bf16=bf16)
    assert found.key == "model.autocast=bf16"
    assert found.text == "Tesla V100-SXM2-32GB (compute capability 7.0) has no native bfloat16 (needs 8.0 or later)"
    assert pf.device_findings("cuda", gpu_box(H100), bf16=bf16) == []
    assert pf.Gpu("A100", 80 * GiB, (8, 0)).bf16 and not pf.Gpu("T4", 16 * GiB, (7, 5)).bf16


def test_bf16_setting_names_what_asks_for_it():
    assert pf.bf16_setting(eurus()) == ("model.autocast=bf16", "model.autocast=none")
    cfg = eurus("model.autocast=none", "model.dtype=bfloat16")
    assert pf.bf16_setting(cfg) == ("model.dtype=bfloat16", "model.dtype=float32")
    assert pf.bf16_setting(load_config(None, ["model.dtype=bfloat16"])) is None  # bf16 on the CPU is allowed


def test_torchrun_needs_a_gpu_per_rank_on_the_node():
    (found,) = pf.launch_findings(eurus(), gpu_box(count=4, world=8))
    assert found.text == "8 ranks on this node, 4 GPUs: every rank needs its own (cuda:LOCAL_RANK)"
    assert found.fix == "torchrun --nproc_per_node=4"
    assert pf.launch_findings(eurus(), gpu_box(count=8, world=8)) == []
    assert pf.launch_findings(load_config(None, []), gpu_box(count=1, world=8)) == []  # a CPU run: gloo


def test_probe_of_this_machine_without_torchrun(monkeypatch):
    m = pf.probe_machine("cpu", env={})
    assert (m.world_size, m.local_rank, m.local_world_size) == (1, 0, 1)
    assert m.gpu is None  # a CPU run opens no GPU
    m = pf.probe_machine("cpu", env={"WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (m.world_size, m.local_rank, m.local_world_size) == (4, 1, 2)
    assert pf.probe_machine("cpu", world_size=8, env={}).local_world_size == 8  # --dry-run --world-size 8


# ------------------------------------------------------------------------------------ vLLM
def test_vllm_missing_old_or_off_cuda():
    cfg = eurus()
    (found,) = pf.engine_findings(cfg, gpu_box(vllm=None))
    assert found.key == "rollout.engine=vllm" and found.text.startswith("vLLM is not installed")
    assert "rollout.engine=hf" in found.fix
    (found,) = pf.engine_findings(cfg, gpu_box(vllm="0.8.4"))
    assert found.text == "vLLM 0.8.4 is older than 0.8.5, the oldest iprime supports"
    assert pf.engine_findings(cfg, gpu_box(vllm="0.10.1rc1+cu128")) == []
    found = pf.engine_findings(eurus("model.device=cpu", "model.autocast=none"), CPU_BOX)
    assert [f.text.split(",")[0] for f in found] == [
        "vLLM samples on CUDA only",
        "vLLM is not installed (no vllm package on this Python's path)",
    ]
    assert pf.engine_findings(eurus("rollout.engine=hf"), CPU_BOX) == []


def test_parse_version():
    assert pf.parse_version("0.10.1rc1+cu128") == (0, 10, 1)
    assert pf.parse_version("0.8.5.post1") == (0, 8, 5)
    assert pf.parse_version("2.13.0+cpu") == (2, 13, 0)


def test_the_oldest_vllm_is_the_extras_floor():
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'vllm = \["vllm>=([\d.]+)"\]', text).group(1)
    assert pf.MIN_VLLM == pf.parse_version(floor)


@pytest.mark.slow  # starts a process
def test_installed_version_does_not_import_the_package():
    code = (
        "import sys; from iprime.preflight import installed_version; "
        "v = installed_version('transformers'); print(v is not None, 'transformers' in sys.modules, "
        "installed_version('no_such_package_xyz'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "None"]


# ------------------------------------------------------------------------------------ world size, batches
@pytest.mark.slow  # imports the trainer's distributed module (transformers, ~3 s)
def test_world_size_reuses_the_trainers_check():
    assert pf.world_size_findings(eurus(), 1) == []
    assert pf.world_size_findings(eurus(), 8) == []
    (found,) = pf.world_size_findings(eurus(), 3)
    assert found.key == "world size 3"
    assert found.text.startswith("rollout.prompts_per_step=256 must be a multiple of the world size 3")
    (found,) = pf.world_size_findings(load_config(None, ["algo.estimator=gae", "prm.enabled=false"]), 2)
    assert 'algo.estimator="gae" is single-process only' in found.text


def test_batch_warnings():
    assert pf.batch_warnings(eurus(), 8) == []
    cfg = load_config(None, ["rollout.prompts_per_step=16", "optim.mini_batch_size=48", "prm.micro_batch_size=6"])
    found = pf.batch_warnings(cfg, 1)
    assert keys(found) == ["optim.mini_batch_size=48", "prm.micro_batch_size=6"]
    assert found[0].text.endswith("make 2 policy updates, the last of 16")  # 16 x 4 = 64 = 48 + 16
    assert found[1].text == "PRM micro-batches are whole groups of rollout.n=4: 4 are used"
    cfg = load_config(None, ["prm.mini_batch_size=8", "optim.mini_batch_size=16", "optim.micro_batch_size=4"])
    found = pf.batch_warnings(cfg, 4)
    assert keys(found) == ["prm.mini_batch_size=8"]
    assert found[0].text == "2 groups per PRM mini-batch for 4 ranks: some ranks hold none"
    assert keys(pf.batch_warnings(cfg, 32)) == ["optim.mini_batch_size=16", "prm.mini_batch_size=8"]


# ------------------------------------------------------------------------------------ model size
def test_qwen25_math_7b_has_its_published_size_by_hand():
    shape = pf.ModelShape.from_config(pf.QWEN25_MATH_7B)
    H, inter, V, L = 3584, 18944, 152064, 28
    # one layer of Qwen2.5-7B (28 query heads and 4 KV heads of 128 features)
    q = H * H + H  # q_proj with its bias
    k = v = H * 512 + 512  # 4 x 128 = 512 KV features, with bias
    o = H * H
    mlp = 3 * H * inter  # gate, up, down
    layer = q + k + v + o + mlp + 2 * H  # and two RMSNorms
    assert layer == 233_057_792 and shape.layer_params == layer
    assert shape.params == V * H + L * layer + H + V * H == 7_615_616_512  # 7.62B (the model card: 7.61B)
    assert shape.kv_bytes_per_token(4) == 2 * 28 * 4 * 128 * 4 == 114_688


def test_qwen25_1_5b_ties_its_head_and_has_lora_by_hand():
    shape = pf.ModelShape.from_config(pf.QWEN25_1_5B)
    layer = (1536 * 1536 + 1536) + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536
    assert shape.params == 151936 * 1536 + 28 * layer + 1536 == 1_543_714_304  # tied: one 151936 x 1536
    # r (in + out) per adapted matrix: q 1536->1536, k and v 1536->256, o 1536->1536
    assert shape.lora_params(32) == 28 * 32 * ((1536 + 1536) + 2 * (1536 + 256) + (1536 + 1536)) == 8_716_288


def test_unknown_layouts_are_refused():
    with pytest.raises(ValueError, match="model_type 'gpt2' is not a layout"):
        pf.ModelShape.from_config({"model_type": "gpt2"})


def test_model_size_reads_a_directory_then_the_cache_then_the_table(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(pf.QWEN25_1_5B))
    size = pf.model_size(str(tmp_path), cache_lookup=lambda repo: pytest.fail("a directory needs no cache"))
    assert size.local and size.shape.params == 1_543_714_304 and size.source == str(tmp_path / "config.json")
    cached = pf.model_size("someone/model", cache_lookup=lambda repo: str(tmp_path / "config.json"))
    assert cached.local and cached.shape.params == 1_543_714_304
    known = pf.model_size("PRIME-RL/Eurus-2-7B-SFT", cache_lookup=lambda repo: None)
    assert not known.local and known.shape.params == 7_615_616_512 and known.source == "known model: Qwen2.5-Math-7B"
    unknown = pf.model_size("someone/else", cache_lookup=lambda repo: None)
    assert unknown.shape is None and not unknown.local


def test_policy_findings(tmp_path):
    assert pf.model_findings(load_config(None, [f"model.policy={tmp_path}"]))[0].text.startswith(
        f"no config.json in {tmp_path}"
    )
    (found,) = pf.model_findings(load_config(None, ["model.policy=../nowhere/at/all"]))
    assert found.text == "no such directory, and not a hub id (user/name)"
    assert pf.model_findings(load_config(None, ["model.policy=PRIME-RL/Eurus-2-7B-SFT"])) == []
    cfg = eurus()
    (found,) = pf.policy_warnings(cfg, pf.model_size(cfg.model.policy, cache_lookup=lambda repo: None))
    assert "the run downloads it first" in found.text
    assert pf.policy_warnings(cfg, pf.ModelSize(None, "cache", local=True)) == []


# ------------------------------------------------------------------------------------ memory
P7 = 7_615_616_512


def test_the_eurus_estimate_by_hand():
    est = pf.estimate_memory(eurus(), pf.ModelShape.from_config(pf.QWEN25_MATH_7B), world_size=8)
    # float32 (4 bytes): policy and PRM 4 x 4 bytes per parameter (weights, grads, 2 AdamW moments), reference 4
    assert est.trainer == {"policy": 16 * P7, "prm": 16 * P7, "reference": 4 * P7}
    assert est.trainer_total == 36 * P7 == 274_162_194_432
    assert est.per_gpu() == math.ceil(36 * P7 / 8) == 34_270_274_304  # 31.9 GiB
    # vLLM in rollout.dtype: bf16, 2 bytes per parameter (the trainer stays float32)
    assert est.engine_share == 0.5 and est.engine_dtype == "bfloat16" and est.engine_weights == 2 * P7
    assert est.kv_cache(80 * GiB) == 40 * GiB - 2 * P7 == 27_718_439_936  # 25.8 GiB
    assert est.peak(80 * GiB) == 34_270_274_304 + 40 * GiB
    # fits in 90% of 80 GiB when 36 P / W <= 0.9 x 80 - 40 = 32 GiB: W >= 7.98
    assert est.ranks_to_fit(80 * GiB) == math.ceil(36 * P7 / (32 * GiB)) == 8
    # on a 40 GiB GPU vLLM's 20 GiB holds its 14.2 GiB of bf16 weights; the trainer gets 0.9 x 40 - 20 = 16 GiB
    assert est.ranks_to_fit(40 * GiB) == math.ceil(36 * P7 / (16 * GiB)) == 16
    fp32 = pf.estimate_memory(eurus("rollout.dtype=float32"), pf.ModelShape.from_config(pf.QWEN25_MATH_7B), 8)
    assert fp32.engine_weights == 4 * P7 and fp32.kv_cache(80 * GiB) == 40 * GiB - 4 * P7 == 12_487_206_912
    assert fp32.ranks_to_fit(40 * GiB) is None  # 20 GiB cannot hold 28.4 GiB of float32 weights
    assert (
        pf.estimate_memory(
            eurus("rollout.vllm_gpu_memory_utilization=0.9"), pf.ModelShape.from_config(pf.QWEN25_MATH_7B)
        ).ranks_to_fit(80 * GiB)
        is None
    )


def test_the_estimate_follows_the_memory_options():
    shape = pf.ModelShape.from_config(pf.QWEN25_1_5B)
    P = shape.params
    est = pf.estimate_memory(load_config(None, ["prm.lora=true", "prm.lora_r=32"]), shape)
    assert est.trainer == {"policy": 16 * P, "prm": 16 * 8_716_288, "reference": 4 * P}
    assert est.engine_share is None and est.engine_weights == 0  # the HF sampler is the policy
    est = pf.estimate_memory(load_config(None, ["model.reference=policy"]), shape)
    assert est.trainer == {"policy": 16 * P, "prm": 16 * P}
    est = pf.estimate_memory(
        load_config(None, ["algo.estimator=rloo", "prm.enabled=false", "model.dtype=bfloat16"]), shape
    )
    assert est.trainer == {"policy": 8 * P, "reference": 2 * P}
    est = pf.estimate_memory(load_config(None, ["algo.estimator=gae", "prm.enabled=false"]), shape)
    assert est.trainer["value"] == 16 * (P - 0 + 1536 + 1)  # tied: the body keeps the embedding; a 1536 -> 1 head


def test_memory_against_the_gpu():
    est8 = pf.estimate_memory(eurus(), pf.ModelShape.from_config(pf.QWEN25_MATH_7B), 8)
    assert pf.memory_findings(est8, eurus(), gpu_box(world=8)) == ([], [])  # 71.9 of 80 GiB
    est7 = pf.estimate_memory(eurus(), pf.ModelShape.from_config(pf.QWEN25_MATH_7B), 7)
    problems, (near,) = pf.memory_findings(est7, eurus(), gpu_box(world=7))
    assert problems == [] and near.text.startswith("estimated 76.5 GiB per GPU leaves under 10% of NVIDIA H100")
    est4 = pf.estimate_memory(eurus(), pf.ModelShape.from_config(pf.QWEN25_MATH_7B), 4)
    (over,), warnings = pf.memory_findings(est4, eurus(), gpu_box(world=4))
    assert warnings == [] and over.key == "memory"
    assert over.text.startswith("estimated 103.8 GiB per GPU at world size 4, over NVIDIA H100 80GB HBM3's 80.0 GiB")
    assert over.fix.startswith("launch over 8 or more ranks")
    small = pf.Gpu("A100-SXM4-40GB", 40 * GiB, (8, 0))
    found, _ = pf.memory_findings(est8, eurus(), gpu_box(small, world=8))
    assert keys(found) == ["memory"]  # 31.9 GiB of trainer + vLLM's 20 GiB
    fp32 = eurus("rollout.dtype=float32")
    est8 = pf.estimate_memory(fp32, pf.ModelShape.from_config(pf.QWEN25_MATH_7B), 8)
    found, _ = pf.memory_findings(est8, fp32, gpu_box(small, world=8))
    assert keys(found) == ["rollout.vllm_gpu_memory_utilization=0.5", "memory"]
    assert "no room for a KV cache" in found[0].text  # 20 GiB for 28.4 GiB of float32 weights


def test_memory_without_a_gpu_here_is_a_warning_and_the_cpu_is_not_judged():
    est = pf.estimate_memory(eurus(), pf.ModelShape.from_config(pf.QWEN25_MATH_7B), 1)
    problems, (warning,) = pf.memory_findings(est, eurus(), CPU_BOX)
    assert problems == [] and "over an 80 GiB GPU (none here to compare with)" in warning.text
    cpu = eurus("model.device=cpu", "model.autocast=none", "rollout.engine=hf")
    assert pf.memory_findings(est, cpu, CPU_BOX) == ([], [])
    problems, (unknown,) = pf.memory_findings(None, eurus(), CPU_BOX)
    assert unknown.text == "no estimate: the size of model.policy=PRIME-RL/Eurus-2-7B-SFT is unknown"


def test_memory_lines_and_the_config_show_block():
    est = pf.estimate_memory(eurus(), pf.ModelShape.from_config(pf.QWEN25_MATH_7B), 1)
    lines = pf.memory_lines(est, "PRIME-RL/Eurus-2-7B-SFT", "known model: Qwen2.5-Math-7B", None)
    assert lines[0].endswith("PRIME-RL/Eurus-2-7B-SFT, 7.62B parameters (known model: Qwen2.5-Math-7B)")
    assert "policy 113.5 GiB + PRM 113.5 GiB + reference 28.4 GiB = 255.3 GiB" in lines[1]
    assert lines[2] == "  per GPU (FSDP2): 255.3 GiB at world size 1, 31.9 GiB at 8"
    assert "bfloat16 weights 14.2 GiB" in lines[3] and "56 KiB per token" in lines[3]
    assert lines[4].endswith("fits from world size 8")
    block = pf.estimate_block(eurus(), pf.model_size("PRIME-RL/Eurus-2-7B-SFT", cache_lookup=lambda repo: None))
    assert block and all(line.startswith("# ") for line in block)
    assert pf.estimate_block(load_config(None, ["model.policy=a/b"]), pf.ModelSize(None, "x", False)) == []  # CPU


# ------------------------------------------------------------------------------------ data, sandbox, report
def test_code_rows_need_the_sandbox():
    (found,) = pf.sandbox_findings(Counter({"math": 5, "code": 3}), "isolation='userns' does not work here")
    assert found.text == (
        "3 rows are scored by running code, but the code sandbox cannot run here: isolation='userns' does not work here"
    )
    assert pf.sandbox_findings(Counter({"code": 3}), None) == []
    assert pf.sandbox_findings(Counter({"math": 5}), "no sandbox") == []


def test_data_findings():
    (found,) = pf.data_findings("data.train_path=x.parquet", DataError("data file 'x.parquet' does not exist"))
    assert found.text == "data file 'x.parquet' does not exist"
    scan = DataScan(
        "d.jsonl",
        10,
        Counter({"math": 10}),
        2,
        [("d.jsonl line 3", "answer", "missing"), ("d.jsonl line 7", "prompt", "empty")],
    )
    (found,) = pf.data_findings("data.train_path=d.jsonl", scan)
    assert found.text == "2 of 10 rows are bad (first: d.jsonl line 3, answer: missing)"
    assert pf.data_findings("k", DataScan("d.jsonl", 10, Counter({"math": 10}), 0, [])) == []


def test_the_report_is_one_numbered_message():
    report = pf.Report(
        problems=[pf.Finding("a.b=1", "wrong", "set 2"), pf.Finding("c", "also wrong")],
        warnings=[pf.Finding("d", "odd", "look")],
        summary=["  machine: x"],
    )
    assert report.text("check").splitlines() == [
        "check: 2 problems, no model loaded",
        "  1. a.b=1: wrong",
        "     fix: set 2",
        "  2. c: also wrong",
        "warnings:",
        "  - d: odd",
        "    fix: look",
        "checked:",
        "  machine: x",
    ]
    assert not report.ok and pf.Report().text() == "pre-flight check: OK"


def test_the_eurus_recipe_on_a_cpu_box():
    cfg = eurus()
    size = pf.model_size(cfg.model.policy, cache_lookup=lambda repo: None)
    report, est = pf.machine_report(cfg, CPU_BOX, size)
    assert keys(report.problems) == ["model.device=cuda", "model.autocast=bf16", "rollout.engine=vllm"]
    assert est.params == P7


@pytest.mark.slow  # world size 8 imports the trainer's distributed module (transformers, ~3 s)
def test_the_eurus_recipe_on_its_8_gpus():
    cfg = eurus()
    size = pf.model_size(cfg.model.policy, cache_lookup=lambda repo: None)
    node = pf.Machine(
        torch="2.8.0+cu128", cuda="12.8", gpu_count=8, gpu=H100, vllm="0.11.0", world_size=8, local_world_size=8
    )
    report, _ = pf.machine_report(cfg, node, size)
    assert report.problems == [] and keys(report.warnings) == ["model.policy=PRIME-RL/Eurus-2-7B-SFT"]


def test_dry_run_report_adds_the_data_the_sandbox_and_the_summary():
    cfg = eurus("model.device=cpu", "model.autocast=none", "rollout.engine=hf")
    size = pf.model_size(cfg.model.policy, cache_lookup=lambda repo: None)
    scan = DataScan("data/train.parquet", 8, Counter({"math": 5, "code": 3}), 0, [])
    report = pf.dry_run_report(cfg, CPU_BOX, size, scan, "no unshare")
    assert keys(report.problems) == ["verify (code rows)"]
    text = report.text()
    assert "  data: 8 rows from data/train.parquet (8 usable); verifiers: math 5, code 3" in text
    assert "7.62B parameters" in text and "per GPU" not in text  # a CPU run: no GPU lines
    report = pf.dry_run_report(cfg, CPU_BOX, size, DataError("data file 'data/train.parquet' does not exist"), None)
    assert keys(report.problems) == ["data.train_path=data/train.parquet"]


# ------------------------------------------------------------------------------------ against real models
@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, extra",
    [
        ("qwen2", {}),
        ("qwen2", {"tie_word_embeddings": True}),
        ("llama", {"attention_bias": True, "mlp_bias": True}),
        ("mistral", {}),
        ("qwen3", {"head_dim": 24}),
    ],
)
def test_the_formula_counts_what_transformers_builds(kind, extra):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        kind,
        vocab_size=97,
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = pf.ModelShape.from_config(config.to_dict())
    assert shape.params == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_adamw_keeps_two_moments_in_the_parameters_dtype():
    """The estimate's 4 P b of a trained model: weights, gradients and AdamW's two moments."""
    import torch

    for dtype, b in ((torch.float32, 4), (torch.bfloat16, 2)):
        model = torch.nn.Linear(32, 16).to(dtype)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.ones(2, 32, dtype=dtype)).sum().backward()
        opt.step()
        P = sum(p.numel() for p in model.parameters())
        tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters()]
        tensors += [s for state in opt.state.values() for s in state.values() if s.dim() > 0]
        assert sum(t.numel() * t.element_size() for t in tensors) == 4 * P * b


@pytest.mark.parametrize("rollout_dtype", ["auto", "bfloat16", "float16", "float32"])
@pytest.mark.parametrize("model_dtype", ["float32", "bfloat16", "float16"])
def test_the_estimate_resolves_the_engine_dtype_as_the_engine_does(rollout_dtype, model_dtype):
    from iprime.rollout.vllm import engine_dtype

    cfg = eurus(f"rollout.dtype={rollout_dtype}", f"model.dtype={model_dtype}")
    est = pf.estimate_memory(cfg, pf.ModelShape.from_config(pf.QWEN25_MATH_7B), 8)
    assert est.engine_dtype == engine_dtype(rollout_dtype, model_dtype)
    assert est.engine_weights == P7 * pf.DTYPE_BYTES[est.engine_dtype]
