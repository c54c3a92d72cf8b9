"""Pull the final answer or the final code block out of a model response.

Pure string functions with no third-party imports, shared by the math, code
and reasoning-gym verifiers. Every function returns ``None`` when there is
nothing to extract, so callers can score 0 with an explicit reason instead
of guessing. Boxes are read by :func:`iprime.data.boxed.last_boxed`, the one
box reader (lenient here: the last complete box).
"""

from __future__ import annotations

import ast
import re

from iprime.data.boxed import last_boxed

__all__ = [
    "answer_is_fallback",
    "answer_tag",
    "extract_final_answer",
    "extract_code",
    "strip_math_delimiters",
]

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
# An opening fence with no closing one after it: a response cut at the token limit.
_OPEN_FENCE_RE = re.compile(r"```([A-Za-z0-9_+.-]*)[^\n]*\n(.*)\Z", re.DOTALL)
# What the cut may leave of the closing fence: a last line of one or two backticks.
_PARTIAL_FENCE_RE = re.compile(r"\n[ \t]*`{1,2}[ \t]*\Z")
_PYTHON_TAGS = ("python", "py", "python3")


def _parses_as_python(text: str) -> bool:
    """Whether ``text`` is a Python program (parsed only, never run, here on the host)."""
    try:
        compile(text, "<response>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


def extract_code(text: str) -> str | None:
    """The response's program: the last ```python block, else the last fenced block of any language.

    Like PRIME's scorer (``code_util/__init__.py:8``, ``completion.split('```python')[-1]
    .split('```')[0]``), two more shapes run:

    * a final block whose closing fence was cut off (a response at the token limit) runs from
      its opening fence to the end, less a last line of one or two backticks (the cut
      closing fence); a program cut short fails its tests, as it does in the original;
    * a response with no fence at all is the program itself when it parses as Python (the
      original runs any such text; one that does not parse would only fail with a
      ``SyntaxError``, so it is ``None`` here: "no code block found").

    Unlike the original, a ```py (or ```python3, ```Python) block counts as Python, and an
    untagged block is taken when there is no Python one: the original's split reads only the
    exact tag ```python and otherwise runs the prose before the first fence.
    """
    matches = list(_FENCE_RE.finditer(text))
    blocks = [(m.group(1), m.group(2)) for m in matches]
    opened = _OPEN_FENCE_RE.search(text, matches[-1].end() if matches else 0)
    if opened is not None:
        blocks.append((opened.group(1), _PARTIAL_FENCE_RE.sub("\n", opened.group(2))))
    if not blocks:
        if "```" not in text and text.strip() and _parses_as_python(text):
            return text
        return None
    python_blocks = [body for lang, body in blocks if lang.lower() in _PYTHON_TAGS]
    if python_blocks:
        return python_blocks[-1]
    return blocks[-1][1]
