"""Prompt rendering shared by SFT, rollouts, evaluation and the PRM scorer, so all see the exact same prompt text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def render_prompt(tokenizer, prompt: str | Sequence[Mapping]) -> str:
    """The chat-template text a response continues from.

    ``prompt`` is a user message string or a list of ``{"role", "content"}`` messages; the
    result ends with the assistant header (``add_generation_prompt=True``). A tokenizer
    without a chat template is an error rather than a silent raw-text fallback, because a
    model trained on one format and sampled with another looks broken for no visible reason.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("tokenizer has no chat_template; set one (e.g. ChatML) before SFT or evaluation")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
