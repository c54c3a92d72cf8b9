"""``iprime eval``: the typer command (registered in :mod:`iprime.cli`)."""

from __future__ import annotations

import typer


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def eval_command(
    model: str = typer.Option(..., help="policy model directory (or hub id)"),
    benchmarks: str = typer.Option(..., help="comma-separated: math500,aime2024,aime,amc,minerva,olympiadbench,"
                                             "humaneval,mbpp,leetcode,arithmetic, aimeYYYY/amcYYYY, or a .jsonl path"),
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
    ref: str = typer.Option(None, help="reference model the PRM is read against"),
    beta: float = typer.Option(0.05, help="PRM reward scale"),
    vote_weight: str = typer.Option("sigmoid", help="PRM vote weight: sigmoid | exp | one"),
    equivalence: str = typer.Option("math", help="answer grouping for votes: math (math-verify merges) | exact"),
    workers: int = typer.Option(2, help="verifier worker processes (0 = inline)"),
    prompt_key: str = typer.Option("prompt", help=".jsonl benchmarks: prompt field"),
    answer_key: str = typer.Option("answer", help=".jsonl benchmarks: gold answer(s) / tests field"),
    id_key: str = typer.Option(None, help=".jsonl benchmarks: unique id field (default: line number)"),
    kind: str = typer.Option("math", help=".jsonl benchmarks: math | code"),
    prompt_suffix: bool = typer.Option(True, help=".jsonl benchmarks: append the paper's math/code instruction"),
    dtype: str = typer.Option("float32"),
    device: str = typer.Option("cpu"),
    resume: bool = typer.Option(False, "--resume", help="continue: skip rows already in generations.jsonl"),
) -> None:
    """Evaluate a model on benchmarks: pass@1, avg@k, pass@k, maj@k (+ best-of-N / weighted vote with --prm)."""
    from rich.console import Console

    from iprime.eval.runner import EvalConfig, run_eval

    console = Console(stderr=True)
    try:
        config = EvalConfig(
            model=model, benchmarks=[b.strip() for b in benchmarks.split(",") if b.strip()], out=out, n=n,
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, ks=_ints(k), batch_size=batch_size,
            seed=seed, limit=limit, prm=prm, ref=ref, beta=beta, vote_weight=vote_weight, equivalence=equivalence,
            verify_workers=workers, dtype=dtype, device=device, resume=resume,
            jsonl_options={"prompt_key": prompt_key, "answer_key": answer_key, "id_key": id_key, "kind": kind,
                           "add_suffix": prompt_suffix},
        )
        run_eval(config, console=console)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
