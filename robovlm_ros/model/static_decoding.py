"""Greedy action-token decoding into a preallocated KV cache, replayed as a CUDA graph on the GPU.

Why: at policy sizes a decoding step on a GPU is bound by kernel launches and Python, not arithmetic,
so the growing (``DynamicCache``) cache saves nothing there: 70 cached steps cost as much as 70
recomputations of the whole prefix (docs/PERFORMANCE.md). With a cache of fixed size (transformers'
``StaticCache``) and a 4-D attention mask of fixed shape, one decoding step (embed the last token ->
decoder -> lm_head over the action bins -> argmax) touches the same memory every time, so it can be
captured once as a CUDA graph and replayed per token: one launch instead of hundreds.

``GreedyStepper`` keeps the step's state on the device (next token, its position, its cache slot,
the mask), so n tokens are n graph replays with no host synchronisation. On the CPU (and when
capture fails) the same step runs eagerly; it equals the growing cache's decoding token for token
(tests). ``StaticGreedyDecoder`` decodes after a prefix it is given whole (post history, one frame);
the window predictor's ``pre`` history keeps its own StaticCache across frames and uses a stepper on
it (window_inference.py).
"""
from __future__ import annotations

import logging

import torch
from transformers import StaticCache

from . import cuda_graph
from .action_tokenizer import next_action_token
from .cuda_graph import CapturedFunction

log = logging.getLogger(__name__)


def supports_static_decoding(backbone) -> bool:
    """Whether ``backbone``'s decoder can decode into a StaticCache with one explicit 4-D mask: only
    full-attention layers (``Backbone.full_attention``)."""
    return backbone.full_attention


def static_cache(model, max_len: int) -> StaticCache:
    return StaticCache(config=model.backbone.language_model.config, max_cache_len=max_len)


def cache_precision(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device`` (None: off). A StaticCache takes the dtype of the first keys written into
    it, so one filled under autocast (a validation step) cannot take full-precision keys later: part of a
    cache's key."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


class GreedyStepper:
    """Greedy decoding of ``n_tokens`` into ``cache`` (a StaticCache of ``max_len`` slots, batch N):
    ``first_token`` picks the first from the prefix's hidden state, ``start`` sets the step's state,
    ``decode_rest`` runs the other n - 1 steps (graph replays once ``capture`` has succeeded). ``use_graph``
    (on CUDA, ``cuda_graph.on_cuda``): the caller calls ``capture`` after its first ``start``."""

    def __init__(self, model, cache: StaticCache, batch: int, max_len: int, n_tokens: int,
                 dtype: torch.dtype, device: torch.device, use_graph: bool):
        self.model, self.cache, self.n_tokens, self.dtype, self.device = model, cache, n_tokens, dtype, device
        self.allowed = model.action_tokenizer.token_ids.to(device)
        self.token = torch.zeros(batch, dtype=torch.long, device=device)         # the token to feed
        self.position = torch.zeros(batch, 1, dtype=torch.long, device=device)   # its position id
        self.slot = torch.zeros(1, dtype=torch.long, device=device)              # its cache slot
        self.out = torch.zeros(batch, n_tokens, dtype=torch.long, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)             # where in ``out`` it goes
        # additive (0 = attend, the dtype's min = not), as eager attention adds it and as sdpa would turn a boolean
        # mask into, in every layer: three kernels per layer and token saved
        self.mask = torch.zeros(batch, 1, 1, max_len, dtype=dtype, device=device)  # [N, 1, q=1, L_max]
        self.graph: torch.cuda.CUDAGraph | None = None
        self._guard: tuple = ()  # the model's graph_guard at capture: its weights' and buffers' addresses
        self.use_graph = use_graph and n_tokens > 1

    def first_token(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, D] of the prefix -> the first action token [N] (argmax over the action bins)."""
        return next_action_token(self.model.backbone.lm_head, hidden, self.allowed)

    def start(self, first: torch.Tensor, mask: torch.Tensor) -> None:
        """first [N] decoded from the prefix; mask [N, L] covers the L tokens the cache holds."""
        length = mask.shape[1]
        self.out[:, 0] = first
        self.token.copy_(first)
        self.position.copy_(self.model.backbone.next_position(mask))
        self.slot.fill_(length)
        self.index.fill_(1)
        self.mask.fill_(torch.finfo(self.dtype).min)
        self.mask[:, 0, 0, :length].masked_fill_(mask.bool(), 0.0)

    def _step(self) -> None:
        """Feed ``token`` at ``slot``; write the next token to ``out[:, index]``. In-place only, so
        that a captured graph replays it."""
        bb = self.model.backbone
        self.mask.index_fill_(-1, self.slot, 0.0)
        embeds = bb.embed(self.token[:, None]).to(self.dtype)
        hidden, _ = bb.decode(embeds, self.mask, self.position, cache=self.cache, use_cache=True)
        nxt = self.first_token(hidden)
        self.out.index_copy_(1, self.index, nxt[:, None])
        self.token.copy_(nxt)
        self.position.add_(1)
        self.slot.add_(1)
        self.index.add_(1)

    def decode_rest(self) -> torch.Tensor:
        """The other n - 1 tokens -> all n [N, n_tokens]."""
        if self.graph is not None and self.model.graph_guard() != self._guard:
            # weights moved or a buffer the graph reads was replaced since the capture (the graph would read
            # freed memory): decode eagerly, capture again next time
            self.graph, self.use_graph = None, True
        return self._decode(self.graph if cuda_graph.graphable(self.device) else None)

    def _decode(self, graph) -> torch.Tensor:
        if graph is not None:
            cuda_graph.replay(graph, self.device, times=self.n_tokens - 1)
        else:
            for _ in range(self.n_tokens - 1):
                self._step()
        return self.out.clone()

    def capture(self) -> None:
        """Capture the step as a CUDA graph, after ``start``, and keep it only if the graph decodes the eager
        step's tokens from this start (a graph that recorded nothing, or baked in a value, must not drive the
        arm). The step's state (cache included) is restored afterwards: ``decode_rest`` follows as if nothing
        had run. A capture that fails or decodes otherwise leaves the eager step, with a warning."""
        if not cuda_graph.graphable(self.device):  # under autocast: eager now, capture at a later call
            return
        self.use_graph = False  # one try
        saved = self._state()
        try:
            # warm-up and capture steps write slots after the start: no more than decode_rest's n - 1
            graph, _ = cuda_graph.capture(self._step, self.device, warmups=min(2, self.n_tokens - 2))
        except Exception as e:  # noqa: BLE001 - decoding still works eagerly; say why it is slower
            log.warning("CUDA graph capture of the decoding step failed (%s); decoding eagerly", e)
            self._restore(saved)
            return
        runs = []
        for g in (graph, None):
            self._restore(saved)
            runs.append(self._decode(g))
        self._restore(saved)
        if torch.equal(*runs):
            self.graph, self._guard = graph, self.model.graph_guard()
        else:
            log.warning("the CUDA graph of the decoding step decoded other tokens than the step; decoding eagerly")

    def _state(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tensor, copy) of everything the step writes: its own buffers and the cache layers' tensors."""
        tensors = [self.token, self.position, self.slot, self.out, self.index, self.mask]
        for layer in self.cache.layers:
            tensors += [t for t in vars(layer).values() if isinstance(t, torch.Tensor)]
        return [(t, t.clone()) for t in tensors]

    @staticmethod
    def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for t, copy in saved:
            t.copy_(copy)


class StaticGreedyDecoder:
    """Decodes ``n_tokens`` greedy action tokens after a prefix; one cache and stepper per input shape, reused
    across calls (the policy node decodes the same shape every step). ``__call__`` takes the prefix's
    embeddings; ``frames`` takes the frames themselves (post history) and, on CUDA, replays the whole prefix
    (images encoded, the sequence run into the cache) as one more CUDA graph (model/cuda_graph.py)."""

    def __init__(self, model):
        self.model = model
        self._key: tuple | None = None
        self._stepper: GreedyStepper | None = None
        self._prefix: CapturedFunction | None = None  # frames' prefix, bound to the stepper's cache
        self._prefix_decoder: CapturedFunction | None = None  # its decoder pass, where the whole cannot be a graph
        self._frames_key: tuple | None = None
        self._uses = 0  # calls with the current shape (__call__ captures at the second)

    def _stepper_for(self, n: int, length: int, n_tokens: int, dtype: torch.dtype, device: torch.device):
        graphs = cuda_graph.on_cuda(device) and self.model.cuda_graphs
        key = (n, length, n_tokens, dtype, device, graphs, cache_precision(device))
        if key != self._key:  # one shape at a time: a new shape frees the old cache and graphs
            self._stepper = GreedyStepper(self.model, static_cache(self.model, length + n_tokens), n,
                                          length + n_tokens, n_tokens, dtype, device, graphs)
            self._key, self._prefix, self._frames_key, self._uses = key, None, None, 0
        self._uses += 1
        return self._stepper

    @torch.no_grad()
    def __call__(self, embeds: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """embeds [N, L, D] the whole prefix, mask [N, L] (1 = real token) -> tokens [N, n_tokens]. The step's
        graph is captured at the second call in a row with this shape: a capture (a device sync, warm-ups, the
        check's two decodings) only pays for itself when replayed, and ``pre`` history without given actions
        decodes every frame at another length (``decode_chunk``: a new shape at every call)."""
        stepper = self._stepper_for(embeds.shape[0], embeds.shape[1], n_tokens, embeds.dtype, embeds.device)
        self._prefill(embeds, mask)
        if stepper.use_graph and self._uses > 1:
            stepper.capture()
        return stepper.decode_rest()

    @torch.no_grad()
    def frames(self, batch: dict, n_tokens: int) -> torch.Tensor:
        """One frame per sequence (post history: rgb / hand_rgb [N, 1, 3, S, S], state [N, 1, 7], input_ids /
        attention_mask [N, L]) -> the tokens decoded after its prefix [N, n_tokens]."""
        stepper = self.prefix(batch, n_tokens)
        if stepper.use_graph:
            stepper.capture()
        return stepper.decode_rest()

    @torch.no_grad()
    def prefix(self, batch: dict, n_tokens: int) -> GreedyStepper:
        """``frames``' first part: the prefix (images encoded, the sequence run into the preallocated cache; one
        CUDA graph replay on CUDA) and its first token into the stepper, returned to decode the rest."""
        m = self.model
        one = lambda k: None if batch.get(k) is None else batch[k][:, 0]  # noqa: E731
        args = (one("rgb"), one("hand_rgb"), batch["input_ids"], batch["attention_mask"], one("state"))
        key = tuple(None if a is None else (a.shape, a.dtype, a.device) for a in args) + (n_tokens, cache_precision(args[2].device))
        if key != self._frames_key or self._prefix is None:
            embeds, _, _ = m.sequences(batch, None)  # once per input shape: the prefix's length
            self._stepper_for(embeds.shape[0], embeds.shape[1], n_tokens, embeds.dtype, embeds.device)
            self._prefix = CapturedFunction(self._frame_prefix, "the decoding prefix", guard=m.graph_guard,
                                            enabled=lambda: m.cuda_graphs)
            # where the whole prefix cannot be a graph (Qwen's vision tower reads its grid on the host): the
            # images encoded eagerly, the decoder's pass over them into the cache a graph
            self._prefix_decoder = CapturedFunction(self._frame_prefix_after_images, "the decoding prefix's decoder "
                                                    "pass", guard=m.graph_guard, enabled=lambda: m.cuda_graphs)
            self._frames_key = key
        if self._prefix.refused is None:
            self._start(*self._prefix(*args))
        else:
            images = [x for tokens_and_row in m.frame_images(args[0], args[1]) for x in tokens_and_row]
            self._start(*self._prefix_decoder(*args[2:], *images))
        return self._stepper

    def _frame_prefix(self, rgb, hand_rgb, input_ids, attention_mask, state, images=None):
        """The frames' prefix into the cache, free of host syncs (a CUDA graph replays it): the last hidden
        state [N, 1, D] and the prefix's mask [N, L]. ``images``: ``frame_images(rgb, hand_rgb)`` when encoded
        apart."""
        m = self.model
        embeds, mask, _ = m.sequences(m.single_frames(rgb, hand_rgb, input_ids, attention_mask, state), None, images)
        return self._fill(embeds, mask, explicit=True)[:, -1:], mask

    def _frame_prefix_after_images(self, input_ids, attention_mask, state, *cameras):
        """``_frame_prefix`` of frames whose images are given: per camera tokens [N, T, D] and mask row [T]."""
        return self._frame_prefix(None, None, input_ids, attention_mask, state, list(zip(cameras[::2], cameras[1::2])))

    def _prefill(self, embeds: torch.Tensor, mask: torch.Tensor) -> None:
        """The prefix into the cache (eagerly: it runs once per call), the first token into the stepper."""
        self._start(self._fill(embeds, mask), mask)

    def _fill(self, embeds: torch.Tensor, mask: torch.Tensor, explicit: bool = False) -> torch.Tensor:
        """Reset the cache and run the prefix into it; its hidden states [N, L, D]."""
        m, cache = self.model, self._stepper.cache
        cache.reset()
        # causal: the 2-D mask itself (the decoder makes it causal over the cache's slots), unless ``explicit``
        attend = m.decoder_mask(mask, mask.shape[1], kv_len=cache.layers[0].max_cache_len, explicit=explicit)
        hidden, _ = m.backbone.decode(embeds, attend, m.positions(mask), cache=cache, use_cache=True)
        return hidden

    def _start(self, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        self._stepper.start(self._stepper.first_token(hidden), mask)
