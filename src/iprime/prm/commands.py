"""``iprime prm score | train``: the typer sub-app (registered in :mod:`iprime.cli`, which also adds
``rerank`` from :mod:`iprime.eval.commands`: re-ranking samples is evaluation)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.console import Console

from iprime.prm.metadata import (
    DEFAULT_BETA,
    DEFAULT_STEP_DELIMITER,
    PRMMetadata,
    resolve_prm_settings,
    save_prm_metadata,
)

prm_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The implicit PRM as a tool: score responses, train offline, rerank samples.",
)
console = Console(stderr=True)


def _unescape(text: str | None) -> str | None:
    # "--step-delimiter '\n\n'" arrives as backslash-n: turn \n, \t and \\ into characters
    # (only these, so any other text, non-ASCII included, passes through unchanged).
    # None (not given) stays None; "" (one step) stays "".
    if text is None:
        return None
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(2) from None


@prm_app.command("score")
def score(
    prm: str = typer.Option(..., help="PRM model directory"),
    ref: str = typer.Option(None, help="reference model directory (default: the one the PRM's iprime_prm.json names)"),
    data: str = typer.Option(..., help="jsonl with prompt/response rows (optional label, ended)"),
    out: str = typer.Option(..., help="output directory: scores.json and scores.html"),
    beta: float = typer.Option(None, help=f"reward scale (default: the PRM's iprime_prm.json, else {DEFAULT_BETA})"),
    step_delimiter: str = typer.Option(
        None,
        help="text that ends a step (escapes allowed); '' = one step (default: the PRM's iprime_prm.json, else '\\n')",
    ),
    batch_size: int = typer.Option(8),
    limit: int = typer.Option(None, help="first N rows"),
) -> None:
    """Per-token and per-step implicit rewards of responses, as JSON and a colour-coded HTML page."""
    from iprime.data.jsonl import read_jsonl
    from iprime.prm.html import render_html
    from iprime.prm.scoring import ImplicitPRM

    try:
        settings = resolve_prm_settings(prm, beta=beta, reference=ref, step_delimiter=_unescape(step_delimiter))
        rows = read_jsonl(data, required=("prompt", "response"))[:limit]
        scorer = ImplicitPRM.from_pretrained(prm, settings.reference, settings.beta, batch_size=batch_size)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    delim = settings.step_delimiter
    scores = scorer.score(
        [r["prompt"] for r in rows],
        [r["response"] for r in rows],
        ended=[bool(r.get("ended", True)) for r in rows],
        step_delimiter=delim,
    )
    labels = [r.get("label") for r in rows]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = [{**s.to_dict(), **({"label": lab} if lab is not None else {})} for s, lab in zip(scores, labels)]
    (out_dir / "scores.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    page = render_html(
        scores,
        title=f"Implicit PRM rewards: {Path(data).name}",
        labels=labels if any(lab is not None for lab in labels) else None,
        subtitle=f"PRM {prm} vs reference {settings.reference}, beta={settings.beta:g}, step delimiter {delim!r}.",
    )
    (out_dir / "scores.html").write_text(page, encoding="utf-8")
    for i, s in enumerate(scores):
        console.print(f"response {i}: R = {s.seq_reward:+.4f}, steps = {[round(x, 4) for x in s.step_rewards]}")
    console.print(f"wrote {out_dir / 'scores.json'} and {out_dir / 'scores.html'}")


def _model_id(path_or_id: str) -> str:
    """An existing local path made absolute (metadata must not depend on the working
    directory it was written from); a hub id unchanged."""
    path = Path(path_or_id)
    return str(path.resolve()) if path.exists() else path_or_id


@prm_app.command("train")
def train(
    model: str = typer.Option(..., help="initial PRM weights (usually the SFT / reference model)"),
    data: str = typer.Option(..., help="jsonl with prompt/response/label rows (optional prompt_id)"),
    out: str = typer.Option(..., help="where to save the trained PRM (a Hugging Face model directory)"),
    ref: str = typer.Option(None, help="reference model (default: --model)"),
    loss: str = typer.Option("ce", help="ce (outcome cross-entropy) | dpo (pairs within a prompt)"),
    beta: float = typer.Option(DEFAULT_BETA),
    lr: float = typer.Option(1e-5),
    epochs: float = typer.Option(1.0),
    batch_size: int = typer.Option(8),
    seed: int = typer.Option(0),
    step_delimiter: str = typer.Option(
        None, help="text that ends a step in these responses (escapes allowed), recorded for prm score (default: '\\n')"
    ),
) -> None:
    """Offline implicit PRM training from outcome-labelled responses.

    Beside the weights it writes iprime_prm.json (beta, reference, step delimiter, loss), which
    prm score / prm rerank / eval --prm read, so they need no --beta / --ref.
    """
    from iprime.models import load_model, load_tokenizer
    from iprime.prm.offline import OfflinePRMConfig, load_labelled_rows, train_prm_offline

    try:
        config = OfflinePRMConfig(beta=beta, loss=loss, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
        delim = _unescape(step_delimiter)
        meta = PRMMetadata(
            beta=config.beta,
            reference=_model_id(ref or model),
            step_delimiter=DEFAULT_STEP_DELIMITER if delim is None else delim,
            loss=config.loss,
        )
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
    save_prm_metadata(out, meta)
    Path(out, "prm_training.json").write_text(json.dumps(result, indent=1) + "\n")
    console.print(
        f"loss {result['first_loss']:.4f} -> {result['final_loss']:.4f} in {result['steps']} steps; saved to {out}"
    )
