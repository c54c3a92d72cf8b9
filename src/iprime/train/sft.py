"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

Each row is ``{"prompt": str, "response": str}`` or ``{"messages": [...]}`` whose last message
is the assistant's reply. The prompt is rendered through the tokenizer's chat template with
``add_generation_prompt=True`` -- exactly the text a rollout starts from -- and the target is
the response followed by the eos token, so the model learns to stop::

    input_ids = [ chat_template(prompt) | response | eos ]
    labels    = [ -100 ...              | response | eos ]

The loss of a batch is the mean over its response tokens:
``L = -(1 / sum_bt m_bt) * sum_bt m_bt * log p(y_bt | y_<bt)``, with ``m`` the response mask.

The same code runs in one process and under ``torchrun`` (:class:`SFTRun`): with ``W`` ranks
each global batch of ``batch_size`` rows (the same seeded order at any ``W``) is split into ``W``
contiguous shares, rank ``r`` computes ``W / N * sum_{its rows} m * nll`` with ``N`` the global
batch's response-token count, and FSDP's gradient average over the ranks makes the 1-process
gradient. Checkpoints (model, optimizer, schedule, data position, RNG, losses) let
``iprime sft --resume`` continue a run to the result it would have reached uninterrupted.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.chat import render_prompt
from ..data.jsonl import JsonlError, read_jsonl
from ..optim import FitResult, fit, lr_factor
from ..progress import ProgressMode, progress_bar
from . import distributed as D
from .checkpoint import load_run_checkpoint, rng_state, save_run_checkpoint, set_rng_state
from .logging import MetricsLogger

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

    ``log_every``: a record (and progress line) every this many steps. ``save_every``: a
    checkpoint every this many steps and at the end (:class:`SFTRun`, which needs an ``out_dir``);
    0, the default, writes none. Neither changes the numbers: a run resumes with other values.
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
    save_every: int = 0  # a checkpoint every this many steps and at the end (0: none); needs an out_dir

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0 when max_steps is not set, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 1 or self.max_length < 2 or self.warmup_steps < 0 or self.log_every < 1:
            raise ValueError(f"invalid SFTConfig: {self}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0 (0: no checkpoints), got {self.save_every}")
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


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over response tokens: ``sum_bt m_bt * -log p(y_bt | y_<bt)``
    with ``m = labels != -100``; ``logits [B, L, V]`` (position t predicts token t+1), ``labels [B, L]``.
    Logits in float32."""
    logits = logits[:, :-1].float()  # position t predicts token t+1
    targets = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def sft_loss(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens (``labels != -100``) of a
    :func:`collate` batch: :func:`response_nll` over their count (bit for bit PyTorch's
    ``cross_entropy`` mean)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return response_nll(logits, batch["labels"]) / int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


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


@dataclass
class SFTData:
    """The encoded rows of a run (:func:`prepare_sft_data`): ``encoded`` ``[(input_ids, labels)]``,
    ``truncated`` (rows that lost their tail to ``max_length``) and the ``pad_id`` batches pad with."""

    encoded: list[tuple[list[int], list[int]]]
    truncated: int
    pad_id: int

    def digest(self) -> str:
        """SHA-256 of every row's ids and labels, in order: a checkpoint resumes only on the same data."""
        h = hashlib.sha256()
        for ids, labels in self.encoded:
            h.update(np.asarray(ids + [-1] + labels, dtype=np.int64).tobytes())
        return h.hexdigest()


def prepare_sft_data(tokenizer, rows: Sequence[Mapping], max_length: int) -> SFTData:
    """Every row encoded and checked (:func:`encode_sft_rows`): run it before loading the model,
    so a bad row costs seconds, not a model load. Empty ``rows`` or a bad row: ``ValueError``."""
    if not rows:
        raise ValueError("rows is empty")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded, n_truncated = encode_sft_rows(tokenizer, rows, max_length)
    return SFTData(encoded, n_truncated, pad_id)


def check_world_size(config: SFTConfig, world_size: int) -> None:
    """Under torchrun every rank takes an equal share of each global batch: ``batch_size`` must be
    a multiple of the world size (a ``ValueError`` saying so)."""
    if config.batch_size % world_size:
        nearest = world_size * max(1, config.batch_size // world_size)
        raise ValueError(
            f"batch_size={config.batch_size} must be a multiple of the world size {world_size}: each rank "
            f"takes an equal share of every global batch (e.g. batch_size={nearest})"
        )


@dataclass
class SFTBatch:
    """This rank's share of one global batch: ``tensors`` (:func:`collate` of its rows, ``[b, T]``),
    and of the whole global batch its ``response_tokens`` (the loss's normaliser ``N``) and
    ``tokens`` (prompt + response tokens, for throughput)."""

    tensors: dict[str, torch.Tensor]
    response_tokens: int
    tokens: int


class ShuffledBatches:
    """Endless global batches of ``batch_size`` examples, each epoch a fresh permutation drawn
    from a generator seeded with ``seed``, a short tail joining the next epoch; yields this
    rank's share (:class:`SFTBatch`: the ``batch_size / world_size`` contiguous examples at
    ``rank``, collated on ``device``). The order of global batches is the same at any world
    size. ``response_tokens`` counts the target tokens (labels after the first position that
    are not ``-100``) of the global batches drawn so far. :meth:`state_dict` is the position."""

    def __init__(
        self,
        encoded: Sequence[tuple[list[int], list[int]]],
        batch_size: int,
        pad_id: int,
        device,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not a multiple of the world size {world_size}")
        self.encoded, self.batch_size, self.pad_id, self.device = encoded, batch_size, pad_id, device
        share = batch_size // world_size
        self.share = slice(rank * share, (rank + 1) * share)
        # each row's target tokens: its labels after the first position that are not -100
        self.targets = [len(labels) - 1 - labels[1:].count(IGNORE_INDEX) for _, labels in encoded]
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []  # the rest of the current epoch's permutation
        self.response_tokens = 0

    def __iter__(self) -> Iterator[SFTBatch]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> SFTBatch:
        if len(self.order) < self.batch_size:  # reshuffle each epoch; a short tail joins the next epoch
            self.order += torch.randperm(len(self.encoded), generator=self.generator).tolist()
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        tensors = collate([self.encoded[i] for i in idx[self.share]], self.pad_id)
        n = sum(self.targets[i] for i in idx)
        self.response_tokens += n
        tokens = sum(len(self.encoded[i][0]) for i in idx)
        return SFTBatch({k: v.to(self.device) for k, v in tensors.items()}, n, tokens)

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream: the generator, the rest of this epoch's order, the count."""
        return {
            "generator": self.generator.get_state(),
            "order": list(self.order),
            "response_tokens": self.response_tokens,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.response_tokens = list(state["order"]), int(state["response_tokens"])


def sft_loss_share(root: torch.nn.Module, batch: SFTBatch, world_size: int) -> torch.Tensor:
    """This rank's part of the global batch's loss, to backpropagate:
    ``W * (1 / N) * sum_{bt in this share} m_bt * -log p(y_bt | y_<bt)`` with ``N`` the global
    batch's response tokens. FSDP averages gradients over the ``W`` ranks, so the gradient is the
    1-process one; the parts sum to ``W`` times the global mean (:func:`sft_loss`). ``root``:
    :class:`~iprime.train.distributed.LogitsModule`. In one process (``W = 1``) this is
    :func:`sft_loss`, bit for bit."""
    t = batch.tensors
    return response_nll(root(t["input_ids"], t["attention_mask"]), t["labels"]) / batch.response_tokens * world_size


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


RUN_KEYS = tuple(f.name for f in fields(SFTConfig) if f.name not in ("log_every", "save_every"))
"""The :class:`SFTConfig` fields a resumed run must share with its checkpoint (the others change
only what is logged or saved)."""


class SFTRun:
    """One fine-tuning run of ``model`` on ``data``, in one process or under torchrun.

    Under torchrun (``WORLD_SIZE`` > 1; ``dist``: the process group's
    :class:`~iprime.train.distributed.DistContext`, joined here if not given) the model is
    FSDP2-sharded as the trainer shards the policy (:func:`~iprime.train.distributed.shard_model`,
    with a :class:`~iprime.train.distributed.LogitsModule` root), every rank draws the same global
    batches and trains on its contiguous share (:class:`ShuffledBatches`), its loss part is
    normalised by the global batch's response tokens (:func:`sft_loss_share`), the gradient is
    clipped on its global norm, and the logged loss is all-reduced: the same loss curve as one
    process on the same global batches, to float noise. Rank 0 alone logs and shows progress.

    ``out_dir`` (rank 0 writes ``metrics.jsonl``, one record per ``log_every`` steps) holds the
    checkpoints: every ``config.save_every`` steps and at the end (the trainer's machinery,
    :mod:`iprime.train.checkpoint`: ``state.pt`` in one process, sharded DCP under torchrun):
    model, optimizer, schedule, data position, RNG and the losses so far. :meth:`train` with
    ``resume`` continues from the newest one to the same result as an uninterrupted run
    (bit for bit in one process)."""

    def __init__(
        self,
        model,
        data: SFTData,
        config: SFTConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        dist: D.DistContext | None = None,
        model_source: str | None = None,
    ) -> None:
        self.config = config = config or SFTConfig()
        device = next(model.parameters()).device
        self.dist = dist if dist is not None else D.init_distributed(device.type)[0]
        check_world_size(config, self.dist.world_size)
        if config.save_every and out_dir is None:
            raise ValueError(f"save_every={config.save_every} needs an out_dir to write the checkpoints to")
        self.model, self.data, self.model_source = model, data, model_source
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.total = config.num_steps(len(data.encoded))
        where = {"rank": self.dist.rank, "world_size": self.dist.world_size}
        self.batches = ShuffledBatches(data.encoded, config.batch_size, data.pad_id, device, config.seed, **where)
        torch.manual_seed(config.seed)  # dropout, if the model has any
        sharded = self.dist.enabled
        self.root = D.shard_model(model, device, D.LogitsModule) if sharded else D.LogitsModule(model)
        self.optimizer, self.scheduler = sft_optimizer(model, config, self.total)  # after sharding: DTensor params
        self.losses: list[float] = []  # every step's loss so far (a resumed run's include the checkpoint's)
        self.checkpoint_format = D.checkpoint_format("auto", self.dist)
        self._data_sha256: str | None = None  # data.digest(), computed at the first save or resume
        self.saved_step: int | None = None  # the step of the newest checkpoint written or resumed

    @property
    def step(self) -> int:
        return len(self.losses)

    # ------------------------------------------------------------------ the loop
    def train(
        self, *, resume: bool = False, log: Callable[[dict], None] | None = None, progress: ProgressMode = "none"
    ) -> dict:
        """Run to the last step (from the newest checkpoint with ``resume``: ``FileNotFoundError``
        when there is none); returns :func:`run_sft`'s summary. The model is left in eval mode."""
        if resume and not self.resume():
            raise FileNotFoundError(f"--resume: no checkpoint in {self._checkpoints()}")
        logger = MetricsLogger(self.out_dir, tensorboard=False, start_step=self.step) if self._writes_logs() else None
        try:
            fitted = self._fit(logger, log, progress)
        finally:
            if logger is not None:
                logger.close()
        if self.config.save_every and self.saved_step != self.step:
            self.save()  # the last step, unless saved (or resumed) there
        return self._summary(fitted)

    def _fit(self, logger: MetricsLogger | None, log, progress: ProgressMode) -> FitResult:
        """The steps left of ``total`` (:func:`iprime.optim.fit`) in train mode; each record to
        ``logger``, ``log`` and the progress display on rank 0. Leaves the model in eval mode."""
        main, c = self.dist.is_main, self.config
        self.model.train()
        with progress_bar(progress if main else "none", self.total, self.step, label="SFT") as advance:

            def record(metrics: dict) -> None:
                for sink in (logger.log if logger else None, log if main else None):
                    if sink is not None:
                        sink(metrics)
                advance(metrics["step"], metrics)

            fitted = fit(
                list(self.model.parameters()),
                self.optimizer,
                self.batches,
                lambda batch: sft_loss_share(self.root, batch, self.dist.world_size),
                self.total,
                scheduler=self.scheduler,
                grad_clip=c.grad_clip,
                log_every=c.log_every,
                log=record,
                count_tokens=lambda batch: batch.tokens,
                name="SFT loss",
                done=self.losses,
                global_loss=self._global_loss,
                after_step=self._after_step,
            )
        self.model.eval()
        self.losses = fitted.losses
        return fitted

    def _global_loss(self, part: torch.Tensor) -> torch.Tensor:
        """The global batch's mean loss from every rank's part (:func:`sft_loss_share`)."""
        if not self.dist.enabled:
            return part
        return D.all_reduce(part.clone()) / self.dist.world_size

    def _after_step(self, step: int, losses: list[float]) -> None:
        self.losses = losses
        if self.config.save_every and step % self.config.save_every == 0:
            self.save()

    def _summary(self, fitted: FitResult) -> dict:
        n = len(self.data.encoded)
        return {
            "steps": self.total,
            "epochs": self.total * self.config.batch_size / n,
            "first_loss": self.losses[0],
            "final_loss": fitted.last_window_loss,
            "train_time_s": fitted.time_s,
            "examples": n,
            "response_tokens": self.batches.response_tokens,
            "truncated": self.data.truncated,
            "config": asdict(self.config),
        }

    def _writes_logs(self) -> bool:
        return self.out_dir is not None and self.dist.is_main

    def _checkpoints(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    # ------------------------------------------------------------------ checkpoints, the model
    def save(self) -> Path:
        """Checkpoint everything the next step needs (collective under torchrun)."""
        meta = {
            "run": "sft",
            "step": self.step,
            "losses": list(self.losses),
            "scheduler": self.scheduler.state_dict(),
            "data": self.batches.state_dict(),
            "rng": rng_state(),
            "sft_config": asdict(self.config),
            "examples": len(self.data.encoded),
            "data_sha256": self._digest(),
            "world_size": self.dist.world_size,
            "model_source": self.model_source,
        }
        parts = ({"policy": self.model}, {"policy": self.optimizer})
        path = save_run_checkpoint(self.out_dir, self.step, self.checkpoint_format, *parts, meta, self.dist)
        self.saved_step = self.step
        return path

    def resume(self) -> bool:
        """Load the newest good checkpoint in ``out_dir`` (any world size for DCP); False when
        there is none. One of another run (other data, or settings other than ``log_every`` /
        ``save_every``) is a ``ValueError`` naming what differs."""
        if self.out_dir is None:
            return False
        meta = load_run_checkpoint(self.out_dir, {"policy": self.model}, {"policy": self.optimizer}, self.dist)
        if meta is None:
            return False
        self._check_same_run(meta)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.batches.load_state_dict(meta["data"])
        set_rng_state(meta["rng"])
        self.losses = [float(x) for x in meta["losses"]]
        self.saved_step = self.step
        return True

    def _check_same_run(self, meta: Mapping[str, Any]) -> None:
        where = self._checkpoints()
        if meta.get("run") != "sft":
            raise ValueError(f"{where}: not the checkpoints of an SFT run (iprime train writes these?)")
        saved, now = meta["sft_config"], asdict(self.config)
        changed = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in RUN_KEYS if saved.get(k) != now[k]]
        if changed:
            raise ValueError(
                f"{where}: the checkpoint was written with other settings ({'; '.join(changed)}); "
                "resume with the same ones, or start a new run in another directory"
            )
        if meta["examples"] != len(self.data.encoded) or meta["data_sha256"] != self._digest():
            raise ValueError(
                f"{where}: the checkpoint was written on other data ({meta['examples']} rows, now "
                f"{len(self.data.encoded)}, or the same count with other text): resume on the same data"
            )

    def _digest(self) -> str:
        if self._data_sha256 is None:
            self._data_sha256 = self.data.digest()
        return self._data_sha256

    def save_pretrained(self, directory: str | Path, tokenizer) -> Path:
        """The model (and ``tokenizer``) as a Hugging Face directory. Collective under torchrun:
        every rank gathers the full tensors one at a time, rank 0 keeps and writes them."""
        root = self.root if self.dist.enabled else None
        state = D.full_state_dict(self.model, root, every_rank=False)
        if self.dist.is_main:
            self.model.save_pretrained(directory, state_dict=state)
            tokenizer.save_pretrained(directory)
        D.barrier(self.dist)
        return Path(directory)


def run_sft(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    config: SFTConfig | None = None,
    *,
    log: Callable[[dict], None] | None = None,
    progress: ProgressMode = "none",
) -> dict:
    """Fine-tune ``model`` in place on ``rows``; returns summary metrics (:class:`SFTRun` without
    an ``out_dir``: no files; under torchrun the model ends sharded, use :class:`SFTRun` to save it).

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
    data = prepare_sft_data(tokenizer, rows, config.max_length)
    return SFTRun(model, data, config).train(log=log, progress=progress)
