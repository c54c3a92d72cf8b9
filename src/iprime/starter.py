"""A new user's first two things, as commands: a tiny model and a small parquet to train it on.

``iprime model tiny OUT`` writes the CPU quickstart's tiny model (a Qwen2-architecture model and
its locally trained byte-level tokenizer, :func:`iprime.models.make_tiny_model` with the
quickstart preset's sizes and tokenizer corpus) into a folder that
``AutoModelForCausalLM.from_pretrained`` and iprime's own loader open; ``--sft-steps N`` first
fine-tunes it on the quickstart's arithmetic task with the quickstart's SFT recipe, so that it
solves some problems and a PRIME step has groups of medium difficulty to learn from.

``iprime data example OUT.parquet`` writes problems of that task in exactly the format of
Eurus-2-RL-Data, the PRIME paper's training data (``data_source``, ``prompt`` as chat messages,
``ability``, ``reward_model.ground_truth``, ``extra_info``): a stand-in for one's own parquet,
read and scored like it (``ability: math`` rows go to the math verifier).

Together with ``iprime train --model OUT --data OUT.parquet`` this is a smoke run on the CPU
with no Python and no download (README, "From nothing to a smoke-trained policy"). Nothing
heavy is imported at module level: the command line imports this module for ``--help``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["EXAMPLE_SOURCE", "build_tiny_model", "example_rows", "model_app", "write_example_parquet"]

EXAMPLE_SOURCE = "iprime/arithmetic"
"""``data_source`` of the example rows: no verifier is registered for it, so a row is scored by
its ``ability`` (math), as an unknown source of one's own data would be."""

console = Console()
model_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Models to start from: the quickstart's tiny model, in a folder.",
    epilog="Examples:\niprime model tiny models/tiny --sft-steps 300\niprime model tiny --help",
)


def build_tiny_model(out: str | Path, *, seed: int = 0, sft_steps: int = 0, log: Callable[[str], None] = print) -> Path:
    """Write the quickstart's tiny model and tokenizer to ``out`` and return it.

    ``sft_steps == 0``: randomly initialised (:func:`iprime.models.make_tiny_model` with
    :data:`iprime.presets.QUICKSTART`'s sizes, tokenizer fit on the task's texts, both seeded by
    ``seed``). ``sft_steps > 0``: then fine-tuned for that many steps on the task's SFT rows
    with the quickstart's recipe (``QUICKSTART.sft``: lr 3e-3, batch 32, warmup 30; the
    quickstart runs 800). ``out`` must not hold a model already (``config.json``)."""
    if sft_steps < 0:
        raise ValueError(f"sft_steps must be >= 0, got {sft_steps}")
    out = Path(out)
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a model (config.json); choose another folder")
    from iprime.presets import QUICKSTART, tiny_quickstart_model

    preset = QUICKSTART.reseeded(seed)
    t0 = time.perf_counter()
    tiny_quickstart_model(out, preset)
    if sft_steps == 0:
        log(f"wrote a randomly initialised tiny model to {out} ({time.perf_counter() - t0:.1f} s)")
        return out
    from iprime.models import load_model, load_tokenizer
    from iprime.train.sft import run_sft

    model, tokenizer = load_model(out), load_tokenizer(out)
    task = preset.make_task()
    config = replace(preset.sft, max_steps=sft_steps, warmup_steps=min(preset.sft.warmup_steps, sft_steps))
    rows = task.sft_rows(preset.sft_examples, seed=preset.seed)
    log(f"fine-tuning it on the built-in arithmetic task: {sft_steps} steps of {config.batch_size} examples")
    summary = run_sft(model, tokenizer, rows, config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log(
        f"wrote the tiny model, fine-tuned {sft_steps} steps (final loss {summary['final_loss']:.3f}), to {out} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return out


def example_rows(n: int, *, seed: int = 0) -> list[dict]:
    """``n`` problems of the quickstart's arithmetic task as Eurus-2-RL-Data rows::

        {"data_source": "iprime/arithmetic",
         "prompt": [{"role": "user", "content": "Compute 7 + 5 - 3 + 8 - 6."}],
         "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": "11"},
         "extra_info": {"split": "train", "index": 0}}

    Drawn from the task's train split with ``seed`` (the quickstart's held-out problems are the
    test split, so never among them). Distinct problems, at most as many as the task has."""
    if n < 1:
        raise ValueError(f"rows must be >= 1, got {n}")
    from iprime.presets import QUICKSTART

    rows = QUICKSTART.make_task().rows("train", n, seed=seed)
    return [
        {
            "data_source": EXAMPLE_SOURCE,
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": r["answer"]},
            "extra_info": {"split": "train", "index": i},
        }
        for i, r in enumerate(rows)
    ]


def write_example_parquet(path: str | Path, n: int, *, seed: int = 0) -> Path:
    """:func:`example_rows` written to ``path`` as parquet (pyarrow); returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix != ".parquet":
        raise ValueError(f"{path}: the example is written as parquet; name the file *.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(example_rows(n, seed=seed)), path)
    return path


def _fail(err: object) -> None:
    console.print(Text.assemble(("error: ", "red"), str(err)), soft_wrap=True)
    raise typer.Exit(2)


@model_app.command(
    "tiny",
    epilog="Examples:\niprime model tiny models/tiny                   (random weights, ~2 s)\n"
    "iprime model tiny models/tiny-sft --sft-steps 300   (fine-tuned on the built-in arithmetic task)\n"
    "iprime train --model models/tiny-sft --data mine.parquet train.steps=3 rollout.prompts_per_step=8",
)
def tiny(
    out: str = typer.Argument(..., help="folder to write the model and tokenizer to"),
    seed: int = typer.Option(0, help="seed of the weights and the tokenizer corpus (and the SFT rows)"),
    sft_steps: int = typer.Option(
        0, help="fine-tune on the built-in arithmetic task for this many steps first (0: random weights)"
    ),
) -> None:
    """The CPU quickstart's tiny model (Qwen2 architecture, ~0.6M parameters, its own tokenizer).

    The folder loads with transformers' from_pretrained and with iprime train --model. Random
    weights answer nothing correctly, so every PRIME step would be empty; --sft-steps 300 gives a
    model that solves part of the arithmetic problems of iprime data example.
    """
    try:
        build_tiny_model(out, seed=seed, sft_steps=sft_steps, log=lambda m: console.print(Text(m), soft_wrap=True))
    except (ValueError, FileExistsError) as err:
        _fail(err)


def example_command(
    out: str = typer.Argument(..., help="the parquet file to write (*.parquet)"),
    rows: int = typer.Option(64, help="problems to write"),
    seed: int = typer.Option(0, help="seed the problems are drawn with"),
) -> None:
    """Write a small parquet in Eurus-2-RL-Data's format: arithmetic problems, math rows.

    A stand-in for one's own data (prompt as chat messages, ability, reward_model.ground_truth),
    scored by the math verifier; the tiny model of iprime model tiny --sft-steps N solves part of them.
    """
    try:
        path = write_example_parquet(out, rows, seed=seed)
    except ValueError as err:
        _fail(err)
    console.print(Text(f"wrote {rows} rows in Eurus-2-RL-Data's format to {path}"), soft_wrap=True)


EXAMPLE_EPILOG = (
    "Examples:\niprime data example mine.parquet\niprime data example mine.parquet --rows 256 --seed 1\n"
    "iprime data check mine.parquet"
)
