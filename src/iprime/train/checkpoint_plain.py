"""What a checkpoint file may hold: tensors and plain Python data, nothing that runs code.

Files are read with ``torch.load(weights_only=True)`` (:func:`load_torch_file`): tensors and
plain Python data (dicts, lists, tuples, str, numbers, None), nothing that runs code when
unpickled. On save every value is converted to plain data (:func:`to_plain`): the rollout buffer
(:class:`~iprime.rollout.types.RolloutBatch`) becomes a tagged dict of its fields, numpy arrays
tensors; a value of any other type is refused at save time, naming its key. :func:`from_plain`
rebuilds them on load. No ``add_safe_globals`` is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iprime.rollout.types import RolloutBatch
from iprime.train.checkpoint_store import CheckpointError

_TAG = "__iprime_type__"


def rollout_batch_to_state(batch: RolloutBatch) -> dict[str, Any]:
    """A :class:`~iprime.rollout.types.RolloutBatch` as a dict of tensors, lists and ints (its
    public fields); :func:`rollout_batch_from_state` rebuilds it."""
    return {
        "prompt_ids": batch.prompt_ids,
        "prompt_mask": batch.prompt_mask,
        "response_ids": batch.response_ids,
        "response_mask": batch.response_mask,
        "sampling_logprobs": batch.sampling_logprobs,
        "truncated": batch.truncated,
        "prompt_index": batch.prompt_index,
        "texts": list(batch.texts),
        "prompt_texts": list(batch.prompt_texts),
        "pad_id": int(batch.pad_id),
        "tensors": dict(batch.tensors),
        "meta": {k: list(v) for k, v in batch.meta.items()},
    }


def rollout_batch_from_state(state: dict[str, Any]) -> RolloutBatch:
    fields = dict(state)
    fields["tensors"], fields["meta"] = dict(fields.get("tensors", {})), dict(fields.get("meta", {}))
    return RolloutBatch(**fields)


_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


def to_plain(obj: Any, where: str = "state") -> Any:
    """``obj`` with every value made plain data for ``torch.load(weights_only=True)``: tensors,
    containers (dict, list, tuple) and scalars stay; a ``RolloutBatch`` becomes a tagged dict, a
    numpy array a tagged tensor, a numpy scalar a Python number, a ``Path`` a string. Any other
    type is a ``TypeError`` naming its key (``where``), raised before anything is written."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN_SCALARS):
        return obj
    if isinstance(obj, dict):
        if _TAG in obj:
            raise TypeError(f"{where}: a dict key may not be {_TAG!r} (reserved by the checkpoint format)")
        return _same_mapping(obj, {k: to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return {_TAG: "ndarray_list", "data": to_plain(obj.tolist(), where)}
        return {_TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(obj)).clone()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, RolloutBatch):
        return {_TAG: "RolloutBatch", "state": to_plain(rollout_batch_to_state(obj), where)}
    raise TypeError(
        f"{where}: cannot checkpoint a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold "
        "tensors and plain data only (convert it to a dict of tensors, lists and numbers)"
    )


def _same_mapping(original: dict, items: dict) -> dict:
    """``items`` as a plain dict, or as an ``OrderedDict`` keeping ``_metadata`` (the module
    versions ``load_state_dict`` reads) when ``original`` is a state dict."""
    if not isinstance(original, OrderedDict):
        return items
    out = OrderedDict(items)
    metadata = getattr(original, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())  # type: ignore[attr-defined]
    return out


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`: tagged dicts become ``RolloutBatch`` / numpy arrays again."""
    if isinstance(obj, dict):
        tag = obj.get(_TAG)
        if tag == "RolloutBatch":
            return rollout_batch_from_state(from_plain(obj["state"]))
        if tag == "ndarray":
            return obj["data"].numpy()
        if tag == "ndarray_list":
            return np.array(from_plain(obj["data"]), dtype=object)
        return _same_mapping(obj, {k: from_plain(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


def load_torch_file(file: str | Path) -> Any:
    """``torch.load(file, weights_only=True)`` then :func:`from_plain`; errors name the file."""
    file = Path(file)
    try:
        size = file.stat().st_size
    except OSError as err:
        raise CheckpointError(f"{file}: cannot be read ({err})") from None
    if size == 0:
        raise CheckpointError(f"{file}: empty file (0 bytes): the save that wrote it was cut short")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises, name the file
        if "Weights only load failed" in str(err):
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else "")
            raise CheckpointError(
                f"{file}: refused: it holds objects other than tensors and plain data, which could run "
                f"code when loaded ({detail})"
            ) from None
        raise CheckpointError(f"{file}: corrupt or unreadable ({type(err).__name__}: {err})") from None
    return from_plain(state)
