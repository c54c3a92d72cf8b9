"""``iprime eval`` and ``iprime prm rerank``: the typer commands (registered in :mod:`iprime.cli`)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from iprime.data.jsonl import read_jsonl
from iprime.prm.metadata import DEFAULT_BETA
from iprime.tables import metrics_table

EVAL_EXAMPLES = """Examples:
iprime eval --model runs/x/final/policy --benchmarks math500,aime2024,amc --out runs/eval      (greedy pass@1)
iprime eval --model DIR --benchmarks math500 --n 8 --temperature 0.7 --k 1,4,8 --out runs/eval-k8
iprime eval --model DIR --benchmarks math500 --n 8 --temperature 0.7 --prm runs/x/final/prm --out runs/eval-prm
iprime eval --model DIR --benchmarks mine.jsonl --prompt-key question --answer-key answer --out runs/mine
iprime eval --model DIR --benchmarks data/validation.parquet --out runs/val      (PRIME's validation split)
iprime eval --model DIR --benchmarks v.parquet --answer-key reward_model.ground_truth --system-prompt "Think." --out o
iprime eval --model DIR --benchmarks arithmetic --limit 50 --out runs/eval --resume                (after a kill)
iprime eval --model DIR --benchmarks math500,aime2024 --engine vllm --dtype bfloat16 --out runs/eval   (vLLM, GPU)
iprime eval --model DIR --benchmarks math500 --engine vllm --tensor-parallel-size 4 --dtype bfloat16 --out runs/eval"""

RERANK_EXAMPLES = """Examples:
iprime prm rerank --prm runs/x/final/prm --data samples.jsonl --out runs/rerank
iprime prm rerank --prm PRM_DIR --data samples.jsonl --out runs/rerank --vote-weight exp --equivalence exact"""


def _error(console, err: Exception) -> NoReturn:
    """Print ``error: <err>`` (never parsed as rich markup) and exit with status 2."""
    console.print(Text.assemble(("error: ", "red"), str(err)), soft_wrap=True)
    raise typer.Exit(2) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def eval_command(
    model: str = typer.Option(..., help="policy model directory (or hub id)"),
    benchmarks: str = typer.Option(
        ...,
        help="comma-separated: math500,aime2024,aime,amc,minerva,olympiadbench,"
        "humaneval,mbpp,leetcode,arithmetic, aimeYYYY/amcYYYY, or your data as training reads it: a .jsonl / "
        ".json / .parquet file, a directory of them, hf:NAME[:SPLIT]",
    ),
    out: str = typer.Option(..., help="output directory (generations.jsonl, summary.json, summary.md)"),
    n: int = typer.Option(1, help="samples per prompt"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0),
    k: str = typer.Option("", help="comma-separated k for pass@k/maj@k/bon@k/wvote@k (default: 1,n)"),
    max_new_tokens: int = typer.Option(1024),
    batch_size: int = typer.Option(16, help="prompts per generation chunk (the resume granularity)"),
    seed: int = typer.Option(0),
    limit: int = typer.Option(None, help="first N rows of each benchmark"),
    prm: str = typer.Option(None, help="implicit PRM directory: adds best-of-N (bon@k) and weighted voting (wvote@k)"),
    ref: str = typer.Option(
        None, help="reference model the PRM is read against (default: the one the PRM's iprime_prm.json names)"
    ),
    beta: float = typer.Option(
        None, help=f"PRM reward scale (default: the PRM's iprime_prm.json, else {DEFAULT_BETA})"
    ),
    vote_weight: str = typer.Option("sigmoid", help="PRM vote weight: sigmoid | exp | one"),
    equivalence: str = typer.Option("math", help="answer grouping for votes: math (math-verify merges) | exact"),
    workers: int = typer.Option(2, help="verifier worker processes (0 = inline)"),
    prompt_key: str = typer.Option(
        "prompt", help="benchmark files: prompt field (dotted keys reach nested fields; a string or chat messages)"
    ),
    answer_key: str = typer.Option(
        "auto",
        help="benchmark files: gold answer(s) / tests field; auto: answer, else reward_model.ground_truth",
    ),
    id_key: str = typer.Option(None, help="benchmark files: unique id field (default: line / row number)"),
    kind: str = typer.Option("math", help="benchmark files: math | code"),
    prompt_suffix: bool = typer.Option(
        True, help="benchmark files: append the paper's math/code instruction to string prompts"
    ),
    system_prompt: str = typer.Option(
        None,
        help="a system message before every string prompt, shipped benchmarks and files alike (as "
        "data.system_prompt in training; the paper's evaluation used Eurus's system prompt)",
    ),
    dtype: str = typer.Option("float32", help="weights of the model (and the PRM): float32 | bfloat16 | float16"),
    device: str = typer.Option("cpu", help="device of the hf engine and the PRM (vLLM picks its own GPUs)"),
    resume: bool = typer.Option(False, "--resume", help="continue: skip rows already in generations.jsonl"),
    engine: str = typer.Option("hf", help="hf: the built-in sampler | vllm: a vLLM engine (iprime\\[vllm])"),
    tensor_parallel_size: int = typer.Option(1, help="--engine vllm: GPUs one engine spreads the model over"),
    gpu_memory_utilization: float = typer.Option(
        0.9, help="--engine vllm: share of each GPU vLLM may take (lower it with --prm --device cuda)"
    ),
) -> None:
    """Evaluate a model on benchmarks: pass@1, avg@k, pass@k, maj@k (+ best-of-N / weighted vote with --prm)."""
    from iprime.eval.runner import EvalConfig, run_eval
    from iprime.rollout.vllm import VLLMNotInstalled

    console = Console(stderr=True)
    try:
        config = EvalConfig(
            model=model,
            benchmarks=[b.strip() for b in benchmarks.split(",") if b.strip()],
            out=out,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            ks=_ints(k),
            batch_size=batch_size,
            seed=seed,
            limit=limit,
            prm=prm,
            ref=ref,
            beta=beta,
            vote_weight=vote_weight,
            equivalence=equivalence,
            verify_workers=workers,
            dtype=dtype,
            device=device,
            resume=resume,
            engine=engine,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            jsonl_options={
                "prompt_key": prompt_key,
                "answer_key": answer_key,
                "id_key": id_key,
                "kind": kind,
                "add_suffix": prompt_suffix,
            },
            system_prompt=system_prompt,
        )
        run_eval(config, console=console)
    except (ValueError, FileExistsError, FileNotFoundError, VLLMNotInstalled) as err:
        _error(console, err)


def rerank_command(
    prm: str = typer.Option(..., help="PRM model directory"),
    ref: str = typer.Option(None, help="reference model directory (default: the one the PRM's iprime_prm.json names)"),
    data: str = typer.Option(..., help="jsonl rows: prompt_id, prompt, response[, reference, verifier]"),
    out: str = typer.Option(..., help="output directory: picks.jsonl, summary.json"),
    beta: float = typer.Option(None, help=f"reward scale (default: the PRM's iprime_prm.json, else {DEFAULT_BETA})"),
    vote_weight: str = typer.Option("sigmoid", help="sigmoid | exp | one"),
    equivalence: str = typer.Option("math", help="math | exact"),
    batch_size: int = typer.Option(8),
    workers: int = typer.Option(2, help="verifier processes for rows with a reference (0 = inline)"),
) -> None:
    """Best-of-N and PRM-weighted voting over groups of sampled responses."""
    from iprime.eval.rerank import rerank_groups
    from iprime.prm.scoring import ImplicitPRM
    from iprime.verifiers import verify_batch

    console = Console(stderr=True)
    fail = partial(_error, console)
    try:
        rows = read_jsonl(data, required=("prompt", "response"))
        scorer = ImplicitPRM.from_pretrained(prm, ref, beta, batch_size=batch_size)
    except (ValueError, FileNotFoundError) as err:
        fail(err)
    rewards = scorer.sequence_rewards(
        [r["prompt"] for r in rows], [r["response"] for r in rows], ended=[bool(r.get("ended", True)) for r in rows]
    )
    with_ref = [r.get("reference") is not None for r in rows]
    if any(with_ref) and not all(with_ref):
        fail(ValueError("either every row has a 'reference' or none does"))
    scores = None
    if all(with_ref):
        scores = [0.0] * len(rows)
        for name in sorted({str(r.get("verifier", "math")) for r in rows}):
            idx = [i for i, r in enumerate(rows) if str(r.get("verifier", "math")) == name]
            res = verify_batch(
                name, [rows[i]["response"] for i in idx], [rows[i]["reference"] for i in idx], workers=workers
            )
            for i, v in zip(idx, res):
                scores[i] = v.score
    try:
        picks, summary = rerank_groups(rows, rewards, scores=scores, weight=vote_weight, equivalence=equivalence)
    except ValueError as err:
        fail(err)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "picks.jsonl").open("w", encoding="utf-8") as f:
        for p in picks:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    console.print(metrics_table(summary, "PRM reranking"))
    console.print(Text(f"wrote {out_dir / 'picks.jsonl'} and {out_dir / 'summary.json'}"), soft_wrap=True)
