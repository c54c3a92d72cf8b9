"""Offline implicit-PRM training from outcome-labelled responses.

Rows: ``{"prompt", "response", "label"}`` with ``label`` in [0, 1] (1 = correct); an optional
``prompt_id`` groups responses of the same prompt (default: the prompt text). With sequence
score ``s = sum_t (log pi_phi(y_t|.) - log pi_ref(y_t|.))`` over the response tokens (and EOS):

- ``loss="ce"``:  ``mean BCE(sigmoid(beta * s), label)`` over a batch of rows
  (:func:`iprime.algo.prm_ce_loss`), the implicit PRM's outcome objective;
- ``loss="dpo"``: ``mean -log sigmoid(beta * (s_w - s_l))`` over pairs (winner, loser) of the
  same prompt with ``label_w > label_l`` (:func:`iprime.algo.prm_dpo_loss` on groups of 2),
  at most ``max_pairs_per_prompt`` pairs per prompt.

Only the PRM is trained; the reference's log-probs are computed without gradients. The
result is an ordinary Hugging Face model directory (``save_pretrained``), loadable with
:func:`iprime.models.load_model` and usable by :class:`iprime.prm.ImplicitPRM`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from iprime.algo import prm_ce_loss, prm_dpo_loss
from iprime.data.jsonl import JsonlError, read_jsonl
from iprime.models import response_logprobs
from iprime.optim import fit

from .metadata import DEFAULT_BETA
from .scoring import EncodedResponse, collate_responses, encode_response

__all__ = ["OfflinePRMConfig", "build_pairs", "evaluate_prm_loss", "load_labelled_rows", "train_prm_offline"]


@dataclass
class OfflinePRMConfig:
    """beta: reward scale. loss: ``ce`` | ``dpo``. batch_size: rows (ce) or pairs (dpo) per
    step. max_response_tokens: longer responses are cut (and lose their EOS)."""

    beta: float = DEFAULT_BETA
    loss: str = "ce"
    lr: float = 1e-5
    epochs: float = 1.0
    batch_size: int = 8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_pairs_per_prompt: int = 16
    max_response_tokens: int | None = 2048
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.loss not in ("ce", "dpo"):
            raise ValueError(f"loss must be 'ce' or 'dpo', got {self.loss!r}")
        if self.beta <= 0 or self.lr <= 0 or self.epochs <= 0:
            raise ValueError(f"beta, lr and epochs must be > 0, got {self.beta}, {self.lr}, {self.epochs}")
        if self.batch_size < 1 or self.max_pairs_per_prompt < 1 or self.log_every < 1:
            raise ValueError("batch_size, max_pairs_per_prompt and log_every must be >= 1")


def load_labelled_rows(path) -> list[dict]:
    """Rows of a jsonl with string ``prompt``/``response`` and a numeric ``label`` in [0, 1]
    (booleans allowed); errors name the line."""
    rows = read_jsonl(path, required=("prompt", "response"))
    for lineno, row in enumerate(rows, 1):
        label = row.get("label")
        if isinstance(label, bool):
            row["label"] = float(label)
        elif not isinstance(label, (int, float)) or not 0.0 <= float(label) <= 1.0:
            raise JsonlError(path, lineno, f"'label' must be a number in [0, 1] or a boolean, got {label!r}")
        else:
            row["label"] = float(label)
    return rows


def build_pairs(rows: Sequence[Mapping], max_pairs_per_prompt: int, rng: random.Random) -> list[tuple[int, int]]:
    """``(winner, loser)`` row indices with the same prompt (``prompt_id`` or the prompt text)
    and ``label_winner > label_loser``; a random subset of at most ``max_pairs_per_prompt``
    per prompt."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get("prompt_id", r["prompt"])), []).append(i)
    pairs = []
    for idx in groups.values():
        cand = [(i, j) for i, j in itertools.permutations(idx, 2) if rows[i]["label"] > rows[j]["label"]]
        rng.shuffle(cand)
        pairs += cand[:max_pairs_per_prompt]
    return pairs


def _batch_loss(
    prm, ref, batch: Sequence[EncodedResponse], labels: torch.Tensor, pad_id: int, config: OfflinePRMConfig
) -> torch.Tensor:
    device = next(prm.parameters()).device
    ids, attn, mask = collate_responses(batch, pad_id)
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    T = mask.shape[1]
    prm_logp = response_logprobs(prm, ids, attn, T)
    with torch.no_grad():
        ref_logp = response_logprobs(ref, ids, attn, T)
    labels = labels.to(device)
    if config.loss == "ce":
        return prm_ce_loss(prm_logp, ref_logp, mask, labels, config.beta)
    return prm_dpo_loss(prm_logp, ref_logp, mask, labels, config.beta, group_size=2)


def _encode_labelled(tokenizer, rows: Sequence[Mapping], config: OfflinePRMConfig):
    """The rows' responses encoded after their prompts, and their 0/1 labels."""
    encoded = [
        encode_response(
            tokenizer,
            r["prompt"],
            r["response"],
            ended=bool(r.get("ended", True)),
            max_response_tokens=config.max_response_tokens,
        )
        for r in rows
    ]
    return encoded, [float(r["label"]) for r in rows]


@torch.no_grad()
def evaluate_prm_loss(prm, ref, tokenizer, rows: Sequence[Mapping], config: OfflinePRMConfig | None = None) -> float:
    """The training objective of ``config.loss`` over all ``rows`` (CE: mean over rows; DPO:
    mean over every pair, no subsampling), without updating anything: a validation loss."""
    config = config or OfflinePRMConfig()
    encoded, labels = _encode_labelled(tokenizer, rows, config)
    if config.loss == "ce":
        units = [[i] for i in range(len(rows))]
    else:
        units = [list(p) for p in build_pairs(rows, len(rows) ** 2, random.Random(0))]
        if not units:
            raise ValueError("dpo needs at least one prompt with a better and a worse response; found none")
    was_training = prm.training
    prm.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(units), config.batch_size):
            chunk = units[start : start + config.batch_size]
            batch = [encoded[i] for u in chunk for i in u]
            y = torch.tensor([labels[i] for u in chunk for i in u])
            total += float(_batch_loss(prm, ref, batch, y, int(tokenizer.pad_token_id), config)) * len(chunk)
            count += len(chunk)
    finally:
        prm.train(was_training)
    return total / count


def train_prm_offline(
    prm,
    ref,
    tokenizer,
    rows: Sequence[Mapping],
    config: OfflinePRMConfig | None = None,
    *,
    log: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``prm`` in place (AdamW, the loop of :func:`iprime.optim.fit`); returns ``{"steps",
    "losses", "first_loss", "final_loss", "examples", "train_time_s", "config"}``. ``losses``
    holds every step's loss. ``log`` (if given) receives ``{"step", "loss", "elapsed_s"}`` every
    ``config.log_every`` steps and at the last, ``loss`` being the mean since the previous
    record. The PRM is left in eval mode; ``ref`` is never updated."""
    config = config or OfflinePRMConfig()
    if not rows:
        raise ValueError("no labelled rows")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    encoded, labels = _encode_labelled(tokenizer, rows, config)
    if config.loss == "ce":
        units: list = list(range(len(rows)))
    else:
        units = build_pairs(rows, config.max_pairs_per_prompt, rng)
        if not units:
            raise ValueError("dpo needs at least one prompt with a better and a worse response; found none")
    steps_per_epoch = math.ceil(len(units) / config.batch_size)
    total = max(1, math.ceil(config.epochs * steps_per_epoch))

    pad_id = int(tokenizer.pad_token_id)
    ref.eval()
    ref.requires_grad_(False)
    prm.train()
    params = [p for p in prm.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "the PRM has no trainable parameters (requires_grad is False on all of them); "
            "a PRM copied from a frozen reference needs prm.requires_grad_(True)"
        )
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def batches():
        order: list = []
        while True:
            if len(order) < config.batch_size:  # refill with a fresh shuffle (epochs may be fractional)
                fresh = list(units)
                rng.shuffle(fresh)
                order += fresh
            chunk, order = order[: config.batch_size], order[config.batch_size :]
            if config.loss == "ce":
                yield [encoded[i] for i in chunk], torch.tensor([labels[i] for i in chunk])
            else:  # rows [w0, l0, w1, l1, ...]: groups of 2, winner first
                yield (
                    [encoded[i] for pair in chunk for i in pair],
                    torch.tensor([labels[i] for pair in chunk for i in pair]),
                )

    fitted = fit(
        params,
        opt,
        batches(),
        lambda b: _batch_loss(prm, ref, b[0], b[1], pad_id, config),
        total,
        grad_clip=config.grad_clip,
        log_every=config.log_every,
        log=log,
        name="PRM loss",
    )
    prm.eval()
    return {
        "steps": total,
        "losses": fitted.losses,
        "first_loss": fitted.losses[0],
        "final_loss": fitted.losses[-1],
        "examples": len(units),
        "train_time_s": fitted.time_s,
        "config": asdict(config),
    }
