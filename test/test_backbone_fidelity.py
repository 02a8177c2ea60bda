"""The backbone inside a policy computes what the pretrained VLM computes.

For every family, the policy's own building blocks (``encode_images`` with the family's image start /
end tokens, ``backbone.embed``, the positions from the mask, ``backbone.decode``, ``lm_head``) over
``[image tokens][text]`` in the family's prompt layout give the logits of the transformers model's own
forward pass on the same weights, pixels and text: fp32, before any action token is added. The pixels
reach the transformers side the way its users send them (Qwen2-VL: through its own image processor).
"""
import numpy as np
import pytest
import torch

from conftest import ALL_FAMILIES
from robovlm_ros.model import PolicyConfig, RoboVLM

MARKED = {"kosmos2", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm"}  # families with image start / end tokens
TEXT = 9


def _model(family: str) -> RoboVLM:
    torch.manual_seed(0)
    model = RoboVLM(PolicyConfig.tiny(family, use_image_start_end=family in MARKED, use_hand_rgb=False)).eval()
    with torch.no_grad():  # weights large enough that a wrong position or mask changes the logits clearly
        for name, p in model.backbone.hf.named_parameters():
            if p.ndim == 2 and "embed_positions" not in name:
                p.normal_(0, 0.2)
    return model


def _images(model: RoboVLM, b: int = 2) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 images [B, S, S, 3] and the same, normalised as the policy's processor does [B, 3, S, S]."""
    s = model.config.image_size
    raw = np.random.default_rng(1).integers(0, 256, (b, s, s, 3), dtype=np.uint8)
    x = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255.0
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.config.image_mean, model.config.image_std))
    return raw, (x - mean) / std


def _hf_inputs(model: RoboVLM, raw: np.ndarray, pixels: torch.Tensor, before: list[int], n_img: int,
               text: torch.Tensor) -> dict:
    """The family's own forward arguments for [before][start][image x n_img][end][text]."""
    family, cfg = model.config.backbone, model.backbone.config
    start, end = model.config.image_marker_ids or ([], [])
    # Kosmos-2 marks image slots with a mask; its processor fills them with ordinary (non-padding) ids
    image_id = getattr(cfg, "image_token_id", None) or 4
    b = text.shape[0]
    row = before + start + [image_id] * n_img + end
    ids = torch.cat([torch.tensor(row).expand(b, -1), text], 1)
    is_image = torch.zeros_like(ids, dtype=torch.bool)
    is_image[:, len(before) + len(start): len(before) + len(start) + n_img] = True
    args = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    if family == "kosmos2":
        args.update(pixel_values=pixels, image_embeds_position_mask=is_image.long())
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers import Qwen2VLImageProcessor

        v = cfg.vision_config
        proc = Qwen2VLImageProcessor(do_resize=False, image_mean=model.config.image_mean,
                                     image_std=model.config.image_std, patch_size=v.patch_size,
                                     temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size)
        out = proc(images=list(raw), return_tensors="pt")
        args.update(pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"],
                    mm_token_type_ids=is_image.int())
    elif family in ("idefics3", "smolvlm"):
        args.update(pixel_values=pixels[:, None])  # [B, images per sample, 3, S, S]
    else:
        args.update(pixel_values=pixels)
    return args


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_adapter_computes_the_pretrained_forward(family):
    model = _model(family)
    bb = model.backbone
    if family in MARKED:
        assert model.config.image_marker_ids, "the family's own image start / end tokens were not found"
        assert model.image_start_end is None
    raw, pixels = _images(model)
    text = torch.randint(4, 260, (2, TEXT), generator=torch.Generator().manual_seed(2))
    # PaliGemma: image tokens, then <bos> and the text; the others: <bos> (if the family has one), image, text
    before = [] if family in ("paligemma", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm") else [model.bos_id]
    if family == "paligemma":
        text = torch.cat([torch.full((2, 1), model.bos_id), text], 1)
    with torch.no_grad():
        image, image_row = model.encode_images(pixels)  # [B, T, D] with the start / end tokens
        parts = [bb.embed(torch.tensor(before, dtype=torch.long).expand(2, -1)), image, bb.embed(text)]
        embeds = torch.cat(parts, 1)
        mask = torch.cat([torch.ones(2, len(before), dtype=torch.long), image_row.expand(2, -1),
                          torch.ones_like(text)], 1)
        hidden, _ = bb.decode(embeds, mask, model.positions(mask))
        ours = bb.lm_head(hidden)
        n_markers = sum(map(len, model.config.image_marker_ids or []))
        args = _hf_inputs(model, raw, pixels, before, image.shape[1] - n_markers, text)
        theirs = bb.hf(**args).logits
    assert ours.shape == theirs.shape
    scale = theirs.abs().max()
    assert scale > 1.0  # logits far from zero: the comparison below is not between two near-zero tensors
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * scale)
    # the comparison can fail: Qwen's image tokens in 1-D positions (what the adapter did before), or
    # for the others the text one position further from the image, changes the logits far beyond it
    with torch.no_grad():
        flat = (mask > 0).long()
        wrong = flat.cumsum(1) - 1
        if not bb.mrope_grid:
            wrong = wrong + (torch.arange(mask.shape[1]) >= len(before) + image.shape[1]).long()
        wrong_logits = bb.lm_head(bb.decode(embeds, flat, wrong)[0])
    assert (wrong_logits - theirs).abs().max() > 100 * 1e-5 * scale


def test_paligemma_prefix_attention_is_its_pretrained_prefix_lm():
    """``prefix_attention: bidirectional``: the images, <bos> and the first text tokens attend to each other
    both ways and the rest causally, as PaliGemma's forward does given token_type_ids (0 = prefix)."""
    model = _model("paligemma")
    model.config.prefix_attention = "bidirectional"
    bb = model.backbone
    raw, pixels = _images(model)
    text = torch.randint(4, 260, (2, TEXT), generator=torch.Generator().manual_seed(2))
    text = torch.cat([torch.full((2, 1), model.bos_id), text], 1)
    with torch.no_grad():
        image, image_row = model.encode_images(pixels)
        embeds = torch.cat([image, bb.embed(text)], 1)
        mask = torch.cat([image_row.expand(2, -1), torch.ones_like(text)], 1)
        prefix = image.shape[1] + 6  # image, <bos> and 5 text tokens; 4 text tokens after it
        ours = bb.lm_head(bb.decode(embeds, model.decoder_mask(mask, prefix), model.positions(mask))[0])
        causal = bb.lm_head(bb.decode(embeds, mask, model.positions(mask))[0])
        args = _hf_inputs(model, raw, pixels, [], image.shape[1], text)
        token_type = torch.zeros_like(args["input_ids"])
        token_type[:, prefix:] = 1
        theirs = bb.hf(**args, token_type_ids=token_type).logits
    scale = theirs.abs().max()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * scale)
    assert (causal - theirs).abs().max() > 100 * 1e-5 * scale  # the causal adapter differs: a real check
