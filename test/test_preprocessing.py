"""Action tokenizer, normalisation and the shared preprocessing."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robovlm_ros.model import Normalizer, PolicyConfig, RoboVLM
from robovlm_ros.model.action_tokenizer import ActionTokenizer
from robovlm_ros.model.processing import PolicyProcessor
from robovlm_ros.model.text_tokenizer import tiny_tokenizer


def test_action_tokens_are_least_used_ids_and_round_trip():
    tok = ActionTokenizer(vocab_size=640, special_ids={639, 0, 1}, n_bins=256)
    assert 639 not in tok.token_ids.tolist() and len(set(tok.token_ids.tolist())) == 256
    assert tok.token_ids.max() == 638 and tok.token_ids.min() == 638 - 255
    x = torch.linspace(-1, 1, 1001)
    back = tok.decode(tok.encode(x))
    assert (back - x).abs().max() <= 1.0 / 256 + 1e-6  # half a bin width of 2/256
    # clipping: out-of-range values land in the edge bins
    assert torch.equal(tok.encode(torch.tensor([-5.0, 5.0])), tok.encode(torch.tensor([-1.0, 1.0])))
    with pytest.raises(ValueError, match="not action tokens"):
        tok.decode(torch.tensor([5]))
    with pytest.raises(ValueError, match="too small"):
        ActionTokenizer(vocab_size=100)


def test_robovlms_bins_of_float32_actions_are_the_float64_bins_without_float64():
    """RoboVLMs bins in float64 (numpy digitize); MPS has no float64, so float32 actions are binned against
    float32 edges rounded up: the same bins, also for values one float32 step around every edge."""
    from torch.utils._python_dispatch import TorchDispatchMode

    tok = ActionTokenizer(vocab_size=640, n_bins=256, style="robovlms", token_end=600)
    edges = np.linspace(-1.0, 1.0, 256)
    near = edges.astype(np.float32)
    values = np.concatenate([near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(-np.inf)),
                             np.random.default_rng(0).uniform(-1.2, 1.2, 4000).astype(np.float32)])
    x = torch.from_numpy(values)
    expected = np.digitize(np.clip(values.astype(np.float64), -1.0, 1.0), edges) - 1  # RoboVLMs' formula
    assert (np.abs(edges - near.astype(np.float64)) > 0).sum() > 100  # most edges are not float32 numbers

    class Float64Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in (out, *args)):
                self.seen.append(func.__name__)
            return out

    with Float64Ops() as mode:
        bins = tok.bins(x)
    assert mode.seen == []
    np.testing.assert_array_equal(bins.numpy(), expected)
    np.testing.assert_array_equal(tok.bins(x.double()).numpy(), expected)  # float64 actions: float64 edges
    np.testing.assert_array_equal(tok.bins(x.bfloat16()).numpy(),
                                  np.digitize(np.clip(x.bfloat16().double().numpy(), -1, 1), edges) - 1)


def test_clip_normalisation_matches_robovlms_and_inverts():
    n = Normalizer(mode="clip", clip_bound=0.65)
    raw = torch.tensor([[0.65, -0.65, 0.325, 0.0, 1.3, -2.0, -0.3]])
    norm = n.normalize_action(raw)
    torch.testing.assert_close(norm, torch.tensor([[1.0, -1.0, 0.5, 0.0, 1.0, -1.0, -1.0]]))
    inside = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.6, -0.6, 1.0]])
    torch.testing.assert_close(n.unnormalize_action(n.normalize_action(inside)), inside)


def test_quantile_normalisation_per_dimension():
    stats = {"action": {"q01": [0, -1, -2, -3, -4, -5, -1], "q99": [1, 1, 2, 3, 4, 5, 1]}}
    n = Normalizer(mode="quantile", stats=stats)
    raw = torch.tensor([[0.5, 0.0, 2.0, -3.0, 0.0, 10.0, 0.2]])
    torch.testing.assert_close(n.normalize_action(raw), torch.tensor([[0.0, 0.0, 1.0, -1.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="q01/q99"):
        Normalizer(mode="quantile")
    assert Normalizer.from_dict(n.to_dict()).to_dict() == n.to_dict()


def test_state_standardised_with_stats():
    n = Normalizer(stats={"state": {"mean": [1.0] * 7, "std": [2.0] * 7}})
    out = n.normalize_state(torch.tensor([3.0, 1.0, -1.0, 1.0, 1.0, 1.0, 0.04]))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]))


def test_image_preprocessing_resizes_and_normalises():
    model = RoboVLM(PolicyConfig.tiny("llava"))
    proc = model.processor
    img = np.zeros((48, 64, 3), np.uint8)
    img[..., 0] = 255
    out = proc.images(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    mean, std = model.config.image_mean, model.config.image_std
    torch.testing.assert_close(out[0], torch.full((32, 32), (1 - mean[0]) / std[0]))
    torch.testing.assert_close(out[1], torch.full((32, 32), (0 - mean[1]) / std[1]))
    assert proc.images(np.zeros((2, 5, 48, 64, 3), np.uint8)).shape == (2, 5, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        proc.images(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        proc.images(np.zeros((32, 32, 4), np.uint8))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("shape", [(480, 640, 3), (2, 3, 48, 64, 3), (32, 32, 3)])
def test_images_normalised_on_a_device_equal_the_plain_formula(shape, dtype):
    """What the runner sends to the policy (``images(frames, device, dtype)``: resized as uint8, normalised in
    place where the policy runs) equals the plain formula over the resized frames, bit for bit (test_cuda checks
    the GPU's equals the CPU's): the cheaper path changes no value training saw."""
    cfg = PolicyConfig.tiny("llava", image_mean=[0.48145466, 0.4578275, 0.40821073],
                            image_std=[0.26862954, 0.26130258, 0.27577711])
    proc = RoboVLM(cfg).processor
    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    x = torch.from_numpy(frames).reshape(-1, *shape[-3:]).permute(0, 3, 1, 2)
    if x.shape[-2:] != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(cfg.image_mean).view(3, 1, 1), torch.tensor(cfg.image_std).view(3, 1, 1)
    expected = ((x.float() / 255.0 - mean) / std).reshape(*shape[:-3], 3, 32, 32).to(dtype or torch.float32)
    out = proc.images(frames, "cpu", dtype) if dtype else proc.images(frames)
    assert out.dtype == expected.dtype and out.is_contiguous()
    assert torch.equal(out, expected)
    assert len(torch.unique(out[..., 0, :, :])) > 10  # varied pixels: the comparison is not trivial
    assert np.array_equal(frames, np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))  # input untouched


def test_image_preprocessing_stays_on_the_cpu_whatever_device_the_policy_was_built_under():
    # bench and training build real-size policies under `with torch.device("cuda")`; camera frames arrive as
    # CPU arrays (the meta device stands in for CUDA here: mixing it with CPU tensors fails the same way)
    cfg = PolicyConfig.tiny("llava")
    reference = RoboVLM(cfg).processor.images(np.full((48, 64, 3), 200, np.uint8))
    with torch.device("meta"):
        proc = PolicyProcessor(cfg, tiny_tokenizer(), Normalizer())
    out = proc.images(np.full((48, 64, 3), 200, np.uint8))
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, reference)


def test_text_is_left_padded_without_special_tokens():
    model = RoboVLM(PolicyConfig.tiny("paligemma", max_text_len=10))
    ids, mask = model.processor.text(["ab", "abcd", "a very long instruction indeed"])
    assert ids.shape == (3, 10)
    assert mask[0].tolist() == [0] * 8 + [1] * 2 and mask[2].sum() == 10  # truncated to max_text_len
    tok = tiny_tokenizer()
    assert tok.decode(ids[1][mask[1].bool()]) == "abcd"
    assert tok.bos_token_id not in ids[mask.bool()].tolist()


def test_state_with_nan_or_wrong_size_is_rejected():
    proc = RoboVLM(PolicyConfig.tiny("paligemma")).processor
    with pytest.raises(ValueError, match="NaN"):
        proc.state([0, 0, 0, float("nan"), 0, 0, 1])
    with pytest.raises(ValueError, match="7 values"):
        proc.state([0, 0, 0])


def test_config_json_round_trip_and_validation():
    cfg = PolicyConfig.tiny("qwen2_vl", action_space="discrete", lora={"r": 8})
    assert PolicyConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="history_type"):
        PolicyConfig.tiny("llava", history_type="middle")
    with pytest.raises(ValueError, match="unknown backbone family"):
        PolicyConfig.tiny("gpt5")
    with pytest.raises(ValueError, match="backbone_path"):
        PolicyConfig(backbone="llava")
    with pytest.raises(ValueError, match="unknown PolicyConfig fields"):
        PolicyConfig.from_dict({**cfg.to_dict(), "windw_size": 3})


def test_image_size_must_fit_a_fixed_resolution_vision_tower():
    cfg = PolicyConfig.tiny("paligemma")  # SigLIP built for 32 px
    with pytest.raises(ValueError, match="takes 32x32"):
        RoboVLM(dataclasses.replace(cfg, image_size=48))
    assert RoboVLM(PolicyConfig.tiny("qwen2_vl", image_size=48)).config.image_size == 48  # dynamic resolution


def test_tiny_backbones_are_built_for_the_requested_size():
    model = RoboVLM(PolicyConfig.tiny("paligemma", image_size=48, size={"d": 96, "patch": 6}))
    vision = model.backbone.config.vision_config
    assert (vision.image_size, vision.patch_size, model.backbone.config.text_config.hidden_size) == (48, 6, 96)
    assert model.encode_images(torch.zeros(2, 3, 48, 48))[0].shape == (2, (48 // 6) ** 2, 96)
    with pytest.raises(ValueError, match="unknown backbone size fields"):
        PolicyConfig.tiny("paligemma", size={"width": 96})
    with pytest.raises(ValueError, match="multiple of patch"):
        PolicyConfig.tiny("paligemma", image_size=50)


@pytest.mark.parametrize("family", ["paligemma", "llava"])
def test_tiny_backbone_init_scale_sets_a_fan_in_init_outside_the_vision_encoder(family):
    def stds(init_scale):
        torch.manual_seed(0)
        model = RoboVLM(PolicyConfig.tiny(family, size={"d": 64, "init_scale": init_scale}))
        named = dict(model.backbone.hf.named_parameters())
        q = torch.cat([p.flatten() for n, p in named.items() if n.endswith("q_proj.weight") and "language" in n])
        down = torch.cat([p.flatten() for n, p in named.items() if n.endswith("down_proj.weight")])
        vision = torch.cat([p.flatten() for n, p in named.items() if "vision" in n and n.endswith("q_proj.weight")])
        return float(q.std()), float(down.std()), float(vision.std())

    q, down, vision = stds(0.0)
    assert q == pytest.approx(0.02, rel=0.1) and down == pytest.approx(0.02, rel=0.1)  # the family's init
    q1, down1, vision1 = stds(1.0)
    assert q1 == pytest.approx(64 ** -0.5, rel=0.1)  # fan-in 64
    assert down1 == pytest.approx(128 ** -0.5, rel=0.1)  # fan-in 128 (MLP width 2d)
    assert vision1 == pytest.approx(vision, rel=1e-6)  # the vision encoder keeps its own init
