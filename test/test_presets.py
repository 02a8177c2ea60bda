"""Real-size presets: the published architectures, built with random weights and no download."""
import numpy as np
import pytest
import torch

from robovlm_ros.model import PolicyConfig, RoboVLM
from robovlm_ros.model.backbones import Backbone
from robovlm_ros.model.presets import PRESETS, preset_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_has_the_published_parameter_count(name):
    """Built on the meta device (no memory): the count is the architecture's, within 1 % of the
    published model's; a preset with one decoder layer too many or too few would miss it."""
    p = PRESETS[name]
    with torch.device("meta"):
        bb = Backbone.from_config(p.family, preset_config(name))
    n = sum(x.numel() for x in bb.parameters())
    off = abs(n / p.parameters - 1)
    assert off < 0.01, f"{name}: {n:,} parameters vs published {p.parameters:,.0f}"
    layer = sum(x.numel() for x in bb.decoder_layers[0].parameters())
    assert layer / p.parameters > 0.01 + off  # one decoder layer more or less would exceed the 1 %
    assert bb.hidden_size == bb.config.get_text_config().hidden_size


def test_preset_policy_builds_steps_and_refuses_another_family():
    cfg = PolicyConfig.tiny(size="smolvlm-256m", window_size=1, fwd_pred_next_n=2, use_hand_rgb=False)
    assert (cfg.backbone, cfg.image_size, cfg.tiny_backbone) == ("smolvlm", 512, True)
    model = RoboVLM(cfg).eval()
    text = model.backbone.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (576, 30, 49280)
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (1, 1, 512, 512, 3), dtype=np.uint8))
    batch = {"rgb": model.processor.images(rgb)}
    batch["input_ids"], batch["attention_mask"] = model.processor.text(["pick up the red block"])
    chunk = model.predict(batch, normalized=True)
    assert chunk.shape == (1, 2, 7) and torch.isfinite(chunk).all()
    assert model.encode_images(batch["rgb"][:, 0])[0].shape == (1, 64, 576)  # 32x32 patches, 4x4 pixel shuffle
    with pytest.raises(ValueError, match="is a smolvlm backbone"):
        PolicyConfig.tiny("paligemma", size="smolvlm-256m")


def test_size_argument_accepts_presets():
    import argparse

    from robovlm_ros.commands.bench import size_arg

    assert size_arg("qwen2-vl-2b") == "qwen2-vl-2b"
    assert size_arg('{"d": 96}') == {"d": 96}
    with pytest.raises(argparse.ArgumentTypeError, match="paligemma-3b-224"):
        size_arg("paligemma-3b")


@pytest.mark.parametrize("name", ["paligemma-3b-224", "smolvlm-256m"])
def test_a_decoding_step_reads_the_decoder_and_the_action_rows_of_the_lm_head(name):
    """bench's bandwidth share: the bytes a decoding step reads are the decoder's weights and the LM head's
    rows of the action bins (the token table is left out: one row is looked up; the whole head is not read,
    test_the_decoding_step_is_fit_for_a_cuda_graph). PaliGemma ties its head to the table, SmolVLM does not;
    bfloat16 halves the bytes."""
    from robovlm_ros.runtime.latency import decoder_weight_bytes, peak_bandwidth_gbs

    with torch.device("meta"):
        model = RoboVLM(PolicyConfig.tiny(size=name, action_space="discrete"))
    bb = model.backbone
    table, head = bb.embed_tokens.weight, bb.lm_head.weight
    layers = sum(p.numel() for p in bb.language_model.parameters() if p is not table and p is not head)
    assert (head is table) == (name == "paligemma-3b-224") and bb.lm_head.bias is None
    rows = model.config.n_bins * head.shape[1]
    assert decoder_weight_bytes(model) == 4 * (layers + rows)
    assert decoder_weight_bytes(model.to(torch.bfloat16)) == 2 * (layers + rows)
    published = {"paligemma-3b-224": 1.98e9, "smolvlm-256m": 0.106e9}[name]  # the decoder's layers, about
    assert 0.9 < layers / published < 1.1
    assert [peak_bandwidth_gbs(n) for n in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "Tesla T4")] \
        == [4800.0, 3350.0, 2000.0, None]


def test_smolvlm_256m_trains_with_lora_from_converted_bags_and_the_runner_steps(tmp_path):
    """The real-size path on the CPU: bags -> convert -> LoRA training of the published SmolVLM-256M
    architecture -> exported checkpoint -> PolicyRunner steps. Only LoRA, the head and RoboVLM's own
    parts train; the LoRA weights move, the frozen base weights do not."""
    from test_convert import episode_messages, params, write_bag
    from test_training import losses, write_config

    from robovlm_ros.data.convert import convert_bags
    from robovlm_ros.runtime import PolicyRunner
    from robovlm_ros.train.config import load_train_config
    from robovlm_ros.train.run import train

    for name in ("ep1", "ep2"):
        write_bag(tmp_path / "bags" / name, episode_messages(n=8))
    convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False)
    steps = 4
    cfg = load_train_config(write_config(
        tmp_path / "cfg.yaml", tmp_path / "ds", tmp_path / "run",
        model={"backbone": "smolvlm", "tiny": True, "size": "smolvlm-256m", "window_size": 1, "fwd_pred_next_n": 2,
               "use_hand_rgb": False, "train_vision": False, "lora": {"r": 16, "alpha": 32}},
        data={"batch_size": 1, "val_fraction": 0.0},
        optim={"lr": 1e-3, "max_steps": steps, "warmup_steps": 1},
        trainer={"checkpoint_every": steps}))
    export = train(cfg)
    curve = losses(tmp_path / "run")
    assert len(curve) == steps and all(np.isfinite(v) for v in curve.values())
    runner = PolicyRunner(export, device="cpu")
    model = runner.model
    assert model.config.lora == {"r": 16, "alpha": 32}
    assert sum(p.numel() for p in model.parameters()) > 250e6
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero: training must have moved it"
    runner.set_instruction("pick up the red block")
    rng = np.random.default_rng(0)
    for _ in range(2):
        a = runner.step({"rgb": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "state": np.r_[rng.normal(size=6), 1.0]})
        assert a.shape == (7,) and np.isfinite(a).all()
