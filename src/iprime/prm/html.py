"""A self-contained HTML page showing implicit rewards token by token.

Each token's background follows a diverging scale centred at 0: red for negative rewards
(the PRM finds the token less likely than the reference does: where a solution goes wrong),
white at 0, blue for positive, with opacity ``min(1, |r| / scale)``; ``scale`` is the largest
``|r|`` on the page unless given. Hovering a token shows its reward, log-probs and step
(native ``title`` tooltip). After each step's last token a badge gives the step's total; the
lowest step of every response is outlined. No JavaScript, no external CSS or fonts.

:func:`render_html` draws scores computed by :class:`~iprime.prm.scoring.ImplicitPRM`;
:func:`render_samples_html` draws the rewards a training run recorded in ``samples.jsonl``
(no model needed), where a row may hold every token's reward (a full heat map) or only the
``k`` most negative tokens (a table of them).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the page is drawn without torch
    from .scoring import ResponseScore

__all__ = ["SampleView", "render_html", "render_samples_html", "reward_colour"]

_NEG = (215, 48, 39)  # red
_POS = (33, 102, 172)  # blue

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
.meta { color: #555; font-size: 13px; margin-bottom: 16px; }
.legend { display: flex; align-items: center; gap: 8px; font-size: 12px; color: #555; margin-bottom: 20px; }
.scale { width: 240px; height: 12px; border: 1px solid #ccc;
  background: linear-gradient(to right, rgb(215,48,39), #fff, rgb(33,102,172)); }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 14px 16px; margin-bottom: 18px; }
.card h2 { font-size: 15px; margin: 0 0 6px 0; }
.stats { font-size: 13px; color: #444; margin-bottom: 8px; }
.stats b.neg { color: rgb(215,48,39); } .stats b.pos { color: rgb(33,102,172); }
details { font-size: 13px; margin-bottom: 8px; }
details pre { white-space: pre-wrap; background: #f4f4f4; padding: 8px; }
.resp { font-family: ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace; font-size: 14px; line-height: 1.9;
  white-space: pre-wrap; word-break: break-word; }
.tok { border-radius: 2px; padding: 1px 0; }
.tok:hover { outline: 1px solid #333; }
.nl { color: #999; }
.eos { font-size: 11px; color: #666; border: 1px dashed #999; padding: 0 3px; margin-left: 2px; }
.step { font-family: system-ui, sans-serif; font-size: 11px; font-weight: 600; border-radius: 8px; padding: 1px 6px;
  margin: 0 4px; white-space: nowrap; border: 1px solid #bbb; }
.step.worst { outline: 2px solid rgb(215,48,39); outline-offset: 1px; }
.plain { font-family: ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace; font-size: 14px;
  white-space: pre-wrap; word-break: break-word; }
table.steps { border-collapse: collapse; font-size: 12px; margin-top: 10px; }
table.steps td, table.steps th { border: 1px solid #e2e2e2; padding: 2px 8px; text-align: right; }
table.steps td.txt { text-align: left; font-family: ui-monospace, monospace; max-width: 640px; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; }
"""


def reward_colour(r: float, scale: float) -> str:
    """CSS ``rgba`` for reward ``r``: red below 0, blue above, alpha ``min(1, |r| / scale)``."""
    if scale <= 0 or not math.isfinite(r):
        return "rgba(255,255,255,0)"
    a = min(1.0, abs(r) / scale)
    c = _NEG if r < 0 else _POS
    return f"rgba({c[0]},{c[1]},{c[2]},{a:.3f})"


def _text_colour(r: float, scale: float) -> str:
    # dark text stays readable until the background is strongly saturated
    return "#fff" if scale > 0 and abs(r) / scale > 0.65 else "#111"


def _token_html(tok: str, is_eos: bool) -> tuple[str, str]:
    """(inside of the token's span, text after it). Line breaks show as a visible "↵" in the
    span; trailing breaks are emitted after the span (and after a step badge), so a step's
    total stays on the step's own line."""
    if is_eos:
        return '<span class="eos">EOS</span>', ""
    body = tok.rstrip("\n")
    trailing = len(tok) - len(body)
    inner = html.escape(body).replace("\n", '<span class="nl">↵</span>\n') + '<span class="nl">↵</span>' * trailing
    return inner, "\n" * trailing


def _token_tip(t: int, tok: str, r: float, s: ResponseScore, step_no: int) -> str:
    """The hover text of token ``t``: its reward, its two log-probs when they are known (rewards
    read back from a run's ``samples.jsonl`` have none) and its step."""
    parts = [f"token {t}: {tok!r}", f"r = {r:+.4f}"]
    prm_lp = s.prm_logp[t] if t < len(s.prm_logp) else math.nan
    ref_lp = s.ref_logp[t] if t < len(s.ref_logp) else math.nan
    if math.isfinite(prm_lp) and math.isfinite(ref_lp):
        parts.append(f"log pi_phi = {prm_lp:.3f}, log pi_ref = {ref_lp:.3f}")
    parts.append(f"step {step_no + 1}")
    return " | ".join(parts)


def _response_html(
    i: int, s: ResponseScore, scale: float, label: object | None, caption: str = "", reference: str | None = None
) -> str:
    ends = set(s.step_ends)
    worst = min(range(len(s.step_rewards)), key=lambda j: s.step_rewards[j]) if len(s.step_rewards) > 1 else None
    parts, step_no, step_start, rows = [], 0, 0, []
    for t, (tok, r) in enumerate(zip(s.tokens, s.rewards)):
        is_eos = s.ended and t == len(s.tokens) - 1
        tip = _token_tip(t, tok, r, s, step_no)
        style = f"background:{reward_colour(r, scale)};color:{_text_colour(r, scale)}"
        inner, after = _token_html(tok, is_eos)
        parts.append(f'<span class="tok" style="{style}" title="{html.escape(tip)}" data-r="{r:.6g}">{inner}</span>')
        if t in ends:
            total = s.step_rewards[step_no]
            cls = "step worst" if step_no == worst else "step"
            parts.append(
                f'<span class="{cls}" style="background:{reward_colour(total, scale * 3)}" '
                f'title="step {step_no + 1}: sum of {t - step_start + 1} token rewards">'
                f"step {step_no + 1}: {total:+.3f}</span>"
            )
            text = "".join(s.tokens[step_start : t + 1]).strip() or "(empty)"
            rows.append(
                f"<tr><td>{step_no + 1}</td><td>{t - step_start + 1}</td><td>{total:+.4f}</td>"
                f'<td class="txt">{html.escape(text[:160])}</td></tr>'
            )
            step_no, step_start = step_no + 1, t + 1
        parts.append(after)
    sign = "neg" if s.seq_reward < 0 else "pos"
    prob = 1.0 / (1.0 + math.exp(-s.seq_reward)) if s.seq_reward > -700 else 0.0
    label_html = "" if label is None else f" &middot; label: <b>{html.escape(str(label))}</b>"
    beta_html = f" &middot; beta = {s.beta:g}" if math.isfinite(s.beta) else ""
    return (
        f'<div class="card"><h2>{_heading(i, caption)}</h2>'
        f'<div class="stats">sequence reward R = <b class="{sign}">{s.seq_reward:+.4f}</b> '
        f"&middot; sigmoid(R) = {prob:.3f} &middot; {len(s.tokens)} tokens &middot; {len(s.step_ends)} steps"
        f"{beta_html}{label_html}</div>"
        f"{_details(s.prompt, reference)}"
        f'<div class="resp">{"".join(parts)}</div>'
        f'<table class="steps"><tr><th>step</th><th>tokens</th><th>reward</th><th>text</th></tr>{"".join(rows)}</table>'
        "</div>"
    )


def _details(prompt: str, reference: str | None = None) -> str:
    """A card's collapsed prompt, and its reference answer when there is one."""
    out = f"<details><summary>prompt</summary><pre>{html.escape(prompt)}</pre></details>"
    if reference is not None:
        out += f"<details><summary>reference</summary><pre>{html.escape(reference)}</pre></details>"
    return out


def _heading(i: int, caption: str) -> str:
    """A card's heading: ``Response i``, then the caption (escaped) when there is one."""
    return f"Response {i}" + (f" &middot; {html.escape(caption)}" if caption else "")


def _page(title: str, subtitle: str, scale: float, cards: str) -> str:
    """The whole document around ``cards``: title, the reward formula, the colour legend."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<div class="meta">r<sub>t</sub> = &beta; (log &pi;<sub>&phi;</sub>(y<sub>t</sub>|y<sub>&lt;t</sub>) &minus; '
        "log &pi;<sub>ref</sub>(y<sub>t</sub>|y<sub>&lt;t</sub>)). Hover a token for its value. "
        f"{html.escape(subtitle)}</div>"
        f'<div class="legend"><span>{-scale:+.3f}</span><div class="scale"></div><span>{scale:+.3f}</span>'
        "<span>(red: PRM likes the token less than the reference &middot; blue: more)</span></div>"
        f"{cards}</body></html>\n"
    )


def render_html(
    scores: Sequence[ResponseScore],
    *,
    title: str = "Implicit PRM rewards",
    scale: float | None = None,
    labels: Sequence[object] | None = None,
    subtitle: str = "",
) -> str:
    """The page for ``scores`` (one card per response). ``labels``: optional per-response
    outcome labels shown in each card's header."""
    if labels is not None and len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} responses")
    if scale is None:
        scale = max((abs(r) for s in scores for r in s.rewards if math.isfinite(r)), default=0.0)
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    cards = "".join(_response_html(i, s, scale, None if labels is None else labels[i]) for i, s in enumerate(scores))
    return _page(title, subtitle, scale, cards)


@dataclass
class SampleView:
    """One recorded sample (a row of a run's ``samples.jsonl``) as :func:`render_samples_html`
    draws it: ``score`` holds every token's reward (a heat map), or, when the run recorded only
    the ``k`` most negative tokens, ``score`` is ``None`` and ``lowest`` lists them as
    ``(position, token text, reward)``."""

    caption: str
    """Shown in the card's heading: step, group, verifier score and reason."""
    prompt: str
    response: str
    score: ResponseScore | None = None
    lowest: list[tuple[int, str, float]] = field(default_factory=list)
    reference: str | None = None


def _lowest_html(i: int, v: SampleView, scale: float) -> str:
    """A card for a sample with only its most negative tokens: the response as plain text and a
    table of those tokens, coloured like the heat map."""
    rows = "".join(
        f'<tr><td>{p}</td><td class="txt"><span class="tok" style="background:{reward_colour(r, scale)};'
        f'color:{_text_colour(r, scale)}">{html.escape(repr(t))}</span></td><td>{r:+.4f}</td></tr>'
        for p, t, r in v.lowest
    )
    return (
        f'<div class="card"><h2>{_heading(i, v.caption)}</h2>'
        f'<div class="stats">only the {len(v.lowest)} most negative token rewards were recorded '
        "(train.log_sample_tokens &gt; 0)</div>"
        f"{_details(v.prompt, v.reference)}"
        f'<div class="plain">{html.escape(v.response)}</div>'
        f'<table class="steps"><tr><th>position</th><th>token</th><th>reward</th></tr>{rows}</table>'
        "</div>"
    )


def render_samples_html(views: Sequence[SampleView], *, title: str, subtitle: str = "") -> str:
    """The page for samples recorded during training: a heat-map card for each view with a
    :class:`ResponseScore`, a most-negative-tokens card for the others. The colour scale is the
    largest ``|r|`` on the page. Raises ``ValueError`` for a view with neither (nothing to draw)."""
    for i, v in enumerate(views):
        if v.score is None and not v.lowest:
            raise ValueError(f"sample {i} ({v.caption}) has no token rewards to draw")
    rewards = [r for v in views for r in (v.score.rewards if v.score else [r for _, _, r in v.lowest])]
    scale = max((abs(r) for r in rewards if math.isfinite(r)), default=0.0)
    cards = []
    for i, v in enumerate(views):
        if v.score is None:
            cards.append(_lowest_html(i, v, scale))
            continue
        cards.append(_response_html(i, v.score, scale, None, v.caption, v.reference))
    return _page(title, subtitle, scale, "".join(cards))
