"""Boxed-answer extraction (the one implementation) and the exact-match verifier of the built-in task.

:func:`last_boxed` reads the content of a response's last ``\\boxed{...}``, braces balanced
(``\\{``/``\\}`` are literal braces, not grouping). Two readings, one scanner:

- lenient (default; the math verifiers, benchmark golds, voting): ``\\boxed`` or ``\\fbox``,
  also the brace-less ``\\boxed 5``; a box that is never closed is skipped, so a response cut
  at the token limit falls back to an earlier, complete box;
- ``strict=True`` (the built-in task, :func:`boxed_int_score`): only ``\\boxed{...}``, and
  only the *last* one: if it is never closed (a truncated generation) there is no answer,
  rather than an earlier, intermediate value.

The built-in task's verifier compares the strict box with the reference as an integer:

    score(response, answer) = 1.0  if int(last_boxed(response, strict=True)) == int(answer)
                              0.0  otherwise (no box, unbalanced braces, not an integer)
"""

from __future__ import annotations

import re

__all__ = ["boxed_int_score", "last_boxed", "parse_int_answer"]

# \boxed and \fbox are the two box commands that MATH-style solutions use.
# The negative lookahead keeps "\boxedfoo"-style macros from matching.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# An integer literal after whitespace is removed: "- 12" and " 12 " are read as -12 and 12.
_INT = re.compile(r"[+-]?\d+")


def _brace_ends(text: str) -> dict[int, int]:
    """``{i: j}`` for every brace group of ``text``: ``text[i]`` its opening ``{``, ``text[j - 1]``
    the ``}`` that closes it; an opening brace that never closes has no entry. One pass.

    Escaped braces (``\\{`` and ``\\}``) are literal text, not grouping, so set answers such
    as ``\\boxed{\\{1,2\\}}`` keep their inner braces. A box's ``{`` follows ``\\boxed`` or
    spaces, never a backslash, so the pass reads it as an opening brace, as a scan starting there
    would; one pass for all the boxes of a response, where a scan from each box to its end made
    a response of unclosed boxes quadratic (a few thousand ``\\boxed{`` took seconds).
    """
    ends: dict[int, int] = {}
    opened: list[int] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            ends[opened.pop()] = i + 1
        i += 1
    return ends


# The brace-less "\boxed 5" form: one token up to whitespace or "$".
_TOKEN = re.compile(r"[^\s$]+")


def last_boxed(text: str, *, strict: bool = False) -> str | None:
    """Content of the last box in ``text``, stripped; ``None`` if there is none.

    Nested braces are kept (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``). Lenient (default):
    the last *complete* ``\\boxed{...}`` / ``\\fbox{...}`` or brace-less ``\\boxed 5`` (one token
    up to whitespace or ``$``); unclosed boxes are skipped. ``strict``: the last ``\\boxed{...}``
    only, and ``None`` when that box is unclosed (see the module docstring for why). Linear in
    ``text`` (:func:`_brace_ends`).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ends: dict[int, int] | None = None
    for match in reversed(list(_BOX_RE.finditer(text))):
        pos = match.end()
        if strict:
            if match.group(0) != "\\boxed" or not text.startswith("{", pos):
                continue
            end = _brace_ends(text).get(pos)
            return None if end is None else text[pos + 1 : end - 1].strip()
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos < len(text) and text[pos] == "{":
            ends = _brace_ends(text) if ends is None else ends
            end = ends.get(pos)
            if end is not None:
                return text[pos + 1 : end - 1].strip()
            continue
        token = _TOKEN.match(text, pos)
        if match.end() < pos and token:
            return token.group(0).strip()
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
    """1.0 if the last boxed answer of ``response`` (read strictly) equals ``answer`` as an
    integer, else 0.0."""
    expected = answer if isinstance(answer, int) else parse_int_answer(str(answer))
    if expected is None:
        raise ValueError(f"reference answer must be an integer, got {answer!r}")
    got = parse_int_answer(last_boxed(response, strict=True))
    return 1.0 if got is not None and got == expected else 0.0
