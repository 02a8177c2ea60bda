"""The newest frame's action chunk from a history window, reusing work across control steps where exact
(``RoboVLM.window_predictor``; the PolicyRunner calls it every time it needs a chunk).

* post history, continuous: frames are independent at the VLM stage, so the VLM runs only on frames
  it has not seen; their action-token features are kept per frame and the head re-fuses the window.
  On CUDA a new frame's pass through the VLM is one CUDA graph replay (model/cuda_graph.py), one frame
  per replay so that one graph serves every step, and the head another. Where the whole pass cannot be a
  graph (Qwen's vision tower reads its grid on the host), the images are encoded apart, eagerly, and the
  decoder's pass over them is the graph.
* post history, discrete: only the newest frame is decoded (KV cache inside the decoding).
* pre history: the window is one causal sequence ``[BOS] seg_1 ... seg_n``. While frames are only
  appended, the KV cache of the frames already in the sequence is reused; once the window slides
  (the oldest frame leaves), every remaining frame's keys/values change, so it is rebuilt (through the
  decoder only: each frame's image tokens are kept from when it joined; a new frame's images are encoded by
  one CUDA graph replay on CUDA). A full window slides at every
  step, so there it is one pass without incremental bookkeeping, a CUDA graph on CUDA: continuous, the
  whole window; discrete with the preallocated cache, the earlier frames and the newest prefix into the
  cache, then the chunk's decoding graph. Frames wrapped
  as ``[BOS] seg [EOS]`` (``frame_end``) bring their own BOS and get their EOS after their action tokens.
  Discrete ``pre`` frames carry action tokens in the sequence: the chunk decoded at that frame, or for
  frames where no decoding ran, the actions the robot was executing from then on. With static
  decoding (CUDA) the sequence lives in one preallocated cache of a full window, reset on a rebuild,
  and the chunk's tokens are decoded by a CUDA graph bound to it (model/static_decoding.py).
``use_cache=False`` recomputes the whole window every step (the reference the tests compare with).
A frame is preprocessed once (``frame``), when it joins the window.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import cuda_graph
from .cuda_graph import CapturedFunction
from .decoding import decode_chunk, greedy_decode, static_decoding_on
from .normalization import snap_gripper
from .static_decoding import GreedyStepper, cache_precision, static_cache


@dataclass
class Frame:
    serial: int                      # increases by one per observation within an episode
    rgb: torch.Tensor                # [3, S, S] preprocessed
    hand_rgb: torch.Tensor | None    # [3, S, S] or None
    state: torch.Tensor              # [7] normalised
    action_tokens: torch.Tensor | None = None  # discrete pre: [chunk * 7] tokens this frame carries


@dataclass
class _Sequence:
    """KV cache of [BOS] + the segments of ``serials`` (pre history; wrapped frames: their segments)."""
    serials: list[int] = field(default_factory=list)
    cache: object = None
    mask: torch.Tensor | None = None
    feats: list[torch.Tensor] = field(default_factory=list)  # continuous: [latent, D] per frame


def _per_call(frames: list[Frame], model) -> list[list[Frame]]:
    """``frames`` in the groups one call takes: one frame per call on CUDA or when the policy is compiled, since a
    CUDA graph and a compiled kernel are bound to their shapes (a compiled decoder layer also to its cache's
    length) and the warm-up meets one new frame per step (frames that joined without a prediction, execute_steps
    > 1, would make other shapes); elsewhere all at once."""
    if not frames:
        return []
    if cuda_graph.on_cuda(frames[0].rgb.device) or model.compiled:
        return [[f] for f in frames]
    return [frames]


class WindowPredictor:
    """Created by ``RoboVLM.window_predictor``; ``predict(window, text)`` gives the chunk of
    ``window[-1]``. The window holds ``Frame``s, oldest first; ``reset`` at a new episode."""

    def __init__(self, model, use_cache: bool = True):
        self.model, self.use_cache = model, use_cache
        # discrete pre, static decoding: the stepper over the sequence's preallocated cache, kept across
        # episodes (its graph too) while (S_f, dtype, device, graphs on) stay
        self._static_key: tuple | None = None
        self._stepper: GreedyStepper | None = None
        self._window_prefix: CapturedFunction | None = None  # made with the stepper, bound to its cache
        # post continuous: one frame's action-token features, a CUDA graph on CUDA; a graph per instruction
        # length, the last few kept (switching between tasks does not capture again)
        self._frame_features = CapturedFunction(model.frame_action_features, "the policy step's VLM pass",
                                                guard=model.graph_guard, enabled=lambda: model.cuda_graphs,
                                                max_graphs=4)
        # post continuous, where the whole pass cannot be a graph (Qwen's vision tower reads its grid on the
        # host): the images encoded apart (eagerly), the rest of the pass (the decoder: most of its kernels) a graph
        self._frame_decoder = CapturedFunction(self._decode_frames, "the policy step's decoder pass",
                                               guard=model.graph_guard, enabled=lambda: model.cuda_graphs,
                                               max_graphs=4)
        # continuous pre: a full window's one pass (nothing to reuse once it slides), a graph on CUDA
        self._window_features = CapturedFunction(self._window_pass, "the policy step's window pass",
                                                 guard=model.graph_guard, enabled=lambda: model.cuda_graphs,
                                                 max_graphs=4)
        # continuous: the head over the window's features, a graph per window length (the window fills first)
        self._head = CapturedFunction(self._head_chunk, "the policy head", guard=model.graph_guard,
                                      enabled=lambda: model.cuda_graphs, max_graphs=model.config.window_size)
        # pre: a new frame's images through the vision tower (and projector), a graph on CUDA
        self._frame_encoder = CapturedFunction(self._encode, "the frame's image encoding", guard=model.graph_guard,
                                               enabled=lambda: model.cuda_graphs, max_graphs=2)
        self.reset()

    def reset(self) -> None:
        self._feats: dict[int, torch.Tensor] = {}  # post continuous: serial -> [latent, D]
        self._images: dict[int, list] = {}  # pre: serial -> its image tokens per camera [(T, D), row [T]]
        self._seq: _Sequence | None = None

    def _batch(self, frames: list[Frame], text) -> dict:
        """[1, len(frames)] model batch."""
        ids, mask = text
        batch = {"rgb": torch.stack([f.rgb for f in frames])[None], "input_ids": ids, "attention_mask": mask,
                 "state": torch.stack([f.state for f in frames])[None]}
        if frames[0].hand_rgb is not None:
            batch["hand_rgb"] = torch.stack([f.hand_rgb for f in frames])[None]
        return batch

    @torch.no_grad()
    def predict(self, window: list[Frame], text) -> torch.Tensor:
        """Normalised chunk [chunk, 7] (gripper +-1) for the newest frame of ``window``."""
        m = self.model
        pre = m.config.history_type == "pre"
        if m.config.action_space == "continuous":
            if not self.use_cache:
                return m.predict(self._batch(window, text), normalized=True)[0]
            return self._post(window, text) if not pre else self._head(self._pre(window, text))
        # discrete: the frame keeps the exact tokens it was decoded with (a later frame's pre history)
        if pre and not self.use_cache:
            history = [f.action_tokens[None] for f in window[:-1]]
            tokens = decode_chunk(m, self._batch(window, text), use_cache=False, history=history)[0]
        elif pre:
            tokens = self._pre(window, text)
        else:
            tokens = decode_chunk(m, self._batch(window[-1:], text), use_cache=self.use_cache)[0]
        window[-1].action_tokens = tokens
        return snap_gripper(m.action_tokenizer.decode(tokens).view(-1, m.config.action_dim))

    def carry(self, frame: Frame, executed: torch.Tensor) -> None:
        """A frame with no chunk of its own (execute_steps > 1) carries ``executed`` [k, 7], the normalised
        actions run from it on, in a discrete ``pre`` history (later frames' sequence holds its tokens)."""
        m = self.model
        if m.config.action_space != "discrete" or m.config.history_type != "pre":
            return
        pad = m.config.fwd_pred_next_n - len(executed)  # to a full chunk, repeating the last action
        full = torch.cat([executed, executed[-1:].expand(pad, -1)])
        frame.action_tokens = m.action_tokenizer.encode(full).reshape(-1)

    def _head_chunk(self, feats: torch.Tensor) -> torch.Tensor:
        """[1, W, latent, D] -> newest frame's [chunk, 7] with gripper +-1."""
        arm, grip = self.model.head(feats)
        return snap_gripper(torch.cat([arm[0, -1], grip[0, -1, :, None]], dim=-1))

    def graph_report(self) -> dict:
        """The cached step's CUDA-graphed parts (``frame``: a post frame's VLM pass, ``frame_decoder``: its pass
        after the images, where the whole pass is refused, ``window``: a full continuous pre window's pass,
        ``images``: a frame's image encoding (pre, or post when the whole pass is refused), ``head``, ``prefix``:
        a full discrete pre window's decoding prefix): ``<part>_replays``, the calls their graphs served,
        ``<part>_captures``, the input signatures captured (or tried), and ``<part>_refused``, why the part's
        newest input signature runs eagerly (None: it replays a graph, or nothing ran on CUDA)."""
        parts = {"frame": self._frame_features, "frame_decoder": self._frame_decoder, "window": self._window_features,
                 "images": self._frame_encoder, "head": self._head, "prefix": self._window_prefix}
        report = {}
        for name, part in parts.items():
            report[f"{name}_replays"] = 0 if part is None else part.replays
            report[f"{name}_captures"] = 0 if part is None else part.captures
            report[f"{name}_refused"] = None if part is None else part.refused
        return report

    def _post(self, window: list[Frame], text) -> torch.Tensor:
        new = [f for f in window if f.serial not in self._feats]
        ids, am = text
        for group in _per_call(new, self.model):
            n = len(group)
            rgb = torch.stack([f.rgb for f in group])
            hand = None if group[0].hand_rgb is None else torch.stack([f.hand_rgb for f in group])
            ids_n, am_n, states = ids.expand(n, -1), am.expand(n, -1), torch.stack([f.state for f in group])
            if self._frame_features.refused is None:  # one graph for the whole pass, or no graphs at all
                feats = self._frame_features(rgb, hand, ids_n, am_n, states)  # [n, latent, D]
            else:
                feats = self._frame_decoder(ids_n, am_n, states, *self._frame_encoder(rgb, hand))
            self._feats.update({f.serial: x for f, x in zip(group, feats)})
        keep = {f.serial for f in window}
        self._feats = {s: x for s, x in self._feats.items() if s in keep}
        return self._head(torch.stack([self._feats[f.serial] for f in window])[None])

    def _pre(self, window: list[Frame], text) -> torch.Tensor:
        """Continuous: action-token features [1, W, latent, D]; discrete: the newest frame's tokens [chunk*7]."""
        m = self.model
        serials = [f.serial for f in window]
        in_window = set(serials)
        self._images = {s: x for s, x in self._images.items() if s in in_window}
        seq = self._seq
        continuous = m.config.action_space == "continuous"
        if continuous and len(window) == m.config.window_size:
            # a full window has slid since the last step (or is the same again): every frame's keys and values
            # change, nothing in a cache could be reused, so the window is one pass (a graph on CUDA)
            self._seq = None
            return self._window_features(*self._window_inputs(window, text))
        newest, stepper = window[-1], None
        if not continuous:  # the newest frame's prefix (its action tokens are what gets decoded)
            new_seg, new_mask = self._segments([newest], text, None)  # [1, S_f - n_action_slots, D]
            stepper = self._static_stepper(new_seg, new_seg.shape[1] + m.n_action_slots + m.frame_tail)
            if (stepper is not None and len(window) == m.config.window_size > 1
                    and all(f.action_tokens is not None for f in window[:-1])):
                return self._full_window_tokens(window, text, stepper)
        if seq is None or seq.serials != serials[: len(seq.serials)] or len(seq.serials) >= len(serials):
            cache = None
            if stepper is not None:
                cache = stepper.cache
                cache.reset()
            device = window[0].rgb.device
            if m.frame_end_id is None:  # one BOS for the sequence; wrapped frames bring their own
                bos, mask = m.bos(1, device)
                _, cache = m.extend(bos, mask, cache)
            else:
                mask = torch.zeros(1, 0, dtype=torch.long, device=device)
            seq = self._seq = _Sequence(cache=cache, mask=mask)
        todo = window[len(seq.serials):]
        # frames whose action part is known: one decoder pass (per frame on CUDA)
        for given in _per_call(todo if continuous else todo[:-1], m):
            if continuous:
                act = m.action_tokens[None].expand(len(given), -1, -1)
            else:
                act = m.backbone.embed(torch.stack([f.action_tokens for f in given]))
            seg, seg_mask = self._segments(given, text, act)
            seq.mask = torch.cat([seq.mask, seg_mask.reshape(1, -1)], 1)
            hidden, seq.cache = m.extend(seg.reshape(1, -1, seg.shape[-1]), seq.mask, seq.cache)
            if continuous:  # [1, k*S_f, D] -> per frame, the hidden states at its action tokens (before its end)
                frames = hidden.reshape(len(given), -1, hidden.shape[-1])
                end = frames.shape[1] - m.frame_tail
                seq.feats.extend(frames[:, end - m.config.latent_num: end])
            seq.serials.extend(f.serial for f in given)
        if continuous:
            return torch.stack(seq.feats[-len(window):])[None]  # [1, W, latent, D]
        if stepper is None:
            tokens, seq.cache, seq.mask = greedy_decode(m, new_seg, torch.cat([seq.mask, new_mask], 1),
                                                        m.n_action_slots, cache=seq.cache)
        else:
            seq.mask = torch.cat([seq.mask, new_mask], 1)
            hidden, _ = m.extend(new_seg, seq.mask, seq.cache)
            stepper.start(stepper.first_token(hidden), seq.mask)
            if stepper.use_graph:  # first decoding: the decoding step's graph, captured once
                stepper.capture()
            tokens = stepper.decode_rest()
            seq.mask = torch.cat([seq.mask, seq.mask.new_ones(1, m.n_action_slots - 1)], 1)  # as greedy_decode
        # feed the last token (and the frame end) too, so the cache holds the complete segment for the next frame
        last = tokens[:, -1:]
        if m.frame_end_id is not None:
            last = torch.cat([last, last.new_full((1, 1), m.frame_end_id)], 1)
        seq.mask = torch.cat([seq.mask, seq.mask.new_ones(1, last.shape[1])], 1)
        _, seq.cache = m.extend(m.backbone.embed(last).to(new_seg.dtype), seq.mask, seq.cache)
        seq.serials.append(newest.serial)
        return tokens[0]

    def _static_stepper(self, seg: torch.Tensor, s_f: int) -> GreedyStepper | None:
        """The stepper over a preallocated cache of a full window (1 + W * S_f slots), when the model
        decodes into one on this device; S_f changes with the instruction's length."""
        m = self.model
        if not self.use_cache or not static_decoding_on(m, seg.device):
            return None
        graphs = cuda_graph.on_cuda(seg.device) and m.cuda_graphs
        key = (s_f, seg.dtype, seg.device, graphs, cache_precision(seg.device))
        if key != self._static_key:
            max_len = 1 + m.config.window_size * s_f
            self._stepper = GreedyStepper(m, static_cache(m, max_len), 1, max_len, m.n_action_slots,
                                          seg.dtype, seg.device, graphs)
            self._static_key = key
            # a full window's prefix into this stepper's cache (a graph is bound to the cache it writes)
            self._window_prefix = CapturedFunction(self._window_prefix_pass, "the decoding prefix of the window",
                                                   guard=m.graph_guard, enabled=lambda: m.cuda_graphs)
        return self._stepper

    def _full_window_tokens(self, window: list[Frame], text, stepper: GreedyStepper) -> torch.Tensor:
        """Discrete ``pre``, a full window, the preallocated cache: the window slid, so the whole sequence (the
        earlier frames with their action tokens, then the newest frame's prefix) goes into the cache in one
        pass (a graph on CUDA) and the chunk is decoded; nothing is kept, as the next step slides again."""
        self._seq = None
        ids, am = text
        cameras = [x for tokens, row in self._frame_images(window) for x in (tokens, row)]
        args = (ids, am, torch.stack([f.state for f in window]),
                torch.stack([f.action_tokens for f in window[:-1]]), *cameras)
        stepper.start(*self._first_token(stepper, *self._window_prefix(*args)))
        if stepper.use_graph:  # the decoding step's graph, captured once
            stepper.capture()
        return stepper.decode_rest()[0]

    @staticmethod
    def _first_token(stepper: GreedyStepper, hidden: torch.Tensor, mask: torch.Tensor):
        return stepper.first_token(hidden), mask

    def _window_prefix_pass(self, input_ids, attention_mask, states, tokens, *cameras):
        """``[BOS] seg_1 ... seg_{W-1}`` (with their action tokens ``tokens`` [W-1, n]) and the newest frame's
        prefix into the stepper's cache in one pass with an explicit 4-D mask (free of host syncs: a CUDA
        graph replays it) -> the last hidden state [1, 1, D] and the sequence's mask [1, L]."""
        m = self.model
        w = states.shape[0]
        images = list(zip(cameras[::2], cameras[1::2]))
        seg, seg_mask = m.segments(None, None, input_ids.expand(w - 1, -1), attention_mask.expand(w - 1, -1),
                                   states[:-1], m.backbone.embed(tokens), images=[(t[:-1], r) for t, r in images])
        new_seg, new_mask = m.segments(None, None, input_ids, attention_mask, states[-1:], None,
                                       images=[(t[-1:], r) for t, r in images])
        parts = [(seg.reshape(1, -1, seg.shape[-1]), seg_mask.reshape(1, -1)), (new_seg, new_mask)]
        if m.frame_end_id is None:  # one BOS for the sequence; wrapped frames bring their own
            parts.insert(0, m.bos(1, seg.device))
        embeds = torch.cat([e.to(seg.dtype) for e, _ in parts], 1)
        mask = torch.cat([k.to(new_mask) for _, k in parts], 1)
        cache = self._stepper.cache
        cache.reset()
        attend = m.decoder_mask(mask, None, kv_len=cache.layers[0].max_cache_len, explicit=True)
        hidden, _ = m.backbone.decode(embeds, attend, m.positions(mask), cache=cache, use_cache=True)
        return hidden[:, -1:], mask

    def _frame_images(self, frames: list[Frame]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``RoboVLM.frame_images`` of ``frames`` (per camera: tokens [k, T, D], mask row [T]). Each frame's images
        are encoded once, when first needed, and kept while it is in the window (a sliding ``pre`` window runs
        every remaining frame through the decoder again, not through the vision tower)."""
        for group in _per_call([f for f in frames if f.serial not in self._images], self.model):
            hand = None if group[0].hand_rgb is None else torch.stack([f.hand_rgb for f in group])
            flat = self._frame_encoder(torch.stack([f.rgb for f in group]), hand)
            encoded = list(zip(flat[::2], flat[1::2]))
            for i, f in enumerate(group):
                self._images[f.serial] = [(tokens[i], row) for tokens, row in encoded]
        kept = [self._images[f.serial] for f in frames]
        return [(torch.stack([per_frame[c][0] for per_frame in kept]), kept[0][c][1]) for c in range(len(kept[0]))]

    def _decode_frames(self, input_ids, attention_mask, states, *cameras) -> torch.Tensor:
        """``frame_action_features`` of frames whose images ``_encode`` gave (per camera tokens [n, T, D] and
        mask row [T]) -> [n, latent, D]."""
        images = list(zip(cameras[::2], cameras[1::2]))
        return self.model.frame_action_features(None, None, input_ids, attention_mask, states, images=images)

    def _encode(self, rgb: torch.Tensor, hand_rgb: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``RoboVLM.frame_images`` of k frames (rgb / hand_rgb [k, 3, S, S]) flat, as a graph returns them:
        per camera its tokens [k, T, D] and mask row [T]."""
        return tuple(x for tokens_and_row in self.model.frame_images(rgb, hand_rgb) for x in tokens_and_row)

    def _segments(self, frames: list[Frame], text, action_part):
        """Frame segments of ``frames``: embeds [k, S_f, D], mask [k, S_f]."""
        ids, am = text
        k = len(frames)
        return self.model.segments(None, None, ids.expand(k, -1), am.expand(k, -1),
                                   torch.stack([f.state for f in frames]), action_part, images=self._frame_images(frames))

    def _window_inputs(self, window: list[Frame], text) -> tuple:
        """``_window_pass``'s tensors: the text, the frames' states [W, 7], then per camera its image tokens
        [W, T, D] and mask row [T]."""
        ids, am = text
        cameras = [x for tokens, row in self._frame_images(window) for x in (tokens, row)]
        return (ids, am, torch.stack([f.state for f in window]), *cameras)

    def _window_pass(self, input_ids, attention_mask, states, *cameras) -> torch.Tensor:
        """Continuous ``pre``: ``[BOS] seg_1 ... seg_W`` in one causal pass with an explicit 4-D mask, no cache
        (free of host syncs: a CUDA graph replays it) -> the action tokens' hidden states [1, W, latent, D]."""
        m = self.model
        w = states.shape[0]
        images = list(zip(cameras[::2], cameras[1::2]))
        act = m.action_tokens[None].expand(w, -1, -1)
        seg, seg_mask = m.segments(None, None, input_ids.expand(w, -1), attention_mask.expand(w, -1), states, act,
                                   images=images)
        embeds, mask, lead = seg.reshape(1, -1, seg.shape[-1]), seg_mask.reshape(1, -1), 0
        if m.frame_end_id is None:  # one BOS for the sequence; wrapped frames bring their own
            bos, bos_mask = m.bos(1, seg.device)
            embeds, mask, lead = torch.cat([bos.to(embeds.dtype), embeds], 1), torch.cat([bos_mask, mask], 1), 1
        hidden, _ = m.backbone.decode(embeds, m.decoder_mask(mask, None, explicit=True), m.positions(mask))
        frames = hidden[:, lead:].reshape(w, -1, hidden.shape[-1])  # [W, S_f, D]
        end = frames.shape[1] - m.frame_tail
        # contiguous: a view's strides follow the instruction's length, and a compiled head is bound to them
        return frames[None, :, end - m.config.latent_num: end].contiguous()
