"""Implicit PRM scoring: token rewards, step sums, the HTML page (also in headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from iprime.cli import app
from iprime.prm.html import render_html, reward_colour
from iprime.prm.scoring import ImplicitPRM

BETA = 0.5
PROMPTS = ["Compute 3 + 4 - 2.", "Compute 9 - 5 + 1.", "Compute 1 + 1 + 1."]
RESPONSES = [
    "3 + 4 = 7\n\n7 - 2 = 5\n\nThe answer is \\boxed{5}",
    "9 - 5 = 3\n\n3 + 1 = 4\n\nThe answer is \\boxed{4} <b>&amp;</b>",  # wrong first step; HTML-ish text
    "1 + 1 = 2",
]


@pytest.fixture(scope="module")
def scorer(tiny_prm_dir, tiny_model_dir):
    torch.set_num_threads(2)
    return ImplicitPRM.from_pretrained(tiny_prm_dir, tiny_model_dir, beta=BETA, batch_size=2)


@pytest.fixture(scope="module")
def scores(scorer):  # these responses separate their steps with blank lines
    return scorer.score(PROMPTS, RESPONSES, ended=[True, True, False], step_delimiter="\n\n")


def test_token_rewards_equal_beta_times_logratio(scorer, scores, direct_response_logp):
    for p, r, s, ended in zip(PROMPTS, RESPONSES, scores, [True, True, False]):
        prm_lp = direct_response_logp(scorer.prm, scorer.tokenizer, p, r, ended)
        ref_lp = direct_response_logp(scorer.ref, scorer.tokenizer, p, r, ended)
        assert len(s.rewards) == len(prm_lp) == len(s.tokens)
        assert s.rewards == pytest.approx((BETA * (prm_lp - ref_lp)).tolist(), abs=1e-5)
        assert s.prm_logp == pytest.approx(prm_lp.tolist(), abs=1e-5)
        assert s.seq_reward == pytest.approx(float(BETA * (prm_lp - ref_lp).sum()), abs=1e-4)
    assert scores[0].token_ids[-1] == scorer.tokenizer.eos_token_id and scores[0].ended
    assert scores[2].token_ids[-1] != scorer.tokenizer.eos_token_id and not scores[2].ended
    assert any(abs(x) > 1e-3 for x in scores[0].rewards)  # the two models really differ


def test_step_sums(scores):
    s = scores[0]
    # tokens reassemble the response; steps end on the token that completes each "\n\n"
    assert "".join(s.tokens) == RESPONSES[0]
    assert len(s.step_ends) == 3 and s.step_ends[-1] == len(s.tokens) - 1
    for end in s.step_ends[:-1]:
        assert "".join(s.tokens[: end + 1]).endswith("\n\n")
    bounds = [-1] + s.step_ends
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        assert s.step_rewards[j] == pytest.approx(sum(s.rewards[a + 1 : b + 1]), abs=1e-5)
    assert sum(s.step_rewards) == pytest.approx(s.seq_reward, abs=1e-5)
    assert scores[2].step_ends == [len(scores[2].tokens) - 1]  # no delimiter: one step


def test_scorer_checks(tiny_model_dir, tiny_prm_dir, tmp_path):
    from iprime.models import make_tiny_model

    other = make_tiny_model(tmp_path / "other", seed=2)  # its own tokenizer
    with pytest.raises(ValueError, match="different vocabularies"):
        ImplicitPRM.from_pretrained(other, tiny_model_dir)
    scorer = ImplicitPRM.from_pretrained(tiny_prm_dir, tiny_model_dir)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score(["a", "b"], ["c"])


def test_html_is_self_contained_and_shows_every_token(scores):
    page = render_html(scores, labels=[1, 0, None])
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count('class="tok"') == sum(len(s.tokens) for s in scores)
    assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in page  # response text is escaped, not interpreted
    assert page.count(">step 1: ") == 3 and "label: <b>0</b>" in page
    r = scores[1].rewards[0]
    assert f'data-r="{r:.6g}"' in page and f"r = {r:+.4f}" in page
    assert reward_colour(0.0, 1.0) == "rgba(33,102,172,0.000)"
    assert reward_colour(-2.0, 1.0) == "rgba(215,48,39,1.000)" and reward_colour(0.5, 1.0) == "rgba(33,102,172,0.500)"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(scores, tmp_path):
    page = tmp_path / "scores.html"
    page.write_text(render_html(scores), encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="tok"') == sum(len(s.tokens) for s in scores)
    text = re.sub(r"<[^>]+>", "", dom.stdout)
    for tok in ("answer", "boxed{", "&lt;b&gt;"):
        assert tok in dom.stdout or tok in text
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        ["chromium", *flags, "--hide-scrollbars", "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and shot.stat().st_size > 5000, res.stderr[-2000:]


def test_cli_prm_score(tmp_path, tiny_prm_dir, tiny_model_dir):
    data = tmp_path / "responses.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": p, "response": r, "label": i % 2}) + "\n"
            for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))
        )
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "prm",
            "score",
            "--prm",
            str(tiny_prm_dir),
            "--ref",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--beta",
            str(BETA),
            "--step-delimiter",
            "\\n\\n",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "scores.json").read_text())
    assert len(payload) == 3 and payload[1]["label"] == 1 and len(payload[0]["step_rewards"]) == 3
    assert (out / "scores.html").read_text().startswith("<!DOCTYPE html>")
