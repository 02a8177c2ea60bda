"""One adapter over Hugging Face image-text-to-text models.

RoboVLM needs five things from a VLM, whatever its family:
  * ``embed(input_ids)``            token embeddings            [N, L] -> [N, L, D]
  * ``image_features(pixels)``      vision encoder + projector  [N, 3, S, S] -> [N, T, D]
  * ``language_model(...)``         the decoder, fed ``inputs_embeds`` with explicit positions,
                                    an attention mask and an optional KV cache
  * ``lm_head``                     hidden -> vocabulary logits (discrete actions, VL loss)
  * module groups for freezing      vision / decoder layers

Every family is described by one ``FamilySpec`` (attribute paths plus a small image function); the
rest of the code never branches on the family. No model file is patched: we call the public
sub-modules of the current transformers classes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from transformers import AutoConfig, PretrainedConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


# --- image feature functions: pixels [N, 3, S, S] (already normalised) -> [N, T, D] -------------

def _pooled(output) -> torch.Tensor:
    feats = output.pooler_output
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def _image_features_default(hf: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return _pooled(hf.model.get_image_features(pixel_values=pixels))


def _image_features_llava(hf: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    cfg = hf.config
    out = hf.model.get_image_features(
        pixel_values=pixels,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    )
    return _pooled(out)


def _image_features_kosmos2(hf: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return _pooled(hf.get_image_features(pixel_values=pixels))


def _image_features_idefics(hf: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    # Called below get_image_features on purpose: that method drops images whose normalised pixels
    # are all exactly 0 (its padding convention), which a uniform grey camera frame would trigger.
    # And below the vision model's own forward: with every patch real its attention needs no mask, where the
    # forward builds one from an all-ones patch mask and reads it on the host to skip it again (which a
    # CUDA graph cannot replay). Same parts, same order (the fidelity test compares with transformers).
    model = hf.model
    vision = model.vision_model
    patch = model.config.vision_config.patch_size
    n, _, h, w = pixels.shape
    patch_mask = torch.ones(n, h // patch, w // patch, dtype=torch.bool, device=pixels.device)
    hidden = vision.embeddings(pixel_values=pixels.to(model.dtype), patch_attention_mask=patch_mask)
    hidden = vision.post_layernorm(vision.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state)
    return model.connector(hidden)


def _image_features_qwen2_vl(hf: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    # Qwen2-VL's vision tower takes flattened patches in its processor's layout:
    # [N * t * gh * gw, C * tp * p * p] with patches ordered in 2x2 merge groups.
    visual = hf.model.visual
    vcfg = hf.config.vision_config
    p, tp, m = vcfg.patch_size, vcfg.temporal_patch_size, vcfg.spatial_merge_size
    n, c, h, w = pixels.shape
    gh, gw = h // p, w // p
    x = pixels.unsqueeze(1).expand(n, tp, c, h, w)  # a still image is repeated over the temporal patch
    x = x.reshape(n, 1, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # n, t, gh/m, gw/m, m, m, c, tp, p, p
    x = x.reshape(n * gh * gw, c * tp * p * p)
    grid = torch.tensor([[1, gh, gw]] * n, device=pixels.device)
    out = visual(x.to(visual.dtype), grid_thw=grid)
    return out.pooler_output.reshape(n, (gh // m) * (gw // m), -1)


@dataclass(frozen=True)
class FamilySpec:
    """Where the parts of one VLM family live inside its ``*ForConditionalGeneration`` class."""

    model_type: str  # transformers config.model_type
    class_name: str  # transformers class
    language_model: str  # decoder that takes inputs_embeds
    embed_tokens: str
    lm_head: str
    vision: tuple[str, ...]  # vision encoder + projector (what "train_vision" toggles)
    image_features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    position_offset: Callable[[PretrainedConfig], int] = lambda cfg: 0
    # Qwen2-VL's multimodal rotary positions: image tokens at (t, h, w) = start + (0, row, col), and the
    # image advances the position counter by its grid side, not by its token count
    mrope: bool = False
    # the family's own image start / end tokens: (hf config, tokenizer) -> ([start ids], [end ids]) or None
    image_markers: Callable[[PretrainedConfig, object], "tuple[list[int], list[int]] | None"] = lambda cfg, tok: None
    # the decoder call: (backbone, embeds, 2-D or 4-D mask, positions, cache, use_cache) -> (hidden, cache);
    # None = the family's language model called with inputs_embeds
    decode: Callable | None = None
    # adjustments to the HF config before the model is built (both random-init and from disk)
    fix_config: Callable[[PretrainedConfig], None] = lambda cfg: None
    tiny: Callable[[int, "BackboneSize"], dict] = field(default=lambda vocab, size: {})


@dataclass(frozen=True)
class BackboneSize:
    """Dimensions of a random-weight backbone: ``tiny`` for tests, ``small`` for benchmarks whose
    compute, not Python overhead, should dominate (a few million parameters, 224 px images)."""

    d: int = 64          # language model width
    layers: int = 2      # decoder and vision layers
    image: int = 32      # image side in pixels
    patch: int = 8       # vision patch side
    heads: int = 4
    # random init of the Linear layers outside the vision encoder (projector, decoder): N(0, s/sqrt(fan_in)).
    # 0 keeps the family's init, N(0, 0.02), chosen for ~2k-wide models: a 64-wide decoder then starts with
    # near-uniform attention and an output that barely depends on the image (see demo.py).
    init_scale: float = 0.0

    @property
    def dv(self) -> int:  # vision width
        return self.d // 2


SIZES = {"tiny": BackboneSize(), "small": BackboneSize(d=256, layers=4, image=224, patch=14)}


def _tiny_llama(vocab: int, z: BackboneSize) -> dict:
    return dict(
        vocab_size=vocab, hidden_size=z.d, intermediate_size=2 * z.d, num_hidden_layers=z.layers,
        num_attention_heads=z.heads, num_key_value_heads=z.heads // 2, max_position_embeddings=4096,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )


def _vision(z: BackboneSize, **extra) -> dict:
    return dict(hidden_size=z.dv, intermediate_size=2 * z.dv, num_hidden_layers=z.layers, num_attention_heads=2,
                image_size=z.image, patch_size=z.patch, **extra)


def _tiny_paligemma(vocab: int, z: BackboneSize) -> dict:
    text = dict(
        model_type="gemma", vocab_size=vocab, hidden_size=z.d, intermediate_size=2 * z.d,
        num_hidden_layers=z.layers, num_attention_heads=z.heads, num_key_value_heads=1, head_dim=z.d // z.heads,
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    # PaliGemma's SigLIP has no pooling head (its config.json: vision_use_head false; SiglipVisionConfig's
    # default builds one, which PaliGemma never reads)
    vision = _vision(z, model_type="siglip_vision_model", projection_dim=z.d, vision_use_head=False)
    return dict(text_config=text, vision_config=vision, projection_dim=z.d, hidden_size=z.d,
                image_token_id=vocab - 1, tie_word_embeddings=False)


def _tiny_kosmos2(vocab: int, z: BackboneSize) -> dict:
    text = dict(vocab_size=vocab, embed_dim=z.d, layers=z.layers, ffn_dim=2 * z.d, attention_heads=z.heads,
                max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                scale_embedding=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return dict(text_config=text, vision_config=_vision(z), latent_query_num=(z.image // z.patch) ** 2)


def _tiny_llava(vocab: int, z: BackboneSize) -> dict:
    vision = _vision(z, model_type="clip_vision_model", projection_dim=z.dv)
    return dict(text_config=dict(model_type="llama", **_tiny_llama(vocab, z)), vision_config=vision,
                image_token_id=vocab - 1, vision_feature_layer=-2,
                vision_feature_select_strategy="default", projector_hidden_act="gelu",
                tie_word_embeddings=False)


def _tiny_qwen2_vl(vocab: int, z: BackboneSize) -> dict:
    half = z.d // z.heads // 2  # rotary pairs per head, split over (temporal, height, width)
    text = dict(model_type="qwen2_vl_text", vocab_size=vocab, hidden_size=z.d, intermediate_size=2 * z.d,
                num_hidden_layers=z.layers, num_attention_heads=z.heads, num_key_value_heads=z.heads // 2,
                max_position_embeddings=4096,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     mrope_section=[half - 2 * (half // 3), half // 3, half // 3]),
                pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    vision = dict(depth=z.layers, embed_dim=z.dv, hidden_size=z.d, num_heads=2, mlp_ratio=2, patch_size=z.patch,
                  spatial_merge_size=2, temporal_patch_size=2)
    return dict(text_config=text, vision_config=vision, image_token_id=vocab - 1,
                video_token_id=vocab - 2, vision_start_token_id=vocab - 3, vision_end_token_id=vocab - 4,
                tie_word_embeddings=False)


def _tiny_qwen2_5_vl(vocab: int, z: BackboneSize) -> dict:
    cfg = _tiny_qwen2_vl(vocab, z)
    cfg["text_config"]["model_type"] = "qwen2_5_vl_text"
    cfg["vision_config"] = dict(depth=z.layers, hidden_size=z.dv, out_hidden_size=z.d, intermediate_size=2 * z.dv,
                                num_heads=2, patch_size=z.patch, spatial_merge_size=2, temporal_patch_size=2,
                                window_size=4 * z.patch, fullatt_block_indexes=[z.layers - 1])
    return cfg


def _tiny_idefics(vocab: int, z: BackboneSize) -> dict:
    return dict(text_config=dict(model_type="llama", **_tiny_llama(vocab, z)), vision_config=_vision(z),
                scale_factor=2, image_token_id=vocab - 1, tie_word_embeddings=False)


def _token_ids(tokenizer, *tokens: str) -> list[int] | None:
    """Ids of ``tokens`` in ``tokenizer``'s vocabulary, or None if one is missing."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab()
    ids = [vocab.get(t) for t in tokens]
    return None if None in ids else ids


def _markers_kosmos2(cfg: PretrainedConfig, tokenizer):
    # Kosmos-2's processor: <s> <image> [image tokens] </image> text
    start, end = _token_ids(tokenizer, "<image>"), _token_ids(tokenizer, "</image>")
    return (start, end) if start and end else None


def _markers_qwen2_vl(cfg: PretrainedConfig, tokenizer):
    # <|vision_start|> [<|image_pad|> ...] <|vision_end|>; the ids are in the model's config
    return [cfg.vision_start_token_id], [cfg.vision_end_token_id]


def _markers_idefics(cfg: PretrainedConfig, tokenizer):
    # Idefics3 / SmolVLM, one image not split into tiles: <fake_token_around_image><global-img> [image
    # tokens] <fake_token_around_image>
    start = _token_ids(tokenizer, "<fake_token_around_image>", "<global-img>")
    end = _token_ids(tokenizer, "<fake_token_around_image>")
    return (start, end) if start and end else None


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _decode_kosmos2(bb: "Backbone", embeds, mask, positions, cache, use_cache):
    """Kosmos-2's text decoder, layer by layer. Its own forward builds the causal mask as
    [L_new, L_past + L_new], which cannot address a preallocated cache's L_max slots (the StaticCache
    crash); here the mask is built for the cache's real key length, or taken as given when 4-D."""
    from transformers import DynamicCache, StaticCache

    tm = bb.language_model  # Kosmos2TextTransformer
    if use_cache and cache is None:
        cache = DynamicCache(config=tm.config)
    n, new = embeds.shape[:2]
    if mask.dim() == 4:  # [N, 1, L_new, L_kv], bool (True = attend) or additive
        allowed = mask if mask.dtype == torch.bool else mask == 0
    else:  # [N, L_past + L_new]: the padding mask, made causal
        total = mask.shape[1]
        kv = cache.layers[0].max_cache_len if isinstance(cache, StaticCache) else total
        key = torch.arange(kv, device=embeds.device)
        query = torch.arange(total - new, total, device=embeds.device)
        pad = torch.zeros(n, kv, dtype=torch.bool, device=embeds.device)
        pad[:, :total] = mask > 0
        allowed = (key[None, :] <= query[:, None])[None, None] & pad[:, None, None, :]
    _fit_kosmos2_positions(tm.embed_positions, mask, cache, bb.position_offset)
    hidden = tm.forward_embedding(input_ids=None, inputs_embeds=embeds, position_ids=positions)
    hidden = nn.functional.dropout(hidden, p=tm.dropout, training=tm.training)  # as its forward does
    attn = _additive_mask(allowed, hidden.dtype)
    for layer in tm.layers:
        hidden = layer(hidden, attn, None, cache=cache, use_cache=use_cache)
    return tm.layer_norm(hidden), cache


def _fit_kosmos2_positions(table, mask, cache, offset: int) -> None:
    """Kosmos-2's sinusoidal position table grows in its forward only by the length of the tokens fed, so
    tokens fed one at a time through a cache past max_position_embeddings index beyond it (IndexError;
    a long pre-history window reaches it). The table is grown to what the positions can reach, from shapes
    alone (no device sync; legal inside CUDA-graph capture): the mask's key length, a preallocated cache's
    slots. A graph captured before a regrowth reads the old table: ``Backbone.graph_inputs`` tells."""
    from transformers import StaticCache

    keys = cache.layers[0].max_cache_len if isinstance(cache, StaticCache) else mask.shape[-1]
    need = keys + offset + 1
    if need > table.weights.size(0):
        table.make_weights(need + table.offset, table.embedding_dim, table.padding_idx)


def _causal_gemma(cfg: PretrainedConfig) -> None:
    # PaliGemma marks its Gemma decoder bidirectional (prefix-LM). RoboVLM needs a causal decoder: the
    # `pre` history and KV-cached decoding rely on it, and with an all-ones mask the bidirectional
    # flag would silently switch attention to full (non-causal) inside sdpa.
    cfg.text_config.use_bidirectional_attention = False


_DECODER_FAMILY = dict(language_model="model.language_model",
                       embed_tokens="model.language_model.embed_tokens", lm_head="lm_head")

FAMILIES: dict[str, FamilySpec] = {
    "paligemma": FamilySpec(
        "paligemma", "PaliGemmaForConditionalGeneration", **_DECODER_FAMILY,
        vision=("model.vision_tower", "model.multi_modal_projector"),
        image_features=_image_features_default, image_mean=HALF, image_std=HALF, tiny=_tiny_paligemma,
        position_offset=lambda cfg: 1,  # PaliGemma's positions are 1-indexed
        fix_config=_causal_gemma),
    "kosmos2": FamilySpec(
        "kosmos-2", "Kosmos2ForConditionalGeneration", language_model="text_model.model",
        embed_tokens="text_model.model.embed_tokens", lm_head="text_model.lm_head",
        vision=("vision_model", "image_to_text_projection"),
        image_features=_image_features_kosmos2, image_mean=CLIP_MEAN, image_std=CLIP_STD,
        # Kosmos-2 indexes a sinusoidal table whose first (padding_idx + 1) rows are reserved.
        position_offset=lambda cfg: cfg.text_config.pad_token_id + 1, tiny=_tiny_kosmos2,
        image_markers=_markers_kosmos2, decode=_decode_kosmos2),
    "llava": FamilySpec(
        "llava", "LlavaForConditionalGeneration", **_DECODER_FAMILY,
        vision=("model.vision_tower", "model.multi_modal_projector"),
        image_features=_image_features_llava, image_mean=CLIP_MEAN, image_std=CLIP_STD, tiny=_tiny_llava),
    "qwen2_vl": FamilySpec(
        "qwen2_vl", "Qwen2VLForConditionalGeneration", **_DECODER_FAMILY, vision=("model.visual",),
        image_features=_image_features_qwen2_vl, image_mean=CLIP_MEAN, image_std=CLIP_STD, tiny=_tiny_qwen2_vl,
        mrope=True, image_markers=_markers_qwen2_vl),
    "qwen2_5_vl": FamilySpec(
        "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", **_DECODER_FAMILY, vision=("model.visual",),
        image_features=_image_features_qwen2_vl, image_mean=CLIP_MEAN, image_std=CLIP_STD, tiny=_tiny_qwen2_5_vl,
        mrope=True, image_markers=_markers_qwen2_vl),
    "idefics3": FamilySpec(
        "idefics3", "Idefics3ForConditionalGeneration", language_model="model.text_model",
        embed_tokens="model.text_model.embed_tokens", lm_head="lm_head",
        vision=("model.vision_model", "model.connector"),
        image_features=_image_features_idefics, image_mean=HALF, image_std=HALF, tiny=_tiny_idefics,
        image_markers=_markers_idefics),
    "smolvlm": FamilySpec(
        "smolvlm", "SmolVLMForConditionalGeneration", language_model="model.text_model",
        embed_tokens="model.text_model.embed_tokens", lm_head="lm_head",
        vision=("model.vision_model", "model.connector"),
        image_features=_image_features_idefics, image_mean=HALF, image_std=HALF, tiny=_tiny_idefics,
        image_markers=_markers_idefics),
}

MODEL_TYPE_TO_FAMILY = {spec.model_type: name for name, spec in FAMILIES.items()}


def family_spec(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown backbone family {name!r}; supported: {', '.join(sorted(FAMILIES))}") from None


INIT_SCALE_KEY = "robovlm_init_scale"  # BackboneSize.init_scale inside a tiny backbone's HF config


def backbone_size(size: "str | dict | BackboneSize" = "tiny", image: int | None = None) -> BackboneSize:
    """A named size (``tiny``, ``small``) or a mapping of BackboneSize fields (``base`` names the size
    it starts from, default tiny); ``image`` overrides the image side (vision towers with absolute
    position embeddings are built for one size)."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)} or a mapping of BackboneSize fields, not {size!r}")
        z = SIZES[size]
    elif isinstance(size, BackboneSize):
        z = size
    else:
        fields = dict(size)
        base = backbone_size(fields.pop("base", "tiny"))
        known = set(BackboneSize.__dataclass_fields__)
        if set(fields) - known:
            raise ValueError(f"unknown backbone size fields {sorted(set(fields) - known)}; known: {sorted(known)}")
        z = replace(base, **fields)
    if image is not None:
        z = replace(z, image=int(image))
    if z.image % z.patch or z.d % z.heads:
        raise ValueError(f"backbone size {z}: image must be a multiple of patch and d of heads")
    return z


def tiny_backbone_config(family: str, vocab_size: int, size: "str | dict | BackboneSize" = "tiny") -> dict:
    """A random-weight config of ``family``: ``tiny`` (~200k parameters, tests), ``small`` (benchmarks)
    or explicit dimensions (see backbone_size)."""
    spec = family_spec(family)
    z = backbone_size(size)
    fields = spec.tiny(vocab_size, z)
    if z.init_scale:
        fields[INIT_SCALE_KEY] = z.init_scale  # travels in config.json; Backbone.from_config applies it
    return config_to_dict(AutoConfig.for_model(spec.model_type, **fields))


def config_to_dict(cfg: PretrainedConfig) -> dict:
    """The full HF config as plain JSON data (what config.json stores, so it round-trips exactly)."""
    return json.loads(cfg.to_json_string(use_diff=False))


def _hf_class(spec: FamilySpec):
    import transformers

    return getattr(transformers, spec.class_name)


def _image_size(cfg: PretrainedConfig) -> int:
    vcfg = cfg.vision_config
    size = getattr(vcfg, "image_size", None)
    if size is None:  # Qwen2-VL has dynamic resolution; pick 8 merge groups a side by default
        size = vcfg.patch_size * vcfg.spatial_merge_size * 8
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def preprocessor_defaults(path: str | None, spec: FamilySpec, cfg: PretrainedConfig) -> dict:
    """Image size / mean / std: the local processor's values when a checkpoint dir has one."""
    out = dict(image_size=_image_size(cfg), image_mean=list(spec.image_mean), image_std=list(spec.image_std))
    if path:
        pp = os.path.join(path, "preprocessor_config.json")
        if os.path.exists(pp):
            with open(pp) as f:
                pc = json.load(f)
            out["image_mean"] = list(pc.get("image_mean", out["image_mean"]))
            out["image_std"] = list(pc.get("image_std", out["image_std"]))
    return out


class Backbone(nn.Module):
    """A transformers VLM seen through ``FamilySpec``: embed / image_features / decoder / lm_head."""

    def __init__(self, family: str, hf_model: nn.Module):
        super().__init__()
        self.family = family
        self.spec = family_spec(family)
        self.hf = hf_model
        self.position_offset = self.spec.position_offset(hf_model.config)
        # Qwen2-VL: image tokens per side of one image (set by RoboVLM once the image size is known);
        # None = every token takes the next 1-D position
        self.mrope_grid: int | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, family: str, config: dict) -> "Backbone":
        spec = family_spec(family)
        cfg = AutoConfig.for_model(**{**config, "model_type": spec.model_type})
        spec.fix_config(cfg)
        hf = _hf_class(spec)._from_config(cfg, dtype=torch.float32)
        scale = config.get(INIT_SCALE_KEY, 0.0)
        if scale:
            encoder = _get(hf, spec.vision[0])
            skip = {id(m) for m in encoder.modules()}
            with torch.no_grad():
                for m in hf.modules():
                    if isinstance(m, nn.Linear) and id(m) not in skip:
                        m.weight.normal_(0.0, scale / m.in_features ** 0.5)
        return cls(family, hf)

    @classmethod
    def from_pretrained(cls, family: str, path: str) -> "Backbone":
        if not os.path.isdir(path):
            raise FileNotFoundError(f"backbone_path {path!r} is not a directory")
        spec = family_spec(family)
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        if cfg.model_type != spec.model_type:
            raise ValueError(f"{path!r} holds a {cfg.model_type!r} model, not a {family!r} backbone "
                             f"(set backbone: {MODEL_TYPE_TO_FAMILY.get(cfg.model_type, '<unsupported>')})")
        spec.fix_config(cfg)
        model = _hf_class(spec).from_pretrained(path, config=cfg, local_files_only=True, dtype=torch.float32)
        return cls(family, model)

    # -- parts ----------------------------------------------------------------------------------
    @property
    def config(self) -> PretrainedConfig:
        return self.hf.config

    @property
    def language_model(self) -> nn.Module:
        return _get(self.hf, self.spec.language_model)

    @property
    def lm_head(self) -> nn.Module:
        return _get(self.hf, self.spec.lm_head)

    @property
    def vision_modules(self) -> list[nn.Module]:
        return [_get(self.hf, p) for p in self.spec.vision]

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def hidden_size(self) -> int:
        return self.embed_tokens.embedding_dim

    @property
    def embed_tokens(self) -> nn.Embedding:
        return _get(self.hf, self.spec.embed_tokens)

    @property
    def vocab_size(self) -> int:
        return self.embed_tokens.num_embeddings

    @property
    def full_attention(self) -> bool:
        """Every decoder layer attends to all earlier tokens, so one explicit 4-D mask serves them all (a
        sliding-window layer would need a mask of its own)."""
        cfg = self.language_model.config
        sliding = getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
        return not sliding and all(t == "full_attention" for t in getattr(cfg, "layer_types", None) or [])

    def graph_inputs(self) -> tuple:
        """Addresses of buffers the decoder may replace between calls (Kosmos-2's position table, regrown
        for longer sequences): a CUDA graph captured over the old ones must not be replayed."""
        table = getattr(self.language_model, "embed_positions", None)
        weights = getattr(table, "weights", None)
        return () if weights is None else (weights.data_ptr(),)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, S, S] normalised -> [N, T, D] in the language model's embedding space."""
        return self.spec.image_features(self.hf, pixels)

    # -- positions ------------------------------------------------------------------------------
    # A sequence's mask says more than attend / ignore: 0 padding, 1 a token, 2 + i the i-th token of an
    # image (row-major). Every family attends to all non-zero entries; the mask values only matter to
    # the families with multimodal rotary positions (Qwen2-VL), whose image tokens sit on a 2-D grid.
    def _steps(self, mask: torch.Tensor) -> torch.Tensor:
        """How far each token advances the position counter: [N, L]."""
        steps = (mask > 0).long()
        if self.mrope_grid is None:
            return steps
        g = self.mrope_grid
        last_of_image = mask == 2 + g * g - 1  # an image advances by its grid side, at its last token
        return torch.where(mask >= 2, torch.where(last_of_image, g, 0), steps)

    def positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Position ids of a sequence from its mask [N, L]: [N, L], or [3, N, L] (t, h, w) with
        multimodal rotary positions. A text token's position is the number of positions before it,
        so padding never shifts one (padding itself takes the next token's position)."""
        steps = self._steps(mask)
        pos = steps.cumsum(dim=1) - steps
        if self.mrope_grid is None:
            return pos
        index = (mask - 2).clamp(min=0)
        image = mask >= 2
        row = torch.where(image, index // self.mrope_grid, 0)
        col = torch.where(image, index % self.mrope_grid, 0)
        return torch.stack([pos, pos + row, pos + col])

    def next_position(self, mask: torch.Tensor) -> torch.Tensor:
        """The 1-D position [N, 1] of a text token appended after ``mask`` [N, L]."""
        return self._steps(mask).sum(dim=1, keepdim=True)

    def decode(self, inputs_embeds, attention_mask, position_ids, cache=None, use_cache=False):
        """Run the decoder on embeddings; returns (last hidden state [N, L, D], cache).

        attention_mask: [N, L_past + L_new] (the mask values above) or a 4-D mask [N, 1, L_new, L_kv];
        position_ids: [N, L_new] or [3, N, L_new] (``positions``)."""
        if attention_mask.dim() == 2:
            attention_mask = (attention_mask > 0).long()
        position_ids = position_ids + self.position_offset
        if self.spec.decode is not None:
            return self.spec.decode(self, inputs_embeds, attention_mask, position_ids, cache, use_cache)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state, out.cache
