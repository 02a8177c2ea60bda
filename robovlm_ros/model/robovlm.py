"""RoboVLM: a VLM backbone turned into a robot policy (after RoboVLMs' BaseRoboVLM).

Token layout of one frame (the "frame segment", S_f tokens):

    [img_start] image tokens [img_end]  ([img_start] hand image tokens [img_end])  text  [state]  actions

(the hand image first with ``image_order: hand_first``, as RoboVLMs orders them).

``actions`` are ``latent_num`` learnable action tokens (continuous) or the frame's chunk of
``fwd_pred_next_n * 7`` action-bin tokens (discrete, teacher forced while training).
History:
  * post: every frame is its own sequence ``[BOS] + segment``; the head fuses time.  [B*W, 1+S_f]
  * pre:  one causal sequence ``[BOS] + segment_1 + ... + segment_W``;               [B, 1+W*S_f]
          each frame's prediction is read at its own action tokens, so it sees only frames <= t.
With ``frame_end`` (RoboVLMs' layout) every frame is wrapped as ``[BOS] segment [EOS]`` and
pre history concatenates the wrapped frames (no extra leading BOS).
Text is left padded inside its slot (padding sits in the middle of the sequence); positions are
recomputed from the mask so padding never shifts a token's position. The mask also marks image tokens
(Backbone.positions), so Qwen2-VL's image tokens get their 3-D rotary positions.
"""
from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import cuda_graph
from .action_tokenizer import ActionTokenizer
from .adaptation import apply_adaptation
from .backbones import Backbone, config_to_dict, family_spec, preprocessor_defaults
from .config import PolicyConfig
from .heads import build_head, pack_rnn
from .normalization import Normalizer
from .processing import PolicyProcessor
from .resampler import PerceiverResampler
from .decoding import decode_chunk
from .normalization import snap_gripper
from .text_tokenizer import load_tokenizer, tiny_tokenizer
from .window_inference import WindowPredictor

IGNORE = -100
VL_SOURCES = ("vl", "caption", "vqa")


# assignments of a submodule into a policy's modules (``policy.head = ...``), counted: graph_guard finds its
# sampled weights again after one, since the part it sampled may have been replaced. Only the policies' own
# modules count: transformers builds a ModuleList per decoder pass (``self.layers[:n]``), which must not make
# every guard call look its samples up again (0.6 ms for PaliGemma-3B against 10 us)
_watched: weakref.WeakSet = weakref.WeakSet()
_module_assignments = [0]


def _count_module_assignment(module, name, submodule):
    try:
        if module in _watched:
            _module_assignments[0] += 1
    except TypeError:  # a module class with __eq__ but no __hash__ (a dataclass module): never a policy's
        pass


torch.nn.modules.module.register_module_module_registration_hook(_count_module_assignment)


class RoboVLM(nn.Module):
    def __init__(self, config: PolicyConfig, tokenizer=None, normalizer: Normalizer | None = None,
                 *, load_backbone_weights: bool = True, backbone: Backbone | None = None):
        super().__init__()
        if backbone is not None:  # already built and loaded (an import's weights)
            self.backbone = backbone
            config.backbone_config = config_to_dict(backbone.config)
        elif config.backbone_path and load_backbone_weights:
            self.backbone = Backbone.from_pretrained(config.backbone, config.backbone_path)
            config.backbone_config = config_to_dict(self.backbone.config)
        elif config.backbone_config is not None:
            self.backbone = Backbone.from_config(config.backbone, config.backbone_config)
        else:
            raise ValueError("PolicyConfig has neither backbone_path nor backbone_config")
        if tokenizer is None:
            tokenizer = tiny_tokenizer() if config.tiny_backbone else load_tokenizer(config.backbone_path)
        pp = preprocessor_defaults(config.backbone_path, family_spec(config.backbone), self.backbone.config)
        for key, value in pp.items():  # fill what the user left open, keep what they set
            if getattr(config, key) is None:
                setattr(config, key, value)
        fixed = getattr(self.backbone.config.vision_config, "image_size", None)  # None: dynamic resolution
        if fixed is not None and config.image_size != fixed:
            raise ValueError(f"image_size {config.image_size} does not fit the {config.backbone} vision tower, which "
                             f"takes {fixed}x{fixed} images; leave image_size unset or set it to {fixed}")
        self.config = config
        self.tokenizer = tokenizer
        self.normalizer = normalizer or Normalizer(mode=config.norm_mode, clip_bound=config.clip_bound,
                                                   clip_low=config.clip_low)
        self.processor = PolicyProcessor(config, tokenizer, self.normalizer)

        d = self.backbone.hidden_size
        if len(tokenizer) > self.backbone.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the backbone embeds {self.backbone.vocab_size}")
        self.bos_id = self._sequence_start_id(config, tokenizer)
        self.resampler = None
        if config.use_resampler:
            self.resampler = PerceiverResampler(d, config.resampler_latents, config.resampler_depth, config.resampler_heads,
                                                config.resampler_dim_head, config.resampler_ff_mult,
                                                config.resampler_ff_bias)
        self.image_start_end = None  # learned start / end vectors [2, D] (families without their own tokens)
        if config.use_image_start_end:
            if config.image_marker_ids is None and config.image_markers == "family":
                markers = family_spec(config.backbone).image_markers(self.backbone.config, tokenizer)
                config.image_marker_ids = None if markers is None else [list(markers[0]), list(markers[1])]
            if config.image_marker_ids is None:
                self.image_start_end = nn.Parameter(torch.randn(2, d) * 0.02)
        # the family's marker ids as buffers [n_start], [n_end]: made once, not from host data every step
        markers = config.image_marker_ids if self.image_start_end is None else None
        for name, ids in zip(("image_marker_start", "image_marker_end"), markers or (None, None)):
            self.register_buffer(name, None if ids is None else torch.tensor(ids, dtype=torch.long), persistent=False)
        # the image tokens' grid side when the family places them on a 2-D grid of rotary positions
        # (Qwen2-VL); resampled latents have no grid, so they are positioned as text
        if family_spec(config.backbone).mrope and not config.use_resampler:
            vcfg = self.backbone.config.vision_config
            self.backbone.mrope_grid = config.image_size // (vcfg.patch_size * vcfg.spatial_merge_size)
        if config.use_state:
            # 6 arm dims -> Linear, gripper (+-1) -> Embedding, concatenated -> Linear: one state token
            self.state_arm = nn.Linear(config.arm_dim, d)
            self.state_gripper = nn.Embedding(2, d)
            self.state_fuse = nn.Linear(2 * d, d)
        if config.action_space == "continuous":
            self.action_tokens = nn.Parameter(torch.randn(config.latent_num, d) * 0.02)
            self.head = build_head(config.head, d, config.latent_num, config.window_size, config.fwd_pred_next_n,
                                   arm_dim=config.arm_dim, head_hidden=config.head_hidden, head_layers=config.head_layers,
                                   style=config.head_style)
        else:
            special = set(tokenizer.all_special_ids) | {getattr(self.backbone.config, "image_token_id", -1)}
            special |= set(sum(config.image_marker_ids or [], []))
            self.action_tokenizer = ActionTokenizer(self.backbone.vocab_size, special, config.n_bins,
                                                    style=config.bin_style, token_end=config.action_token_end)
        if config.head_style == "robovlms" and config.history_type == "pre" and config.frame_end is None:
            warnings.warn("a pre-history policy with RoboVLMs' heads but no frame_end: RoboVLMs' pre layout "
                          "closes every frame with its prompt's last token; a policy imported before "
                          "import-robovlms set frame_end should be imported again")
        # frames wrapped as [BOS] segment [frame_end] (RoboVLMs' layout); None: not wrapped
        self.frame_end_id = None if config.frame_end is None else self._single_token(tokenizer, config.frame_end,
                                                                                      "frame_end")
        # how KV-cached decoding stores its cache: "auto" = preallocated + CUDA graph on CUDA, growing
        # elsewhere; "static" / "dynamic" force one (greedy_tokens)
        self.decoding = "auto"
        # on CUDA (not under autocast), replay the step's VLM passes, image encoding, head, decoding prefix and
        # decoding step as CUDA graphs (model/cuda_graph.py, static_decoding.py); False: eager kernels only
        self.cuda_graphs = True
        self.compiled = False  # compile_modules() ran: new frames go through one by one, as on CUDA
        self._guard_slots: list | None = None  # graph_guard's sampled weights: (owning module, name)
        self._guard_modules = -1  # _module_assignments when they were found
        self._static_decoder = None  # decoding.greedy_tokens' StaticGreedyDecoder, made when first used
        apply_adaptation(self)

    @classmethod
    def _sequence_start_id(cls, config: PolicyConfig, tokenizer) -> int:
        if config.sequence_start is None:
            return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        return cls._single_token(tokenizer, config.sequence_start, "sequence_start")

    @staticmethod
    def _single_token(tokenizer, text: str, what: str) -> int:
        """Text that is one token, else a vocabulary token by its name (as convert_ids_to_tokens writes it,
        e.g. a byte-fallback piece "<0x49>")."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return ids[0]
        tid = tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int) and (tid != tokenizer.unk_token_id or text == tokenizer.unk_token):
            return tid
        raise ValueError(f"{what} {text!r} is {len(ids)} tokens, not one, and no token of the vocabulary")

    # ------------------------------------------------------------------------------------------
    # sequence building (also the building blocks of decoding.py and window_inference.py; code
    # outside model/ uses only the public API at the end: forward, predict, window_predictor)
    # ------------------------------------------------------------------------------------------
    @property
    def n_action_slots(self) -> int:
        """Tokens of the action part of one frame segment."""
        c = self.config
        return c.latent_num if c.action_space == "continuous" else c.fwd_pred_next_n * c.action_dim

    @property
    def frame_tail(self) -> int:
        """Tokens after a frame's action part: 1 with ``frame_end``, else 0."""
        return 0 if self.frame_end_id is None else 1

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, S, S] -> image tokens [N, T, D] (resampled and wrapped in start / end tokens if enabled:
        the family's own tokens where it has them, else learned vectors) and their mask row [T]
        (backbone.positions: 1 for a marker or resampled latent, 2 + i for the i-th image token)."""
        feats = self.backbone.image_features(pixels)
        if self.resampler is not None:
            feats = self.resampler(feats)
        n, t = feats.shape[:2]
        g = self.backbone.mrope_grid
        if g and t != g * g:
            raise ValueError(f"{t} image tokens do not fill the {g}x{g} grid of rotary positions (image_size "
                             f"{self.config.image_size} does not match the pixels given)")
        row = (torch.arange(t, device=feats.device) + 2) if g else feats.new_ones(t, dtype=torch.long)
        start = end = None
        if self.image_start_end is not None:
            start, end = self.image_start_end[:1], self.image_start_end[1:]
        elif self.image_marker_start is not None:
            start, end = self.backbone.embed(self.image_marker_start), self.backbone.embed(self.image_marker_end)
        if start is not None:
            wrap = lambda x: x.to(feats.dtype).unsqueeze(0).expand(n, -1, -1)  # noqa: E731
            feats = torch.cat([wrap(start), feats, wrap(end)], dim=1)
            row = torch.cat([row.new_ones(start.shape[0]), row, row.new_ones(end.shape[0])])
        return feats, row

    def encode_state(self, state: torch.Tensor) -> torch.Tensor:
        """[N, 7] normalised state -> [N, 1, D] state token."""
        arm = self.state_arm(state[:, : self.config.arm_dim])
        grip = self.state_gripper((state[:, self.config.arm_dim] > 0).long())
        return self.state_fuse(torch.cat([arm, grip], dim=-1)).unsqueeze(1)

    def frame_images(self, rgb, hand_rgb) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The image tokens of N frames in their sequence order: [(tokens [N, T, D], mask row [T])] per camera
        (``encode_images``); what ``frame_segments`` takes as ``images`` to skip encoding them again. The two
        cameras go through the vision tower as one batch [2N, 3, S, S]: one pass's kernels, not two (at real size
        the tower is about half of a step's kernel launches)."""
        if not self.config.use_hand_rgb:
            return [self.encode_images(rgb)]
        if hand_rgb is None:
            raise ValueError("this policy uses the gripper camera: batch needs 'hand_rgb'")
        n = rgb.shape[0]
        both, row = self.encode_images(torch.cat([rgb, hand_rgb.to(rgb.dtype)]))
        static, hand = (both[:n], row), (both[n:], row)
        return [hand, static] if self.config.image_order == "hand_first" else [static, hand]

    def frame_segments(self, rgb, hand_rgb, input_ids, attention_mask, state, action_part, images=None):
        """Embeddings and mask of N frame segments.

        rgb/hand_rgb [N, 3, S, S]; input_ids/attention_mask [N, L]; state [N, 7] or None;
        action_part [N, n_action_slots, D] or None (discrete prefix without its action tokens);
        images: ``frame_images(rgb, hand_rgb)`` when already encoded (rgb, hand_rgb are then not read).
        Returns embeds [N, S_f, D], mask [N, S_f].
        """
        images = self.frame_images(rgb, hand_rgb) if images is None else images
        parts = [feats for feats, _ in images]
        n_img = sum(p.shape[1] for p in parts)
        parts.append(self.backbone.embed(input_ids))
        if self.config.use_state:
            if state is None:
                raise ValueError("this policy uses the state token: batch needs 'state'")
            parts.append(self.encode_state(state).to(parts[0].dtype))
        if action_part is not None:
            parts.append(action_part.to(parts[0].dtype))
        embeds = torch.cat(parts, dim=1)
        n = attention_mask.shape[0]
        image_mask = torch.cat([row for _, row in images]).to(attention_mask).expand(n, -1)
        tail = attention_mask.new_ones(n, embeds.shape[1] - n_img - attention_mask.shape[1])
        return embeds, torch.cat([image_mask, attention_mask, tail], dim=1)

    def bos(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.token(self.bos_id, n, device)

    def token(self, token_id: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for N sequences: embeds [N, 1, D], mask [N, 1]."""
        ids = torch.full((n, 1), token_id, dtype=torch.long, device=device)
        return self.backbone.embed(ids), torch.ones(n, 1, dtype=torch.long, device=device)

    def segments(self, rgb, hand_rgb, input_ids, attention_mask, state, action_part, images=None):
        """``frame_segments``, each wrapped as ``[BOS] segment [frame_end]`` when the policy has a frame end
        (the end only after an action part: a segment without one is a decoding prefix)."""
        seg, mask = self.frame_segments(rgb, hand_rgb, input_ids, attention_mask, state, action_part, images)
        if self.frame_end_id is None:
            return seg, mask
        n = seg.shape[0]
        parts = [self.bos(n, seg.device), (seg, mask)]
        if action_part is not None:
            parts.append(self.token(self.frame_end_id, n, seg.device))
        return (torch.cat([e.to(seg.dtype) for e, _ in parts], 1), torch.cat([m.to(mask) for _, m in parts], 1))

    def positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Position ids of a sequence from its mask (Backbone.positions): [N, L], or [3, N, L]."""
        return self.backbone.positions(mask)

    def sequences(self, batch: dict, action_part: torch.Tensor | None, images=None):
        """Assemble the VLM input for a batch.  action_part [B, W, n_action_slots, D] or None; ``images``: the
        B*W frames' ``frame_images`` when encoded apart (the batch's rgb / hand_rgb are then not read).

        Returns embeds [N_seq, L_seq, D], mask [N_seq, L_seq] and a function mapping decoder output
        [N_seq, L_seq, D] back to per-frame segments [B, W, S_f, D].
        """
        b = batch["input_ids"].shape[0]
        w = batch["rgb"].shape[1] if images is None else images[0][0].shape[0] // b
        device = batch["input_ids"].device
        flat = lambda x: None if x is None else x.reshape(b * w, *x.shape[2:])  # noqa: E731
        ids = batch["input_ids"].repeat_interleave(w, dim=0)  # [B*W, L] text repeated per frame
        am = batch["attention_mask"].repeat_interleave(w, dim=0)
        seg, seg_mask = self.segments(flat(batch.get("rgb")), flat(batch.get("hand_rgb")), ids, am,
                                      flat(batch.get("state")), flat(action_part), images)
        s_f = seg.shape[1]
        wrapped = self.frame_end_id is not None  # each segment already starts with its BOS
        if self.config.history_type == "post":  # [B*W, 1 + S_f]
            embeds, mask = seg, seg_mask
            if not wrapped:
                bos, bos_mask = self.bos(b * w, device)
                embeds, mask = torch.cat([bos, seg], 1), torch.cat([bos_mask, seg_mask], 1)
        else:  # [B, 1 + W*S_f]
            embeds, mask = seg.reshape(b, w * s_f, -1), seg_mask.reshape(b, w * s_f)
            if not wrapped:
                bos, bos_mask = self.bos(b, device)
                embeds, mask = torch.cat([bos, embeds], 1), torch.cat([bos_mask, mask], 1)
        # every layout is "(BOS) + frame segments in order", so one view recovers the frames, without
        # the wrapping tokens
        lead, tail = (1, self.frame_tail if action_part is not None else 0) if wrapped else (0, 0)
        unflatten = lambda h: h[:, 1 - lead:].reshape(b, w, -1, h.shape[-1])[:, :, lead: s_f - tail]  # noqa: E731
        return embeds, mask, unflatten

    # ------------------------------------------------------------------------------------------
    # continuous actions
    # ------------------------------------------------------------------------------------------
    def action_features(self, batch: dict) -> torch.Tensor:
        """Hidden states at the action tokens of every frame: [B, W, latent_num, D]."""
        b, w = batch["rgb"].shape[:2]
        act = self.action_tokens.unsqueeze(0).unsqueeze(0).expand(b, w, -1, -1)
        embeds, mask, unflatten = self.sequences(batch, act)
        prefix = embeds.shape[1] - self.config.latent_num - self.frame_tail
        hidden, _ = self.backbone.decode(embeds, self.decoder_mask(mask, prefix), self.positions(mask))
        return unflatten(hidden)[:, :, -self.config.latent_num:]

    def graph_guard(self) -> tuple:
        """What a CUDA graph of the policy is bound to besides its inputs' shapes (cuda_graph.CapturedFunction,
        the decoding step's graph): where the weights live (moved, cast or loaded with ``assign``: new
        addresses) and buffers the backbone may replace. Sampled, to stay cheap at every call: the first weight
        of each part a move or a load touches (the policy's own modules and parameters, each vision module, the
        embeddings, every layer of the backbone's layer lists (decoder and vision encoder), the LM head). Where
        they are is looked up again after a module was assigned into one of the policy's (a replaced part); a
        parameter other than its module's first swapped by hand (``.data =``) is not seen."""
        if self._guard_slots is None or self._guard_modules != _module_assignments[0]:
            self._guard_modules = _module_assignments[0]
            self._guard_slots = self._sampled_weights()
            _watched.update(self.modules())
        # looked up in the owning module at every call: a move swaps .data, a load with assign the Parameter
        return (*(owner._parameters[leaf].data_ptr() for owner, leaf in self._guard_slots),
                *self.backbone.graph_inputs())

    def _sampled_weights(self) -> list[tuple[nn.Module, str]]:
        """graph_guard's samples: (owning module, parameter name) of each part's first weight."""
        bb = self.backbone
        layers = [layer for m in bb.modules() if isinstance(m, nn.ModuleList) for layer in m]
        parts = [*self.children(), *bb.vision_modules, bb.embed_tokens, *layers, bb.lm_head]
        slots = [(self, name) for name, _ in self.named_parameters(recurse=False)]  # action tokens, markers
        for part in parts:
            name = next((n for n, _ in part.named_parameters()), None)
            if name is not None:
                path, _, leaf = name.rpartition(".")
                slots.append((part.get_submodule(path), leaf))
        return slots

    @staticmethod
    def single_frames(rgb, hand_rgb, input_ids, attention_mask, state) -> dict:
        """N one-frame windows as a batch: rgb / hand_rgb [N, 3, S, S] -> [N, 1, 3, S, S], state [N, 7] ->
        [N, 1, 7] (hand_rgb / state None: left out)."""
        batch = {"rgb": None if rgb is None else rgb[:, None], "input_ids": input_ids, "attention_mask": attention_mask}
        batch.update({k: v[:, None] for k, v in (("hand_rgb", hand_rgb), ("state", state)) if v is not None})
        return batch

    def frame_action_features(self, rgb, hand_rgb, input_ids, attention_mask, state, images=None) -> torch.Tensor:
        """``action_features`` of N single frames (post history: each frame its own sequence), free of host
        synchronisation so that a CUDA graph can replay it (the window predictor's cached step; the 4-D
        mask, ``decoder_mask(explicit=True)``). rgb / hand_rgb [N, 3, S, S], input_ids / attention_mask
        [N, L], state [N, 7] -> [N, latent_num, D]; ``images``: ``frame_images(rgb, hand_rgb)`` when
        encoded apart (rgb, hand_rgb None)."""
        act = self.action_tokens[None, None].expand(len(input_ids), 1, -1, -1)
        embeds, mask, unflatten = self.sequences(self.single_frames(rgb, hand_rgb, input_ids, attention_mask, state),
                                                 act, images)
        prefix = embeds.shape[1] - self.config.latent_num - self.frame_tail
        attend = self.decoder_mask(mask, prefix, explicit=True)
        hidden, _ = self.backbone.decode(embeds, attend, self.positions(mask))
        return unflatten(hidden)[:, 0, -self.config.latent_num:]

    @staticmethod
    def _newest_chunk(arm: torch.Tensor, grip_logits: torch.Tensor) -> torch.Tensor:
        """Head outputs [B, W, chunk, 6], [B, W, chunk] -> newest frame's chunk [B, chunk, 7], gripper +-1."""
        return snap_gripper(torch.cat([arm[:, -1], grip_logits[:, -1].unsqueeze(-1)], dim=-1))

    def _continuous_loss(self, batch: dict, return_prediction: bool = False) -> dict:
        arm, grip_logits = self.head(self.action_features(batch))  # [B, W, chunk, 6], [B, W, chunk]
        target = batch["actions"].to(arm.dtype)  # [B, W, chunk, 7] normalised
        mask = batch.get("action_mask")
        mask = torch.ones(target.shape[:-1], device=arm.device) if mask is None else mask.to(arm.dtype)
        denom = mask.sum().clamp(min=1.0)
        arm_target = target[..., : self.config.arm_dim]
        if self.config.arm_loss == "huber":
            arm_err = F.huber_loss(arm, arm_target, delta=1.0, reduction="none").mean(-1)
        else:
            arm_err = F.mse_loss(arm, arm_target, reduction="none").mean(-1)
        grip_target = (target[..., self.config.arm_dim] > 0).to(arm.dtype)  # -1/1 -> 0/1
        grip_err = F.binary_cross_entropy_with_logits(grip_logits, grip_target, reduction="none")
        loss_arm = (arm_err * mask).sum() / denom
        loss_gripper = (grip_err * mask).sum() / denom
        acc = (((grip_logits > 0).to(arm.dtype) == grip_target).to(arm.dtype) * mask).sum() / denom
        out = {"loss_action": loss_arm + self.config.gripper_loss_weight * loss_gripper,
               "loss_arm": loss_arm, "loss_gripper": loss_gripper, "acc_gripper": acc.detach()}
        if return_prediction:
            out["prediction"] = self._newest_chunk(arm.detach(), grip_logits.detach())
        return out

    # ------------------------------------------------------------------------------------------
    # discrete actions
    # ------------------------------------------------------------------------------------------
    def _discrete_loss(self, batch: dict) -> dict:
        c = self.config
        actions = batch["actions"]  # [B, W, chunk, 7] normalised
        b, w = actions.shape[:2]
        tokens = self.action_tokenizer.encode(actions).reshape(b, w, -1)  # [B, W, chunk*7]
        embeds, mask, unflatten = self.sequences(batch, self.backbone.embed(tokens))
        n = self.n_action_slots
        prefix = embeds.shape[1] - n - self.frame_tail
        hidden, _ = self.backbone.decode(embeds, self.decoder_mask(mask, prefix), self.positions(mask))
        # the token at slot k is predicted from the hidden state one position earlier; the frame end (where
        # there is one) from the last action token
        seg = unflatten(hidden)
        pred_hidden = seg[:, :, -n - 1:] if self.frame_tail else seg[:, :, -n - 1: -1]  # [B, W, n (+1), D]
        logits = self.backbone.lm_head(pred_hidden).float()
        labels = tokens.clone()
        if batch.get("action_mask") is not None:
            step_ok = batch["action_mask"].bool().repeat_interleave(c.action_dim, dim=-1)  # [B, W, n]
            labels[~step_ok] = IGNORE
        if self.frame_tail:  # RoboVLMs keeps the end label of a frame whose last steps are masked
            labels = torch.cat([labels, labels.new_full((b, w, 1), self.frame_end_id)], -1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
        valid = labels != IGNORE
        acc = ((logits.argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1)
        return {"loss_action": loss, "acc_action": acc.detach()}

    def extend(self, new_embeds: torch.Tensor, mask: torch.Tensor, cache=None, prefix: int | None = None):
        """Run the decoder on tokens appended after ``cache`` (None = empty).

        new_embeds [N, L_new, D]; mask [N, L_past + L_new] covers the cached tokens and the new ones;
        ``prefix``: an empty cache's first ``prefix`` tokens are a frame's prefix (``decoder_mask``).
        Returns (hidden [N, L_new, D], cache now holding all L_past + L_new tokens).
        """
        pos = self.positions(mask)[..., -new_embeds.shape[1]:]
        if prefix is not None and new_embeds.shape[1] == mask.shape[1]:
            mask = self.decoder_mask(mask, prefix)
        return self.backbone.decode(new_embeds, mask, pos, cache=cache, use_cache=True)

    def decoder_mask(self, mask: torch.Tensor, prefix: int | None, kv_len: int | None = None,
                     explicit: bool = False) -> torch.Tensor:
        """[N, L] padding mask -> what the decoder attends with. Causal (the default): the mask itself.
        ``prefix_attention: bidirectional``: [N, 1, L, kv_len] where the first ``prefix`` tokens (a frame's
        images, text and state) attend to each other both ways and every later one causally, PaliGemma's
        pretrained prefix-LM; ``kv_len`` (default L) for a preallocated cache's slots. ``explicit``: the 4-D
        mask also when causal, for full-attention decoders (a sliding-window layer needs the family's own
        mask); transformers takes it as is, where from a 2-D mask it first reads on the host whether any
        token is padding (to skip the mask), which a CUDA graph cannot replay. An explicit mask is additive
        (0 or the dtype's min) for every attention implementation: sdpa would convert a boolean one in every
        layer (three kernels each)."""
        bidirectional = prefix is not None and self.config.prefix_attention != "causal"
        if not (bidirectional or (explicit and self.backbone.full_attention)):
            return mask
        n, length = mask.shape
        kv = kv_len or length
        q, k = torch.arange(length, device=mask.device), torch.arange(kv, device=mask.device)
        allowed = k[None, :] <= q[:, None]  # [L, kv]
        if bidirectional:
            allowed = allowed | ((k[None, :] < prefix) & (q[:, None] < prefix))
        pad = torch.zeros(n, kv, dtype=torch.bool, device=mask.device)
        pad[:, :length] = mask > 0
        allowed = allowed[None, None] & pad[:, None, None, :]
        if self.backbone.language_model.config._attn_implementation == "sdpa" and not explicit:
            return allowed  # training's prefix-LM mask: a quarter of a float one's memory
        dtype = self.backbone.embed_tokens.weight.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)

    # ------------------------------------------------------------------------------------------
    # vision-language co-training (captions / VQA)
    # ------------------------------------------------------------------------------------------
    def _vl_loss(self, batch: dict) -> torch.Tensor:
        """Next-token loss on ``vl_labels`` for [BOS] image text sequences (vl_rgb [B, 3, S, S])."""
        img, img_row = self.encode_images(batch["vl_rgb"])
        b = img.shape[0]
        bos, bos_mask = self.bos(b, img.device)
        text = self.backbone.embed(batch["vl_input_ids"])
        embeds = torch.cat([bos, img, text.to(img.dtype)], 1)
        prefix = 1 + img.shape[1]
        mask = torch.cat([bos_mask, img_row.to(bos_mask).expand(b, -1), batch["vl_attention_mask"]], 1)
        labels = torch.cat([torch.full((b, prefix), IGNORE, device=img.device, dtype=torch.long), batch["vl_labels"]], 1)
        hidden, _ = self.backbone.decode(embeds, self.decoder_mask(mask, prefix), self.positions(mask))
        logits = self.backbone.lm_head(hidden[:, :-1]).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)

    # ------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------
    def forward(self, batch: dict, return_prediction: bool = False) -> dict:
        """Training step: returns ``loss`` and its parts (see RoboVLMs batch keys in DESIGN.md).

        ``return_prediction`` adds ``prediction``, the newest frame's normalised chunk [B, chunk, 7]
        (what ``predict(batch, normalized=True)`` gives), where the loss pass already computes it:
        continuous actions only. Validation uses it to score actions without a second backbone pass;
        discrete actions are teacher-forced in the loss, so their prediction needs its own decoding.
        """
        sources = batch.get("data_source", "action")
        sources = {sources} if isinstance(sources, str) else set(sources)
        out: dict = {}
        total = None
        if "action" in sources:
            if "actions" not in batch:
                raise ValueError("data_source 'action' needs 'actions' in the batch")
            if self.config.action_space == "continuous":
                parts = self._continuous_loss(batch, return_prediction)
            else:
                parts = self._discrete_loss(batch)
            out.update(parts)
            total = parts["loss_action"]
        if sources & set(VL_SOURCES):
            missing = [k for k in ("vl_rgb", "vl_input_ids", "vl_attention_mask", "vl_labels") if k not in batch]
            if missing:
                raise ValueError(f"vision-language data_source needs {missing} in the batch")
            out["loss_vl"] = self._vl_loss(batch)
            weighted = self.config.vl_loss_ratio * out["loss_vl"]
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError(f"nothing to train on for data_source {sorted(sources)}")
        out["loss"] = total
        return out

    @torch.no_grad()
    def predict(self, batch: dict, normalized: bool = False, use_cache: bool = True) -> torch.Tensor:
        """The action chunk of the newest frame of each window of a preprocessed batch (DESIGN.md batch
        keys, ``model.processor`` makes them): [B, chunk, 7] with the gripper ±1; in robot units
        (unnormalised with the checkpoint's statistics) unless ``normalized``. ``use_cache=False``
        decodes discrete actions without the KV cache (the reference the cached paths equal)."""
        was_training = self.training
        self.eval()
        try:
            if self.config.action_space == "continuous":
                chunk = self._newest_chunk(*self.head(self.action_features(batch)))
            else:
                tokens = decode_chunk(self, batch, use_cache=use_cache)  # [B, chunk*7]
                values = self.action_tokenizer.decode(tokens).reshape(len(tokens), -1, self.config.action_dim)
                chunk = snap_gripper(values)
            return chunk if normalized else self.normalizer.unnormalize_action(chunk.float())
        finally:
            self.train(was_training)

    def pack_rnn_weights(self) -> None:
        """The RNNs' weights (an LSTM head) in cuDNN's one contiguous buffer on CUDA, bf16 included
        (heads.pack_rnn): unpacked, every call copies them into one (and warns). The runner calls this after
        moving the policy (a no-op off CUDA). Not done in ``_apply``: a sharded (FSDP) module's weights are
        views that must not be re-packed."""
        for module in self.modules():
            if isinstance(module, nn.RNNBase):
                pack_rnn(module)

    def compile_modules(self, mode: str | None = None) -> None:
        """torch.compile, in place, what every step runs: the vision tower, each decoder layer (one compiled graph
        serves all layers without a KV cache, one per layer with one) and the head: fused kernels for the
        prefix, the continuous step and decoding. Compilation happens at the first call per input shape
        (PolicyRunner.warmup); call it on the device the policy runs on. ``mode`` as torch.compile's (None: its
        default, no CUDA graphs, which the preallocated-cache decoding captures itself; with ``cuda_graphs`` on,
        modes that capture graphs of their own, nested in ours, are refused)."""
        device = next(self.parameters()).device
        on_cuda = cuda_graph.on_cuda(device)
        if self.cuda_graphs and on_cuda and mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile mode {mode!r} captures CUDA graphs itself, inside the policy's own: use "
                             f"'max-autotune-no-cudagraphs', or turn the policy's cuda_graphs off")
        # where a KV cache is passed, dynamo specialises a decoder layer on its index (the cache is indexed by
        # it): a graph per layer and input shape. Shapes change with the cache's length (a token per decoding
        # step into the growing cache, a frame per step in continuous pre history) and with the instruction's
        # token count, so decoder layers compile with dynamo's automatic dynamic shapes: static at their first
        # shape, then one graph for the lengths that vary (a few graphs per layer for any number of
        # instructions; static, a graph per layer and length, went past any limit). The limits leave room for
        # that and for the head's graph per window length; past them dynamo would run the rest eagerly
        n, w = len(self.backbone.decoder_layers), self.config.window_size
        limit = 8 * (n + w)
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, limit)
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, limit)
        for module in self.backbone.decoder_layers:
            module.compile(dynamic=None, mode=mode)
        parts = [*self.backbone.vision_modules]
        parts += [m for m in (getattr(self, "head", None), self.resampler) if m is not None]
        for module in parts:
            module.compile(dynamic=False, mode=mode)
        self.compiled = True

    def binds_shapes(self, device: torch.device) -> bool:
        """Whether parts of the step on ``device`` are bound to their input shapes, so that a new shape (another
        instruction token count) costs a capture or a compile: CUDA graphs on CUDA, or compiled modules."""
        return (cuda_graph.on_cuda(device) and self.cuda_graphs) or self.compiled

    def window_predictor(self, use_cache: bool = True) -> WindowPredictor:
        """The newest frame's normalised chunk from a history window, control step after control step,
        reusing the work of earlier steps where that is exact (model/window_inference.py). What
        PolicyRunner runs; ``use_cache=False`` recomputes the window every step (the reference)."""
        return WindowPredictor(self, use_cache=use_cache)

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str) -> None:
        from .checkpoint import save_checkpoint

        save_checkpoint(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str, map_location: str | torch.device = "cpu") -> "RoboVLM":
        from .checkpoint import load_checkpoint

        return load_checkpoint(cls, directory, map_location)
