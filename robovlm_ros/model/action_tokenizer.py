"""Discrete actions as vocabulary tokens (OpenVLA / RoboVLMs style).

Each normalised action value in [-1, 1] is clipped and put into a bin; each bin is one vocabulary id.
Two binnings (PolicyConfig.bin_style):

* ``robovlm_ros``: ``n_bins`` equal intervals; bin ``k`` is the k-th *least used* vocabulary id, i.e.
  ids counted down from the end of the embedding matrix, skipping the tokenizer's special tokens so no
  control token is reused.
* ``robovlms``: RoboVLMs' ActionTokenizer, so that its discrete policies import unchanged: ``n_bins``
  edges ``linspace(low, high, n_bins)``, a value's bin is ``digitize(value, edges) - 1`` (0 ..
  n_bins - 1; the last bin holds only ``high`` itself, e.g. an open gripper) and bin ``k`` is token
  ``token_end - 1 - k``; a token decodes to the centre of interval ``min(k, n_bins - 2)``. Edges and
  centres are computed in float64, as RoboVLMs' numpy code does. Float32 (and bf16 / fp16) actions are
  binned against float32 edges rounded up, which gives the float64 bins exactly (a float32 ``x`` is at least
  ``e`` exactly when it is at least the smallest float32 not below ``e``): no float64 on the device, which
  MPS does not have.
"""
from __future__ import annotations

import numpy as np
import torch


class ActionTokenizer:
    def __init__(self, vocab_size: int, special_ids: set[int] | None = None, n_bins: int = 256,
                 low: float = -1.0, high: float = 1.0, style: str = "robovlm_ros", token_end: int | None = None):
        self.n_bins, self.low, self.high, self.style = n_bins, low, high, style
        if style == "robovlms":
            if token_end is None or not n_bins <= token_end <= vocab_size:
                raise ValueError(f"robovlms action bins need action_token_end in [{n_bins}, {vocab_size}], "
                                 f"not {token_end}")
            ids = list(range(token_end - 1, token_end - 1 - n_bins, -1))
            edges = np.linspace(low, high, n_bins)  # float64 [n_bins]
            up = edges.astype(np.float32)
            up = np.where(up.astype(np.float64) < edges, np.nextafter(up, np.float32(np.inf)), up)
            self._edges, self._edges32 = torch.from_numpy(edges), torch.from_numpy(up)
            centers = (self._edges[:-1] + self._edges[1:]) / 2  # [n_bins - 1]
            self.centers = torch.cat([centers, centers[-1:]]).float()  # bin n_bins-1 decodes as n_bins-2
        else:
            special_ids = special_ids or set()
            ids = [i for i in range(vocab_size - 1, -1, -1) if i not in special_ids][:n_bins]
            if len(ids) < n_bins:
                raise ValueError(f"vocabulary of {vocab_size} is too small for {n_bins} action bins")
            edges = torch.linspace(low, high, n_bins + 1)
            self.centers = (edges[:-1] + edges[1:]) / 2  # [n_bins]
        self.token_ids = torch.tensor(ids, dtype=torch.long)  # [n_bins], bin k -> token_ids[k]
        # token id -> bin index (or -1) as a dense lookup table
        self._bin_of = torch.full((vocab_size,), -1, dtype=torch.long)
        self._bin_of[self.token_ids] = torch.arange(n_bins)

    def bins(self, actions: torch.Tensor) -> torch.Tensor:
        """float [...] -> bin index [...] in [0, n_bins) (values outside [low, high] are clipped first)."""
        x = actions.clamp(self.low, self.high)
        if self.style == "robovlms":
            if x.dtype == torch.float64:  # only where the device has float64
                return torch.searchsorted(self._edges.to(x.device), x, right=True) - 1
            return torch.searchsorted(self._edges32.to(x.device), x.float(), right=True) - 1
        return ((x - self.low) / (self.high - self.low) * self.n_bins).long().clamp(0, self.n_bins - 1)

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """float [...] in [low, high] -> token ids [...] (values outside are clipped first)."""
        return self.token_ids.to(actions.device)[self.bins(actions)]

    def decode(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token ids [...] -> bin centres [...]; ids that are not action tokens raise."""
        bins = self._bin_of.to(token_ids.device)[token_ids]
        if (bins < 0).any():
            raise ValueError("decode() got token ids that are not action tokens")
        return self.centers.to(token_ids.device)[bins]


def next_action_token(lm_head, hidden: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """hidden [N, L, D] -> the greedy next token [N] after the last position, among ``allowed`` (the
    action bins' vocabulary ids, on hidden's device); ``lm_head`` maps hidden states to logits. A linear
    head computes only the allowed rows' logits: the whole head is read for nothing else (PaliGemma's
    257,216 x 2,048 is a fifth of the weight bytes a decoding step reads)."""
    last = hidden[:, -1]  # [N, D]
    if isinstance(lm_head, torch.nn.Linear):
        bias = None if lm_head.bias is None else lm_head.bias[allowed]
        logits = torch.nn.functional.linear(last, lm_head.weight[allowed], bias)  # [N, n_bins]
    else:
        logits = lm_head(last)[:, allowed]
    return allowed[logits.argmax(-1)]
