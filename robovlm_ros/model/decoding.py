"""Greedy decoding of discrete action tokens: the chunk of the newest frame of each window.

Argmax over the action bins only (the least-used vocabulary ids, ActionTokenizer). Three ways to
run the decoder, equal token for token (tests): recomputing the whole prefix for every token (the
reference), the growing KV cache (``DynamicCache``), and a preallocated cache whose decoding step is
replayed as a CUDA graph on the GPU (static_decoding.py; ``RoboVLM.decoding``: "auto" = static on
CUDA, growing elsewhere). ``pre`` history feeds the earlier frames' action tokens in the sequence.
"""
from __future__ import annotations

import torch

from .action_tokenizer import next_action_token
from .static_decoding import StaticGreedyDecoder, supports_static_decoding


def greedy_decode(model, embeds, mask, n_tokens: int, cache=None, use_cache: bool = True):
    """Greedy decoding of ``n_tokens`` action tokens after a prefix.

    With ``use_cache``: ``embeds`` [N, L_new, D] are the prefix tokens not yet in ``cache`` and
    ``mask`` [N, L_past + L_new] covers cache + new; each generated token is then fed alone.
    Without: ``embeds`` is the whole prefix and it is recomputed for every token (the reference).
    Returns (tokens [N, n_tokens], cache, mask); cache/mask cover everything fed, i.e. all but the
    last generated token.
    """
    allowed = model.action_tokenizer.token_ids.to(embeds.device)
    ones = lambda m: torch.cat([m, m.new_ones(m.shape[0], 1)], 1)  # noqa: E731
    out = []
    prefix = embeds.shape[1] if cache is None else None  # a whole prefix: its attention (decoder_mask)
    if use_cache:
        hidden, cache = model.extend(embeds, mask, cache, prefix=prefix)
    elif cache is not None:
        raise ValueError("uncached decoding recomputes the prefix: pass the whole prefix, no cache")
    for i in range(n_tokens):
        if not use_cache:
            hidden, _ = model.backbone.decode(embeds, model.decoder_mask(mask, prefix), model.positions(mask))
        token = next_action_token(model.backbone.lm_head, hidden, allowed)  # [N]
        out.append(token)
        if i == n_tokens - 1:
            break
        token_embeds = model.backbone.embed(token[:, None]).to(embeds.dtype)
        mask = ones(mask)
        if use_cache:
            hidden, cache = model.extend(token_embeds, mask, cache)
        else:
            embeds = torch.cat([embeds, token_embeds], 1)
    return torch.stack(out, dim=1), cache, mask


def static_decoding_on(model, device: torch.device) -> bool:
    """Whether KV-cached decoding on ``device`` uses a preallocated cache (``model.decoding``)."""
    static = model.decoding == "static" or (model.decoding == "auto" and device.type == "cuda")
    return static and supports_static_decoding(model.backbone)


def static_decoder(model) -> StaticGreedyDecoder:
    """The model's decoder into a preallocated cache (made once, kept on the model: its cache and graphs)."""
    if model._static_decoder is None:
        model._static_decoder = StaticGreedyDecoder(model)
    return model._static_decoder


def greedy_tokens(model, embeds, mask, n_tokens: int, use_cache: bool = True) -> torch.Tensor:
    """``greedy_decode``'s tokens [N, n_tokens] alone, for callers that keep no cache. With the cache
    on CUDA they are decoded into a preallocated cache by a captured CUDA graph (``decoding`` "auto"),
    elsewhere into the growing cache."""
    if use_cache and static_decoding_on(model, embeds.device):
        return static_decoder(model)(embeds, mask, n_tokens)
    return greedy_decode(model, embeds, mask, n_tokens, use_cache=use_cache)[0]


@torch.no_grad()
def decode_chunk(model, batch: dict, use_cache: bool = True, history: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Greedy chunk for the last frame of every window -> its action tokens [B, chunk*7].

    ``pre`` history feeds earlier frames' action tokens: ``history`` (one [B, chunk*7] per earlier frame)
    when given, else the batch's ``actions`` when given (teacher forcing), else the tokens decoded for
    those frames, frame after frame.
    """
    b, w = batch["rgb"].shape[:2]
    n = model.n_action_slots
    if model.config.history_type == "post":  # frames are independent: decode the newest one only
        last = {k: v[:, -1:] for k, v in batch.items() if k in ("rgb", "hand_rgb", "state")}
        last.update(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if use_cache and static_decoding_on(model, last["rgb"].device):  # the prefix, too, replayed on CUDA
            return static_decoder(model).frames(last, n)
        embeds, mask, _ = model.sequences(last, None)
        return greedy_tokens(model, embeds, mask, n, use_cache=use_cache)
    known = batch.get("actions")
    history = list(history or [])  # [B, n] action tokens of the frames before t
    placeholder = torch.zeros(b, n, dtype=torch.long, device=batch["rgb"].device)
    cut = n + model.frame_tail  # frame t's (placeholder) action tokens and frame end
    for t in range(w):
        if t < len(history):
            continue
        if known is not None and t < w - 1:
            history.append(model.action_tokenizer.encode(known[:, t]).reshape(b, n))
            continue
        part = {k: v[:, : t + 1] for k, v in batch.items() if k in ("rgb", "hand_rgb", "state")}
        part.update(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        acts = torch.stack(history[:t] + [placeholder], 1)  # [B, t+1, n]
        embeds, mask, _ = model.sequences(part, model.backbone.embed(acts))
        # cut frame t's placeholder part: the prefix ends where decoding starts
        tokens = greedy_tokens(model, embeds[:, :-cut], mask[:, :-cut], n, use_cache=use_cache)
        history.append(tokens)
    return tokens
