"""``iprime prm score | train``: the typer sub-app (registered in :mod:`iprime.cli`, which also adds
``rerank`` from :mod:`iprime.eval.commands`: re-ranking samples is evaluation)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from iprime.data.jsonl import read_jsonl
from iprime.data.sources import DataError, problem_message, prompt_problems, read_records
from iprime.prm.html import SampleView, render_html, render_samples_html
from iprime.prm.metadata import (
    DEFAULT_BETA,
    DEFAULT_STEP_DELIMITER,
    PRMMetadata,
    portable_reference,
    resolve_prm_settings,
    save_prm_metadata,
)
from iprime.progress import format_duration, format_metrics
from iprime.tables import format_cell, metrics_table

if TYPE_CHECKING:  # torch loads only when a command runs, so `iprime --help` stays fast
    from iprime.prm.scoring import ResponseScore

prm_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The implicit PRM as a tool: score responses, train offline, rerank samples.",
    epilog="""Examples:
iprime prm train --model runs/sft --data labelled.jsonl --out runs/prm
iprime prm score --prm runs/prm --data responses.jsonl --out runs/prm-view
iprime prm score --samples runs/prime/samples.jsonl --step 40
iprime prm rerank --prm runs/prm --data samples.jsonl --out runs/rerank""",
)
console = Console(stderr=True)


def _unescape(text: str | None) -> str | None:
    # "--step-delimiter '\n\n'" arrives as backslash-n: turn \n, \t and \\ into characters
    # (only these, so any other text, non-ASCII included, passes through unchanged).
    # None (not given) stays None; "" (one step) stays "".
    if text is None:
        return None
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _fail(err: Exception) -> NoReturn:
    """Print ``error: <err>`` (never parsed as rich markup) and exit with status 2."""
    console.print(Text.assemble(("error: ", "red"), str(err)), soft_wrap=True)
    raise typer.Exit(2) from None


SCORE_EXAMPLES = """Examples:
iprime prm score --prm runs/x/final/prm --data responses.jsonl --out runs/prm-view
iprime prm score --prm PRM_DIR --data responses.jsonl --out runs/prm-view --step-delimiter '\\n\\n'
iprime prm score --samples runs/x/samples.jsonl                       (no model: the rewards the run recorded)
iprime prm score --samples runs/x/samples.jsonl --step 40 --out heat.html"""


@prm_app.command("score", epilog=SCORE_EXAMPLES)
def score(
    prm: str = typer.Option(None, help="PRM model directory (not with --samples)"),
    ref: str = typer.Option(None, help="reference model directory (default: the one the PRM's iprime_prm.json names)"),
    data: str = typer.Option(
        None,
        help="rows with prompt (a string or chat messages, as in training) and response (optional label, "
        "ended): .jsonl, .parquet or a directory; checked before any model loads",
    ),
    samples: str = typer.Option(
        None, help="a training run's samples.jsonl: draw the token rewards it recorded (loads no model)"
    ),
    step: int = typer.Option(None, help="--samples: only the rows of this training step (default: every step)"),
    out: str = typer.Option(
        None,
        help="output directory (scores.json, scores.html), or a .html file; "
        "with --samples the default is samples.html beside samples.jsonl",
    ),
    beta: float = typer.Option(None, help=f"reward scale (default: the PRM's iprime_prm.json, else {DEFAULT_BETA})"),
    step_delimiter: str = typer.Option(
        None,
        help="text that ends a step (escapes allowed); '' = one step (default: the PRM's iprime_prm.json, "
        "or with --samples the run's config.yaml, else '\\n')",
    ),
    batch_size: int = typer.Option(8),
    limit: int = typer.Option(None, help="first N rows"),
) -> None:
    """Per-token and per-step implicit rewards of responses, as JSON and a colour-coded HTML page.

    With --prm and --data the PRM scores the responses; with --samples the page is drawn from the
    rewards a training run wrote to samples.jsonl, without loading any model.
    """
    if samples is not None:
        given = [f"--{n}" for n, v in (("prm", prm), ("data", data), ("ref", ref), ("beta", beta)) if v is not None]
        if given:
            _fail(ValueError(f"--samples draws the rewards a run recorded: it takes no {', '.join(given)}"))
        _score_samples(samples, step=step, out=out, step_delimiter=_unescape(step_delimiter), limit=limit)
        return
    missing = [f"--{n}" for n, v in (("prm", prm), ("data", data), ("out", out)) if v is None]
    if missing:
        _fail(ValueError(f"give {' and '.join(missing)} (or --samples RUN/samples.jsonl to draw a run's samples)"))
    if step is not None:
        _fail(ValueError("--step selects rows of --samples; it has no meaning with --data"))
    _score_with_model(prm, ref, data, out, beta, _unescape(step_delimiter), batch_size, limit)


def read_score_rows(data: str, limit: int | None = None) -> list[dict]:
    """The rows ``prm score --data`` scores, every one checked before any model loads: a
    ``.jsonl(.gz)`` / ``.json`` / ``.parquet`` file or a directory
    (:func:`iprime.data.sources.read_records`) whose rows hold a ``prompt`` as training takes it
    (a non-empty string, or a list of ``{"role", "content"}`` chat messages rendered with the
    chat template) and a ``response`` string; optional ``label`` and ``ended``. All problems come
    in one :class:`~iprime.data.sources.DataError` naming row and field."""
    records = read_records(data, limit=limit)
    if not records:
        raise DataError(f"{data}: no rows")
    problems: list[tuple[str, str, str]] = []
    bad = set()
    for record in records:
        row, where = record.row, record.where
        found = prompt_problems(row.get("prompt"), "prompt") if "prompt" in row else [("prompt", "missing")]
        response = row.get("response")
        if not isinstance(response, str):
            found.append(("response", "missing" if "response" not in row else "must be a string"))
        problems += [(where, f, p) for f, p in found]
        bad |= {where} if found else set()
    if problems:
        raise DataError(problem_message(problems, len(records), len(bad)), problems=problems)
    return [r.row for r in records]


def _out_paths(out: str) -> tuple[Path, Path | None]:
    """``(html file, json file or None)`` for ``--out``: a path ending in ``.html`` is the page
    itself (no JSON beside it); anything else is a directory for scores.html and scores.json."""
    path = Path(out)
    if path.suffix.lower() == ".html":
        return path, None
    return path / "scores.html", path / "scores.json"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _score_with_model(
    prm: str,
    ref: str | None,
    data: str,
    out: str,
    beta: float | None,
    step_delimiter: str | None,
    batch_size: int,
    limit: int | None,
) -> None:
    """``prm score --prm --data``: score the rows with the PRM and write the page and the JSON."""
    from iprime.prm.scoring import ImplicitPRM

    try:  # the data and the settings first: a bad row costs a second, not a model load
        rows = read_score_rows(data, limit)
        settings = resolve_prm_settings(prm, beta=beta, reference=ref, step_delimiter=step_delimiter)
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
    html_path, json_path = _out_paths(out)
    if json_path is not None:
        payload = [{**s.to_dict(), **({"label": lab} if lab is not None else {})} for s, lab in zip(scores, labels)]
        _write(json_path, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    page = render_html(
        scores,
        title=f"Implicit PRM rewards: {Path(data).name}",
        labels=labels if any(lab is not None for lab in labels) else None,
        subtitle=f"PRM {prm} vs reference {settings.reference}, beta={settings.beta:g}, step delimiter {delim!r}.",
    )
    _write(html_path, page)
    console.print(_scores_table(scores, labels))
    console.print(Text(f"wrote {html_path}" + (f" and {json_path}" if json_path else "")), soft_wrap=True)


SHOWN_ROWS = 20
"""Rows of a summary table printed at most (the files hold all of them)."""


def _scores_table(scores: list, labels: list) -> Table:
    """One row per response: its length, steps, sequence reward and lowest step."""
    table = Table(title=f"implicit PRM rewards ({len(scores)} responses)")
    for col in ("response", "label", "tokens", "steps", "R", "lowest step"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for i, (s, lab) in enumerate(zip(scores[:SHOWN_ROWS], labels)):
        worst = min(range(len(s.step_rewards)), key=lambda j: s.step_rewards[j]) if s.step_rewards else None
        lowest = "-" if worst is None else f"{worst + 1}: {s.step_rewards[worst]:+.4f}"
        table.add_row(
            str(i),
            "-" if lab is None else str(lab),
            str(len(s.tokens)),
            str(len(s.step_ends)),
            f"{s.seq_reward:+.4f}",
            lowest,
        )
    if len(scores) > SHOWN_ROWS:
        table.caption = f"first {SHOWN_ROWS} of {len(scores)}; every response is in the files"
    return table


# --------------------------------------------------------------------------- prm score --samples
def _as_text(value: Any) -> str:
    """A recorded prompt or reference as text: a string as is, chat messages as ``role: content``
    lines, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in value)
    return json.dumps(value, ensure_ascii=False)


def _reward(value: Any) -> float:
    """A recorded reward; ``null`` (a non-finite reward, which JSON cannot hold) is ``nan``."""
    return math.nan if value is None else float(value)


def recorded_score(
    prompt: str, token_rewards: list, *, step_delimiter: str = DEFAULT_STEP_DELIMITER, beta: float = math.nan
) -> ResponseScore:
    """A :class:`ResponseScore` from a samples.jsonl row's ``token_rewards`` (``[[token text,
    reward], ...]``), split into steps at ``step_delimiter`` as :func:`step_end_indices` does.

    The recorded tokens are all there is: the response is their concatenation, the log-probs
    are unknown (``nan``), and a last token with empty text is the EOS (as in
    :class:`ResponseScore`)."""
    from iprime.prm.scoring import EncodedResponse, ResponseScore, step_end_indices

    tokens = [str(t) for t, _ in token_rewards]
    rewards = [_reward(r) for _, r in token_rewards]
    text, spans, pos = "".join(tokens), [], 0
    for tok in tokens:
        spans.append((pos, pos + len(tok)))
        pos += len(tok)
    ended = bool(tokens) and tokens[-1] == ""
    encoded = EncodedResponse(prompt, text, [], [0] * len(tokens), spans, ended)
    ends = step_end_indices(encoded, step_delimiter or None) if tokens else []
    finite = lambda xs: math.fsum(x for x in xs if math.isfinite(x))  # noqa: E731
    step_rewards = [finite(rewards[a + 1 : b + 1]) for a, b in zip([-1, *ends], ends)]
    nan = [math.nan] * len(tokens)
    return ResponseScore(
        prompt, text, tokens, [], nan, list(nan), rewards, ends, step_rewards, finite(rewards), beta, ended
    )


def _caption(row: dict) -> str:
    """``training step 40 · group 1 · score 1.0 · <reason>`` from what the row has."""
    names = {"step": "training step", "group": "group", "score": "score"}
    parts = [f"{name} {row[key]}" for key, name in names.items() if row.get(key) is not None]
    if row.get("reason"):
        parts.append(str(row["reason"]))
    return " · ".join(parts)


def sample_view(
    row: dict, *, step_delimiter: str = DEFAULT_STEP_DELIMITER, beta: float = math.nan
) -> SampleView | None:
    """How a samples.jsonl row is drawn: a heat map from ``token_rewards``, a table from
    ``lowest_tokens`` (``[[position, token text, reward], ...]``), or ``None`` when the row has
    no token rewards (a run without a PRM)."""
    prompt = _as_text(row.get("prompt", ""))
    reference = None if row.get("reference") is None else _as_text(row["reference"])
    common = {
        "caption": _caption(row),
        "prompt": prompt,
        "response": str(row.get("response", "")),
        "reference": reference,
    }
    if row.get("token_rewards"):
        score = recorded_score(prompt, row["token_rewards"], step_delimiter=step_delimiter, beta=beta)
        return SampleView(score=score, **common)
    if row.get("lowest_tokens"):
        lowest = [(int(p), str(t), _reward(r)) for p, t, r in row["lowest_tokens"]]
        return SampleView(lowest=lowest, **common)
    return None


def run_prm_settings(samples: Path) -> tuple[str | None, float]:
    """``(prm.step_delimiter, prm.beta)`` of the run that wrote ``samples`` (its ``config.yaml``
    beside it); ``(None, nan)`` when there is no such file or it lacks them."""
    config = samples.parent / "config.yaml"
    if not config.is_file():
        return None, math.nan
    prm = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("prm") or {}
    beta = prm.get("beta")
    return prm.get("step_delimiter"), math.nan if beta is None else float(beta)


def _select_rows(rows: list[dict], step: int | None, path: Path) -> list[dict]:
    """The rows of ``step`` (all rows when ``None``); a step with no rows is an error that lists
    the steps there are."""
    if step is None:
        return rows
    chosen = [r for r in rows if r.get("step") == step]
    if not chosen:
        steps = sorted({r["step"] for r in rows if isinstance(r.get("step"), int)})
        shown = ", ".join(map(str, steps[:20])) + (" ..." if len(steps) > 20 else "")
        raise ValueError(f"{path} has no rows of step {step} (steps there: {shown or 'none'})")
    return chosen


def _score_samples(
    samples: str, *, step: int | None, out: str | None, step_delimiter: str | None, limit: int | None
) -> None:
    """``prm score --samples``: the page of the token rewards a run recorded."""
    path = Path(samples)
    try:
        rows = _select_rows(read_jsonl(path, required=("response",)), step, path)[:limit]
        run_delim, beta = run_prm_settings(path)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as err:
        _fail(err)
    delim = step_delimiter if step_delimiter is not None else run_delim
    delim = DEFAULT_STEP_DELIMITER if delim is None else delim
    views = [sample_view(r, step_delimiter=delim, beta=beta) for r in rows]
    drawn = [(r, v) for r, v in zip(rows, views) if v is not None]
    if not drawn:
        _fail(
            ValueError(
                f"{path}: none of its {len(rows)} rows has PRM token rewards (token_rewards or lowest_tokens); "
                "the run had no PRM (prm.enabled=false), or was written by an iprime that did not record them"
            )
        )
    if out is None:
        out = str(path.parent / ("samples.html" if step is None else f"samples_step{step}.html"))
    html_path, _ = _out_paths(out)
    where = f"step {step}" if step is not None else "every step"
    page = render_samples_html(
        [v for _, v in drawn],
        title=f"Implicit PRM rewards recorded in training: {path.parent.name or path.name}",
        subtitle=f"{path}, {where}; step delimiter {delim!r}"
        + (f", beta={beta:g}" if math.isfinite(beta) else "")
        + ". Recorded by the run: no model was loaded.",
    )
    _write(html_path, page)
    console.print(_samples_table(drawn))
    if len(drawn) < len(rows):
        console.print(
            Text(f"note: {len(rows) - len(drawn)} of {len(rows)} rows have no token rewards and are not drawn"),
            soft_wrap=True,
        )
    console.print(Text(f"wrote {html_path}"), soft_wrap=True)


def _samples_table(drawn: list[tuple[dict, SampleView]]) -> Table:
    """One row per drawn sample: step, group, verifier score, sequence reward (when every token
    was recorded) and its most negative token."""
    table = Table(title=f"recorded PRM rewards ({len(drawn)} samples)")
    for col in ("step", "group", "score", "R", "most negative token"):
        table.add_column(col, justify="left" if col == "most negative token" else "right")
    for row, view in drawn[:SHOWN_ROWS]:
        if view.score is not None:
            pairs = [(t, r) for t, r in zip(view.score.tokens, view.score.rewards) if math.isfinite(r)]
            seq = f"{view.score.seq_reward:+.4f}"
        else:
            pairs, seq = [(t, r) for _, t, r in view.lowest if math.isfinite(r)], "-"
        tok, r = min(pairs, key=lambda p: p[1]) if pairs else ("-", math.nan)
        worst = "-" if not pairs else f"{tok!r} {r:+.4f}"
        cells = [format_cell(row.get(k)) for k in ("step", "group", "score")]
        table.add_row(*[Text(c) for c in cells], Text(seq), Text(worst))
    if len(drawn) > SHOWN_ROWS:
        table.caption = f"first {SHOWN_ROWS} of {len(drawn)}; every one is on the page"
    return table


def _model_id(path_or_id: str) -> str:
    """An existing local path made absolute (metadata must not depend on the working
    directory it was written from); a hub id unchanged."""
    path = Path(path_or_id)
    return str(path.resolve()) if path.exists() else path_or_id


TRAIN_EXAMPLES = """Examples:
iprime prm train --model runs/sft --data labelled.jsonl --out runs/prm
iprime prm train --model runs/sft --data labelled.jsonl --out runs/prm --loss dpo --beta 0.05 --epochs 2"""


@prm_app.command("train", epilog=TRAIN_EXAMPLES)
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
            reference=portable_reference(_model_id(ref or model), out),
            step_delimiter=DEFAULT_STEP_DELIMITER if delim is None else delim,
            loss=config.loss,
        )
        rows = load_labelled_rows(data)
        ref = ref or model
        tok = load_tokenizer(model)
        if tok.get_vocab() != load_tokenizer(ref).get_vocab():
            raise ValueError(f"PRM {model!r} and reference {ref!r} have different vocabularies")
        prm_model, ref_model = load_model(model), load_model(ref)
        result = train_prm_offline(prm_model, ref_model, tok, rows, config, log=_log_line)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    prm_model.save_pretrained(out)
    tok.save_pretrained(out)
    save_prm_metadata(out, meta)
    Path(out, "prm_training.json").write_text(json.dumps(result, indent=1) + "\n")
    console.print(metrics_table(result, "offline PRM training", keys=TRAIN_SUMMARY_KEYS))
    console.print(Text(f"saved the PRM (with iprime_prm.json) to {out}"), soft_wrap=True)


TRAIN_SUMMARY_KEYS = ("steps", "examples", "first_loss", "final_loss", "train_time_s")
"""What ``prm train`` prints at the end (prm_training.json holds everything)."""


def _log_line(record: dict) -> None:
    """One plain line per training log record, as PRIME's and SFT's logs read:
    ``PRM step 20  loss 0.6931  elapsed 0:00:06``."""
    parts = [f"PRM step {record['step']}", format_metrics(record)]
    if "elapsed_s" in record:
        parts.append(f"elapsed {format_duration(record['elapsed_s'])}")
    console.print(Text("  ".join(p for p in parts if p)), soft_wrap=True)
