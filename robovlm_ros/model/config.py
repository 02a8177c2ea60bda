"""PolicyConfig: everything needed to rebuild a RoboVLM, serialised as JSON in config.json."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .backbones import FAMILIES, backbone_size, family_spec, tiny_backbone_config
from .presets import PRESETS, preset_config

TINY_VOCAB = 640  # 260 byte-level text tokens + room for 256 action bins at the end


@dataclass
class PolicyConfig:
    # --- backbone -------------------------------------------------------------------------------
    backbone: str = "paligemma"          # family: paligemma, kosmos2, llava, qwen2_vl, qwen2_5_vl, idefics3, smolvlm
    backbone_path: str | None = None     # local HF directory with weights + tokenizer (never downloaded)
    backbone_config: dict | None = None  # HF config dict; filled when the model is built, so a checkpoint
                                         # can be rebuilt without the original backbone directory
    tiny_backbone: bool = False          # random-weight tiny backbone with the built-in byte tokenizer
    # --- action space and time --------------------------------------------------------------
    action_space: str = "continuous"     # continuous | discrete
    arm_dim: int = 6                     # + 1 gripper
    window_size: int = 8                 # history frames (RoboVLMs: 8, 16 with a wrist camera)
    fwd_pred_next_n: int = 10            # action chunk length predicted per frame
    history_type: str = "post"           # post: per-frame VLM, head fuses time; pre: frames interleaved
    prefix_attention: str = "causal"     # causal | bidirectional: each frame's images, text and state attend to
                                         # each other both ways, its action tokens causally (PaliGemma's
                                         # pretrained prefix-LM); post history only
    # --- inputs -------------------------------------------------------------------------------
    use_hand_rgb: bool = True
    image_order: str = "static_first"    # static_first | hand_first (RoboVLMs inserts the hand image first)
    use_state: bool = False
    image_size: int | None = None        # default: the backbone's
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    max_text_len: int = 48
    # the text: ``prompt`` with {instruction} filled in, tokenised (with the tokenizer's special tokens when
    # prompt_special_tokens), then prompt_trim = [first, last] tokens dropped: what a RoboVLMs prompt puts
    # before the images is the sequence start below, what it puts after the action tokens changes nothing
    # a causal decoder computes at them
    prompt: str = "{instruction}"
    prompt_special_tokens: bool = False
    prompt_trim: list = field(default_factory=lambda: [0, 0])
    sequence_start: str | None = None    # the token each sequence begins with (a token name or one-token text);
                                         # None: the tokenizer's BOS (else pad)
    use_resampler: bool = False
    resampler_latents: int = 16
    resampler_depth: int = 2
    resampler_heads: int = 4
    resampler_dim_head: int = 32
    resampler_ff_mult: int = 2
    resampler_ff_bias: bool = True       # RoboVLMs' resampler has no biases in its feed-forward layers
    use_image_start_end: bool = False
    image_markers: str = "family"        # family: the family's own start / end tokens where it has them
                                         # (Kosmos-2, Qwen2-VL, Idefics3 / SmolVLM), else learned; learned
    image_marker_ids: list | None = None  # [[start ids], [end ids]], filled when the model is built
    # --- continuous head ------------------------------------------------------------------------
    latent_num: int = 1                  # learnable action tokens per frame
    head: str = "lstm"                   # mlp | lstm | gpt
    head_style: str = "robovlm_ros"      # robovlm_ros: max-pooled latents, linear outputs; robovlms: RoboVLMs'
                                         # heads (latents concatenated, 1024-512-256 MLPs; heads.py)
    head_hidden: int = 256
    head_layers: int = 2
    arm_loss: str = "huber"              # huber (delta 1) | mse
    gripper_loss_weight: float = 0.01
    # --- discrete actions ------------------------------------------------------------------------
    n_bins: int = 256
    bin_style: str = "robovlm_ros"       # robovlm_ros | robovlms: how values map to bins and bins to token ids
                                         # (action_tokenizer.py); robovlms: RoboVLMs' ActionTokenizer
    action_token_end: int | None = None  # robovlms bins: bin k is token action_token_end - 1 - k
    frame_end: str | None = None         # a token after each frame's action tokens (discrete: also predicted by the
                                         # loss); each frame then also begins with the sequence start token
                                         # (RoboVLMs' layout: [BOS] images text actions [EOS] per frame; for
                                         # continuous actions it matters in pre history, where later frames see it)
    # --- normalisation ---------------------------------------------------------------------------
    norm_mode: str = "clip"              # clip | quantile | none (see normalization.py)
    clip_bound: float = 0.65
    clip_low: float | None = None        # lower bound of ``clip`` when not -clip_bound (RoboVLMs' norm_min)
    # --- multi-task -------------------------------------------------------------------------------
    vl_loss_ratio: float = 1.0           # weight of the caption/VQA loss when data_source asks for it
    # --- adaptation ---------------------------------------------------------------------------------
    freeze_backbone: bool = False
    train_text_last_n: int | None = None  # with freeze_backbone: unfreeze the last N decoder layers
    train_vision: bool = True
    lora: dict | None = None             # e.g. {"r": 16, "alpha": 32, "dropout": 0.05}
    gradient_checkpointing: bool = False
    extra: dict = field(default_factory=dict)  # free-form, kept through save/load

    def __post_init__(self):
        family_spec(self.backbone)
        checks = {
            "action_space": ("continuous", "discrete"), "history_type": ("post", "pre"),
            "head": ("mlp", "lstm", "gpt"), "arm_loss": ("huber", "mse"),
            "norm_mode": ("clip", "quantile", "none"), "image_markers": ("family", "learned"),
            "head_style": ("robovlm_ros", "robovlms"), "image_order": ("static_first", "hand_first"),
            "bin_style": ("robovlm_ros", "robovlms"), "prefix_attention": ("causal", "bidirectional"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"PolicyConfig.{name} must be one of {allowed}, not {getattr(self, name)!r}")
        for name in ("window_size", "fwd_pred_next_n", "latent_num", "max_text_len", "n_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"PolicyConfig.{name} must be >= 1")
        if self.prefix_attention == "bidirectional" and self.history_type != "post":
            raise ValueError("PolicyConfig.prefix_attention bidirectional needs history_type post: in a pre "
                             "history a frame's prefix would see the frames after it")
        if self.bin_style == "robovlms" and self.action_token_end is None:
            raise ValueError("PolicyConfig.bin_style robovlms needs action_token_end (RoboVLMs' tokenizer_orig_size)")
        if "{instruction}" not in self.prompt:
            raise ValueError("PolicyConfig.prompt must contain {instruction}")
        if len(self.prompt_trim) != 2 or min(self.prompt_trim) < 0:
            raise ValueError("PolicyConfig.prompt_trim must be [first, last] token counts >= 0")
        if not self.tiny_backbone and not self.backbone_path and self.backbone_config is None:
            raise ValueError("PolicyConfig needs backbone_path (a local model directory) or PolicyConfig.tiny(...)")

    @property
    def action_dim(self) -> int:
        return self.arm_dim + 1

    @classmethod
    def tiny(cls, backbone: str | None = None, size: "str | dict" = "tiny", **overrides) -> "PolicyConfig":
        """A random-weight policy for tests and experiments. ``size``: tiny | small or a mapping of
        BackboneSize fields (a ``backbone`` family, default paligemma; the vision tower is built for
        ``image_size`` when given), or a real-size preset (model/presets.py: the published architecture,
        its family and image size, PolicyConfig's defaults otherwise)."""
        if isinstance(size, str) and size in PRESETS:
            p = PRESETS[size]
            if backbone not in (None, p.family):
                raise ValueError(f"preset {size!r} is a {p.family} backbone, not {backbone}")
            base = dict(backbone=p.family, tiny_backbone=True, backbone_config=preset_config(size),
                        image_size=p.image_size)
            return cls(**{**base, **overrides})
        backbone = backbone or "paligemma"
        z = backbone_size(size, overrides.get("image_size"))
        base = dict(
            backbone=backbone, tiny_backbone=True, backbone_config=tiny_backbone_config(backbone, TINY_VOCAB, z),
            image_size=z.image, window_size=4, fwd_pred_next_n=3, max_text_len=24, head_hidden=32,
            head_layers=1, resampler_latents=4, resampler_depth=1,
        )
        base.update(overrides)
        return cls(**base)

    # --- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown PolicyConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PolicyConfig":
        return cls.from_dict(json.loads(text))


SUPPORTED_BACKBONES = tuple(FAMILIES)
