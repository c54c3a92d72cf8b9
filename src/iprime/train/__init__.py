"""Training loops: supervised fine-tuning and accuracy evaluation (the PRIME trainer is
:mod:`iprime.train.prime`).

Attributes are imported on first use (PEP 562), so importing a light submodule (the command
line's ``iprime.train.export``) does not load the trainer's whole stack.
"""

from iprime._lazy import lazy_getattr

_EXPORTS = {
    "evaluate_accuracy": "evaluate",
    "IGNORE_INDEX": "sft",
    "SFTConfig": "sft",
    "collate": "sft",
    "encode_sft_example": "sft",
    "load_sft_rows": "sft",
    "run_sft": "sft",
    "sft_loss": "sft",
    "split_row": "sft",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
