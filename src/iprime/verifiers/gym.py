"""reasoning-gym adapter: procedural tasks as a prompt source plus scorer.

``GymTask("basic_arithmetic", size=1000, seed=0)`` wraps
``reasoning_gym.create_dataset``. Its rows are plain dicts
(``{"prompt", "answer", "metadata", "entry"}``) that a trainer can feed to a
policy, and :meth:`GymTask.score` / :class:`GymVerifier` turn a model response
into the dataset's own reward (``dataset.score_answer``) after extracting the
answer from ``<answer>...</answer>`` (or, failing that, the last
``\\boxed{}``).

reasoning-gym is imported lazily, so the rest of ``iprime.verifiers`` works
without it; using this module without it raises an ``ImportError`` saying
what to install.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from iprime.data.boxed import last_boxed

from .extract import answer_tag
from .result import VerifyResult

__all__ = ["GymTask", "GymVerifier", "extract_gym_answer", "DEFAULT_INSTRUCTION"]

# Appended to each question so the policy knows how to format its answer.
DEFAULT_INSTRUCTION = "Think step by step, then give only the final answer inside <answer></answer> tags."


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("iprime.verifiers.gym needs reasoning-gym: pip install 'reasoning-gym>=0.1.19'") from exc
    return reasoning_gym


def extract_gym_answer(response: str) -> str | None:
    """Last ``<answer>`` tag content, else last ``\\boxed{}`` content, else ``None``."""
    tagged = answer_tag(response)
    if tagged is not None:
        return tagged
    return last_boxed(response)


class GymTask:
    """A reasoning-gym dataset as a prompt source with its own scorer.

    Args:
        name: dataset name, e.g. ``"basic_arithmetic"`` or ``"chain_sum"``
            (``reasoning_gym.factory.DATASETS`` lists them all).
        size: number of procedurally generated rows.
        seed: generator seed; the same (name, size, seed, config) gives the
            same rows.
        instruction: text appended to each question in ``prompt``.
        **config: extra dataset options passed to ``create_dataset``.
    """

    def __init__(
        self, name: str, size: int = 500, seed: int = 0, instruction: str = DEFAULT_INSTRUCTION, **config: Any
    ):
        rg = _reasoning_gym()
        self.name = name
        self.instruction = instruction
        try:
            self.dataset = rg.create_dataset(name, size=size, seed=seed, **config)
        except ValueError as exc:
            raise ValueError(f"reasoning-gym could not create dataset {name!r}: {exc}") from exc

    def __len__(self) -> int:
        return len(self.dataset)

    def row(self, index: int) -> dict:
        """One prompt row: ``prompt``, ``answer`` (reference), ``metadata``, ``entry``.

        ``entry`` is the raw reasoning-gym entry; pass it back as the
        reference when scoring.
        """
        entry = self.dataset[index]
        prompt = entry["question"] if not self.instruction else f"{entry['question']}\n\n{self.instruction}"
        return {
            "prompt": prompt,
            "answer": entry.get("answer"),
            "metadata": dict(entry.get("metadata", {}), dataset=self.name, index=index),
            "entry": entry,
        }

    def __iter__(self) -> Iterator[dict]:
        return (self.row(i) for i in range(len(self)))

    def score(self, response: str, entry: Mapping[str, Any]) -> float:
        """The dataset's reward for ``response`` (0.0 when no answer is found)."""
        return self.score_detailed(response, entry).score

    def score_detailed(self, response: str, entry: Mapping[str, Any]) -> VerifyResult:
        start = time.monotonic()
        answer = extract_gym_answer(response)
        if answer is None:
            return VerifyResult(0.0, 0, 1, "no <answer> tag or \\boxed{} found", time.monotonic() - start)
        score = float(self.dataset.score_answer(answer, dict(entry)))
        reason = "correct" if score >= 1.0 else f"dataset score {score:g} for answer {answer[:100]!r}"
        return VerifyResult(score, int(score >= 1.0), 1, reason, time.monotonic() - start)


# (name, config) -> the size-1 GymTask that scores that dataset, one per process: a verifier is
# unpickled afresh for every sample a worker scores, and must not rebuild its dataset each time.
_SCORING_TASKS: dict[tuple[str, str], GymTask] = {}


def _scoring_task(name: str, config: Mapping[str, Any]) -> GymTask:
    key = (name, repr(sorted(config.items())))
    task = _SCORING_TASKS.get(key)
    if task is None:
        task = _SCORING_TASKS[key] = GymTask(name, size=1, seed=0, **config)
    return task


class GymVerifier:
    """Picklable ``(response, entry) -> float`` verifier for one dataset.

    Scoring only needs the dataset's ``score_answer``, which reads the entry
    it is given; the dataset object (size 1) is built lazily in whichever
    process scores (once per process and dataset), so instances can be sent
    to worker processes.

    The reference is the reasoning-gym entry (``GymTask.row(i)["entry"]``):
    at least ``answer``; some datasets' scorers also read ``metadata``.
    """

    def __init__(self, name: str, **config: Any) -> None:
        self.name = name
        self.config = config
        self._task: GymTask | None = None

    def _get_task(self) -> GymTask:
        if self._task is None:
            self._task = _scoring_task(self.name, self.config)
        return self._task

    def __getstate__(self) -> dict:
        return {"name": self.name, "config": self.config, "_task": None}

    def __call__(self, response: str, reference: Mapping[str, Any]) -> float:
        return self.detailed(response, reference).score

    def detailed(self, response: str, reference: Mapping[str, Any]) -> VerifyResult:
        return self._get_task().score_detailed(response, reference)
