"""Pull the final answer or the final code block out of a model response.

Pure string functions with no third-party imports, shared by the math, code
and reasoning-gym verifiers. Every function returns ``None`` when there is
nothing to extract, so callers can score 0 with an explicit reason instead
of guessing. Boxes are read by :func:`iprime.data.boxed.last_boxed`, the one
box reader (lenient here: the last complete box).
"""

from __future__ import annotations

import ast
import os
import re

from iprime.data.boxed import last_boxed

__all__ = [
    "answer_is_fallback",
    "answer_tag",
    "extract_final_answer",
    "extract_code",
    "final_statement_answer",
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


# Where a final statement gives its value: its last "=", ": ", or "is" / "are" / "be" / "get" as
# words (PRIME's match_answer, math_util/__init__.py:362, looks for the same markers, but as
# substrings: its "are " matches inside "square", so "The area is 25 square units." gives "units.").
_STATEMENT_MARKER_RE = re.compile(r"=|:(?=\s)|\b(?:is|are|be|get)\b")
# A sentence ends at ". ", "! " or "? "; "3.5" has no space after its point.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
_PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)")
# A response ending in a display block, "\[ x = 5 \]" or "$$ x = 5 $$" over several lines.
_TRAILING_DISPLAY_RE = re.compile(r"(?:\\\[((?:(?!\\\[|\\\]).)*)\\\]|\$\$([^$]*)\$\$)[\s.]*$", re.DOTALL)


def _drop_unpaired_delimiters(s: str) -> str:
    """``\\frac{1}{2}$`` -> ``\\frac{1}{2}``: a marker split ``$x = \\frac{1}{2}$`` inside its
    math delimiters, leaving the closing one without its opener."""
    s = s.strip()
    if s.count("$") % 2 == 1:
        s = s[1:] if s.startswith("$") else s[:-1] if s.endswith("$") else s
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.endswith(right) and left not in s:
            s = s[: -len(right)]
    return s.strip()


def _final_statement(text: str) -> tuple[str, bool] | None:
    """``(the last statement, whether it is all math)``: a trailing display block's content,
    else the last sentence of the last non-empty line; ``None`` for an empty text."""
    display = _TRAILING_DISPLAY_RE.search(text)
    if display is not None:
        return " ".join((display.group(1) if display.group(1) is not None else display.group(2)).split()), True
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    return _SENTENCE_END_RE.split(lines[-1])[-1].strip(), False


def final_statement_answer(text: str) -> str | None:
    """The value a response's last statement gives, for responses that neither box their
    answer nor say "the answer is": ``"... so x = 5."`` -> ``"5"``.

    The statement is a trailing display block (``\\[ ... \\]``, ``$$ ... $$``), else the last
    sentence of the last non-empty line. It is read after its last marker (``=``, ``: ``, or
    the words ``is``, ``are``, ``be``, ``get``); a statement without a marker counts only when
    it is all math (a display block, a plain number, or wholly inside ``$...$`` /
    ``\\(...\\)``). The value must contain a digit, as PRIME's ``match_answer`` requires
    (math_util/__init__.py:370). Only the last statement is read, so a response that stops on
    an intermediate step ("2x = 10. Now divide by 2.") has no answer rather than its
    penultimate value (PRIME's reader keeps the text before the last ". ": for
    ``"2x = 10. So x = 5."`` it grades ``10``)."""
    found = _final_statement(text)
    if found is None:
        return None
    statement, all_math = found
    markers = list(_STATEMENT_MARKER_RE.finditer(statement))
    if markers:
        value = strip_math_delimiters(_drop_unpaired_delimiters(statement[markers[-1].end() :].rstrip(".,;!")))
    else:
        value = strip_math_delimiters(statement)
        delimited = value != statement.rstrip(".").rstrip()
        if not (all_math or delimited or _PLAIN_NUMBER_RE.fullmatch(value)):
            return None  # words, not a stated value
    value = value.rstrip(",;").strip()
    return value if any(ch.isdigit() for ch in value) else None


def extract_final_answer(text: str) -> str | None:
    """Final math answer: last box first, else the "The answer is" sentence, else the value
    the last sentence states (:func:`final_statement_answer`: ``"... so x = 5."``).

    Boxes win because they are the format the prompts ask for; the fallbacks only rescue
    responses that forgot to box (PRIME's reward reads them too: ``match_answer``,
    ``training/verl/utils/reward_score/evaluation_utils/math_util/__init__.py:333``).
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrase = answer_is_fallback(text)
    if phrase is not None:
        return phrase
    return final_statement_answer(text)


def strip_math_delimiters(text: str) -> str:
    """Remove surrounding ``$``/``\\(``/``\\[`` delimiters and trailing periods.

    Works on the bounds ``[i, j)`` of ``text`` rather than on sliced copies, so nested delimiters
    and runs of periods cost time linear in the text (slicing a copy per layer was quadratic:
    100k nested ``\\( \\)`` took seconds)."""
    i, j = _strip_bounds(text, 0, len(text))
    changed = True
    while changed and i < j:
        changed = False
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if j - i >= len(left) + len(right) and text.startswith(left, i, j) and text.endswith(right, i, j):
                i, j = _strip_bounds(text, i + len(left), j - len(right))
                changed = True
        # A final answer never ends in a period; it is the sentence's (the spaces between go too).
        while i < j and (text[j - 1] == "." or text[j - 1].isspace()):
            j -= 1
            changed = True
    return text[i:j]


def _strip_bounds(text: str, i: int, j: int) -> tuple[int, int]:
    """``[i, j)`` less the whitespace at both ends (``text[i:j].strip()``, without the copy)."""
    while i < j and text[i].isspace():
        i += 1
    while j > i and text[j - 1].isspace():
        j -= 1
    return i, j


# A fence's language tag: the longest run of these characters right after its backticks.
_TAG_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+.-")
_PYTHON_TAGS = ("python", "py", "python3")


def _parses_as_python(text: str) -> bool:
    """Whether ``text`` is a Python program (parsed only, never run, here on the host)."""
    try:
        compile(text, "<response>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


def _fence_tag(text: str, start: int, end: int) -> str:
    """The language tag at ``text[start:end]`` (an opening fence's line after its backticks)."""
    stop = start
    while stop < end and text[stop] in _TAG_CHARS:
        stop += 1
    return text[start:stop]


def _drop_cut_fence(body: str, mark: str = "`") -> str:
    """``body`` less a last line of one or two fence characters (a closing fence cut at the token
    limit), between spaces or tabs: ``"x = 1\\n ``\t"`` -> ``"x = 1\\n"``."""
    cut = body.rstrip(" \t")
    ticks = len(cut) - len(cut.rstrip(mark))
    if ticks not in (1, 2):
        return body
    line_start = cut[:-ticks].rstrip(" \t")
    if not line_start.endswith("\n"):
        return body
    return line_start


# What may stand beside a closing fence on its line.
_FENCE_LINE_SPACE = frozenset(" \t\r")


def _run_end(text: str, start: int, mark: str) -> int:
    """The end of the run of ``mark`` characters that starts at ``text[start]``."""
    end = start
    while end < len(text) and text[end] == mark:
        end += 1
    return end


def _closes_line(text: str, start: int, end: int) -> bool:
    """Whether the fence run ``text[start:end]`` can close a block: nothing but spaces before it
    on its line (a fence line, as Markdown has it), or nothing but spaces after it (a fence
    glued to the last line of code, ``return x```). A run inside a line of code, such as the
    one in ``s = "```"``, is part of the program. Each scan stops at the first other character,
    so the scans of successive runs never overlap: linear in all."""
    before = start - 1
    while before >= 0 and text[before] in _FENCE_LINE_SPACE:
        before -= 1
    if before < 0 or text[before] == "\n":
        return True
    after = end
    while after < len(text) and text[after] in _FENCE_LINE_SPACE:
        after += 1
    return after == len(text) or text[after] == "\n"


def _fenced_blocks(text: str, fence: str = "```") -> list[tuple[str, str]]:
    """``[(language tag, body), ...]`` of the response's fenced blocks, in order; in one pass.

    ``fence`` is ```` ``` ```` or ``~~~`` (Markdown's two fences). A block opens at a run of three
    or more fence characters; its language tag is the run of tag characters after them, the rest
    of that line is ignored, and its body runs from the next line to the closing fence: the next
    run of three or more that stands alone at the start of its line or at the end of its line
    (:func:`_closes_line`), so a fence inside a string of the program (``s = "```"``) does not
    end it. A last opening fence without a closing one (a response cut at the token limit)
    gives a block to the end of the text, less a cut closing fence (:func:`_drop_cut_fence`).
    Each search starts where the previous one ended, and every run is skipped whole, so the
    work is linear in the response: the regular expressions this replaces
    (``````([A-Za-z0-9_+.-]*)[^\\n]*\\n(.*?)`````` and its unclosed twin) rescanned the rest
    of the text from every backtick of a fence without a newline after it, quadratic in a
    response of backticks. Where a fence has no newline after it, no later one has, and where a
    body has no closing fence, no later body has, so stopping there loses no block.
    """
    mark = fence[0]
    blocks: list[tuple[str, str]] = []
    pos = 0
    while True:
        opening = text.find(fence, pos)
        if opening < 0:
            return blocks
        tag_start = _run_end(text, opening, mark)
        newline = text.find("\n", tag_start)
        if newline < 0:
            return blocks
        tag = _fence_tag(text, tag_start, newline)
        search = newline + 1
        while True:
            closing = text.find(fence, search)
            if closing < 0:
                blocks.append((tag, _drop_cut_fence(text[newline + 1 :], mark)))
                return blocks
            search = _run_end(text, closing, mark)
            if _closes_line(text, closing, search):
                break
        blocks.append((tag, text[newline + 1 : closing]))
        pos = search


def _dedent(code: str) -> str:
    """``code`` less the indentation all its non-blank lines share: a block written inside a
    Markdown list is indented as a whole, which no Python program is (it would not compile)."""
    lines = code.split("\n")
    margins = [line[: len(line) - len(line.lstrip(" \t"))] for line in lines if line.strip()]
    margin = os.path.commonprefix(margins) if margins else ""  # linear: compares min and max only
    if not margin:
        return code
    return "\n".join(line[len(margin) :] if line.startswith(margin) else line.lstrip(" \t") for line in lines)


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
    exact tag ```python and otherwise runs the prose before the first fence. Three more shapes
    a policy writes run as it meant them: a fence inside the program's strings does not end the
    block (:func:`_fenced_blocks`); a block indented as a whole (inside a numbered list) is
    dedented (:func:`_dedent`); a response fenced only with ``~~~`` is read as one fenced with
    backticks.
    """
    blocks = _fenced_blocks(text)
    if not blocks and "```" not in text and "~~~" in text:
        blocks = _fenced_blocks(text, "~~~")
    if not blocks:
        if "```" not in text and text.strip() and _parses_as_python(text):
            return text
        return None
    python_blocks = [body for lang, body in blocks if lang.lower() in _PYTHON_TAGS]
    return _dedent(python_blocks[-1] if python_blocks else blocks[-1][1])
