"""Metrics sinks: JSON lines always, TensorBoard and wandb when asked for."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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
        """On resume, drop lines of steps after the checkpoint so the file has one line per step."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

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
