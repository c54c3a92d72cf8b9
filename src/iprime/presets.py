"""The quickstart preset for the built-in task: task difficulty, slip rate, model size, SFT.

Chosen so that on 2 CPU cores SFT takes about 1.5-2 minutes and leaves a model that has
learned the format and the arithmetic but, greedily, *drops carries/borrows*: held-out greedy
accuracy lands in the 20-50% band, and the correct carry is still sampled ~40% of the time on
every carry step, which is what PRIME's reward can reinforce.

Why these numbers (measured, see ``python -m iprime.presets``):

- single-digit operands (``Compute 7 + 5 - 3 + 8 - 6.``): the tiny model learns the ~500
  distinct step facts in a few hundred steps. With a two-digit first operand it was still
  below 10% greedy accuracy after 1,500 steps (L=2/4, h=128/256).
- 4 operations: a carry/borrow slip needs a two-digit running value, so longer chains carry
  more often; with 4 ops about 41% of problems have no carry step, which caps the greedy
  accuracy of a model that has learned "drop the carry" as its argmax.
- ``slip_rate=0.7`` on carry steps: clearly above 0.5, so greedy decoding follows the slip
  (random slips, or a rate below 0.5, are averaged away by greedy decoding). At 0.6 the
  learned preference was too close to a coin flip: after 1,000 steps greedy accuracy was 64%,
  above the band. RL has to shift a 70/30 preference on carry steps.

The quickstart's problems hold only ~0.7 carry steps on average, so there is little credit
to assign: one outcome per response already lands on its one uncertain decision.
:data:`BENCHMARK_PRESETS` adds tasks where credit assignment matters more, for
``benchmarks/sample_efficiency.py --preset NAME``:

- ``decisiveD`` (:func:`decisive_preset`): every step after the first carries or borrows, so
  a response holds exactly ``D`` decisive decisions, each slipped at the rate that keeps the
  SFT data's share of correct solutions at 0.35 whatever ``D``. More decisions at the same
  accuracy: a wrong response holds more *right* decisions that outcome-only RL blames with it.
- ``filler``: the quickstart task with three free words opening every step line
  (``ArithmeticConfig.filler_words``): many uncertain tokens that never change correctness.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .data.arithmetic import (
    QUICKSTART_EVAL_PROMPTS,
    QUICKSTART_SEED,
    QUICKSTART_TASK,
    ArithmeticConfig,
    ArithmeticTask,
    held_out_rows,
)
from .models import load_model, load_tokenizer, make_tiny_model
from .train.evaluate import evaluate_accuracy
from .train.sft import SFTConfig, run_sft


@dataclass
class QuickstartPreset:
    """Task + tiny model + SFT settings of the CPU quickstart (CleanRL-style, one place)."""

    seed: int = QUICKSTART_SEED
    threads: int = 2
    task: ArithmeticConfig = field(default_factory=lambda: QUICKSTART_TASK)  # frozen: safe to share
    slip_rate: float = 0.7
    slip_kind: str = "carry"
    corpus_examples: int = 2000  # texts the tokenizer is fit on
    model: dict = field(default_factory=lambda: {"hidden_size": 128, "num_layers": 2, "intermediate_size": 512})
    sft_examples: int = 8000
    sft: SFTConfig = field(
        default_factory=lambda: SFTConfig(lr=3e-3, max_steps=800, batch_size=32, warmup_steps=30, log_every=100)
    )
    eval_prompts: int = QUICKSTART_EVAL_PROMPTS
    max_new_tokens: int = 64

    def make_task(self) -> ArithmeticTask:
        return ArithmeticTask(config=self.task, slip_rate=self.slip_rate, slip_kind=self.slip_kind)

    def held_out_rows(self) -> list[dict]:
        """The held-out rows SFT and PRIME are evaluated on
        (:func:`iprime.data.arithmetic.held_out_rows`; the ``arithmetic`` benchmark for the
        default preset). Drawn with :data:`QUICKSTART_SEED` whatever ``seed`` is, so that runs
        of other seeds are scored on the same problems."""
        return held_out_rows(self.task, self.eval_prompts, QUICKSTART_SEED)

    def reseeded(self, seed: int) -> QuickstartPreset:
        """This preset with ``seed`` for everything random: the tiny model's weights and
        tokenizer corpus, the SFT rows and their order, and (in the quickstart) the PRIME run;
        the held-out rows stay the same."""
        return replace(self, seed=seed, sft=replace(self.sft, seed=seed))


QUICKSTART = QuickstartPreset()


def decisive_preset(decisions: int, correct_share: float = 0.35) -> QuickstartPreset:
    """The quickstart's model and SFT on ``decisions + 1`` one-digit ``+``/``-`` operations that
    all carry or borrow (``carry_every_step``; the first only lifts the one-digit first operand
    above 10, where a carry column exists), so a solution holds exactly ``decisions`` decisive
    steps. Each slips with rate ``s = 1 - correct_share ** (1 / decisions)``, which keeps the share
    of correct SFT solutions at ``correct_share``: ``decisions`` changes how many decisions share
    one outcome, not how often the outcome is right. ``s < 0.5``, so greedy decoding mostly gets
    them right: the paper's metric here is the *sampled* training reward."""
    if decisions < 1:
        raise ValueError(f"decisions must be >= 1, got {decisions}")
    if not (0.0 < correct_share < 1.0):
        raise ValueError(f"correct_share must be in (0, 1), got {correct_share}")
    ops = decisions + 1
    task = replace(QUICKSTART_TASK, min_ops=ops, max_ops=ops, carry_every_step=True)
    slip = 1.0 - correct_share ** (1.0 / decisions)
    return replace(QUICKSTART, task=task, slip_rate=round(slip, 4), max_new_tokens=12 * ops + 32)


def filler_preset(words: int = 3) -> QuickstartPreset:
    """The quickstart with ``words`` free words opening every step line (``filler_words``)."""
    task = replace(QUICKSTART_TASK, filler_words=words)
    return replace(QUICKSTART, task=task, max_new_tokens=QUICKSTART.max_new_tokens + 8 * words)


BENCHMARK_PRESETS: dict[str, QuickstartPreset] = {
    "quickstart": QUICKSTART,
    "decisive3": decisive_preset(3),
    "decisive5": decisive_preset(5),
    "decisive7": decisive_preset(7),
    "filler": filler_preset(3),
}
"""Tasks for ``benchmarks/sample_efficiency.py --preset``, ordered by how much credit
assignment matters (see the module docstring); the same tiny model and SFT recipe each."""


def preset_with_ops(preset: QuickstartPreset, ops: int | None) -> QuickstartPreset:
    """``preset`` with ``ops`` operations per problem (``max_new_tokens = 12 * ops + 32``, room
    for ~10 tokens per line); ``preset`` itself when ``ops`` is None or already its count."""
    if ops is None or preset.task.min_ops == preset.task.max_ops == ops:
        return preset
    return replace(preset, task=replace(preset.task, min_ops=ops, max_ops=ops), max_new_tokens=12 * ops + 32)


def benchmark_preset(name: str) -> QuickstartPreset:
    """:data:`BENCHMARK_PRESETS` ``[name]``, with the known names in the error."""
    try:
        return BENCHMARK_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(BENCHMARK_PRESETS)}") from None


def tiny_quickstart_model(out: str | Path, preset: QuickstartPreset | None = None) -> Path:
    """The preset's tiny model before SFT, written to ``out``: :func:`make_tiny_model` with the
    preset's sizes, its tokenizer fit on the task's texts, both seeded by ``preset.seed``
    (``iprime model tiny`` writes it too)."""
    preset = preset or QUICKSTART
    corpus = preset.make_task().corpus(preset.corpus_examples, seed=preset.seed)
    return make_tiny_model(out, corpus=corpus, seed=preset.seed, **preset.model)


def run_preset_sft(out: str | Path, preset: QuickstartPreset | None = None, *, log=print) -> dict:
    """Tiny model -> SFT -> greedy held-out accuracy; the first half of the quickstart.

    Returns ``{"accuracy", "sft_time_s", "eval_time_s", "total_time_s", "sft": {...},
    "model_dir"}`` and saves the SFT model and tokenizer to ``out/sft``.
    """
    preset = preset or QUICKSTART
    torch.set_num_threads(preset.threads)
    t0 = time.perf_counter()
    out = Path(out)
    task = preset.make_task()
    model_dir = tiny_quickstart_model(out / "init", preset)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    rows = task.sft_rows(preset.sft_examples, seed=preset.seed)
    sft = run_sft(model, tok, rows, preset.sft, log=log)
    t_sft = time.perf_counter()
    model.save_pretrained(out / "sft")
    tok.save_pretrained(out / "sft")
    test = preset.held_out_rows()
    ev = evaluate_accuracy(model, tok, test, task.verify, max_new_tokens=preset.max_new_tokens)
    result = {
        "accuracy": ev["accuracy"],
        "truncated_frac": ev["truncated_frac"],
        "eval_prompts": len(test),
        "data_correct_frac": sum(r["correct"] for r in rows) / len(rows),
        "sft_time_s": sft["train_time_s"],
        "eval_time_s": ev["time_s"],
        "total_time_s": time.perf_counter() - t0,
        "setup_time_s": t_sft - t0 - sft["train_time_s"],
        "sft": {k: v for k, v in sft.items() if k != "config"},
        "model_dir": str(out / "sft"),
        "preset": asdict(preset),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the tiny model, SFT it on the built-in task, report accuracy.")
    ap.add_argument("--out", default="runs/sft-preset")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = run_preset_sft(args.out, QuickstartPreset(seed=args.seed))
    print(json.dumps({k: v for k, v in res.items() if k != "preset"}, indent=2, default=str))


if __name__ == "__main__":
    main()
