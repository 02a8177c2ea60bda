"""Checkpoint directory: exact round trip, atomic writes, clear errors, local backbone weights."""
import json
import os

import pytest
import torch

from conftest import make_batch
from robovlm_ros.model import CheckpointError, Normalizer, PolicyConfig, RoboVLM
from robovlm_ros.model.backbones import Backbone, tiny_backbone_config
from robovlm_ros.model.text_tokenizer import tiny_tokenizer


@pytest.mark.parametrize("space,history,family", [("continuous", "post", "paligemma"), ("discrete", "pre", "qwen2_vl"),
                                                  ("continuous", "pre", "kosmos2")])
def test_save_load_reproduces_outputs_exactly(tmp_path, space, history, family):
    stats = {"action": {"q01": [-0.3] * 6 + [-1], "q99": [0.4] * 6 + [1]},
             "state": {"mean": [0.1] * 7, "std": [2.0] * 7}}
    cfg = PolicyConfig.tiny(family, action_space=space, history_type=history, use_state=True,
                            use_resampler=True, use_image_start_end=True, lora={"r": 4}, norm_mode="quantile")
    model = RoboVLM(cfg, normalizer=Normalizer(mode="quantile", stats=stats)).eval()
    batch = make_batch(model)
    del batch["actions"]
    before = model.predict(batch)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directories left behind
    files = set(os.listdir(tmp_path / "ckpt"))
    assert {"config.json", "model.safetensors", "normalization.json", "tokenizer.json"} <= files
    # as readable as anything else the user creates (a robot PC often runs the node as another user)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "ckpt").st_mode & 0o777 == 0o777 & ~umask
    assert {os.stat(tmp_path / "ckpt" / f).st_mode & 0o777 for f in files} == {0o666 & ~umask}
    loaded = RoboVLM.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.to_dict() == model.config.to_dict()
    assert loaded.normalizer.to_dict() == model.normalizer.to_dict()
    assert torch.equal(loaded.predict(batch), before)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_overwrite_is_atomic_replace(tmp_path):
    a = RoboVLM(PolicyConfig.tiny("llava"))
    a.save_pretrained(tmp_path / "ckpt")
    b = RoboVLM(PolicyConfig.tiny("llava", head="gpt"))
    b.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert RoboVLM.from_pretrained(tmp_path / "ckpt").config.head == "gpt"


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    a = RoboVLM(PolicyConfig.tiny("llava"))
    a.save_pretrained(tmp_path / "ckpt")
    b = RoboVLM(PolicyConfig.tiny("llava", head="gpt"))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(b.tokenizer, "save_pretrained", broken)  # fails after the weights were written
    with pytest.raises(OSError, match="disk full"):
        b.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert RoboVLM.from_pretrained(tmp_path / "ckpt").config.head == "lstm"


def test_missing_or_corrupt_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        RoboVLM.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        RoboVLM.from_pretrained(tmp_path / "empty")

    RoboVLM(PolicyConfig.tiny("paligemma")).save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated copy
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        RoboVLM.from_pretrained(tmp_path / "ckpt")
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        RoboVLM.from_pretrained(tmp_path / "ckpt")

    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        RoboVLM.from_pretrained(tmp_path / "ckpt")


def test_mismatched_checkpoint_names_the_tensors(tmp_path):
    RoboVLM(PolicyConfig.tiny("paligemma", head_hidden=32)).save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    meta["policy"]["head_hidden"] = 48  # config edited after training
    meta["policy"]["use_state"] = True
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        RoboVLM.from_pretrained(tmp_path / "ckpt")
    msg = str(err.value)
    assert "does not match" in msg and "missing tensors" in msg and "state_arm" in msg
    assert "shape mismatches" in msg and "head." in msg

    meta["policy"]["head"] = "transformer"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid policy config"):
        RoboVLM.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_backbone_weights_and_tokenizer_load_from_a_local_directory(tmp_path, family):
    """The real-weights path: a transformers model directory on disk (here a saved tiny one)."""
    torch.manual_seed(1)
    hf_dir = tmp_path / "vlm"
    src = Backbone.from_config(family, tiny_backbone_config(family, 640))
    src.hf.save_pretrained(hf_dir)
    tiny_tokenizer().save_pretrained(hf_dir)
    model = RoboVLM(PolicyConfig(backbone=family, backbone_path=str(hf_dir), window_size=2, fwd_pred_next_n=2,
                                 head_hidden=32))
    for (name, p), (_, q) in zip(src.hf.state_dict().items(), model.backbone.hf.state_dict().items()):
        assert torch.equal(p, q), name
    assert model.config.backbone_config["model_type"] == src.config.model_type
    assert model.config.image_size == 32
    # the exported checkpoint no longer needs the original directory
    model.save_pretrained(tmp_path / "ckpt")
    for f in os.listdir(hf_dir):
        os.remove(hf_dir / f)
    loaded = RoboVLM.from_pretrained(tmp_path / "ckpt")
    batch = make_batch(model)
    torch.testing.assert_close(loaded.eval().predict(batch), model.eval().predict(batch), rtol=0, atol=0)


def test_wrong_family_for_local_directory(tmp_path):
    Backbone.from_config("llava", tiny_backbone_config("llava", 640)).hf.save_pretrained(tmp_path / "vlm")
    with pytest.raises(ValueError, match="set backbone: llava"):
        RoboVLM(PolicyConfig(backbone="paligemma", backbone_path=str(tmp_path / "vlm")))
    with pytest.raises(FileNotFoundError):
        RoboVLM(PolicyConfig(backbone="llava", backbone_path=str(tmp_path / "missing")))
