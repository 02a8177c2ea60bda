"""Discrete actions as vocabulary tokens (OpenVLA / RoboVLMs style).

Each normalised action value in [-1, 1] is clipped and put into one of ``n_bins`` uniform bins;
bin ``k`` is represented by the k-th *least used* vocabulary id, i.e. ids counted down from the end
of the embedding matrix, skipping the tokenizer's special tokens so no control token is reused.
"""
from __future__ import annotations

import torch


class ActionTokenizer:
    def __init__(self, vocab_size: int, special_ids: set[int] | None = None, n_bins: int = 256,
                 low: float = -1.0, high: float = 1.0):
        special_ids = special_ids or set()
        ids = [i for i in range(vocab_size - 1, -1, -1) if i not in special_ids][:n_bins]
        if len(ids) < n_bins:
            raise ValueError(f"vocabulary of {vocab_size} is too small for {n_bins} action bins")
        self.n_bins, self.low, self.high = n_bins, low, high
        self.token_ids = torch.tensor(ids, dtype=torch.long)  # [n_bins], bin k -> token_ids[k]
        # token id -> bin index (or -1) as a dense lookup table
        self._bin_of = torch.full((vocab_size,), -1, dtype=torch.long)
        self._bin_of[self.token_ids] = torch.arange(n_bins)
        edges = torch.linspace(low, high, n_bins + 1)
        self.centers = (edges[:-1] + edges[1:]) / 2  # [n_bins]

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """float [...] in [low, high] -> token ids [...] (values outside are clipped first)."""
        x = actions.clamp(self.low, self.high)
        bins = ((x - self.low) / (self.high - self.low) * self.n_bins).long().clamp(0, self.n_bins - 1)
        return self.token_ids.to(actions.device)[bins]

    def decode(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token ids [...] -> bin centres [...]; ids that are not action tokens raise."""
        bins = self._bin_of.to(token_ids.device)[token_ids]
        if (bins < 0).any():
            raise ValueError("decode() got token ids that are not action tokens")
        return self.centers.to(token_ids.device)[bins]


def next_action_token(lm_head, hidden: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """hidden [N, L, D] -> the greedy next token [N] after the last position, among ``allowed`` (the
    action bins' vocabulary ids, on hidden's device); ``lm_head`` maps hidden states to logits."""
    return allowed[lm_head(hidden[:, -1])[:, allowed].argmax(-1)]
