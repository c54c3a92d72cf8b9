"""The implicit PRM as a scorer: per-token and per-step rewards of given responses.

For a prompt ``x`` and response tokens ``y_1..y_T`` (the response text tokenized on its own,
plus the EOS token when the response ended, exactly as SFT and rollouts lay it out)::

    r_t    = beta * (log pi_phi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))      token reward
    R_step = sum of r_t over the step's tokens                                     step reward
    R      = sum_t r_t = beta * log(pi_phi(y|x) / pi_ref(y|x))                     sequence reward

``sigmoid(R)`` is the PRM's probability that the response is correct (what the CE loss trains).
Log-probs come from :func:`iprime.models.response_logprobs`, rewards from
:func:`iprime.algo.implicit_process_rewards` (``"token"`` and ``"step"`` granularity), so this
tool and the trainer compute the same numbers.

Steps are found on the response *text*: a step ends at the token in which an occurrence of
``step_delimiter`` (default :data:`~iprime.prm.metadata.DEFAULT_STEP_DELIMITER`, ``"\\n"``) ends, and
the last token closes the final step. Text, not token ids, because BPE merges delimiters with
their neighbours (``".\\n\\n"`` can be one token), which an id-pattern search would miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from iprime.algo import implicit_process_rewards
from iprime.data.chat import render_prompt
from iprime.models import load_model, load_tokenizer, response_logprobs

from .metadata import DEFAULT_BETA, DEFAULT_STEP_DELIMITER, resolve_prm_settings

__all__ = ["EncodedResponse", "ImplicitPRM", "ResponseScore", "collate_responses", "encode_response"]


@dataclass
class EncodedResponse:
    """One (prompt, response) pair as token ids.

    prompt_ids: the chat-template rendering of the prompt (generation prompt included).
    response_ids: the response's tokens, then EOS if ``ended``.
    spans: ``(start, end)`` character span in ``response`` of every response token; the EOS
        token has the empty span ``(len, len)``.
    """

    prompt: str
    response: str
    prompt_ids: list[int]
    response_ids: list[int]
    spans: list[tuple[int, int]]
    ended: bool


def encode_response(
    tokenizer, prompt, response: str, *, ended: bool = True, max_response_tokens: int | None = None
) -> EncodedResponse:
    """Tokenize like SFT / rollouts: ``[chat_template(prompt) | response | eos if ended]``.

    ``prompt`` is a user message string or a list of chat messages. ``max_response_tokens``
    truncates the response (the EOS is then dropped: a cut response did not end).
    """
    rendered = render_prompt(tokenizer, prompt)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = list(enc["input_ids"]), [tuple(s) for s in enc["offset_mapping"]]
    if max_response_tokens is not None and len(ids) + int(ended) > max_response_tokens:
        ids, spans, ended = ids[:max_response_tokens], spans[:max_response_tokens], False
    if ended:
        ids.append(int(tokenizer.eos_token_id))
        spans.append((len(response), len(response)))
    if not ids:
        raise ValueError("response is empty (no tokens and no EOS): nothing to score")
    if not prompt_ids:
        raise ValueError("prompt renders to no tokens")
    # a message list is kept as the text the model read (its chat-template rendering)
    return EncodedResponse(prompt if isinstance(prompt, str) else rendered, response, prompt_ids, ids, spans, ended)


def collate_responses(batch: Sequence[EncodedResponse], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids, attention_mask`` [B, P+T] (left-padded prompt | right-padded response) and
    the response mask [B, T]: the layout :func:`iprime.models.response_logprobs` expects."""
    P = max(len(e.prompt_ids) for e in batch)
    T = max(len(e.response_ids) for e in batch)
    B = len(batch)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    for b, e in enumerate(batch):
        p, r = len(e.prompt_ids), len(e.response_ids)
        ids[b, P - p : P] = torch.tensor(e.prompt_ids)
        ids[b, P : P + r] = torch.tensor(e.response_ids)
        attn[b, P - p : P + r] = 1
    return ids, attn, attn[:, P:].clone()


def step_end_indices(encoded: EncodedResponse, delimiter: str | None) -> list[int]:
    """Indices of the tokens that end a step (see the module docstring); always includes the last."""
    T = len(encoded.response_ids)
    ends: set[int] = {T - 1}
    if delimiter:
        text = encoded.response
        pos = text.find(delimiter)
        t = 0
        while pos >= 0:
            last_char = pos + len(delimiter) - 1
            while t < T and encoded.spans[t][1] <= last_char:  # spans are increasing
                t += 1
            if t < T:
                ends.add(t)
            pos = text.find(delimiter, pos + len(delimiter))
    return sorted(ends)


@dataclass
class ResponseScore:
    """Implicit rewards of one response. Lists are per response token (length T)."""

    prompt: str
    response: str
    tokens: list[str]  # the text of each token ("" for the EOS token; see `token_ids`)
    token_ids: list[int]
    prm_logp: list[float]
    ref_logp: list[float]
    rewards: list[float]  # r_t = beta * (prm_logp - ref_logp)
    step_ends: list[int]  # index of each step's last token
    step_rewards: list[float]  # sum of r_t over each step
    seq_reward: float  # sum of all r_t
    beta: float
    ended: bool  # the response ends with EOS (scored as its last token)

    def to_dict(self) -> dict:
        return asdict(self)


class ImplicitPRM:
    """A (PRM, reference) pair of causal LMs with one tokenizer, scoring responses.

    prm, ref: transformers causal LMs (same vocabulary). beta: the reward scale.
    batch_size: responses per forward pass. Models are put in eval mode; scoring runs
    under ``torch.no_grad``.
    """

    def __init__(
        self, prm, ref, tokenizer, beta: float = DEFAULT_BETA, *, batch_size: int = 8, chunk_size: int = 1024
    ) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for name, m in (("prm", prm), ("ref", ref)):
            size = m.get_input_embeddings().weight.shape[0]
            if size < len(tokenizer):
                raise ValueError(f"{name} model has {size} embeddings but the tokenizer has {len(tokenizer)} tokens")
        self.prm, self.ref, self.tokenizer = prm, ref, tokenizer
        self.beta, self.batch_size, self.chunk_size = float(beta), batch_size, chunk_size

    @classmethod
    def from_pretrained(
        cls,
        prm_path: str | Path,
        ref_path: str | Path | None = None,
        beta: float | None = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 8,
    ) -> ImplicitPRM:
        """Load both models; their tokenizers must have the same vocabulary (rewards compare
        the two models' log-probs of the *same* token ids).

        ``ref_path`` / ``beta`` left ``None`` are read from the PRM's saved metadata
        (:func:`iprime.prm.metadata.resolve_prm_settings`; ``beta`` falls back to
        :data:`~iprime.prm.metadata.DEFAULT_BETA`); a reference given nowhere is an error.
        """
        settings = resolve_prm_settings(prm_path, beta=beta, reference=ref_path)
        if settings.reference is None:
            raise ValueError(
                f"no reference model for the PRM {str(prm_path)!r}: pass one (--ref), or save the PRM "
                "with its metadata (iprime prm train writes iprime_prm.json beside the weights)"
            )
        ref_path, beta = settings.reference, settings.beta

        tok, ref_tok = load_tokenizer(prm_path), load_tokenizer(ref_path)
        if tok.get_vocab() != ref_tok.get_vocab():
            raise ValueError(f"PRM {str(prm_path)!r} and reference {str(ref_path)!r} have different vocabularies")
        prm = load_model(prm_path, dtype=dtype, device=device).eval()
        ref = prm if str(ref_path) == str(prm_path) else load_model(ref_path, dtype=dtype, device=device).eval()
        return cls(prm, ref, tok, beta, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.prm.parameters()).device

    def encode(self, prompt, response: str, *, ended: bool = True) -> EncodedResponse:
        return encode_response(self.tokenizer, prompt, response, ended=ended)

    @torch.no_grad()
    def logprobs(self, batch: Sequence[EncodedResponse]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``prm_logp, ref_logp, mask``, each [B, T] on the CPU (float32 / long)."""
        ids, attn, mask = collate_responses(batch, int(self.tokenizer.pad_token_id))
        ids, attn = ids.to(self.device), attn.to(self.device)
        T = mask.shape[1]
        out = []
        for model in (self.prm, self.ref):
            was_training = model.training
            model.eval()
            try:
                out.append(response_logprobs(model, ids, attn, T, chunk_size=self.chunk_size).float().cpu())
            finally:
                model.train(was_training)
        return out[0], out[1], mask

    def score_encoded(
        self, encoded: Sequence[EncodedResponse], *, step_delimiter: str | None = DEFAULT_STEP_DELIMITER
    ) -> list[ResponseScore]:
        """Scores of already-encoded responses, in input order."""
        results: list[ResponseScore] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = list(encoded[start : start + self.batch_size])
            prm_logp, ref_logp, mask = self.logprobs(batch)
            rewards = implicit_process_rewards(prm_logp, ref_logp, mask, self.beta)
            ends = [step_end_indices(e, step_delimiter) for e in batch]
            step = implicit_process_rewards(prm_logp, ref_logp, mask, self.beta, "step", ends)
            for b, e in enumerate(batch):
                T = len(e.response_ids)
                prev = 0
                tokens = []
                for s, t in e.spans:  # byte-level BPE can split a character over two tokens
                    tokens.append(e.response[max(s, prev) : t])
                    prev = max(prev, t)
                results.append(
                    ResponseScore(
                        prompt=e.prompt,
                        response=e.response,
                        tokens=tokens,
                        token_ids=list(e.response_ids),
                        prm_logp=prm_logp[b, :T].tolist(),
                        ref_logp=ref_logp[b, :T].tolist(),
                        rewards=rewards[b, :T].tolist(),
                        step_ends=ends[b],
                        step_rewards=[float(step[b, i]) for i in ends[b]],
                        seq_reward=float(rewards[b, :T].sum()),
                        beta=self.beta,
                        ended=e.ended,
                    )
                )
        return results

    def score(
        self,
        prompts: Sequence,
        responses: Sequence[str],
        *,
        ended: bool | Sequence[bool] = True,
        step_delimiter: str | None = DEFAULT_STEP_DELIMITER,
    ) -> list[ResponseScore]:
        """Token/step/sequence rewards of ``responses[i]`` to ``prompts[i]``.

        ended: whether each response finished with EOS (then EOS is scored as its last token,
        as in training rollouts); False for responses cut at a length limit.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        flags = [ended] * len(responses) if isinstance(ended, bool) else list(ended)
        if len(flags) != len(responses):
            raise ValueError(f"{len(flags)} 'ended' flags for {len(responses)} responses")
        encoded = [self.encode(p, r, ended=f) for p, r, f in zip(prompts, responses, flags)]
        return self.score_encoded(encoded, step_delimiter=step_delimiter)

    def sequence_rewards(
        self, prompts: Sequence, responses: Sequence[str], *, ended: bool | Sequence[bool] = True
    ) -> list[float]:
        """Only ``R = beta * sum_t log(pi_phi / pi_ref)`` per response (best-of-N, voting)."""
        return [s.seq_reward for s in self.score(prompts, responses, ended=ended, step_delimiter=None)]
