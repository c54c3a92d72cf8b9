"""The built-in task: procedural multi-step integer arithmetic with step-by-step solutions.

A problem is a left-to-right chain of operations, e.g. ``Compute 37 + 48 - 19.``; its solution
writes one operation per line and boxes the result::

    37 + 48 = 85
    85 - 19 = 66
    The answer is \\boxed{66}

Difficulty knobs live in :class:`ArithmeticConfig` (number of operations, operand digits,
operators). Train and test problems never overlap: a problem's split is a function of a hash
of its canonical expression (:func:`problem_split`), so the same problem can never be drawn into
both, whatever the seeds.

SFT solutions can contain *slips* (:func:`write_solution`): a step whose result is written
wrong, with the wrong value carried into the following steps and the final answer, like a
student's arithmetic mistake. Two kinds:

- ``"carry"``: the carries (or borrows) between digit columns are dropped, e.g.
  ``37 + 48 = 75``. Only steps that have a carry can slip this way ("eligible" steps). The
  wrong value is *systematic* (one per step), so a model fit to data with a slip rate above
  0.5 learns the slip as its greedy choice while still sampling the right value often: that is
  the imperfect-but-fixable starting point RL needs.
- ``"random"``: the result is off by a small random amount (+-1, 2 or 10). Every step is
  eligible. Because the wrong values are spread out, greedy decoding mostly averages them away.

Two knobs set how much *credit assignment* matters (both off by default, which leaves the task,
its random draws and every number measured on it unchanged):

- ``carry_every_step``: every operation carries or borrows, so a response holds exactly one
  *decisive* decision per operation (the carry digit a slip drops), and ``min_ops``/``max_ops``
  set how many. Outcome-only RL blames every decision of a wrong response for the one that
  slipped; a dense reward can tell them apart.
- ``filler_words``: each step line starts with that many *free words* drawn uniformly from
  :data:`FILLER_WORDS` (``so then 37 + 48 = 85``): uncertain tokens that never change
  correctness, beside the few decisive ones.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from .boxed import boxed_int_score

OPERATORS = ("+", "-", "*")
FILLER_WORDS = ("so", "then", "now", "next", "thus", "hence", "and", "here")
"""The free words of ``ArithmeticConfig.filler_words``: harmless wording, one choice of eight."""
SLIP_KINDS = ("carry", "random")
SPLITS = ("train", "test")
_RANDOM_SLIP_DELTAS = (-10, -2, -1, 1, 2, 10)


@dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty of the arithmetic task.

    min_ops / max_ops: number of operations per problem (operands = ops + 1).
    digits: every ``+``/``-`` operand after the first has exactly this many digits.
    first_digits: digits of the first operand (default: ``digits``). ``first_digits=2,
        digits=1`` gives ``37 + 8 - 5``: one column of carry per step, easy to learn.
    operators: subset of ``("+", "-", "*")``; ``*`` multiplies by a single digit in
        ``[2, mul_max]`` and parenthesises what precedes it, so precedence never matters.
    allow_negative: if False, a ``-`` whose right operand would exceed the running value is
        turned into ``+``, so every correct intermediate value is >= 0.
    test_fraction: share of the problem space (by hash) that belongs to the test split.
    carry_every_step: draw every operation so that it carries or borrows (:func:`can_slip`
        with ``"carry"``) and leaves a running value above 10, from which the next one can.
        A one-digit running value cannot carry into a column it lacks (``6 + 4 = 10`` has
        no slip), so a one-digit first operand's operation only lifts it above 10: a problem
        has ``n_ops`` decisive steps, one fewer with a one-digit first operand. Needs
        ``allow_negative=False`` (a carry slip is defined on values >= 0).
    filler_words: free words (from :data:`FILLER_WORDS`) that SFT solutions write at the start
        of every step line; they never change correctness. 0: none (the default format).
    """

    min_ops: int = 2
    max_ops: int = 2
    digits: int = 2
    first_digits: int | None = None
    operators: tuple[str, ...] = ("+", "-")
    mul_max: int = 9
    allow_negative: bool = False
    test_fraction: float = 0.2
    carry_every_step: bool = False
    filler_words: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.min_ops <= self.max_ops):
            raise ValueError(f"need 1 <= min_ops <= max_ops, got min_ops={self.min_ops}, max_ops={self.max_ops}")
        if not (1 <= self.digits <= 6):
            raise ValueError(f"digits must be in [1, 6], got {self.digits}")
        if self.first_digits is not None and not (1 <= self.first_digits <= 6):
            raise ValueError(f"first_digits must be in [1, 6] or None, got {self.first_digits}")
        ops = tuple(self.operators)
        if not ops or any(op not in OPERATORS for op in ops) or len(set(ops)) != len(ops):
            raise ValueError(
                f"operators must be a non-empty subset of {OPERATORS} without repeats, got {self.operators!r}"
            )
        object.__setattr__(self, "operators", ops)  # accept lists from YAML/CLI
        if not (2 <= self.mul_max <= 9):
            raise ValueError(f"mul_max must be in [2, 9], got {self.mul_max}")
        if not (0.0 < self.test_fraction < 1.0):
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.carry_every_step and self.allow_negative:
            raise ValueError("carry_every_step needs allow_negative=False (carries are defined on values >= 0)")
        if not (0 <= self.filler_words <= 16):
            raise ValueError(f"filler_words must be in [0, 16], got {self.filler_words}")


@dataclass(frozen=True)
class Step:
    """One line of a solution: ``left op right = result``."""

    left: int
    op: str
    right: int
    result: int

    @property
    def text(self) -> str:
        return f"{self.left} {self.op} {self.right} = {self.result}"


@dataclass(frozen=True)
class Problem:
    """``operands[0] ops[0] operands[1] ops[1] ...`` evaluated left to right."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.operands) != len(self.ops) + 1 or not self.ops:
            raise ValueError(f"need len(operands) == len(ops) + 1 >= 2, got {self.operands} / {self.ops}")
        if any(op not in OPERATORS for op in self.ops):
            raise ValueError(f"unknown operator in {self.ops}; expected one of {OPERATORS}")

    @property
    def expression(self) -> str:
        """Canonical text, e.g. ``(37 + 48) * 3 - 19``: a ``*`` parenthesises a preceding sum."""
        expr = str(self.operands[0])
        additive = False  # does `expr` have a top-level + or -?
        for op, b in zip(self.ops, self.operands[1:]):
            if op == "*" and additive:
                expr = f"({expr})"
            expr = f"{expr} {op} {b}"
            additive = op in "+-"
        return expr

    @property
    def prompt(self) -> str:
        return f"Compute {self.expression}."

    def steps(self) -> list[Step]:
        """The correct solution, one :class:`Step` per operation."""
        out, acc = [], self.operands[0]
        for op, b in zip(self.ops, self.operands[1:]):
            r = apply_op(acc, op, b)
            out.append(Step(acc, op, b, r))
            acc = r
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1].result


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def drop_carries(a: int, op: str, b: int) -> int:
    """``a op b`` computed column by column with every carry/borrow between columns dropped.

    Each lower column keeps ``(a_i op b) mod 10`` (``b_i`` for ``+``/``-``); the top column keeps
    its full value, as a student writes it: ``37 + 48 -> 75``, ``95 + 17 -> 102``,
    ``52 - 17 -> 45``, ``85 * 3 -> 245``. Equals ``a op b`` when no column carries. Only
    defined for ``a, b >= 0`` (``a >= b`` for ``-``) and a single-digit ``b`` for ``*``;
    otherwise returns the exact result (no carry slip is possible).
    """
    exact = apply_op(a, op, b)
    if a < 0 or b < 0 or (op == "-" and a < b) or (op == "*" and b > 9):
        return exact
    da = [int(c) for c in reversed(str(a))]
    db = [int(c) for c in reversed(str(b))] if op != "*" else []
    n = max(len(da), len(db))
    da += [0] * (n - len(da))
    db += [0] * (n - len(db))
    total = 0
    for i in range(n):
        v = da[i] * b if op == "*" else da[i] + db[i] if op == "+" else da[i] - db[i]
        total += (v if i == n - 1 else v % 10) * 10**i
    return total


def can_slip(left: int, op: str, right: int, kind: str) -> bool:
    """Whether a step is eligible for a slip of ``kind`` (a carry slip needs a carry)."""
    if kind == "carry":
        return drop_carries(left, op, right) != apply_op(left, op, right)
    if kind == "random":
        return True
    raise ValueError(f"slip_kind must be one of {SLIP_KINDS}, got {kind!r}")


def slipped_result(left: int, op: str, right: int, kind: str, rng: random.Random) -> int:
    """A wrong result for an eligible step ``left op right`` (see :func:`can_slip`)."""
    exact = apply_op(left, op, right)
    if not can_slip(left, op, right, kind):
        raise ValueError(f"step {left} {op} {right} cannot take a {kind!r} slip")
    if kind == "carry":
        return drop_carries(left, op, right)
    delta = rng.choice(_RANDOM_SLIP_DELTAS)
    # keep a non-negative value non-negative: a sign flip is a different kind of mistake
    if exact >= 0 and exact + delta < 0:
        delta = -delta
    return exact + delta


def problem_split(problem: Problem | str, test_fraction: float) -> str:
    """``"test"`` or ``"train"``, from a hash of the canonical expression.

    ``u = sha256("arith:" + expression)[:8] / 2**64`` is uniform in [0, 1); the problem is a
    test problem iff ``u < test_fraction``. Being a pure function of the problem, the split
    can never put one problem on both sides.
    """
    expr = problem.expression if isinstance(problem, Problem) else str(problem)
    digest = hashlib.sha256(f"arith:{expr}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "test" if u < test_fraction else "train"


def _digit_range(digits: int) -> tuple[int, int]:
    """Inclusive range of ``digits``-digit numbers; one digit means 1..9 (0 makes trivial steps)."""
    return (10 ** (digits - 1) if digits > 1 else 1), 10**digits - 1


_CARRY_TRIES = 200


def _draw_operation(config: ArithmeticConfig, acc: int, rng: random.Random) -> tuple[str, int]:
    """One ``(op, right operand)`` after the running value ``acc``."""
    lo, hi = _digit_range(config.digits)
    op = rng.choice(config.operators)
    b = rng.randint(2, config.mul_max) if op == "*" else rng.randint(lo, hi)
    if op == "-" and not config.allow_negative and b > acc:
        op = "+"
    return op, b


def _draw_carrying_operation(config: ArithmeticConfig, acc: int, rng: random.Random) -> tuple[str, int] | None:
    """An operation after ``acc`` that carries or borrows (when ``acc >= 10``; below, none can)
    and leaves a value above 10, by rejection (``carry_every_step``); None if none was found."""
    for _ in range(_CARRY_TRIES):
        op, b = _draw_operation(config, acc, rng)
        if apply_op(acc, op, b) > 10 and (acc < 10 or can_slip(acc, op, b, "carry")):
            return op, b
    return None


def _sample_carrying_problem(config: ArithmeticConfig, rng: random.Random, n_ops: int) -> Problem:
    """A problem whose every operation carries (see ``carry_every_step``); a chain that reaches a
    value no operation can carry from (e.g. ``1``, or ``20`` with only ``+``) is drawn again."""
    for _ in range(_CARRY_TRIES):
        acc = rng.randint(*_digit_range(config.first_digits or config.digits))
        operands, ops = [acc], []
        for _ in range(n_ops):
            drawn = _draw_carrying_operation(config, acc, rng)
            if drawn is None:
                break
            operands.append(drawn[1])
            ops.append(drawn[0])
            acc = apply_op(acc, *drawn)
        else:
            return Problem(tuple(operands), tuple(ops))
    raise ValueError(
        f"could not draw a problem whose every step carries for {config}; carry_every_step needs operators "
        "that can always carry or borrow, e.g. ('+', '-') with one-digit operands"
    )


def sample_problem(config: ArithmeticConfig, rng: random.Random) -> Problem:
    """One problem drawn from ``config`` (any split)."""
    n_ops = rng.randint(config.min_ops, config.max_ops)
    if config.carry_every_step:
        return _sample_carrying_problem(config, rng, n_ops)
    acc = rng.randint(*_digit_range(config.first_digits or config.digits))
    operands, ops = [acc], []
    for _ in range(n_ops):
        op, b = _draw_operation(config, acc, rng)
        operands.append(b)
        ops.append(op)
        acc = apply_op(acc, op, b)
    return Problem(tuple(operands), tuple(ops))


def generate_problems(
    config: ArithmeticConfig,
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    unique: bool = True,
    max_tries_factor: int = 200,
) -> list[Problem]:
    """``n`` problems of ``split``, deterministic in ``(config, split, seed)``.

    Draws from ``random.Random(seed)`` and rejects problems of the other split (and, with
    ``unique``, repeats). Raises ``ValueError`` when the problem space is too small to supply
    ``n`` of them (after ``max_tries_factor * n`` draws).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # Mixing the split into the seed keeps train and test streams independent for one seed.
    rng = random.Random(f"{seed}:{split}")
    out: list[Problem] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries_factor * max(n, 1):
            raise ValueError(
                f"could only find {len(out)} of {n} {'unique ' if unique else ''}{split} problems "
                f"for {config}; widen the config or ask for fewer"
            )
        p = sample_problem(config, rng)
        expr = p.expression
        if problem_split(expr, config.test_fraction) != split or (unique and expr in seen):
            continue
        seen.add(expr)
        out.append(p)
    return out


@dataclass(frozen=True)
class Solution:
    """A written solution: ``text`` ends in ``\\boxed{final}``; ``final`` differs from the
    problem's answer iff ``n_slips > 0``. ``n_eligible`` counts steps that could have slipped."""

    text: str
    final: int
    steps: tuple[Step, ...]
    n_slips: int
    n_eligible: int

    @property
    def correct(self) -> bool:
        return self.n_slips == 0


def format_solution(steps: list[Step] | tuple[Step, ...], fillers: list[str] | None = None) -> str:
    """One line per step, then the boxed answer; ``fillers[i]`` (free words) opens step line ``i``."""
    lines = [s.text if not fillers or not fillers[i] else f"{fillers[i]} {s.text}" for i, s in enumerate(steps)]
    lines.append(f"The answer is \\boxed{{{steps[-1].result}}}")
    return "\n".join(lines)


def draw_fillers(n_lines: int, words_per_line: int, rng: random.Random) -> list[str]:
    """``n_lines`` strings of ``words_per_line`` words drawn uniformly from :data:`FILLER_WORDS`."""
    return [" ".join(rng.choice(FILLER_WORDS) for _ in range(words_per_line)) for _ in range(n_lines)]


def write_solution(
    problem: Problem,
    *,
    slip_rate: float = 0.0,
    slip_kind: str = "carry",
    rng: random.Random | None = None,
    filler_words: int = 0,
) -> Solution:
    """Step-by-step solution where each *eligible* step slips with probability ``slip_rate``.

    A slipped step writes a wrong result (:func:`slipped_result`) and the following steps
    start from that wrong value, so the slip propagates to the boxed answer: the running
    value stays off the correct one (``+``/``-`` keep the error, ``*`` by >= 2 scales it), so
    ``final != problem.answer`` iff ``n_slips > 0``.

    ``filler_words > 0`` opens every step line with that many free words
    (:func:`draw_fillers`, drawn from ``rng`` after the slips); 0 draws nothing, so the default
    format consumes the same random numbers as before the option existed.
    """
    if filler_words > 0 and rng is None:
        raise ValueError("an rng is required when filler_words > 0")
    if not (0.0 <= slip_rate <= 1.0):
        raise ValueError(f"slip_rate must be in [0, 1], got {slip_rate}")
    if slip_kind not in SLIP_KINDS:
        raise ValueError(f"slip_kind must be one of {SLIP_KINDS}, got {slip_kind!r}")
    if slip_rate > 0 and rng is None:
        raise ValueError("an rng is required when slip_rate > 0")
    steps, acc, n_slips, n_eligible = [], problem.operands[0], 0, 0
    for true_step in problem.steps():
        op, b = true_step.op, true_step.right
        result = apply_op(acc, op, b)
        if can_slip(acc, op, b, slip_kind):
            wrong = slipped_result(acc, op, b, slip_kind, rng or random.Random(0))
            # A second slip could undo the first (e.g. +10 then -10); such a step does not
            # count as eligible, so a solution with a slip never ends on the right answer.
            if wrong != true_step.result:
                n_eligible += 1
                if slip_rate > 0 and rng.random() < slip_rate:
                    result, n_slips = wrong, n_slips + 1
        steps.append(Step(acc, op, b, result))
        acc = result
    fillers = draw_fillers(len(steps), filler_words, rng) if filler_words > 0 else None
    return Solution(format_solution(steps, fillers), acc, tuple(steps), n_slips, n_eligible)


_STEP_LINE = re.compile(r"^\s*(-?\d+) ([+\-*]) (\d+) = (-?\d+)\s*$")
_STEP_LINE_WITH_FILLER = re.compile(r"^\s*(?:[a-z]+ )*(-?\d+) ([+\-*]) (\d+) = (-?\d+)\s*$")
_PROMPT_IN_TEXT = re.compile(r"Compute ([0-9()+\-* ]+)\.")


def problem_from_prompt(prompt: str) -> Problem:
    """The :class:`Problem` behind ``problem.prompt`` (``"Compute (37 + 48) * 3 - 19."``).

    Parentheses are dropped: expressions are evaluated left to right by construction.
    """
    text = prompt.strip()
    if not (text.startswith("Compute ") and text.endswith(".")):
        raise ValueError(f"not an arithmetic task prompt (expected 'Compute <expression>.'): {prompt!r}")
    tokens = text[len("Compute ") : -1].replace("(", " ").replace(")", " ").split()
    try:
        return Problem(tuple(int(t) for t in tokens[0::2]), tuple(tokens[1::2]))
    except ValueError as e:
        raise ValueError(f"cannot parse the expression of {prompt!r}: {e}") from None


def problem_in_text(text: str) -> Problem | None:
    """The :class:`Problem` of the first ``Compute <expression>.`` in ``text`` (e.g. a prompt
    rendered with a chat template), or None when ``text`` holds no arithmetic task prompt."""
    m = _PROMPT_IN_TEXT.search(text)
    return problem_from_prompt(f"Compute {m[1]}.") if m else None


def first_wrong_step(problem: Problem, response: str, *, filler: bool = False) -> int | None:
    """Index of the first line of ``response`` that is not the next correct step, or None.

    Line ``i`` must read exactly ``left op right = result`` of the problem's ``i``-th correct
    step (so a slip is caught on its own line, and a wrong left operand, a skipped step or
    a missing line count as wrong too). With ``filler`` the line may start with free
    lowercase words (``ArithmeticConfig.filler_words``), which never make it wrong. This is
    the ground-truth *process* label a PRM's step rewards can be checked against; lines
    after the steps (the boxed answer) are not looked at.
    """
    pattern = _STEP_LINE_WITH_FILLER if filler else _STEP_LINE
    lines = response.split("\n")
    for i, step in enumerate(problem.steps()):
        m = pattern.match(lines[i]) if i < len(lines) else None
        if m is None or (int(m[1]), m[2], int(m[3]), int(m[4])) != (step.left, step.op, step.right, step.result):
            return i
    return None


def problem_row(problem: Problem, split: str | None = None) -> dict:
    """An RL/eval row: ``{"prompt", "answer", "expression"[, "split"]}`` (answer as a string)."""
    row = {"prompt": problem.prompt, "answer": str(problem.answer), "expression": problem.expression}
    if split is not None:
        row["split"] = split
    return row


@dataclass
class ArithmeticTask:
    """The task as one object: problems, rows, SFT data and the verifier.

    >>> task = ArithmeticTask()
    >>> rows = task.rows("test", 100, seed=0)              # [{"prompt", "answer", ...}]
    >>> sft = task.sft_rows(2000, seed=0)                  # [{"prompt", "response", ...}]
    >>> task.verify(sft[0]["response"], rows[0]["answer"])  # 1.0 or 0.0
    """

    config: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    slip_rate: float = 0.0
    slip_kind: str = "carry"

    def problems(self, split: str, n: int, *, seed: int = 0, unique: bool = True) -> list[Problem]:
        return generate_problems(self.config, n, split=split, seed=seed, unique=unique)

    def rows(self, split: str, n: int, *, seed: int = 0) -> list[dict]:
        return [problem_row(p, split) for p in self.problems(split, n, seed=seed)]

    def sft_rows(self, n: int, *, seed: int = 0, split: str = "train") -> list[dict]:
        """``n`` rows ``{"prompt", "response", "answer", "correct"}`` with slips at ``slip_rate``.

        Problems may repeat (small configs have few distinct problems); a repeated problem
        gets an independent solution, so the model sees both the slip and the right step.
        """
        rng = random.Random(f"{seed}:solutions")
        out = []
        for p in self.problems(split, n, seed=seed, unique=False):
            sol = write_solution(
                p, slip_rate=self.slip_rate, slip_kind=self.slip_kind, rng=rng, filler_words=self.config.filler_words
            )
            out.append({**problem_row(p, split), "response": sol.text, "correct": sol.correct})
        return out

    @staticmethod
    def verify(response: str, answer: str | int) -> float:
        """Exact boxed-integer match (:func:`iprime.data.boxed.boxed_int_score`)."""
        return boxed_int_score(response, answer)

    def corpus(self, n: int = 2000, *, seed: int = 0) -> list[str]:
        """Sample texts (prompts and solutions) to fit a tokenizer to the task."""
        texts = []
        for row in self.sft_rows(n, seed=seed):
            texts += [row["prompt"], row["response"]]
        return texts


# ------------------------------------------------------------------ the quickstart's task

QUICKSTART_TASK = ArithmeticConfig(min_ops=4, max_ops=4, digits=1, first_digits=1, operators=("+", "-"))
"""The task at the difficulty of the CPU quickstart (:data:`iprime.presets.QUICKSTART`): four
single-digit ``+``/``-`` operations, e.g. ``Compute 7 + 5 - 3 + 8 - 6.``"""

QUICKSTART_SEED = 0
"""The quickstart's seed: SFT data, tokenizer corpus and model use it, held-out rows ``+ 1``."""

QUICKSTART_EVAL_PROMPTS = 200
"""Held-out problems the quickstart evaluates on (also the ``arithmetic`` benchmark)."""


def held_out_rows(
    config: ArithmeticConfig = QUICKSTART_TASK, n: int = QUICKSTART_EVAL_PROMPTS, seed: int = QUICKSTART_SEED
) -> list[dict]:
    """The ``n`` test-split rows a run seeded ``seed`` evaluates on (drawn with ``seed + 1``).

    With the defaults these are the quickstart's held-out rows, which ``iprime eval
    --benchmarks arithmetic`` also scores. Slips only affect SFT solutions, so the rows depend
    on the task config alone.
    """
    return ArithmeticTask(config=config).rows("test", n, seed=seed + 1)
