"""The pre-flight check: what a run needs of the machine, found before any model loads and
reported in one message.

``iprime train`` runs :func:`machine_report` before it touches ``train.out_dir``: CUDA for
``model.device=cuda`` (a GPU for every rank under torchrun), bfloat16 on that GPU when
``model.autocast`` or ``model.dtype`` asks for it, vLLM installed (and new enough) for
``rollout.engine=vllm``, the world size against the batch sizes, and the memory estimate
against the GPU's memory. Each problem is a :class:`Finding` with its fix; all of them are
listed in one message and the command exits with status 2, instead of one traceback per launch
after the models have loaded. ``iprime train --dry-run`` runs only this and the data check
(:func:`dry_run_report`: the rows, and the code sandbox when there are code rows) and exits 0
when all is well, with a short summary and the memory estimate.

The checks are plain functions of the config and a :class:`Machine` (what torch, importlib and
the environment say, gathered once by :func:`probe_machine`), so each is tested on a made-up
machine. Nothing here imports vLLM or transformers, or loads a model: vLLM's presence and
version come from :mod:`importlib` (``find_spec`` and the installed metadata); a model's size
from its ``config.json`` (a local directory, or the Hugging Face cache: never the network), else
from :data:`KNOWN_MODELS`.

**The memory estimate** (:func:`estimate_memory`; docs/scaling.md "Memory estimate"). With ``P``
parameters and ``b`` bytes per element of ``model.dtype`` (4 for float32, 2 for bf16/fp16):

- a trained model (policy, full PRM): ``4 P b`` (weights, gradients and AdamW's two moments,
  which torch keeps in the parameters' dtype); a LoRA PRM: ``4 b`` times its adapter's
  parameters (``r (in + out)`` for each of q, k, v, o in every layer);
- the frozen reference (``model.reference=sft`` or a path, or the LoRA PRM's base): ``P b``;
- a value model (estimators with one, e.g. ``gae``): ``4 b`` times the body's parameters plus
  its one-output head;
- per GPU: the sum divided by the world size (FSDP2 shards weights, gradients and optimizer
  states evenly over the ranks), plus, with ``rollout.engine=vllm``,
  ``rollout.vllm_gpu_memory_utilization`` of the GPU: the engine's own weights (``P e``, with
  ``e`` bytes per element of the engine's dtype, ``rollout.dtype``: 2 for the default bf16) and,
  in the rest of that share, its KV cache (``2 x layers x kv_heads x head_dim x e`` bytes per
  token).

Not counted: activations (``model.gradient_checkpointing`` and ``optim.micro_batch_tokens``
bound them), the HF sampler's KV cache, the CUDA context (~0.5 GiB), FSDP's gathered layer and
allocator fragmentation; so an estimate above 90% of the GPU is a warning.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from iprime.algo import get_advantage_estimator
from iprime.config import PrimeConfig
from iprime.verifiers.sandbox import SandboxUnavailable, check_isolation_available

GiB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MIN_VLLM = (0, 8, 5)
"""The oldest vLLM iprime supports: pyproject.toml's ``vllm`` extra (``vllm>=0.8.5``)."""
REFERENCE_GPU = 80 * GiB
"""The GPU the estimate is compared with where no GPU is at hand (A100 / H100 80 GB)."""
HEADROOM = 0.10
"""Share of a GPU left for what the estimate does not count (activations, the CUDA context):
an estimate above ``1 - HEADROOM`` of the GPU is a warning, above the whole GPU a problem."""
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# ------------------------------------------------------------------------------ findings
@dataclass(frozen=True)
class Finding:
    """One thing found: ``key`` (the setting it is about, ``model.device=cuda``), what is wrong,
    and how to fix it."""

    key: str
    text: str
    fix: str = ""


@dataclass
class Report:
    """Everything the check found: ``problems`` stop the run (exit 2), ``warnings`` do not,
    ``summary`` lines describe what was checked (printed by ``--dry-run``)."""

    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self, title: str = "pre-flight check") -> str:
        """The one message: a numbered list of the problems with the fix of each, the warnings,
        then the summary lines."""
        n = len(self.problems)
        head = f"{title}: {n} problem{'s' if n != 1 else ''}, no model loaded" if n else f"{title}: OK"
        lines = [head]
        for i, p in enumerate(self.problems, 1):
            lines.append(f"  {i}. {p.key}: {p.text}")
            if p.fix:
                lines.append(f"     fix: {p.fix}")
        if self.warnings:
            lines.append("warnings:")
            for w in self.warnings:
                lines.append(f"  - {w.key}: {w.text}")
                if w.fix:
                    lines.append(f"    fix: {w.fix}")
        if self.summary:
            lines.append("checked:")
        return "\n".join(lines + self.summary)


# ------------------------------------------------------------------------------ the machine
@dataclass(frozen=True)
class Gpu:
    """A CUDA device as torch describes it."""

    name: str
    memory: int
    """Total memory in bytes (``torch.cuda.get_device_properties(i).total_memory``)."""
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        """Native bfloat16: compute capability 8.0 or later (A100, H100, RTX 30xx and later);
        torch emulates it on older GPUs, far slower."""
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Machine:
    """What a run can use here: torch's build, the GPUs, vLLM, and the torchrun launch."""

    torch: str
    """``torch.__version__``."""
    cuda: str | None
    """``torch.version.cuda``, the CUDA torch was built for; ``None``: a CPU build."""
    gpu_count: int = 0
    gpu: Gpu | None = None
    """The GPU this rank would use (``cuda:LOCAL_RANK`` under torchrun, else ``model.device``'s);
    ``None`` when there is none."""
    vllm: str | None = None
    """The installed vLLM's version (package metadata; vLLM is not imported); ``None``: not installed."""
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    """Ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``): each needs a GPU of its own."""
    visible_devices: str | None = None
    """``CUDA_VISIBLE_DEVICES`` as set in the environment (``None``: unset)."""


def device_index(device: str, local_rank: int, world_size: int) -> int:
    """The CUDA device a run with ``model.device=device`` computes on: ``cuda:LOCAL_RANK`` under
    torchrun (:func:`iprime.train.distributed.init_distributed`), else the index given (0 for ``cuda``)."""
    if world_size > 1:
        return local_rank
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def installed_version(package: str) -> str | None:
    """The installed version of ``package``, found without importing it (``None``: not installed)."""
    if importlib.util.find_spec(package) is None:
        return None
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def probe_machine(device: str = "cpu", world_size: int | None = None, env: Mapping[str, str] | None = None) -> Machine:
    """Look at this machine: torch's build, the GPU this rank would use, vLLM, torchrun's
    variables. ``world_size``: as if launched over that many ranks on this node (``--dry-run
    --world-size N``); ``None``: torchrun's ``WORLD_SIZE`` (1 without torchrun).

    Only this rank's own GPU is opened (its properties), never another rank's."""
    env = os.environ if env is None else env
    if world_size is None:
        world = int(env.get("WORLD_SIZE", "1"))
        local_rank, local_world = int(env.get("LOCAL_RANK", "0")), int(env.get("LOCAL_WORLD_SIZE", str(world)))
    else:
        world, local_rank, local_world = world_size, 0, world_size
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = device_index(device, local_rank, world)
    gpu = None
    if device.startswith("cuda") and index < count:
        props = torch.cuda.get_device_properties(index)
        gpu = Gpu(props.name, int(props.total_memory), (props.major, props.minor))
    return Machine(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        gpu_count=count,
        gpu=gpu,
        vllm=installed_version("vllm"),
        world_size=world,
        local_rank=local_rank,
        local_world_size=local_world,
        visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
    )


def describe_machine(m: Machine) -> str:
    """One line: ``torch 2.13.0+cpu (CPU build), no GPU; world size 1; vLLM not installed``."""
    build = f"CUDA {m.cuda}" if m.cuda else "CPU build"
    gpus = f"{m.gpu_count} GPU{'s' if m.gpu_count != 1 else ''}" if m.gpu_count else "no GPU"
    if m.gpu is not None:
        cap = ".".join(map(str, m.gpu.capability))
        gpus += f" ({m.gpu.name}, {gib(m.gpu.memory)}, compute capability {cap})"
    vllm = f"vLLM {m.vllm}" if m.vllm else "vLLM not installed"
    return f"torch {m.torch} ({build}), {gpus}; world size {m.world_size}; {vllm}"


# ------------------------------------------------------------------------------ the checks
def device_findings(
    device: str, m: Machine, *, key: str = "model.device", bf16: tuple[str, str] | None = None
) -> list[Finding]:
    """A GPU for this rank when ``device`` is CUDA, and bfloat16 on it when ``bf16`` names the
    setting that asks for it and the one that gives float32 instead (``("model.autocast=bf16",
    "model.autocast=none")``). Nothing for the CPU."""
    if not device.startswith("cuda"):
        return []
    out, setting, index = [], f"{key}={device}", device_index(device, m.local_rank, m.world_size)
    if m.cuda is None:
        out.append(
            Finding(
                setting,
                f"no CUDA: torch {m.torch} is a CPU build",
                f"on a GPU machine install a CUDA build of torch (make setup-gpu, docs/scaling.md); here set {key}=cpu",
            )
        )
    elif m.gpu_count == 0:
        shown = "" if m.visible_devices is None else f" with CUDA_VISIBLE_DEVICES={m.visible_devices!r}"
        out.append(
            Finding(
                setting,
                f"no CUDA device: torch {m.torch} (CUDA {m.cuda}) sees no GPU{shown}",
                f"check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or set {key}=cpu",
            )
        )
    elif index >= m.gpu_count:
        out.append(
            Finding(
                setting,
                f"this rank would use cuda:{index}, but {m.gpu_count} GPU(s) are visible",
                f"use a device index below {m.gpu_count}, or launch fewer ranks on this node",
            )
        )
    if bf16 is not None:
        setting, float32 = bf16
        if m.gpu is None:
            out.append(
                Finding(
                    setting,
                    "bfloat16 on CUDA is unavailable here: there is no CUDA device to run it on",
                    f"a GPU of compute capability 8.0 or later (A100, H100, ...); on the CPU: {key}=cpu {float32}",
                )
            )
        elif not m.gpu.bf16:
            cap = ".".join(map(str, m.gpu.capability))
            out.append(
                Finding(
                    setting,
                    f"{m.gpu.name} (compute capability {cap}) has no native bfloat16 (needs 8.0 or later)",
                    f"use a newer GPU, or float32 ({float32})",
                )
            )
    return out


def bf16_setting(cfg: PrimeConfig) -> tuple[str, str] | None:
    """The setting that asks for bfloat16 on CUDA (``model.autocast=bf16`` or
    ``model.dtype=bfloat16``) and the one that gives float32 instead; ``None`` when none does."""
    if cfg.model.autocast == "bf16":
        return "model.autocast=bf16", "model.autocast=none"
    if cfg.model.dtype == "bfloat16" and cfg.model.device.startswith("cuda"):
        return "model.dtype=bfloat16", "model.dtype=float32"
    return None


def launch_findings(cfg: PrimeConfig, m: Machine) -> list[Finding]:
    """Under torchrun on CUDA every rank of this node takes a GPU of its own (``cuda:LOCAL_RANK``)."""
    if m.world_size <= 1 or not cfg.model.device.startswith("cuda") or m.gpu_count == 0:
        return []
    if m.local_world_size <= m.gpu_count:
        return []
    return [
        Finding(
            f"world size {m.world_size}",
            f"{m.local_world_size} ranks on this node, {m.gpu_count} GPUs: every rank needs its own (cuda:LOCAL_RANK)",
            f"torchrun --nproc_per_node={m.gpu_count}",
        )
    ]


def parse_version(text: str) -> tuple[int, ...]:
    """The leading numbers of a version: ``"0.10.1rc1+cu128"`` -> ``(0, 10, 1)``."""
    numbers = []
    for part in text.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def engine_findings(cfg: PrimeConfig, m: Machine) -> list[Finding]:
    """``rollout.engine=vllm``: CUDA, and vLLM installed and at least :data:`MIN_VLLM`."""
    if cfg.rollout.engine != "vllm":
        return []
    out, key = [], "rollout.engine=vllm"
    if not cfg.model.device.startswith("cuda"):
        out.append(
            Finding(
                key,
                f"vLLM samples on CUDA only, and model.device={cfg.model.device}",
                "set model.device=cuda on a GPU machine, or rollout.engine=hf (the built-in sampler)",
            )
        )
    oldest = ".".join(map(str, MIN_VLLM))
    if m.vllm is None:
        out.append(
            Finding(
                key,
                "vLLM is not installed (no vllm package on this Python's path)",
                f"on a CUDA machine: make setup-gpu, or pip install 'iprime[vllm]' (vllm>={oldest}); "
                "or set rollout.engine=hf",
            )
        )
    elif m.vllm != "unknown" and parse_version(m.vllm) < MIN_VLLM:
        out.append(
            Finding(
                key,
                f"vLLM {m.vllm} is older than {oldest}, the oldest iprime supports",
                f"pip install 'vllm>={oldest}' (make setup-gpu installs the pinned one)",
            )
        )
    return out


def world_size_findings(cfg: PrimeConfig, world_size: int) -> list[Finding]:
    """What a data-parallel run refuses: the trainer's own check
    (:func:`iprime.train.distributed.check_config`, which stops at its first problem); nothing
    in one process."""
    if world_size <= 1:
        return []
    # imported here: it loads torch.distributed and transformers (~3 s), and it checks nothing in one process
    from iprime.train.distributed import DistContext, check_config

    try:
        check_config(cfg, DistContext(world_size=world_size))
    except ValueError as err:
        fix = "change the setting, or the world size (torchrun --nproc_per_node)"
        return [Finding(f"world size {world_size}", str(err), fix)]
    return []


def batch_warnings(cfg: PrimeConfig, world_size: int) -> list[Finding]:
    """Batch sizes that work, but not as evenly as they read: a last mini-batch smaller than
    the others, PRM micro-batches rounded down to whole groups, ranks with no rows of a
    mini-batch (they run empty micro-batches to keep the collectives in step)."""
    K, out = cfg.rollout.n, []
    responses = cfg.rollout.prompts_per_step * K
    o, p = cfg.optim, cfg.prm
    if responses % o.mini_batch_size and o.mini_batch_size < responses:
        updates, last = math.ceil(responses / o.mini_batch_size), responses % o.mini_batch_size
        out.append(
            Finding(
                f"optim.mini_batch_size={o.mini_batch_size}",
                f"a step's {responses} responses (rollout.prompts_per_step x rollout.n) make "
                f"{updates} policy updates, the last of {last}",
                f"a divisor of {responses}",
            )
        )
    if o.mini_batch_size < world_size:
        out.append(
            Finding(
                f"optim.mini_batch_size={o.mini_batch_size}",
                f"fewer responses than the {world_size} ranks: some ranks hold none of a mini-batch",
                f"at least {world_size}",
            )
        )
    if not p.enabled:
        return out
    if p.micro_batch_size % K:
        out.append(
            Finding(
                f"prm.micro_batch_size={p.micro_batch_size}",
                f"PRM micro-batches are whole groups of rollout.n={K}: {max(K, p.micro_batch_size // K * K)} are used",
                f"a multiple of {K}",
            )
        )
    if p.mini_batch_size is not None and p.mini_batch_size // K < world_size:
        out.append(
            Finding(
                f"prm.mini_batch_size={p.mini_batch_size}",
                f"{p.mini_batch_size // K} groups per PRM mini-batch for {world_size} ranks: some ranks hold none",
                f"at least {world_size * K} (a group per rank)",
            )
        )
    return out


# ------------------------------------------------------------------------------ model size
@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer of the Llama layout (Llama, Mistral, Qwen2,
    Qwen3: attention q/k/v/o, a gated MLP of three matrices, RMSNorms), from its ``config.json``."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    """``tie_word_embeddings``: the LM head is the embedding matrix."""
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    """Qwen3's per-head RMSNorm of queries and keys."""

    @classmethod
    def from_config(cls, c: Mapping) -> ModelShape:
        """From a ``config.json``'s mapping; ``ValueError`` for a ``model_type`` of another layout."""
        kind = c.get("model_type")
        if kind not in ("llama", "mistral", "qwen2", "qwen3"):
            raise ValueError(f"model_type {kind!r} is not a layout the estimate knows (llama, mistral, qwen2, qwen3)")
        heads = c["num_attention_heads"]
        attention_bias = bool(c.get("attention_bias", False))
        return cls(
            vocab=c["vocab_size"],
            hidden=c["hidden_size"],
            intermediate=c["intermediate_size"],
            layers=c["num_hidden_layers"],
            heads=heads,
            kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            tied=bool(c.get("tie_word_embeddings", False)),
            qkv_bias=kind == "qwen2" or attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(c.get("mlp_bias", False)),
            qk_norm=kind == "qwen3",
        )

    @property
    def layer_params(self) -> int:
        """One decoder layer: ``H(q) + 2 H(kv) + q H`` attention matrices (``q = heads x
        head_dim``, ``kv = kv_heads x head_dim``), their biases, ``3 H I`` of the gated MLP, and
        two RMSNorms of ``H`` (Qwen3: two more of ``head_dim``)."""
        H, q, kv, inter = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        attention = H * q + 2 * H * kv + q * H + self.qkv_bias * (q + 2 * kv) + self.o_bias * H
        mlp = 3 * H * inter + self.mlp_bias * (2 * inter + H)
        return attention + mlp + 2 * H + self.qk_norm * 2 * self.head_dim

    @property
    def lm_head_params(self) -> int:
        """The LM head's own parameters: ``V x H``, none when tied to the embedding."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Embedding ``V x H`` + layers + final norm ``H`` + the LM head."""
        return self.vocab * self.hidden + self.layers * self.layer_params + self.hidden + self.lm_head_params

    def lora_params(self, r: int) -> int:
        """A LoRA adapter of rank ``r`` on q, k, v and o (iprime's targets,
        :class:`iprime.models.LoraSettings`): ``r (in + out)`` per matrix and layer."""
        H, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * r * ((H + q) + 2 * (H + kv) + (q + H))

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV cache per token: keys and values of every layer, ``2 x layers x kv_heads x head_dim``."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


QWEN25_MATH_7B = {
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
}
QWEN25_1_5B = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}
KNOWN_MODELS: dict[str, tuple[str, dict]] = {
    "PRIME-RL/Eurus-2-7B-SFT": ("Qwen2.5-Math-7B", QWEN25_MATH_7B),
    "PRIME-RL/Eurus-2-7B-PRIME": ("Qwen2.5-Math-7B", QWEN25_MATH_7B),
    "Qwen/Qwen2.5-Math-7B": ("Qwen2.5-Math-7B", QWEN25_MATH_7B),
    "Qwen/Qwen2.5-Math-7B-Instruct": ("Qwen2.5-Math-7B", QWEN25_MATH_7B),
    "Qwen/Qwen2.5-Math-1.5B": ("Qwen2.5-1.5B", QWEN25_1_5B),
    "Qwen/Qwen2.5-Math-1.5B-Instruct": ("Qwen2.5-1.5B", QWEN25_1_5B),
    "Qwen/Qwen2.5-1.5B-Instruct": ("Qwen2.5-1.5B", QWEN25_1_5B),
}
"""Hub models of iprime's recipes whose sizes are known without their files: the architecture
fields of their published ``config.json`` (Qwen2.5-Math-7B: 7.62B parameters; Qwen2.5-1.5B:
1.54B). Used only when the model is neither a local directory nor in the Hugging Face cache."""


@dataclass(frozen=True)
class ModelSize:
    """What is known of a model's size without loading it: its ``shape`` (``None``: unknown),
    where that came from (``source``), and whether it is a local directory or in the Hugging
    Face cache (``local``: the run need not download it)."""

    shape: ModelShape | None
    source: str
    local: bool


def model_size(model: str, cache_lookup: Callable[[str], str | None] | None = None) -> ModelSize:
    """The size of ``model`` (a directory or a hub id) without loading it or touching the
    network: the directory's ``config.json``, else the Hugging Face cache's copy
    (``cache_lookup(repo_id) -> path or None``; default: huggingface_hub's
    ``try_to_load_from_cache``), else :data:`KNOWN_MODELS`."""
    if not model:
        return ModelSize(None, "model.policy is not set", False)
    lookup = cache_lookup or _cached_config
    path = Path(model) / "config.json"
    found = str(path) if path.is_file() else (lookup(model) if HUB_ID.match(model) else None)
    if found is not None:
        try:
            return ModelSize(ModelShape.from_config(json.loads(Path(found).read_text(encoding="utf-8"))), found, True)
        except (ValueError, KeyError, OSError) as err:
            return ModelSize(None, f"{found}: {err}", True)
    if model in KNOWN_MODELS:
        name, config = KNOWN_MODELS[model]
        return ModelSize(ModelShape.from_config(config), f"known model: {name}", False)
    return ModelSize(None, "no local config.json, not in the Hugging Face cache, not a known model", False)


def _cached_config(repo_id: str) -> str | None:
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id after all
        return None
    return found if isinstance(found, str) else None


def model_findings(cfg: PrimeConfig) -> list[Finding]:
    """``model.policy``, ``model.prm`` and a ``model.reference`` path: a directory needs a
    ``config.json`` (else transformers fails later with a text about tokenizers); a name that
    is neither a directory nor a hub id (``user/name``) cannot be loaded."""
    policy = cfg.model.policy
    if not policy:
        return [Finding("model.policy", "not set", "the path (or hub id) of the SFT model the policy starts from")]
    roles = {"policy": policy, "prm": cfg.model.prm}
    if cfg.model.reference not in ("sft", "policy"):
        roles["reference"] = cfg.model.reference
    return [f for role, path in roles.items() if path for f in _model_path_findings(f"model.{role}", path)]


def _model_path_findings(key: str, path: str) -> list[Finding]:
    where = f"{key}={path}"
    if Path(path).is_dir():
        if not (Path(path) / "config.json").is_file():
            return [
                Finding(
                    where,
                    f"no config.json in {path}: the folder is not a Hugging Face model",
                    f"point {key} at a saved model (a folder with config.json and the weights)",
                )
            ]
        return []
    if not HUB_ID.match(path):
        return [Finding(where, "no such directory, and not a hub id (user/name)", f"point {key} at a model")]
    return []


def policy_warnings(cfg: PrimeConfig, size: ModelSize) -> list[Finding]:
    """A hub id the cache does not hold is downloaded by the run (the network, and the model's size on disk)."""
    policy = cfg.model.policy
    if not policy or size.local or Path(policy).is_dir() or not HUB_ID.match(policy):
        return []
    return [
        Finding(
            f"model.policy={policy}",
            "not a local directory and not in the Hugging Face cache: the run downloads it first (needs the network)",
            f"huggingface-cli download {policy} beforehand, or give a local directory",
        )
    ]


# ------------------------------------------------------------------------------ memory
@dataclass(frozen=True)
class MemoryEstimate:
    """The estimate of module docstring's formula, in bytes. ``trainer``: each model's states
    summed over the ranks (``policy``, ``prm``, ``reference``, ``value``)."""

    params: int
    dtype: str
    """The trainer's (``model.dtype``)."""
    trainer: dict[str, int]
    world_size: int
    engine_share: float | None
    """vLLM's share of each GPU (``rollout.vllm_gpu_memory_utilization``); ``None``: the HF
    sampler, which samples with the policy itself."""
    engine_weights: int
    kv_bytes_per_token: int
    engine_dtype: str = "bfloat16"
    """vLLM's (``rollout.dtype``, ``auto`` resolved to ``model.dtype``)."""

    @property
    def trainer_total(self) -> int:
        return sum(self.trainer.values())

    def per_gpu(self, world_size: int | None = None) -> int:
        """The trainer's states on each GPU: FSDP2 shards them evenly over the ranks."""
        return math.ceil(self.trainer_total / (world_size or self.world_size))

    def peak(self, gpu_memory: int, world_size: int | None = None) -> int:
        """Trainer states plus the engine's share while it samples."""
        return self.per_gpu(world_size) + round((self.engine_share or 0.0) * gpu_memory)

    def kv_cache(self, gpu_memory: int) -> int | None:
        """What vLLM's share leaves for its KV cache after its weights (``None`` without vLLM)."""
        if self.engine_share is None:
            return None
        return round(self.engine_share * gpu_memory) - self.engine_weights

    def ranks_to_fit(self, gpu_memory: int) -> int | None:
        """The fewest ranks at which the estimate fits in ``1 - HEADROOM`` of each GPU. ``None``
        when no world size does: the engine's share leaves the trainer no room, or cannot hold
        the engine's own weights."""
        room = (1 - HEADROOM) * gpu_memory - (self.engine_share or 0.0) * gpu_memory
        kv = self.kv_cache(gpu_memory)
        if room <= 0 or (kv is not None and kv <= 0):
            return None
        return max(1, math.ceil(self.trainer_total / room))


def estimate_memory(cfg: PrimeConfig, shape: ModelShape, world_size: int = 1) -> MemoryEstimate:
    """The run's memory per the module docstring's formula (every model of ``shape``'s size:
    ``model.prm`` or ``model.reference`` given as another path is assumed the same size)."""
    b = DTYPE_BYTES[cfg.model.dtype]
    P = shape.params
    trainer = {"policy": 4 * P * b}
    if cfg.prm.enabled:
        trainer["prm"] = 4 * b * (shape.lora_params(cfg.prm.lora_r) if cfg.prm.lora else P)
    if cfg.model.reference != "policy" or (cfg.prm.enabled and cfg.prm.lora):
        trainer["reference"] = P * b
    if get_advantage_estimator(cfg.algo.estimator).needs_values:
        trainer["value"] = 4 * b * (P - shape.lm_head_params + shape.hidden + 1)
    vllm = cfg.rollout.engine == "vllm"
    # rollout.dtype resolved as iprime.rollout.vllm.engine_dtype does (not imported here: it
    # loads transformers; tests/test_preflight.py checks the two agree)
    engine = cfg.model.dtype if cfg.rollout.dtype == "auto" else cfg.rollout.dtype
    e = DTYPE_BYTES[engine]
    return MemoryEstimate(
        params=P,
        dtype=cfg.model.dtype,
        trainer=trainer,
        world_size=world_size,
        engine_share=cfg.rollout.vllm_gpu_memory_utilization if vllm else None,
        engine_weights=P * e if vllm else 0,
        kv_bytes_per_token=shape.kv_bytes_per_token(e),
        engine_dtype=engine,
    )


def gib(n: float) -> str:
    """Bytes as GiB with one decimal (MiB below 1 GiB, where one decimal of GiB would read 0.0)."""
    return f"{n / GiB:.1f} GiB" if abs(n) >= GiB else f"{n / 1024**2:.1f} MiB"


def count(n: int) -> str:
    """``7.62B``, ``433.8K``, ``1.23M``: a parameter count at a readable scale."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def memory_lines(est: MemoryEstimate, model: str, source: str, gpu: Gpu | None, cuda: bool = True) -> list[str]:
    """The estimate as a few lines: the model, the trainer's states, and for a CUDA run
    (``cuda``) per GPU, the engine, and the fit on ``gpu`` (an 80 GiB GPU when there is none here)."""
    parts = " + ".join(f"{name.replace('prm', 'PRM')} {gib(n)}" for name, n in est.trainer.items())
    lines = [
        f'memory estimate (docs/scaling.md "Memory estimate"): {model}, {count(est.params)} parameters ({source})',
        f"  trainer, all ranks: {parts} = {gib(est.trainer_total)} ({est.dtype}: weights; "
        "gradients and 2 AdamW moments of what is trained)",
    ]
    if not cuda:
        return lines + ["  not counted: activations, the sampler's KV cache"]
    lines.append(
        f"  per GPU (FSDP2): {gib(est.per_gpu())} at world size {est.world_size}"
        + (f", {gib(est.per_gpu(8))} at 8" if est.world_size != 8 else "")
    )
    if est.engine_share is not None:
        lines.append(
            f"  vLLM: {est.engine_share:g} of each GPU (rollout.vllm_gpu_memory_utilization): "
            f"{est.engine_dtype} weights {gib(est.engine_weights)}, "
            f"the rest KV cache ({est.kv_bytes_per_token / 1024:.0f} KiB per token)"
        )
    memory = gpu.memory if gpu is not None else REFERENCE_GPU
    where = f"this GPU ({gpu.name}, {gib(memory)})" if gpu is not None else "an 80 GiB GPU"
    fit = f"  on {where}: {gib(est.peak(memory))} per GPU at world size {est.world_size}"
    kv = est.kv_cache(memory)
    if kv is not None:
        fit += f" (KV cache {gib(kv)}, ~{max(kv, 0) // max(est.kv_bytes_per_token, 1) // 1000}k tokens)"
    need = est.ranks_to_fit(memory)
    fit += f"; fits from world size {need}" if need is not None else "; fits at no world size (see vLLM's share)"
    lines.append(fit)
    lines.append("  not counted: activations, the CUDA context, FSDP's gathered layer, fragmentation")
    return lines


def memory_findings(est: MemoryEstimate | None, cfg: PrimeConfig, m: Machine) -> tuple[list[Finding], list[Finding]]:
    """``(problems, warnings)`` of the estimate against this rank's GPU: over the GPU, or a vLLM
    share that cannot hold the engine's weights, is a problem; over ``1 - HEADROOM`` of the GPU
    a warning. Without a GPU here the same is judged against an 80 GiB GPU, as warnings only.
    Nothing for the CPU."""
    if not cfg.model.device.startswith("cuda"):
        return [], []
    if est is None:
        unknown = Finding(
            "memory",
            f"no estimate: the size of model.policy={cfg.model.policy} is unknown",
            "a local model directory (its config.json is read), or a model in the Hugging Face cache",
        )
        return [], [unknown]
    gpu_memory = m.gpu.memory if m.gpu is not None else REFERENCE_GPU
    where = f"{m.gpu.name}'s {gib(gpu_memory)}" if m.gpu is not None else "an 80 GiB GPU (none here to compare with)"
    found, near = [], []
    kv = est.kv_cache(gpu_memory)
    if kv is not None and kv <= 0:
        found.append(
            Finding(
                f"rollout.vllm_gpu_memory_utilization={est.engine_share:g}",
                f"gives vLLM {gib(est.engine_share * gpu_memory)} of {where}, no more than its {est.engine_dtype} "
                f"weights ({gib(est.engine_weights)}): no room for a KV cache",
                "a larger share, or rollout.dtype=bfloat16",
            )
        )
    peak, need = est.peak(gpu_memory), est.ranks_to_fit(gpu_memory)
    more = f"launch over {need} or more ranks (torchrun --nproc_per_node), " if need and need > est.world_size else ""
    fix = more + "or prm.lora=true / model.reference=policy, or a smaller rollout.vllm_gpu_memory_utilization"
    if peak > gpu_memory:
        over = f"estimated {gib(peak)} per GPU at world size {est.world_size}, over {where}"
        found.append(Finding("memory", over, fix))
    elif peak > (1 - HEADROOM) * gpu_memory:
        near.append(Finding("memory", f"estimated {gib(peak)} per GPU leaves under {HEADROOM:.0%} of {where}", fix))
    return (found, near) if m.gpu is not None else ([], found + near)


# ------------------------------------------------------------------------------ data and sandbox
CODE_VERIFIER = "code"
"""The verifier name of code rows (:func:`iprime.verifiers.verifier_for_row`): they run in the sandbox."""


def sandbox_reason() -> str | None:
    """Why the code sandbox cannot run here (``IPRIME_SANDBOX``'s isolation, as the code
    verifier uses it), or ``None`` when it can. Starts one tiny sandbox (a fraction of a second)."""
    try:
        check_isolation_available(None)
    except (SandboxUnavailable, ValueError) as err:
        return str(err)
    return None


def sandbox_findings(verifiers: Mapping[str, int], reason: str | None) -> list[Finding]:
    """Code rows (``verifiers``: rows per verifier name) need the sandbox; ``reason``: why it
    cannot run here (:func:`sandbox_reason`), ``None`` when it can."""
    rows = verifiers.get(CODE_VERIFIER, 0)
    if not rows or reason is None:
        return []
    return [
        Finding(
            "verify (code rows)",
            f"{rows} rows are scored by running code, but the code sandbox cannot run here: {reason}",
            "see the reason above and docs/security.md (IPRIME_SANDBOX selects the isolation)",
        )
    ]


def data_findings(key: str, scan) -> list[Finding]:
    """The data check's verdict on ``key`` (``data.train_path=...``): ``scan`` is an
    :class:`iprime.data_check.DataScan`, or the exception that stopped the reading."""
    if isinstance(scan, Exception):
        fix = "point it at the training data (file, directory or hf:NAME); iprime data check PATH"
        return [Finding(key, str(scan), fix)]
    if not scan.problems:
        return []
    where, fld, what = scan.problems[0]
    return [
        Finding(
            key,
            f"{scan.bad_rows} of {scan.rows} rows are bad (first: {where}, {fld}: {what})",
            "iprime data check PATH lists every bad row",
        )
    ]


# ------------------------------------------------------------------------------ the report
def machine_report(cfg: PrimeConfig, m: Machine, size: ModelSize) -> tuple[Report, MemoryEstimate | None]:
    """Every machine check of a run (no data): the report, and the memory estimate (``None``
    when the model's size is unknown)."""
    report = Report()
    report.problems += device_findings(cfg.model.device, m, bf16=bf16_setting(cfg))
    report.problems += launch_findings(cfg, m)
    report.problems += engine_findings(cfg, m)
    report.problems += world_size_findings(cfg, m.world_size)
    report.problems += model_findings(cfg)
    report.warnings += policy_warnings(cfg, size) + batch_warnings(cfg, m.world_size)
    est = estimate_memory(cfg, size.shape, m.world_size) if size.shape is not None else None
    problems, warnings = memory_findings(est, cfg, m)
    report.problems += problems
    report.warnings += warnings
    return report, est


def data_summary(scan) -> str:
    """``data: 64 rows from PATH; verifiers: arithmetic 64`` (or why the data could not be read)."""
    if isinstance(scan, Exception):
        return "  data: not read (see above)"
    shown = ", ".join(f"{name} {n}" for name, n in scan.verifiers.most_common())
    return f"  data: {scan.rows} rows from {scan.path} ({scan.rows - scan.bad_rows} usable); verifiers: {shown}"


def dry_run_report(
    cfg: PrimeConfig, m: Machine, size: ModelSize, scan, sandbox: str | None, out_dir: Finding | None = None
) -> Report:
    """``iprime train --dry-run``: the machine checks, the data check's verdict (``scan``: a
    :class:`~iprime.data_check.DataScan` or the error that stopped it), the sandbox for code
    rows (``sandbox``: :func:`sandbox_reason`), what ``train.out_dir`` would do (``out_dir``:
    a problem), and a summary: the machine, the data, the memory estimate."""
    report, est = machine_report(cfg, m, size)
    report.problems += data_findings(f"data.train_path={cfg.data.train_path}", scan)
    if not isinstance(scan, Exception):
        report.problems += sandbox_findings(scan.verifiers, sandbox)
    if out_dir is not None:
        report.problems.append(out_dir)
    report.summary.append(f"  machine: {describe_machine(m)}")
    report.summary.append(data_summary(scan))
    if est is not None:
        cuda = cfg.model.device.startswith("cuda")
        report.summary += ["  " + line for line in memory_lines(est, cfg.model.policy, size.source, m.gpu, cuda)]
    else:
        report.summary.append(f"  memory estimate: unknown model size ({size.source})")
    return report


def estimate_block(cfg: PrimeConfig, size: ModelSize) -> list[str]:
    """The memory estimate as ``iprime config show`` prints it after the keys, for a CUDA run
    (``#``-lines, so that the output still reads as ``key = value`` lines): per GPU at world
    size 1 and 8, and the fit on an 80 GiB GPU. Empty for a CPU run or without ``model.policy``."""
    if not cfg.model.device.startswith("cuda") or not cfg.model.policy:
        return []
    if size.shape is None:
        return [f"# memory estimate: unknown size of model.policy={cfg.model.policy} ({size.source})"]
    est = estimate_memory(cfg, size.shape, 1)
    return ["# " + line for line in memory_lines(est, cfg.model.policy, size.source, None)]
