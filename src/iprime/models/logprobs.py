"""Per-token log-probabilities of a response under a causal LM, computed in chunks.

Layout of a batch (B rows, prompt width P, response width T):

    input_ids  [B, P+T] = [ left-padded prompt | right-padded response ]
    response   = input_ids[:, P:]               (the last T columns)

Token `input_ids[:, P+j]` is predicted by the hidden state at column `P+j-1`, so

    logp[b, j] = log_softmax(lm_head(h[b, P+j-1]) / temperature)[input_ids[b, P+j]]

The [B, T, V] float32 logits are never materialised at once: hidden rows are pushed
through the lm_head `chunk_size` rows at a time, and with autograd on each chunk is
checkpointed (recomputed in backward), so peak memory is one [chunk_size, V] block.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] 0/1 mask -> [B, L] positions: cumsum(mask) - 1, clamped at 0.

    With left padding the first real token gets position 0, as if unpadded; pad columns
    get 0 (they are masked out anyway).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _unwrap(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Return (decoder body, lm_head) of a causal LM, peft-wrapped or not.

    The body maps input_ids -> last_hidden_state [B, L, H]; the lm_head maps [.., H] -> [.., V].
    Both are looked up through the standard transformers accessors (peft forwards attribute
    access to the wrapped model, and LoRA layers are injected in place, so calling these
    modules directly still applies the adapters).
    """
    get_head = getattr(model, "get_output_embeddings", None)
    get_body = getattr(model, "get_decoder", None)
    head = get_head() if callable(get_head) else None
    body = get_body() if callable(get_body) else None
    if head is None or body is None or body is model:
        raise ValueError(
            f"cannot find the decoder body and lm_head of {type(model).__name__}: "
            "expected a transformers causal LM (optionally peft-wrapped) with "
            "get_decoder() and get_output_embeddings()"
        )
    return body, head


def _chunk_logp(
    head: nn.Module, h: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """h [c, H], targets [c] -> (logp [c], entropy [c] or empty). Logits in float32."""
    z = head(h).float() / temperature  # [c, V]
    lse = torch.logsumexp(z, dim=-1)  # [c]
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if with_entropy:
        # H = -sum p log p = logsumexp(z) - sum p * z
        entropy = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
    else:
        entropy = z.new_empty(0)
    return logp, entropy


def response_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob (and optionally entropy) of each response token; differentiable.

    input_ids, attention_mask: [B, P+T], left-padded prompt then right-padded response;
        the response is the last T = `response_len` columns (P >= 1).
    temperature: logits are divided by it before the softmax (use the sampling temperature
        so PPO ratios compare like with like).
    chunk_size: rows (of the B*T flattened response positions) per lm_head call.
    Returns logp [B, T] float32, or (logp, entropy) each [B, T] if `return_entropy`.
    Values at masked (padding) response positions are computed but meaningless: mask them.
    """
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be [B, P+T]; got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    B, L = input_ids.shape
    T = int(response_len)
    if not 0 < T < L:
        raise ValueError(f"response_len must be in [1, {L - 1}] (need >= 1 prompt column), got {response_len}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    body, head = _unwrap(model)
    # The last column predicts nothing we score, so the body only sees L-1 columns.
    ids, mask = input_ids[:, :-1], attention_mask[:, :-1]
    out = body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    h = out.last_hidden_state[:, L - 1 - T :]  # [B, T, H]: hidden at columns P-1 .. P+T-2
    h = h.reshape(B * T, -1)
    targets = input_ids[:, L - T :].reshape(B * T)

    # Checkpoint each chunk when autograd is recording: otherwise every chunk's [c, V]
    # softmax would be saved for backward and the chunking would save nothing.
    use_ckpt = torch.is_grad_enabled() and h.requires_grad
    logps, ents = [], []
    for start in range(0, B * T, chunk_size):
        args = (head, h[start : start + chunk_size], targets[start : start + chunk_size], temperature, return_entropy)
        lp, en = checkpoint(_chunk_logp, *args, use_reentrant=False) if use_ckpt else _chunk_logp(*args)
        logps.append(lp)
        ents.append(en)
    logp = torch.cat(logps).view(B, T)
    if return_entropy:
        return logp, torch.cat(ents).view(B, T)
    return logp
