"""Metrics sinks: JSON lines always, TensorBoard and wandb when asked for.

``out_dir/metrics.jsonl`` holds one JSON object per step, ``out_dir/samples.jsonl`` one per
logged sample; both are cut back to the checkpoint's step on resume, and TensorBoard's events of
later steps are purged, so a resumed run shows every step once."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class MetricsWarning(UserWarning):
    """A damaged line of ``metrics.jsonl`` was dropped."""


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """The record of one ``metrics.jsonl`` line, or ``None`` when it is not a JSON object with an
    integer ``step``."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step", 0)
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    record["step"] = step
    return record


def _wandb_run_id(out_dir: Path, resume: bool) -> str:
    """The wandb run id of the run in ``out_dir``: on resume the one stored in
    ``out_dir/wandb_run_id`` (if any), else a new random one, which is stored there."""
    path = out_dir / "wandb_run_id"
    if resume and path.is_file() and (stored := path.read_text().strip()):
        return stored
    run_id = secrets.token_hex(4)  # 8 characters of [0-9a-f], valid as a wandb id
    path.write_text(run_id + "\n")
    return run_id


def _init_wandb(out_dir: Path, config: dict, *, resume: bool, **settings: Any):
    """``wandb.init`` for the run in ``out_dir``, continuing the same wandb run on resume.
    ``settings``: ``project``, ``entity``, ``name``, ``tags``."""
    try:
        import wandb as wandb_lib
    except ImportError as err:
        raise ImportError("train.wandb=true but wandb is not installed: pip install wandb") from err
    run_id = _wandb_run_id(out_dir, resume)
    return wandb_lib.init(dir=str(out_dir), config=config, id=run_id, resume="allow", **settings)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth of lists and dicts) replaced by
    ``None``: ``json.dumps`` would write ``NaN``, which is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _as_text(value: Any) -> str:
    """A prompt (a string, or a list of chat messages) or a reference as plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in value)
    return json.dumps(value)


def _lowest_tokens(sample: dict, k: int = 5) -> list[tuple[int, str, float]]:
    """The ``k`` most negative PRM token rewards of a sample as ``(position, token, reward)``,
    from ``lowest_tokens`` (as given) or else the negative ones of ``token_rewards``."""
    if sample.get("lowest_tokens"):
        return [(int(p), str(t), float(r)) for p, t, r in sample["lowest_tokens"]][:k]
    rewards = enumerate(sample.get("token_rewards") or [])
    negative = [(i, str(t), float(r)) for i, (t, r) in rewards if r is not None and r < 0]
    return sorted(negative, key=lambda x: x[2])[:k]


def _code_block(text: str) -> str:
    """``text`` as a fenced Markdown block whose fence is longer than any backtick run inside."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def samples_markdown(samples: list[dict]) -> str:
    """TensorBoard text (Markdown) of sample rows: per sample its group, score and the
    verifier's reason, then the prompt, the reference, the response and the PRM's most negative
    tokens. Missing keys are left out."""
    blocks = []
    for i, s in enumerate(samples):
        score = s.get("score")
        head = f"**group {s.get('group', '?')} · sample {i} · score {score if score is not None else '?'}**"
        if s.get("reason"):
            head += f" · {s['reason']}"
        parts = [head]
        for key in ("prompt", "reference", "response"):
            if key in s and s[key] is not None:
                parts.append(f"{key}:\n\n{_code_block(_as_text(s[key]))}")
        if lowest := _lowest_tokens(s):
            parts.append("most negative PRM tokens: " + ", ".join(f"`{t!r}` @{p} {r:+.3f}" for p, t, r in lowest))
        blocks.append("\n\n".join(parts))
    return "\n\n---\n\n".join(blocks)


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the lines of ``path`` whose ``step`` is at most ``step``; nothing when it does not exist.

    A line that is not a JSON object with an integer ``step`` (a torn last line left by a kill
    or a full disk, or a damaged line anywhere) is dropped with a warning naming the file and
    line. The file is rewritten atomically (a temporary file, then ``os.replace``)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    kept = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        record = _parse_line(raw)
        if record is None:
            torn = number == len(lines) and not data.endswith(b"\n")
            what = "a torn last line (cut short by a kill or a full disk)" if torn else "an invalid line"
            warnings.warn(
                f"{path}:{number}: dropping {what}: {raw[:80].decode('utf-8', 'replace')!r}",
                MetricsWarning,
                stacklevel=3,
            )
            continue
        if record["step"] <= step:
            kept.append(raw.decode("utf-8") + "\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class MetricsLogger:
    """Where a run's metrics go: ``out_dir/metrics.jsonl`` always (one JSON object per step), and
    TensorBoard (``out_dir/tensorboard``) and wandb when asked for.

    ``start_step``: the step the run starts from (a resumed run's checkpoint step; 0 for a fresh
    run). Lines of later steps are dropped from ``metrics.jsonl`` (:meth:`truncate_after`) and
    TensorBoard's writer is opened with ``purge_step=start_step + 1``, so that neither shows the
    steps after the checkpoint twice. ``None`` (the default) leaves what an earlier run wrote as
    it is and appends. wandb runs get an id kept in ``out_dir/wandb_run_id``: a resumed run
    (``start_step > 0``) continues the same wandb run (``resume="allow"``); wandb itself drops
    re-logged steps at or below the last one it has."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        config: dict | None = None,
        start_step: int | None = None,
        wandb_project: str = "iprime",
        wandb_entity: str | None = None,
        wandb_run_name: str | None = None,
        wandb_tags: Sequence[str] = (),
    ):
        if start_step is not None and start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if start_step is not None:
            self.truncate_after(start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard discards the events of steps >= purge_step that an earlier run left here
            purge = None if start_step is None else start_step + 1
            self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge)
        if wandb:
            self._wandb = _init_wandb(
                self.dir,
                config or {},
                resume=bool(start_step),
                project=wandb_project,
                entity=wandb_entity,
                name=wandb_run_name or self.dir.resolve().name,
                tags=list(wandb_tags),
            )

    @classmethod
    def from_config(
        cls, out_dir: str | Path, train_cfg: Any, config_dict: dict | None, *, start_step: int = 0
    ) -> MetricsLogger:
        """The logger a run configured by ``train_cfg`` (a :class:`~iprime.config.TrainConfig`)
        writes to: ``train.tensorboard``, ``train.wandb`` and its ``wandb_project``,
        ``wandb_entity``, ``wandb_run_name`` (default: the last part of ``out_dir``) and
        ``wandb_tags``. ``config_dict``: the run's full config, stored with the wandb run."""
        return cls(
            out_dir,
            tensorboard=train_cfg.tensorboard,
            wandb=train_cfg.wandb,
            config=config_dict,
            start_step=start_step,
            wandb_project=train_cfg.wandb_project,
            wandb_entity=train_cfg.wandb_entity,
            wandb_run_name=train_cfg.wandb_run_name,
            wandb_tags=train_cfg.wandb_tags,
        )

    def truncate_after(self, step: int) -> None:
        """On resume, drop the lines of steps after the checkpoint from ``metrics.jsonl`` and
        ``samples.jsonl``, so that each step is there once (:func:`truncate_jsonl`)."""
        for path in (self.path, self.dir / "samples.jsonl"):
            truncate_jsonl(path, step)

    def log(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["step"])
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                if self._tb is not None and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """Append the step's sample rows to ``samples.jsonl`` (one JSON object per sample, its
        ``step`` first) and show them in TensorBoard's text tab (:func:`samples_markdown`).

        A row has ``group``, ``prompt``, ``reference``, ``response``, ``score``, ``reason`` and
        the PRM's ``token_rewards`` (``[[token, reward], ...]``) or ``lowest_tokens``
        (``[[position, token, reward], ...]``); any of them may be missing."""
        with (self.dir / "samples.jsonl").open("a") as fh:
            for sample in samples:
                row = {"step": step, **{k: v for k, v in sample.items() if k != "step"}}
                fh.write(json.dumps(_finite(row)) + "\n")
        if self._tb is not None and samples:
            self._tb.add_text("samples", samples_markdown(samples), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
