"""Training loops: supervised fine-tuning and accuracy evaluation."""

from .evaluate import evaluate_accuracy
from .sft import (
    IGNORE_INDEX,
    SFTConfig,
    collate,
    encode_sft_example,
    load_sft_rows,
    run_sft,
    sft_loss,
    split_row,
)

__all__ = [
    "IGNORE_INDEX",
    "SFTConfig",
    "collate",
    "encode_sft_example",
    "evaluate_accuracy",
    "load_sft_rows",
    "run_sft",
    "sft_loss",
    "split_row",
]
