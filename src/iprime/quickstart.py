"""The CPU quickstart: tiny model -> SFT on the built-in task -> evaluate -> PRIME -> evaluate.

No GPU and no downloads: the model and tokenizer are built locally from a config, the task is
generated procedurally. The PRIME settings live in one file, ``iprime/configs/cpu_quickstart.yaml``
(shipped in the package), loaded with :func:`~iprime.config.load_config` plus the run's own
overrides. Writes ``summary.json``, ``metrics.jsonl``, PNG plots and the final
model directory under ``out``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from iprime.config import load_config
from iprime.models import load_model, load_tokenizer
from iprime.numerics import describe, numerics_in_effect
from iprime.plots import QUICKSTART_PANELS, save_panels
from iprime.presets import QuickstartPreset, run_preset_sft
from iprime.progress import format_metrics
from iprime.train.evaluate import evaluate_accuracy
from iprime.train.prime import PrimeTrainer

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


QUICKSTART_CONFIG = "cpu_quickstart.yaml"
"""The quickstart's PRIME settings: ``iprime/configs/cpu_quickstart.yaml``, shipped in the package."""


def packaged_config(name: str = QUICKSTART_CONFIG) -> Traversable:
    """A YAML config shipped in the package (``iprime/configs/<name>``), found the same way in a
    source tree, an editable install and a wheel."""
    ref = resources.files("iprime").joinpath("configs", name)
    if not ref.is_file():
        raise FileNotFoundError(f"config {name!r} is not in the iprime package (iprime/configs)")
    return ref


@dataclass
class QuickstartConfig:
    """Every knob of the quickstart in one place (CleanRL style).

    The task, tiny model and SFT come from :data:`iprime.presets.QUICKSTART` (an SFT model that
    greedily drops carries on ~70% of carry steps: 20-50% held-out accuracy, room for RL). The
    PRIME settings are a YAML file: ``prime_config``, by default the packaged
    ``iprime/configs/cpu_quickstart.yaml``.
    """

    preset: QuickstartPreset = field(default_factory=QuickstartPreset)
    train_prompts: int = 3000
    curve_eval_prompts: int = 100
    prime_config: str | None = None
    """YAML file of the PRIME settings; ``None``: the packaged ``cpu_quickstart.yaml``."""

    @contextlib.contextmanager
    def prime_config_path(self) -> Iterator[Path]:
        """A filesystem path of the PRIME settings file, for :func:`~iprime.config.load_config`."""
        if self.prime_config is not None:
            yield Path(self.prime_config)
            return
        with resources.as_file(packaged_config()) as path:
            yield path

    @property
    def prime_overrides(self) -> tuple[str, ...]:
        """The settings file as dotted ``key=value`` overrides, for callers that compose override
        lists (``load_config(None, list(qc.prime_overrides) + more)`` equals
        ``load_config(file, more)``)."""
        with self.prime_config_path() as path:
            data = yaml.safe_load(path.read_text()) or {}
        return tuple(_flatten(data))


def _flatten(data: dict, prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}={json.dumps(value)}"  # JSON scalars and lists are valid YAML


def run_quickstart(
    out: str | Path, qc: QuickstartConfig | None = None, extra_overrides: tuple[str, ...] = (), log=print
) -> dict:
    qc = qc or QuickstartConfig()
    preset = qc.preset
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(preset.seed)
    numerics = numerics_in_effect()
    log(describe(numerics))
    t_start = time.perf_counter()
    task = preset.make_task()

    log(
        f"1-3/5 tiny model, SFT on {preset.sft_examples} solutions (carry slips at rate {preset.slip_rate}), evaluation"
    )
    sft = run_preset_sft(out, preset, log=lambda m: log(f"    sft step {m['step']}  {format_metrics(m)}"))
    shutil.rmtree(out / "init", ignore_errors=True)
    accuracy_before = sft["accuracy"]
    log(f"    held-out accuracy of the SFT model (greedy, {sft['eval_prompts']} problems): {accuracy_before:.3f}")
    model, tokenizer = load_model(out / "sft"), load_tokenizer(out / "sft")
    test_rows = preset.held_out_rows()  # the rows run_preset_sft scored
    curve_rows = test_rows[: qc.curve_eval_prompts]

    def evaluate(m, rows) -> float:
        return evaluate_accuracy(m, tokenizer, rows, task.verify, max_new_tokens=preset.max_new_tokens)["accuracy"]

    curve_before = evaluate(model, curve_rows)  # step 0 of the held-out curve
    log("4/5 PRIME")
    run_overrides = [
        f"train.out_dir={out}",
        f"model.policy={out / 'sft'}",
        f"train.seed={preset.seed}",
        f"rollout.max_new_tokens={preset.max_new_tokens}",
        f"train.num_threads={preset.threads}",
        "train.tensorboard=false",
        *extra_overrides,
    ]
    with qc.prime_config_path() as prime_config:
        cfg = load_config(prime_config, run_overrides)
    train_rows = task.rows("train", qc.train_prompts, seed=preset.seed + 2)
    trainer = PrimeTrainer(
        model,
        cfg,
        train_rows,
        task.verify,
        tokenizer=tokenizer,
        eval_fn=lambda tr: {"accuracy": evaluate(tr.policy, curve_rows)},
    )
    history = trainer.train()

    log("5/5 evaluating the PRIME policy")
    accuracy_after = evaluate(trainer.policy, test_rows)
    trainer.save_pretrained(out / "final")
    plots = save_panels([{"step": 0, "eval/accuracy": curve_before}, *history], out, QUICKSTART_PANELS)
    summary = {
        "accuracy_before": accuracy_before,
        "accuracy_after": accuracy_after,
        "improvement": accuracy_after - accuracy_before,
        "steps": trainer.step,
        "seconds": time.perf_counter() - t_start,
        "sft_seconds": sft["sft_time_s"],
        "eval_prompts": len(test_rows),
        "plots": [p.name for p in plots],
        "final_model": str(out / "final" / "policy"),
        "quickstart_config": asdict(qc),
        "numerics": numerics,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(
        f"held-out accuracy {accuracy_before:.3f} -> {accuracy_after:.3f} "
        f"({summary['improvement'] * 100:+.1f} points) in {summary['seconds']:.0f} s; summary in {out / 'summary.json'}"
    )
    return summary
