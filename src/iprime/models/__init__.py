"""Models: loading (with LoRA / checkpointing), a tiny local Qwen2 for tests, chunked log-probs."""

from iprime.models.loading import LoraSettings, load_model, load_tokenizer, resolve_dtype
from iprime.models.logprobs import position_ids_from_mask, response_logprobs
from iprime.models.tiny import CHAT_TEMPLATE, default_corpus, make_tiny_model, train_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "LoraSettings",
    "default_corpus",
    "load_model",
    "load_tokenizer",
    "make_tiny_model",
    "position_ids_from_mask",
    "resolve_dtype",
    "response_logprobs",
    "train_tokenizer",
]
