"""``iprime prm score | train | rerank``: the typer sub-app (registered in :mod:`iprime.cli`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.console import Console

prm_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="The implicit PRM as a tool: score responses, train offline, rerank samples.")
console = Console(stderr=True)


def _unescape(text: str | None) -> str | None:
    # "--step-delimiter '\n\n'" arrives as backslash-n: turn \n, \t and \\ into characters
    # (only these, so any other text, non-ASCII included, passes through unchanged).
    if text is None or text == "":
        return None
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(2) from None


@prm_app.command("score")
def score(
    prm: str = typer.Option(..., help="PRM model directory"),
    ref: str = typer.Option(..., help="reference model directory"),
    data: str = typer.Option(..., help="jsonl with prompt/response rows (optional label, ended)"),
    out: str = typer.Option(..., help="output directory: scores.json and scores.html"),
    beta: float = typer.Option(0.05),
    step_delimiter: str = typer.Option("\\n\\n", help="text that ends a step (escapes allowed); '' = one step"),
    batch_size: int = typer.Option(8),
    limit: int = typer.Option(None, help="first N rows"),
) -> None:
    """Per-token and per-step implicit rewards of responses, as JSON and a colour-coded HTML page."""
    from iprime.data.jsonl import read_jsonl
    from iprime.prm.html import render_html
    from iprime.prm.scoring import ImplicitPRM

    try:
        rows = read_jsonl(data, required=("prompt", "response"))[:limit]
        scorer = ImplicitPRM.from_pretrained(prm, ref, beta, batch_size=batch_size)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    delim = _unescape(step_delimiter)
    scores = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows],
                          ended=[bool(r.get("ended", True)) for r in rows], step_delimiter=delim)
    labels = [r.get("label") for r in rows]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = [{**s.to_dict(), **({"label": lab} if lab is not None else {})} for s, lab in zip(scores, labels)]
    (out_dir / "scores.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    page = render_html(scores, title=f"Implicit PRM rewards: {Path(data).name}",
                       labels=labels if any(lab is not None for lab in labels) else None,
                       subtitle=f"PRM {prm} vs reference {ref}, beta={beta:g}, step delimiter {delim!r}.")
    (out_dir / "scores.html").write_text(page, encoding="utf-8")
    for i, s in enumerate(scores):
        console.print(f"response {i}: R = {s.seq_reward:+.4f}, steps = {[round(x, 4) for x in s.step_rewards]}")
    console.print(f"wrote {out_dir / 'scores.json'} and {out_dir / 'scores.html'}")


@prm_app.command("train")
def train(
    model: str = typer.Option(..., help="initial PRM weights (usually the SFT / reference model)"),
    data: str = typer.Option(..., help="jsonl with prompt/response/label rows (optional prompt_id)"),
    out: str = typer.Option(..., help="where to save the trained PRM (a Hugging Face model directory)"),
    ref: str = typer.Option(None, help="reference model (default: --model)"),
    loss: str = typer.Option("ce", help="ce (outcome cross-entropy) | dpo (pairs within a prompt)"),
    beta: float = typer.Option(0.05),
    lr: float = typer.Option(1e-5),
    epochs: float = typer.Option(1.0),
    batch_size: int = typer.Option(8),
    seed: int = typer.Option(0),
) -> None:
    """Offline implicit PRM training from outcome-labelled responses."""
    from iprime.models import load_model, load_tokenizer
    from iprime.prm.offline import OfflinePRMConfig, load_labelled_rows, train_prm_offline

    try:
        config = OfflinePRMConfig(beta=beta, loss=loss, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
        rows = load_labelled_rows(data)
        ref = ref or model
        tok = load_tokenizer(model)
        if tok.get_vocab() != load_tokenizer(ref).get_vocab():
            raise ValueError(f"PRM {model!r} and reference {ref!r} have different vocabularies")
        prm_model, ref_model = load_model(model), load_model(ref)
        result = train_prm_offline(prm_model, ref_model, tok, rows, config, log=lambda r: console.print(r))
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    prm_model.save_pretrained(out)
    tok.save_pretrained(out)
    Path(out, "prm_training.json").write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"loss {result['first_loss']:.4f} -> {result['final_loss']:.4f} in {result['steps']} steps; saved to {out}")


@prm_app.command("rerank")
def rerank(
    prm: str = typer.Option(..., help="PRM model directory"),
    ref: str = typer.Option(..., help="reference model directory"),
    data: str = typer.Option(..., help="jsonl rows: prompt_id, prompt, response[, reference, verifier]"),
    out: str = typer.Option(..., help="output directory: picks.jsonl, summary.json"),
    beta: float = typer.Option(0.05),
    vote_weight: str = typer.Option("sigmoid", help="sigmoid | exp | one"),
    equivalence: str = typer.Option("math", help="math | exact"),
    batch_size: int = typer.Option(8),
    workers: int = typer.Option(2, help="verifier processes for rows with a reference (0 = inline)"),
) -> None:
    """Best-of-N and PRM-weighted voting over groups of sampled responses."""
    from iprime.data.jsonl import read_jsonl
    from iprime.prm.rerank import rerank_groups
    from iprime.prm.scoring import ImplicitPRM
    from iprime.verifiers import verify_batch

    try:
        rows = read_jsonl(data, required=("prompt", "response"))
        scorer = ImplicitPRM.from_pretrained(prm, ref, beta, batch_size=batch_size)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    rewards = scorer.sequence_rewards([r["prompt"] for r in rows], [r["response"] for r in rows],
                                      ended=[bool(r.get("ended", True)) for r in rows])
    with_ref = [r.get("reference") is not None for r in rows]
    if any(with_ref) and not all(with_ref):
        _fail(ValueError("either every row has a 'reference' or none does"))
    scores = None
    if all(with_ref):
        scores = [0.0] * len(rows)
        for name in sorted({str(r.get("verifier", "math")) for r in rows}):
            idx = [i for i, r in enumerate(rows) if str(r.get("verifier", "math")) == name]
            res = verify_batch(name, [rows[i]["response"] for i in idx], [rows[i]["reference"] for i in idx], workers=workers)
            for i, v in zip(idx, res):
                scores[i] = v.score
    try:
        picks, summary = rerank_groups(rows, rewards, scores=scores, weight=vote_weight, equivalence=equivalence)
    except ValueError as err:
        _fail(err)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "picks.jsonl").open("w", encoding="utf-8") as f:
        for p in picks:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    console.print(summary)
    console.print(f"wrote {out_dir / 'picks.jsonl'} and {out_dir / 'summary.json'}")
