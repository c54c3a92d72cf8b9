"""Keep third-party progress bars out of iprime's output.

Loading or saving a Hugging Face model draws tqdm bars (``Loading weights``, ``Writing model
shards``, hub downloads) on stderr. On a terminal they flicker past; in a log file (``nohup``,
a scheduler) every refresh is kept, and they bury iprime's own one-line-per-step progress.
:func:`silence_third_party_progress` turns them off for the whole process; the ``iprime``
command line calls it before every command.

A user who wants the bars back sets ``HF_HUB_DISABLE_PROGRESS_BARS=0`` (huggingface_hub's
documented switch, which transformers follows too): an explicit setting is never overridden.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ENV_SWITCHES", "silence_third_party_progress"]

# The environment variables the libraries read when they are imported: huggingface_hub (and, via
# it, transformers' own tqdm wrapper) and datasets.
ENV_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


def _wants_bars() -> bool:
    """True when the user explicitly asked for the hub's bars (``HF_HUB_DISABLE_PROGRESS_BARS``
    set to a false value before iprime touched it)."""
    value = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    return value is not None and value.strip().lower() in ("0", "false", "no", "off")


def silence_third_party_progress() -> bool:
    """Turn off the tqdm bars of transformers, huggingface_hub and datasets for this process.

    Sets the libraries' environment switches (read when they are first imported, so
    ``iprime --help`` imports nothing heavy) and, for a library already imported, calls its
    ``disable_progress_bar(s)`` function. Does nothing when the user set
    ``HF_HUB_DISABLE_PROGRESS_BARS=0``. Returns whether the bars are now off."""
    if _wants_bars():
        return False
    for name in ENV_SWITCHES:
        os.environ.setdefault(name, "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    return True
