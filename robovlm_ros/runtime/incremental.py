"""Newest-frame action chunk from a history window, reusing work across control steps where exact.

* post history, continuous: frames are independent at the VLM stage, so the VLM runs only on frames
  it has not seen; their action-token features are kept per frame and the head re-fuses the window.
* post history, discrete: only the newest frame is decoded (KV cache inside the decoding).
* pre history: the window is one causal sequence ``[BOS] seg_1 ... seg_n``. While frames are only
  appended, the KV cache of the frames already in the sequence is reused; once the window slides
  (the oldest frame leaves), every remaining frame's keys/values change, so it is rebuilt.
  Discrete ``pre`` frames carry action tokens in the sequence: the chunk decoded at that frame, or for
  frames where no decoding ran, the actions the robot was executing from then on.
``use_cache=False`` recomputes the whole window every step (the reference the tests compare with).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Frame:
    serial: int                      # increases by one per observation within an episode
    rgb: torch.Tensor                # [3, S, S] preprocessed
    hand_rgb: torch.Tensor | None    # [3, S, S] or None
    state: torch.Tensor              # [7] normalised
    action_tokens: torch.Tensor | None = None  # discrete pre: [chunk * 7] tokens this frame carries


@dataclass
class _Sequence:
    """KV cache of [BOS] + the segments of ``serials`` (pre history)."""
    serials: list[int] = field(default_factory=list)
    cache: object = None
    mask: torch.Tensor | None = None
    feats: list[torch.Tensor] = field(default_factory=list)  # continuous: [latent, D] per frame


class IncrementalPolicy:
    def __init__(self, model, use_cache: bool = True):
        self.model, self.use_cache = model, use_cache
        self.reset()

    def reset(self) -> None:
        self._feats: dict[int, torch.Tensor] = {}  # post continuous: serial -> [latent, D]
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
                return m.predict_normalized(self._batch(window, text))[0]
            return self._post(window, text) if not pre else self._head_chunk(self._pre(window, text))
        # discrete: bin-centre values [chunk, 7]; the frame keeps the exact tokens it was decoded with
        if pre and not self.use_cache:
            batch = self._batch(window, text)
            if len(window) > 1:
                given = [m.action_tokenizer.decode(f.action_tokens).view(-1, m.config.action_dim) for f in window[:-1]]
                batch["actions"] = torch.stack(given + [given[-1]])[None]  # the last entry is not used
            values = m.decode_actions(batch, use_cache=False)[0]
        elif pre:
            values = self._pre(window, text)
        else:
            values = m.decode_actions(self._batch(window[-1:], text), use_cache=self.use_cache)[0]
        window[-1].action_tokens = m.action_tokenizer.encode(values).reshape(-1)
        return torch.cat([values[:, :-1], torch.where(values[:, -1:] > 0, 1.0, -1.0).to(values.dtype)], -1)

    def _head_chunk(self, feats: torch.Tensor) -> torch.Tensor:
        """[1, W, latent, D] -> newest frame's [chunk, 7] with gripper +-1."""
        arm, grip = self.model.head(feats)
        grip = torch.where(grip[0, -1] > 0, 1.0, -1.0).to(arm.dtype)
        return torch.cat([arm[0, -1], grip[:, None]], dim=-1)

    def _post(self, window: list[Frame], text) -> torch.Tensor:
        new = [f for f in window if f.serial not in self._feats]
        if new:
            feats = self.model.action_features(self._batch(new, text))[0]  # [n_new, latent, D]
            self._feats.update({f.serial: x for f, x in zip(new, feats)})
        keep = {f.serial for f in window}
        self._feats = {s: x for s, x in self._feats.items() if s in keep}
        return self._head_chunk(torch.stack([self._feats[f.serial] for f in window])[None])

    def _pre(self, window: list[Frame], text) -> torch.Tensor:
        """Continuous: action-token features [1, W, latent, D]; discrete: newest values [chunk, 7]."""
        m = self.model
        serials = [f.serial for f in window]
        seq = self._seq
        if seq is None or seq.serials != serials[: len(seq.serials)] or len(seq.serials) >= len(serials):
            bos, bos_mask = m.bos(1, window[0].rgb.device)
            _, cache = m.extend(bos, bos_mask)
            seq = self._seq = _Sequence(cache=cache, mask=bos_mask)
        todo = window[len(seq.serials):]
        continuous = m.config.action_space == "continuous"
        given = todo if continuous else todo[:-1]  # frames whose action part is known: one decoder pass
        if given:
            if continuous:
                act = m.action_tokens[None].expand(len(given), -1, -1)
            else:
                act = m.backbone.embed(torch.stack([f.action_tokens for f in given]))
            seg, seg_mask = self._segments(given, text, act)
            seq.mask = torch.cat([seq.mask, seg_mask.reshape(1, -1)], 1)
            hidden, seq.cache = m.extend(seg.reshape(1, -1, seg.shape[-1]), seq.mask, seq.cache)
            if continuous:  # [1, k*S_f, D] -> per frame, the hidden states at its action tokens
                seq.feats.extend(hidden.reshape(len(given), -1, hidden.shape[-1])[:, -m.config.latent_num:])
            seq.serials.extend(f.serial for f in given)
        if continuous:
            return torch.stack(seq.feats[-len(window):])[None]  # [1, W, latent, D]
        newest = window[-1]
        seg, seg_mask = self._segments([newest], text, None)
        tokens, seq.cache, seq.mask = m.greedy_decode(seg, torch.cat([seq.mask, seg_mask], 1), m.n_action_slots,
                                                      cache=seq.cache)
        # feed the last token too, so the cache holds the complete segment for the next frame
        seq.mask = torch.cat([seq.mask, seq.mask.new_ones(1, 1)], 1)
        _, seq.cache = m.extend(m.backbone.embed(tokens[:, -1:]).to(seg.dtype), seq.mask, seq.cache)
        seq.serials.append(newest.serial)
        return m.action_tokenizer.decode(tokens[0]).view(-1, m.config.action_dim)

    def _segments(self, frames: list[Frame], text, action_part):
        """Frame segments of ``frames``: embeds [k, S_f, D], mask [k, S_f]."""
        ids, am = text
        k = len(frames)
        hand = None if frames[0].hand_rgb is None else torch.stack([f.hand_rgb for f in frames])
        return self.model.frame_segments(torch.stack([f.rgb for f in frames]), hand, ids.expand(k, -1),
                                         am.expand(k, -1), torch.stack([f.state for f in frames]), action_part)
