"""Metrics sinks: JSON lines always, TensorBoard and wandb when asked for."""

from __future__ import annotations

import json
import math
import os
import warnings
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


class MetricsLogger:
    def __init__(
        self, out_dir: str | Path, *, tensorboard: bool = True, wandb: bool = False, config: dict | None = None
    ):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError as err:
                raise ImportError("train.wandb=true but wandb is not installed: pip install wandb") from err
            self._wandb = wandb_lib.init(project="iprime", dir=str(self.dir), config=config or {})

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint so the file has one line per step.

        A line that is not a JSON object with an integer ``step`` (a torn last line left by a kill
        or a full disk, or a damaged line anywhere) is dropped with a warning naming the file and
        line. The file is rewritten atomically (a temporary file, then ``os.replace``)."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
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
                    f"{self.path}:{number}: dropping {what}: {raw[:80].decode('utf-8', 'replace')!r}",
                    MetricsWarning,
                    stacklevel=2,
                )
                continue
            if record["step"] <= step:
                kept.append(raw.decode("utf-8") + "\n")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

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
        with (self.dir / "samples.jsonl").open("a") as fh:
            for sample in samples:
                fh.write(json.dumps({"step": step, **sample}) + "\n")
        if self._tb is not None:
            text = "\n\n".join(f"**score {s['score']}**\n\n```\n{s['response']}\n```" for s in samples)
            self._tb.add_text("samples", text, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
