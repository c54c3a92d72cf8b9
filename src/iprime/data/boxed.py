"""Boxed-answer extraction and the exact-match verifier of the built-in task.

A response ends its reasoning with ``\\boxed{ANSWER}``. The verifier takes the *last*
``\\boxed{...}`` (models often restate intermediate values earlier), reads the content between
balanced braces, and compares it to the reference as an integer:

    score(response, answer) = 1.0  if int(last_boxed(response)) == int(answer)
                              0.0  otherwise (no box, unbalanced braces, not an integer)
"""

from __future__ import annotations

import re

_BOXED = "\\boxed{"
# An integer literal after whitespace is removed: "- 12" and " 12 " are read as -12 and 12.
_INT = re.compile(r"[+-]?\d+")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, braces balanced; ``None`` if absent.

    Nested braces are kept (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); a last box that is
    never closed (a truncated generation) gives ``None`` rather than a partial answer.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i = start + len(_BOXED)
    depth = 1
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def parse_int_answer(content: str | None) -> int | None:
    """Integer value of a boxed answer, or ``None`` if it is not exactly an integer.

    Whitespace anywhere and redundant outer braces (``{{66}}``) are ignored; anything else
    (``66.0``, ``1,000``, ``x=66``) is not an integer and so never matches.
    """
    if content is None:
        return None
    s = "".join(content.split())
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
        s = s[1:-1]
    if not _INT.fullmatch(s):
        return None
    return int(s)


def boxed_int_score(response: str, answer: str | int) -> float:
    """1.0 if the last boxed answer of ``response`` equals ``answer`` as an integer, else 0.0."""
    expected = answer if isinstance(answer, int) else parse_int_answer(str(answer))
    if expected is None:
        raise ValueError(f"reference answer must be an integer, got {answer!r}")
    got = parse_int_answer(extract_boxed(response))
    return 1.0 if got is not None and got == expected else 0.0
