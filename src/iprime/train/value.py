"""A value model for PPO with GAE: the policy's transformer body plus a scalar head."""

from __future__ import annotations

import copy

import torch
from torch import nn

from iprime.models.logprobs import position_ids_from_mask


class ValueModel(nn.Module):
    """``V(s_t)`` for every response token: a linear head on the hidden state that predicts it.

    Aligned like :func:`iprime.models.response_logprobs`: the value of response token ``t`` is
    read at column ``P-1+t``, the state in which token ``t`` is chosen.
    """

    def __init__(self, causal_lm: nn.Module) -> None:
        super().__init__()
        lm = copy.deepcopy(causal_lm)
        self.body = lm.get_decoder()
        hidden = lm.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
        """``[B, P+T]`` ids and mask -> ``[B, T]`` values (float32)."""
        L = input_ids.shape[1]
        ids, mask = input_ids[:, :-1], attention_mask[:, :-1]
        out = self.body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
        h = out.last_hidden_state[:, L - 1 - response_len :]
        return self.head(h).squeeze(-1).float()
