"""Flamingo-style Perceiver resampler: a variable number of image tokens -> a fixed number of latents.

Fixing the token count per image keeps the VLM sequence length (and cost) independent of the vision
encoder's patch count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerceiverAttention(nn.Module):
    """Latents attend to concat(image tokens, latents): they read the image and each other."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # x [N, T, dim], latents [N, K, dim] -> update for latents [N, K, dim]
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)  # [N, K, inner]
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # [N, T+K, inner] each
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [N, h, *, dh]
        out = F.scaled_dot_product_attention(q, k, v)  # [N, h, K, dh]
        return self.to_out(out.transpose(1, 2).flatten(2))  # [N, K, dim]


def _feed_forward(dim: int, mult: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=bias), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=bias))


class PerceiverResampler(nn.Module):
    """[N, T, dim] image tokens -> [N, num_latents, dim]. Module names and layout are those of RoboVLMs'
    (Flamingo's) resampler, whose sizes are its defaults: 64 latents, depth 6, 8 heads of 64, ff x4
    without biases (model/robovlms_import.py)."""

    def __init__(self, dim: int, num_latents: int = 64, depth: int = 2, heads: int = 4,
                 dim_head: int = 32, ff_mult: int = 2, ff_bias: bool = True):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))  # [K, dim]
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), _feed_forward(dim, ff_mult, ff_bias)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(x.shape[0], -1, -1)  # [N, K, dim]
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm(latents)
