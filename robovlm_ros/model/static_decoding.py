"""Greedy action-token decoding into a preallocated KV cache, replayed as a CUDA graph on the GPU.

Why: at policy sizes a decoding step on a GPU is bound by kernel launches and Python, not arithmetic,
so the growing (``DynamicCache``) cache saves nothing there: 70 cached steps cost as much as 70
recomputations of the whole prefix (docs/PERFORMANCE.md). With a cache of fixed size (transformers'
``StaticCache``) and a 4-D attention mask of fixed shape, one decoding step (embed the last token ->
decoder -> lm_head over the action bins -> argmax) touches the same memory every time, so it can be
captured once as a CUDA graph and replayed per token: one launch instead of hundreds.

The step keeps all its state on the device (next token, its position, its cache slot), so a chunk
of n tokens is n graph replays with no host synchronisation. On the CPU (and when capture fails) the
same static step runs eagerly; it equals the dynamic-cache decoding token for token (tests).
"""
from __future__ import annotations

import logging

import torch
from transformers import StaticCache

log = logging.getLogger(__name__)


def supports_static_decoding(backbone) -> bool:
    """Whether ``backbone``'s decoder can decode into a StaticCache with one explicit 4-D mask: only
    full-attention layers (a sliding-window layer would need a mask of its own)."""
    cfg = backbone.language_model.config
    sliding = getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
    return not sliding and all(t == "full_attention" for t in getattr(cfg, "layer_types", None) or [])


class StaticGreedyDecoder:
    """Decodes ``n_tokens`` greedy action tokens after a prefix; one cache and (on CUDA) one graph per
    input shape, reused across calls (the policy node decodes the same shapes every control step)."""

    def __init__(self, model, use_graphs: bool = True):
        self.model = model
        self.use_graphs = use_graphs
        self._states: dict[tuple, _DecodeState] = {}

    @torch.no_grad()
    def __call__(self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """embeds [N, L, D] the whole prefix, mask [N, L] (1 = real token) -> tokens [N, n_tokens]."""
        key = (tuple(embeds.shape), n_tokens, embeds.dtype, embeds.device)
        state = self._states.get(key)
        if state is None:
            self._states.clear()  # one shape at a time: a new shape frees the old cache and graph
            state = self._states[key] = _DecodeState(self.model, embeds, n_tokens,
                                                     self.use_graphs and embeds.is_cuda)
        return state.run(embeds, mask)


class _DecodeState:
    def __init__(self, model, embeds: torch.Tensor, n_tokens: int, use_graph: bool):
        self.model = m = model
        n, length, _ = embeds.shape
        dev, self.dtype = embeds.device, embeds.dtype
        self.length, self.n_tokens = length, n_tokens
        lm = m.backbone.language_model
        self.cache = StaticCache(config=lm.config, max_cache_len=length + n_tokens)
        self.allowed = m.action_tokenizer.token_ids.to(dev)
        # the step's device-side state: the token to feed, its position and cache slot, the mask
        self.token = torch.zeros(n, dtype=torch.long, device=dev)
        self.position = torch.zeros(n, 1, dtype=torch.long, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.out = torch.zeros(n, n_tokens, dtype=torch.long, device=dev)
        self.index = torch.zeros(1, dtype=torch.long, device=dev)  # where in ``out`` the step writes
        sdpa = lm.config._attn_implementation == "sdpa"
        self.keep = torch.zeros(n, 1, 1, length + n_tokens, dtype=torch.bool, device=dev)  # [N, 1, q=1, L_max]
        # eager attention adds its mask; sdpa takes a boolean one (True = attend)
        self.mask = self.keep if sdpa else torch.zeros(self.keep.shape, dtype=self.dtype, device=dev)
        self._sdpa = sdpa
        self.graph = None
        self.use_graph = use_graph

    def _step(self) -> None:
        """Feed ``token`` at ``slot``; write the next token to ``out[:, index]``. In-place only, so
        that a captured graph replays it."""
        m = self.model
        self.keep.index_fill_(-1, self.slot, True)
        if not self._sdpa:
            self.mask.copy_(torch.where(self.keep, 0.0, torch.finfo(self.dtype).min))
        embeds = m.backbone.embed(self.token[:, None]).to(self.dtype)
        hidden, _ = m.backbone.decode(embeds, self.mask, self.position, cache=self.cache, use_cache=True)
        nxt = self.allowed[m.backbone.lm_head(hidden[:, -1])[:, self.allowed].argmax(-1)]
        self.out.index_copy_(1, self.index, nxt[:, None])
        self.token.copy_(nxt)
        self.position.add_(1)
        self.slot.add_(1)
        self.index.add_(1)

    def _prefill(self, embeds: torch.Tensor, mask: torch.Tensor) -> None:
        """The prefix into the cache (eagerly: it runs once per call); the first token into ``out``."""
        m = self.model
        self.cache.reset()
        pos = m.positions(mask)
        hidden, _ = m.backbone.decode(embeds, mask, pos, cache=self.cache, use_cache=True)
        first = self.allowed[m.backbone.lm_head(hidden[:, -1])[:, self.allowed].argmax(-1)]
        self.out[:, 0] = first
        self.token.copy_(first)
        self.position.copy_(pos[:, -1:] + 1)
        self.slot.fill_(self.length)
        self.index.fill_(1)
        self.keep.zero_()
        self.keep[:, 0, 0, : self.length] = mask.bool()

    def _capture(self, embeds: torch.Tensor, mask: torch.Tensor) -> None:
        """Warm the step up on a side stream (allocations, lazy inits) and capture it; the warm-up
        steps wrote the cache, so the caller prefills again afterwards."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step()
                self._prefill(embeds, mask)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self.graph = graph

    def run(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._prefill(embeds, mask)
        if self.use_graph and self.graph is None and self.n_tokens > 1:
            try:
                self._capture(embeds, mask)
            except Exception as e:  # noqa: BLE001 - decoding still works eagerly; say why it is slower
                log.warning("CUDA graph capture of the decoding step failed (%s); decoding eagerly", e)
                self.use_graph = False
            self._prefill(embeds, mask)
        for _ in range(self.n_tokens - 1):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        return self.out.clone()
