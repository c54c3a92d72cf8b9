"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

Each row is ``{"prompt": str, "response": str}`` or ``{"messages": [...]}`` whose last message
is the assistant's reply. The prompt is rendered through the tokenizer's chat template with
``add_generation_prompt=True`` -- exactly the text a rollout starts from -- and the target is
the response followed by the eos token, so the model learns to stop::

    input_ids = [ chat_template(prompt) | response | eos ]
    labels    = [ -100 ...              | response | eos ]

The loss of a batch is the mean over its response tokens:
``L = -(1 / sum_bt m_bt) * sum_bt m_bt * log p(y_bt | y_<bt)``, with ``m`` the response mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.chat import render_prompt
from ..data.jsonl import JsonlError, read_jsonl
from ..optim import FitResult, fit, lr_factor
from ..progress import ProgressMode, progress_bar

IGNORE_INDEX = -100


@dataclass
class SFTConfig:
    """Hyperparameters of :func:`run_sft`.

    Training length is ``max_steps`` if set, else ``ceil(epochs * len(rows) / batch_size)``.
    The learning rate warms up linearly for ``warmup_steps`` then follows ``schedule``
    (``"cosine"`` to ``min_lr_ratio * lr``, ``"linear"`` to ``min_lr_ratio * lr``, or
    ``"constant"``): :func:`iprime.optim.lr_factor`. The default ``lr`` (1e-5) is the usual one
    for fine-tuning a pretrained LLM; a tiny model trained from scratch wants ~3e-3 (the
    quickstart preset's).

    ``max_length`` caps prompt + response + eos in tokens: a longer example keeps its first
    ``max_length`` tokens (the response loses its tail, and the eos with it) and is counted in
    :func:`run_sft`'s ``truncated``; an example whose prompt alone needs ``max_length`` tokens or
    more is refused with a ``ValueError`` naming its row, since it has nothing left to learn from.
    """

    lr: float = 1e-5
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    max_length: int = 256
    seed: int = 0
    warmup_steps: int = 20
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0 when max_steps is not set, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 1 or self.max_length < 2 or self.warmup_steps < 0 or self.log_every < 1:
            raise ValueError(f"invalid SFTConfig: {self}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'linear' or 'constant', got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def num_steps(self, n_rows: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_rows / self.batch_size))


def load_sft_rows(path: str | Path) -> list[dict]:
    """SFT rows from jsonl: each line has string ``prompt`` and ``response``, or a ``messages``
    list of ``{"role", "content"}`` ending with an assistant message. A bad row raises
    :class:`~iprime.data.jsonl.JsonlError` naming its line."""
    rows = read_jsonl(path)
    # read_jsonl skips blank lines, so recover each row's line number for error messages
    linenos = [i for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    for row, lineno in zip(rows, linenos):
        try:
            split_row(row)
        except ValueError as e:
            raise JsonlError(path, lineno, str(e)) from None
    return rows


def split_row(row: Mapping) -> tuple[list[dict] | str, str]:
    """``(prompt, response)`` of an SFT row: prompt is a string or the list of messages that
    precede the final assistant message. Raises ``ValueError`` on a malformed row."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise ValueError("'messages' must be a list of at least 2 messages")
        for i, m in enumerate(msgs):
            if (
                not isinstance(m, Mapping)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise ValueError(f"messages[{i}] must be an object with string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant":
            raise ValueError(f"the last message must have role 'assistant', got {msgs[-1]['role']!r}")
        return [dict(m) for m in msgs[:-1]], msgs[-1]["content"]
    for key in ("prompt", "response"):
        if key not in row:
            raise ValueError(f"missing field {key!r} (need 'prompt' and 'response', or 'messages')")
        if not isinstance(row[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(row[key]).__name__}")
    return row["prompt"], row["response"]


def encode_sft_example(tokenizer, row: Mapping, max_length: int) -> tuple[list[int], list[int], bool]:
    """``(input_ids, labels, truncated)`` for one row; labels are ``-100`` on prompt tokens.

    Prompt and response are tokenized separately, as at generation time (the model continues
    from the rendered prompt's tokens). Overlong examples lose their tail.
    """
    prompt, response = split_row(row)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; SFT needs one to teach the model to stop")
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    truncated = len(ids) > max_length
    if len(prompt_ids) >= max_length:
        raise ValueError(f"prompt alone is {len(prompt_ids)} tokens, >= max_length={max_length}")
    return ids[:max_length], labels[:max_length], truncated


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: ``input_ids``/``attention_mask``/``labels`` of ``[B, T]``."""
    T = max(len(ids) for ids, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sft_loss(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (``labels != -100``)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # position t predicts token t+1
    logits = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def encode_sft_rows(
    tokenizer, rows: Sequence[Mapping], max_length: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """``([(input_ids, labels)] per row, number of truncated rows)``
    (:func:`encode_sft_example`); a bad row raises ``ValueError`` naming its index."""
    encoded, n_truncated = [], 0
    for i, row in enumerate(rows):
        try:
            ids, labels, truncated = encode_sft_example(tokenizer, row, max_length)
        except ValueError as e:
            raise ValueError(f"row {i}: {e}") from None
        n_truncated += truncated
        encoded.append((ids, labels))
    return encoded, n_truncated


class ShuffledBatches:
    """Endless collated batches (:func:`collate`, on ``device``) of ``batch_size`` examples:
    each epoch a fresh permutation drawn from a generator seeded with ``seed``, a short tail
    joining the next epoch. ``response_tokens`` counts the target tokens (labels after the
    first position that are not ``-100``) of the batches drawn so far."""

    def __init__(self, encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int, device, seed: int):
        self.encoded, self.batch_size, self.pad_id, self.device = encoded, batch_size, pad_id, device
        self.generator = torch.Generator().manual_seed(seed)
        self.response_tokens = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order: list[int] = []
        while True:
            if len(order) < self.batch_size:  # reshuffle each epoch; a short tail joins the next epoch
                order += torch.randperm(len(self.encoded), generator=self.generator).tolist()
            idx, order = order[: self.batch_size], order[self.batch_size :]
            batch = {k: v.to(self.device) for k, v in collate([self.encoded[i] for i in idx], self.pad_id).items()}
            self.response_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            yield batch


def sft_optimizer(model, config: SFTConfig, total: int):
    """AdamW over the trainable parameters, with weight decay on matrices only (no decay on
    biases and norms, the usual AdamW practice), and the warmup-then-``config.schedule``
    learning rate over ``total`` steps (:func:`iprime.optim.lr_factor`): ``(optimizer, scheduler)``."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=config.betas,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, config.warmup_steps, config.schedule, config.min_lr_ratio)
    )
    return optimizer, scheduler


def _fit_sft(
    model,
    optimizer,
    scheduler,
    batches: ShuffledBatches,
    total: int,
    config: SFTConfig,
    log: Callable[[dict], None] | None,
    progress: ProgressMode,
) -> FitResult:
    """``total`` steps of :func:`sft_loss` (:func:`iprime.optim.fit`) in train mode, each
    record to ``log`` and the progress display; the model is left in eval mode."""
    model.train()
    with progress_bar(progress, total, 0, label="SFT") as advance:

        def record(metrics: dict) -> None:
            if log is not None:
                log(metrics)
            advance(metrics["step"], metrics)

        fitted = fit(
            list(model.parameters()),
            optimizer,
            batches,
            lambda batch: sft_loss(model, batch),
            total,
            scheduler=scheduler,
            grad_clip=config.grad_clip,
            log_every=config.log_every,
            log=record,
            count_tokens=lambda batch: int(batch["attention_mask"].sum()),
            name="SFT loss",
        )
    model.eval()
    return fitted


def run_sft(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    config: SFTConfig | None = None,
    *,
    log: Callable[[dict], None] | None = None,
    progress: ProgressMode = "none",
) -> dict:
    """Fine-tune ``model`` in place on ``rows``; returns summary metrics.

    ``log`` (if given) receives ``{"step", "loss", "lr", "tokens_per_s", "elapsed_s"}`` every
    ``config.log_every`` steps and at the last step; ``loss`` is the mean over that window.
    ``progress`` shows the same records (:func:`iprime.progress.progress_bar`, label
    ``SFT``): ``"lines"`` prints ``SFT step 20/100  loss 1.2345  lr 1.0e-05  812 tok/s  elapsed
    0:00:06`` to stdout, ``"bar"`` a rich bar, ``"auto"`` the bar on a terminal and lines
    elsewhere, ``"none"`` (the default) nothing.
    Returned: ``steps``, ``epochs``, ``first_loss``, ``final_loss`` (last window),
    ``train_time_s``, ``examples``, ``response_tokens``, ``truncated`` and the config.
    The model is left in eval mode.
    """
    config = config or SFTConfig()
    if not rows:
        raise ValueError("rows is empty")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded, n_truncated = encode_sft_rows(tokenizer, rows, config.max_length)
    total = config.num_steps(len(encoded))
    batches = ShuffledBatches(encoded, config.batch_size, pad_id, next(model.parameters()).device, config.seed)
    torch.manual_seed(config.seed)  # dropout, if the model has any
    optimizer, scheduler = sft_optimizer(model, config, total)
    fitted = _fit_sft(model, optimizer, scheduler, batches, total, config, log, progress)
    return {
        "steps": total,
        "epochs": total * config.batch_size / len(encoded),
        "first_loss": fitted.losses[0],
        "final_loss": fitted.last_window_loss,
        "train_time_s": fitted.time_s,
        "examples": len(encoded),
        "response_tokens": batches.response_tokens,
        "truncated": n_truncated,
        "config": asdict(config),
    }
