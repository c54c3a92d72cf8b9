"""Code-block extraction is linear in the response (issue 24, item 4): hostile responses of
hundreds of thousands of backticks extract at once, and the linear reader returns exactly what
the regular expressions it replaced returned."""

from __future__ import annotations

import os
import random
import re
import time

import pytest
from sandbox_available import needs_sandbox

from iprime.verifiers import verify_code_detailed
from iprime.verifiers.extract import extract_code

N = 500_000

# Each is about N characters. Before the change the regular expressions took time quadratic in
# the number of fences (a run of backticks without a newline after it is rescanned from every
# position); now each is one pass.
HOSTILE = {
    "backticks": "`" * N,
    "unclosed_fences": "```" * (N // 3),
    "python_tags": "```python" * (N // 9),
    "python_tags_then_newline": "```python" * (N // 9) + "\n",
    "backticks_then_newline": "`" * N + "\n",
    "newline_then_backticks": "\n" + "`" * N,
    "fence_lines": "```\n" * (N // 4),
    "open_then_backticks": "```python\n" + "`" * N,
    "backtick_runs_and_newlines": ("`" * 1000 + "\n") * (N // 1001),
    "tag_chars_no_newline": "```" + "a" * N,
    "partial_fence_spaces": "```python\nx = 1\n" + " \t" * (N // 2),
    "many_newline_backtick": "```python\n" + "\n`" * (N // 2),
    # No fence at all: the response is parsed (never run) as a program, once; it fails at once.
    # (A valid 500k-character program takes the parser about 0.7 s: linear, but too close to
    # the bound for a slow machine, so it is not a case here.)
    "double_backticks": "`` " * (N // 3),
    # Fences inside lines of code, which do not close a block: each is looked at once.
    "inline_runs": "```python\n" + "x```y" * (N // 5),
    "inline_runs_spaced": "```python\n" + "x ``` " * (N // 6),
    "spaces_then_run": "```python\n" + " " * N + "```x",
    "tilde_runs": "~~~" * (N // 3),
    "tilde_fence_lines": "~~~\n" * (N // 4),
    "indented_block": "```python\n" + "  x\n" * (N // 4) + "```",
    "deep_then_shallow_indents": "```python\n" + " " * N + "x\n" + "".join(" " * k + "x\n" for k in range(300, 0, -1)),
}


class TestExtractionIsLinear:
    """A time bound, not a speed claim: a linear pass takes milliseconds for 500k characters, the
    quadratic one took seconds to minutes. 2 s leaves a margin of over 10x for a slow, shared CI
    machine (regex steps cannot be counted from Python, so the time stands in for them)."""

    @pytest.mark.parametrize("name", sorted(HOSTILE))
    def test_hostile_response_extracts_fast(self, name: str) -> None:
        text = HOSTILE[name]
        start = time.monotonic()
        extract_code(text)
        assert time.monotonic() - start < 2.0

    @needs_sandbox
    @pytest.mark.parametrize("name", ["backticks", "unclosed_fences", "python_tags"])
    def test_verify_code_answers_fast(self, name: str) -> None:
        start = time.monotonic()
        result = verify_code_detailed(HOSTILE[name], {"asserts": ["assert f() == 1"]}, timeout_s=3.0)
        assert result.score == 0.0 and result.reason == "no code block found"
        assert time.monotonic() - start < 2.0


# The rule the linear reader implements, written the obvious (quadratic) way as the reference:
# a block opens at a run of 3+ fence characters, its tag is the tag characters after the run,
# and it closes at the first later run of 3+ that stands alone at the start or at the end of its
# line; an unclosed last block runs to the end, less a cut closing fence of one or two.
_TAG_RE = re.compile(r"[A-Za-z0-9_+.-]*")
_PARTIAL_FENCE_RE = {"`": re.compile(r"\n[ \t]*`{1,2}[ \t]*\Z"), "~": re.compile(r"\n[ \t]*~{1,2}[ \t]*\Z")}


def _closer(text: str, run: re.Match) -> bool:
    line_start = text.rfind("\n", 0, run.start()) + 1
    line_end = text.find("\n", run.end())
    line_end = len(text) if line_end < 0 else line_end
    return not text[line_start : run.start()].strip(" \t\r") or not text[run.end() : line_end].strip(" \t\r")


def reference_blocks(text: str, mark: str = "`") -> list[tuple[str, str]]:
    runs = list(re.finditer(re.escape(mark) + "{3,}", text))
    blocks, pos = [], 0
    while True:
        opening = next((r for r in runs if r.start() >= pos), None)
        if opening is None or "\n" not in text[opening.end() :]:
            return blocks
        newline = text.index("\n", opening.end())
        tag = _TAG_RE.match(text, opening.end()).group()
        closing = next((r for r in runs if r.start() > newline and _closer(text, r)), None)
        if closing is None:
            body = text[newline + 1 :]
            return blocks + [(tag, _PARTIAL_FENCE_RE[mark].sub("\n", body))]
        blocks.append((tag, text[newline + 1 : closing.start()]))
        pos = closing.end()


def reference_extract(text: str) -> str | None:
    blocks = reference_blocks(text)
    if not blocks and "```" not in text and "~~~" in text:
        blocks = reference_blocks(text, "~")
    if not blocks:
        return extract_code(text) if "```" not in text else None  # the unfenced rule is unchanged
    python_blocks = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    return reference_dedent(python_blocks[-1] if python_blocks else blocks[-1][1])


def reference_dedent(code: str) -> str:
    """Less the longest indentation every non-blank line starts with."""
    lines = code.split("\n")
    indents = [line[: len(line) - len(line.lstrip(" \t"))] for line in lines if line.strip()]
    margin = os.path.commonprefix(indents) if indents else ""
    if not margin:
        return code
    return "\n".join(line[len(margin) :] if line.startswith(margin) else line.lstrip(" \t") for line in lines)


class TestSameResultsAsTheRegularExpressions:
    @pytest.mark.parametrize(
        "text",
        [
            "a\n```python\nx = 1\n```\nb\n```py\ny = 2\n```",
            "```\nonly = 1\n```",
            "```python\nunterminated",
            "text\n```python\nprint(1)\n``",
            "text\n```python\nprint(1)\n \t` \t",
            "```python```\nbody```",
            "```Python3 extra words\nz = 3\n```\n```js\nno\n```",
            "``` \n\n```",
            "````python\nfour\n````",
            "```c++\nint x;\n```\n```python\nunclosed\n`",
            "```python\na\n```\n```\nb",
            "x = 1\n",
            "",
            "1. Code:\n   ```python\n   def f():\n       return 1\n   ```\n",
            '```python\ns = "```"\nt = 1\n```\n',
            "~~~python\nx = 1\n~~~\n",
            "```python\nx = 1```\n",
            "```python\r\nx = 1\r\n```\r\n",
        ],
    )
    def test_examples(self, text: str) -> None:
        assert extract_code(text) == reference_extract(text)

    @pytest.mark.parametrize("seed", range(5))
    def test_random_responses(self, seed: int) -> None:
        rng = random.Random(seed)
        pieces = [
            "`",
            "```",
            "```python",
            "```py",
            "```Py3",
            "\n",
            " ",
            "\t",
            "x",
            "=",
            "1",
            "c++",
            "``",
            "~~~",
            "\r\n",
        ]
        for _ in range(2000):
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 14)))
            assert extract_code(text) == reference_extract(text), repr(text)
