"""Load a causal LM and its tokenizer (local directory or hub id), with checks.

The checks are the ones the rest of iprime relies on: the tokenizer must have an EOS
token (rollouts stop on it), a pad token (batches are padded with it) and a chat template
(prompts are rendered with it). Failing early with a message naming what is missing beats
a shape error deep inside a training step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft). `alpha / r` scales the adapter update."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoraSettings.r must be > 0, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSettings.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoraSettings.target_modules must name at least one module")


def _check_local_path(path_or_id: str | Path) -> str:
    """Return the string form; raise FileNotFoundError if it looks local but does not exist.

    "Looks local": a Path object, starts with / . ~, or has more than one "/" (hub ids are
    "name" or "org/name"). A missing local path would otherwise turn into a confusing hub
    download error (or a network timeout offline).
    """
    s = str(path_or_id)
    looks_local = isinstance(path_or_id, Path) or s.startswith(("/", ".", "~")) or s.count("/") > 1
    if looks_local and not Path(s).expanduser().exists():
        raise FileNotFoundError(f"model/tokenizer path does not exist: {s}")
    return str(Path(s).expanduser()) if looks_local else s


def load_tokenizer(path_or_id: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer with AutoTokenizer and check it is usable for chat RL.

    Raises ValueError if it has no EOS token or no chat template. If it has an EOS token but
    no pad token, the pad token is set to the EOS token (the standard fix; padded positions
    are always masked out, so the shared id is harmless). Padding side is left alone: the
    generator pads prompts on the left itself.
    """
    source = _check_local_path(path_or_id)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at {source!r} has no eos token; rollouts need one to stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer at {source!r} has no chat template; prompts are rendered with it")
    return tokenizer


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """ "float32" | "bfloat16" | "float16" | torch.dtype -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return _DTYPES[dtype]


def load_model(
    path_or_id: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """Load a causal LM (AutoModelForCausalLM) onto `device` in `dtype`.

    lora: wrap the model in a peft LoRA adapter; only adapter weights are then trainable.
    gradient_checkpointing: recompute activations in backward (saves memory); the KV cache
    is switched off in the config because the two do not mix during training. The
    generator passes `use_cache=True` explicitly, so rollouts still use the cache.
    """
    source = _check_local_path(path_or_id)
    torch_dtype = resolve_dtype(dtype)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    model.to(device)

    if gradient_checkpointing:
        model.config.use_cache = False
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without hooks.
        # transformers >= 5.x renamed the method; the old name still works but warns.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    if lora is not None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:  # optional dependency: pip install iprime[lora]
            raise ImportError("LoRA needs peft: pip install 'iprime[lora]'") from e
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model
