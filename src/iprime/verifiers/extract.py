"""Pull the final answer or the final code block out of a model response.

Pure string functions with no third-party imports, shared by the math, code
and reasoning-gym verifiers. Every function returns ``None`` when there is
nothing to extract, so callers can score 0 with an explicit reason instead
of guessing.
"""

from __future__ import annotations

import re

__all__ = [
    "last_boxed",
    "answer_is_fallback",
    "answer_tag",
    "extract_final_answer",
    "extract_code",
    "strip_math_delimiters",
]

# \boxed and \fbox are the two box commands that MATH-style solutions use.
# The negative lookahead keeps "\boxedfoo"-style macros from matching.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _balanced_group(text: str, start: int) -> tuple[str, int] | None:
    """Return ``(content, end)`` of the brace group opening at ``text[start]``.

    Escaped braces (``\\{`` and ``\\}``) are literal text, not grouping, so set
    answers such as ``\\boxed{\\{1,2\\}}`` keep their inner braces.
    """
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None  # unbalanced: the box was never closed


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    Also accepts the brace-less form ``\\boxed 5`` (one token up to whitespace
    or ``$``), which appears in some MATH solutions. Boxes that are never
    closed are skipped, so a truncated response falls back to an earlier box.
    """
    for match in reversed(list(_BOX_RE.finditer(text))):
        pos = match.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos < len(text) and text[pos] == "{":
            group = _balanced_group(text, pos)
            if group is not None:
                return group[0].strip()
            continue
        # "\boxed 5" form: a single token.
        token = re.match(r"[^\s$]+", text[pos:])
        if match.end() < pos and token:
            return token.group(0).strip()
    return None


# "The (final) answer is: 42." – the sentence end is a period followed by
# whitespace or the end of text, so decimals such as "3.5" survive.
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|the\s+answer)\s*(?:is|:)\s*:?\s*(.+?)(?:\.(?:\s|$)|\n|$)",
    re.IGNORECASE,
)


def answer_is_fallback(text: str) -> str | None:
    """Answer after the last "The answer is" / "Final answer:" phrase, if any."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    answer = strip_math_delimiters(matches[-1].group(1))
    return answer or None


_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` pair, stripped."""
    matches = _ANSWER_TAG_RE.findall(text)
    if not matches:
        return None
    return matches[-1].strip()


def extract_final_answer(text: str) -> str | None:
    """Final math answer: last box first, else the "The answer is" sentence.

    Boxes win because they are the format the prompts ask for; the phrase
    fallback only rescues responses that forgot to box.
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return answer_is_fallback(text)


def strip_math_delimiters(text: str) -> str:
    """Remove surrounding ``$``/``\\(``/``\\[`` delimiters and trailing periods."""
    s = text.strip()
    changed = True
    while changed and s:
        changed = False
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                s = s[len(left) : len(s) - len(right)].strip()
                changed = True
        # A final answer never ends in a period; it is the sentence's.
        if s.endswith("."):
            s = s[:-1].rstrip()
            changed = True
    return s


# A fenced block: ```lang\n ... ```. The language tag is optional.
_FENCE_RE = re.compile(r"```([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str | None:
    """Last ```python block, else the last fenced block of any language.

    An unterminated final fence (a response cut at the token limit) is not
    accepted: running half a program only produces misleading failures.
    """
    blocks = _FENCE_RE.findall(text)
    if not blocks:
        return None
    python_blocks = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python_blocks:
        return python_blocks[-1]
    return blocks[-1][1]
