"""Real-size backbone architectures with random weights: what users run, measurable without downloads.

Each preset is the published architecture of one pretrained VLM (its config.json's dimensions), so
speed, memory and the training setup can be measured before the weights are at hand;
``PolicyConfig.tiny(size=NAME)`` builds a policy on it (random weights, the byte-level tokenizer).
``parameters`` is the published model's count, which the built architecture must match (tests).
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig


@dataclass(frozen=True)
class Preset:
    family: str
    hf: dict               # AutoConfig.for_model keyword arguments: the published config's dimensions
    image_size: int        # the image side the policy feeds the vision tower
    parameters: float      # the published model's parameter count
    source: str            # the model the numbers come from


PRESETS: dict[str, Preset] = {
    "smolvlm-256m": Preset(
        "smolvlm",
        dict(text_config=dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
                              num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                              max_position_embeddings=8192, rms_norm_eps=1e-5,
                              rope_parameters=dict(rope_type="default", rope_theta=100000.0),
                              pad_token_id=2, bos_token_id=1, eos_token_id=49279, tie_word_embeddings=False),
             vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=512, patch_size=16),
             scale_factor=4, image_token_id=49190, tie_word_embeddings=False),
        image_size=512, parameters=256e6, source="HuggingFaceTB/SmolVLM-256M-Instruct"),
    "paligemma-3b-224": Preset(
        "paligemma",
        dict(text_config=dict(model_type="gemma", vocab_size=257216, hidden_size=2048, intermediate_size=16384,
                              num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                              max_position_embeddings=8192, pad_token_id=0, bos_token_id=2, eos_token_id=1),
             vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                                num_hidden_layers=27, num_attention_heads=16, image_size=224, patch_size=14,
                                projection_dim=2048, vision_use_head=False),
             projection_dim=2048, hidden_size=2048, image_token_id=257152, tie_word_embeddings=True),
        image_size=224, parameters=2.92e9, source="google/paligemma-3b-pt-224"),
    "qwen2-vl-2b": Preset(
        "qwen2_vl",
        dict(text_config=dict(model_type="qwen2_vl_text", vocab_size=151936, hidden_size=1536,
                              intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                              rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]),
                              bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=True),
             vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16,
                                patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
             image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
             vision_end_token_id=151653, tie_word_embeddings=True),
        image_size=224, parameters=2.21e9, source="Qwen/Qwen2-VL-2B-Instruct"),
    "kosmos-2": Preset(
        "kosmos2",
        dict(text_config=dict(vocab_size=65037, embed_dim=2048, layers=24, ffn_dim=8192, attention_heads=32,
                              max_position_embeddings=2048, scale_embedding=True, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2),
             vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=224, patch_size=14),
             latent_query_num=64),
        image_size=224, parameters=1.66e9, source="microsoft/kosmos-2-patch14-224"),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def preset_config(name: str) -> dict:
    """The preset's full HF config as plain JSON data (what a checkpoint's backbone_config holds)."""
    from .backbones import config_to_dict, family_spec

    p = preset(name)
    return config_to_dict(AutoConfig.for_model(family_spec(p.family).model_type, **p.hf))
