"""Parity with RoboVLMs' own code: policies RoboVLMs built, ran and scored (tools/robovlms_reference,
fixtures under test/fixtures/robovlms) are imported with ``import-robovlms`` and must compute the same
actions, robot commands and training loss.

Tolerance: float32 throughout on both sides; actions within ACT_TOL (measured differences are at most
4e-7, float32 rounding of a different summation order), losses within a relative 1e-5. Each planted fault below moves the actions by more than 100x ACT_TOL.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robovlm_ros.model import RoboVLM
from robovlm_ros.model.robovlms_import import RoboVLMsImportError, import_robovlms, read_checkpoint

FIX = Path(__file__).parent / "fixtures" / "robovlms"
CASES = sorted(p.name for p in FIX.iterdir() if (p / "run.json").exists())
ACT_TOL = 1e-6
_imported: dict = {}


def backbone_dir(case: str) -> Path:
    return FIX / f"{case.split('_')[0]}_backbone"


def reference(case: str) -> dict:
    return torch.load(FIX / case / "reference.pt", weights_only=True)


def imported(case: str, tmp_path_factory) -> Path:
    if case not in _imported:
        out = tmp_path_factory.mktemp("imported") / case
        import_robovlms(str(FIX / case / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)), str(out))
        _imported[case] = out
    return _imported[case]


def batch_for(model: RoboVLM, ref: dict, frames: slice = slice(None)) -> dict:
    """Our preprocessing of the uint8 frames and the instruction RoboVLMs got."""
    p = model.processor
    ids, mask = p.text([ref["instruction"]])
    batch = {"rgb": p.images(ref["rgb_uint8"][frames].numpy()[None]), "input_ids": ids, "attention_mask": mask}
    if model.config.use_hand_rgb:
        batch["hand_rgb"] = p.images(ref["hand_uint8"][frames].numpy()[None])
    return batch


def window_actions(model: RoboVLM, ref: dict) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.head(model.action_features(batch_for(model, ref)))  # [1, W, chunk, 6], [1, W, chunk]


def action_error(model: RoboVLM, ref: dict) -> float:
    arm, grip = window_actions(model, ref)
    return max((arm - ref["window_arm"]).abs().max().item(), (grip - ref["window_gripper_logits"]).abs().max().item())


@pytest.fixture(params=CASES)
def case(request):
    return request.param


def test_fixtures_cover_what_robovlms_releases():
    runs = {c: json.loads((FIX / c / "run.json").read_text()) for c in CASES}
    heads = {r["act_head"]["type"] for r in runs.values()}
    assert heads == {"LSTMDecoder", "FCDecoder", "GPTDecoder"}
    assert {r["model"] for r in runs.values()} == {"kosmos", "paligemma"}
    lstm_post = [r for r in runs.values() if r["act_head"]["type"] == "LSTMDecoder" and r["window_size"] > 1]
    assert {r["use_hand_rgb"] for r in lstm_post} == {True, False}
    assert any(r["act_head"]["latent"] > 1 for r in runs.values())
    assert {reference(c)["robovlms_commit"] for c in CASES} == {"8adc1d28d3565699eba90b7d97a97fb6001eb87d"}


def test_text_and_pixels_are_what_robovlms_fed_its_policy(case, tmp_path_factory):
    model = RoboVLM.from_pretrained(str(imported(case, tmp_path_factory)))
    ref = reference(case)
    batch = batch_for(model, ref)
    # RoboVLMs' prompt less what sits outside the text slot: the sequence start and the trailing token
    assert batch["input_ids"][0].tolist() == ref["lang_x"][0, 1:-1].tolist()
    assert ref["lang_x"][0, 0].item() == model.bos_id
    torch.testing.assert_close(batch["rgb"], ref["rgb"], atol=1e-6, rtol=0)
    if model.config.use_hand_rgb:
        torch.testing.assert_close(batch["hand_rgb"], ref["hand_rgb"], atol=1e-6, rtol=0)


def test_actions_equal_robovlms(case, tmp_path_factory):
    model = RoboVLM.from_pretrained(str(imported(case, tmp_path_factory))).eval()
    ref = reference(case)
    assert ref["window_arm"].abs().max() > 0.05, "reference actions too small to show a difference"
    assert action_error(model, ref) <= ACT_TOL
    # the newest frame's chunk as predict() gives it == RoboVLMs' evaluation, one frame per step
    chunk = model.predict(batch_for(model, ref), normalized=True)[0]  # [chunk, 7]
    torch.testing.assert_close(chunk[:, :6], ref["step_arm"][0], atol=ACT_TOL, rtol=0)
    assert torch.equal(chunk[:, 6] > 0, ref["step_gripper_logits"][0] > 0)


def test_runner_commands_equal_robovlms_evaluation(case, tmp_path_factory):
    """PolicyRunner (what the node runs) fed frame by frame, as RoboVLMs' CALVIN wrapper feeds its policy:
    the unnormalised arm command and the gripper (RoboVLMs: sigmoid > 0.5 -> 1, else 0; ours +-1)."""
    from robovlm_ros.runtime import PolicyRunner

    runner = PolicyRunner(imported(case, tmp_path_factory), device="cpu", dtype="float32")
    ref = reference(case)
    runner.set_instruction(ref["instruction"])
    for t in range(len(ref["rgb_uint8"])):
        obs = {"rgb": ref["rgb_uint8"][t].numpy(), "state": np.zeros(7)}
        if runner.config.use_hand_rgb:
            obs["hand_rgb"] = ref["hand_uint8"][t].numpy()
        chunk = runner.predict_chunk(obs)
    np.testing.assert_allclose(chunk[:, :6], ref["command_arm"].numpy(), atol=ACT_TOL, rtol=0)
    np.testing.assert_array_equal(chunk[:, 6], ref["command_gripper01"].numpy() * 2 - 1)


def test_training_loss_equals_robovlms(case, tmp_path_factory):
    """Arm Huber + gripper BCE weighted by arm_gripper_loss_ratio, with an action mask, on the batch
    RoboVLMs scored (its labels: arm normalised, gripper 0 / 1)."""
    model = RoboVLM.from_pretrained(str(imported(case, tmp_path_factory))).eval()
    ref = reference(case)
    batch = batch_for(model, ref)
    batch["actions"] = torch.cat([ref["labels_arm"], (ref["labels_gripper01"] * 2 - 1).unsqueeze(-1)], dim=-1)
    batch["action_mask"] = ref["action_mask"]
    with torch.no_grad():
        out = model(batch)
    for ours, theirs in (("loss_arm", "loss_arm"), ("loss_gripper", "loss_gripper"), ("loss", "loss")):
        torch.testing.assert_close(out[ours], ref[theirs].float(), rtol=1e-5, atol=1e-7)
    # the mask matters: scoring the masked step too gives another loss
    batch["action_mask"] = torch.ones_like(ref["action_mask"])
    with torch.no_grad():
        assert abs(model(batch)["loss"].item() - ref["loss"].item()) > 1e-4


# --- the checks can fail: planted faults -----------------------------------------------------------
def _perturb_head(model, monkeypatch):
    with torch.no_grad():
        next(p for n, p in model.head.named_parameters() if n.endswith("weight")).add_(0.01)


def _latents_dim_major(model, monkeypatch):
    # RoboVLMs concatenates the latent tokens' states token after token, "(n d)"; interleaved is wrong
    import robovlm_ros.model.heads as heads

    monkeypatch.setattr(heads, "concat_latents", lambda f: f.transpose(2, 3).flatten(2))


FAULTS = {
    # one option of the sequence or the model different from what RoboVLMs does
    "static image first": ("kosmos_lstm_post_hand", lambda m, _: setattr(m.config, "image_order", "static_first")),
    "no <grounding> prompt": ("kosmos_lstm_post",
                              lambda m, _: setattr(m.config, "prompt", "An image of a robot {instruction}")),
    "action token not rescaled": ("paligemma_lstm_post_hand",
                                  lambda m, _: m.action_tokens.data.div_(float(m.backbone.embed_tokens.embed_scale))),
    "latents interleaved, not concatenated": ("kosmos_lstm_latent2", _latents_dim_major),
    "one head tensor perturbed": ("kosmos_gpt", _perturb_head),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_planted_fault_breaks_parity(fault, tmp_path_factory, monkeypatch):
    case, plant = FAULTS[fault]
    model = RoboVLM.from_pretrained(str(imported(case, tmp_path_factory))).eval()
    ref = reference(case)
    assert action_error(model, ref) <= ACT_TOL
    plant(model, monkeypatch)
    assert action_error(model, ref) > 100 * ACT_TOL, fault


def test_a_perturbed_or_changed_fixture_fails(tmp_path):
    """The fixture itself altered: one checkpoint tensor perturbed, or one run-config option changed."""
    case = "kosmos_lstm_post_hand"
    ref = reference(case)
    ckpt = torch.load(FIX / case / "model.ckpt", weights_only=True)
    ckpt["state_dict"]["model.act_head.rnn.weight_hh_l0"] += 0.01
    torch.save(ckpt, tmp_path / "perturbed.ckpt")
    import_robovlms(str(FIX / case / "run.json"), str(tmp_path / "perturbed.ckpt"), str(backbone_dir(case)),
                    str(tmp_path / "a"))
    assert action_error(RoboVLM.from_pretrained(str(tmp_path / "a")).eval(), ref) > 100 * ACT_TOL
    run = json.loads((FIX / case / "run.json").read_text())
    run["norm_max"] = 0.5  # RoboVLMs unnormalises commands with +-0.65
    run["norm_min"] = -0.5
    (tmp_path / "run.json").write_text(json.dumps(run))
    import_robovlms(str(tmp_path / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)),
                    str(tmp_path / "b"))
    model = RoboVLM.from_pretrained(str(tmp_path / "b")).eval()
    chunk = model.normalizer.unnormalize_action(model.predict(batch_for(model, ref), normalized=True))[0]
    assert (chunk[:, :6] - ref["command_arm"]).abs().max() > 100 * ACT_TOL


# --- what the import accepts and refuses ---------------------------------------------------------------
def _run(case="kosmos_lstm_post_hand", **changes) -> dict:
    run = json.loads((FIX / case / "run.json").read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            run[section][sub] = value
        else:
            run[section] = value
    return run


@pytest.mark.parametrize("changes, words", [
    ({"my_new_option": 1}, "my_new_option"),
    ({"fwd_head": {"type": "X"}}, "fwd_head"),
    ({"act_head__action_space": "discrete"}, "action_space"),
    ({"act_head__type": "DiffusionDecoder"}, "DiffusionDecoder"),
    ({"robovlm_name": "RoboFlamingo"}, "RoboFlamingo"),
    ({"use_vision_resampler": True}, "use_vision_resampler"),
    ({"train_setup__lora_enable": True}, "lora_enable"),
    ({"train_setup__my_flag": True}, "my_flag"),
    ({"act_head__fill_zero": True}, "fill_zero"),
    ({"tokenizer": {"type": "AutoProcessor", "tokenizer_type": "qwen"}}, "qwen"),
])
def test_unsupported_settings_are_refused_by_name(changes, words, tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_run(**changes)))
    case = "kosmos_lstm_post_hand"
    with pytest.raises(RoboVLMsImportError, match=words):
        import_robovlms(str(path), str(FIX / case / "model.ckpt"), str(backbone_dir(case)), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_missing_a_tensor_is_refused_and_deepspeed_prefixes_load(tmp_path):
    case = "kosmos_mlp"
    sd = torch.load(FIX / case / "model.ckpt", weights_only=True)["state_dict"]
    broken = {k: v for k, v in sd.items() if k != "model.act_head.gripper.mlp.6.weight"}
    torch.save({"state_dict": broken}, tmp_path / "broken.ckpt")
    with pytest.raises(RoboVLMsImportError, match=r"head\.gripper\.mlp\.6\.weight"):
        import_robovlms(str(FIX / case / "run.json"), str(tmp_path / "broken.ckpt"), str(backbone_dir(case)),
                        str(tmp_path / "x"))
    # DeepSpeed's fp32 export wraps the Lightning module: _forward_module.model.<name>
    torch.save({"state_dict": {f"_forward_module.{k}": v for k, v in sd.items()}}, tmp_path / "ds.ckpt")
    assert read_checkpoint(str(tmp_path / "ds.ckpt")).keys() == read_checkpoint(str(FIX / case / "model.ckpt")).keys()
    with pytest.raises(RoboVLMsImportError, match="kosmos"):  # the wrong family's backbone directory
        import_robovlms(str(FIX / case / "run.json"), str(FIX / case / "model.ckpt"),
                        str(backbone_dir("paligemma_lstm_post_hand")), str(tmp_path / "y"))


def test_cli_reports_the_mapping(tmp_path, capsys):
    from robovlm_ros.cli import main

    case = "kosmos_gpt"
    rc = main(["import-robovlms", "--config", str(FIX / case / "run.json"), "--checkpoint",
               str(FIX / case / "model.ckpt"), "--backbone-path", str(backbone_dir(case)), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "o" / "model.safetensors").exists()
    assert "head gpt, head_style robovlms" in out and "buffers_skipped 16" in out and "unmapped 0" in out
    assert "learning_rate" in out  # named among the settings not carried
    rc = main(["import-robovlms", "--config", str(FIX / case / "run.json"), "--checkpoint", str(tmp_path / "none.ckpt"),
               "--backbone-path", str(backbone_dir(case)), "--out", str(tmp_path / "p")])
    assert rc == 2 and "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_training_continues_from_an_imported_policy(tmp_path, tmp_path_factory):
    """The main use: fine-tune the imported policy on the user's own converted bags. Training starts from
    the imported weights (its first loss is the imported policy's loss) and moves them."""
    from test_convert import episode_messages, params, write_bag
    from test_training import losses, write_config

    from robovlm_ros.data.convert import convert_bags
    from robovlm_ros.train.config import load_train_config
    from robovlm_ros.train.run import train

    case = "kosmos_lstm_post"  # the converted test bags have no gripper camera
    src = imported(case, tmp_path_factory)
    for name in ("ep1", "ep2"):
        write_bag(tmp_path / "bags" / name, episode_messages(n=8))
    convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), params(tmp_path), progress=False)
    path = write_config(tmp_path / "cfg.yaml", tmp_path / "ds", tmp_path / "run",
                        data={"batch_size": 1, "val_fraction": 0.0}, optim={"lr": 1e-3, "max_steps": 3, "warmup_steps": 0},
                        trainer={"checkpoint_every": 3})
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    raw["model"] = {"train_vision": False}
    raw["init_checkpoint"] = str(src)
    Path(path).write_text(yaml.safe_dump(raw))
    cfg = load_train_config(path)
    assert cfg.model.head_style == "robovlms" and cfg.model.image_order == "hand_first"
    export = train(cfg)
    assert len(losses(tmp_path / "run")) == 3
    before, after = RoboVLM.from_pretrained(str(src)), RoboVLM.from_pretrained(export)
    assert after.config.prompt == before.config.prompt and after.normalizer.clip_bound == before.normalizer.clip_bound
    vision = [n for n, _ in before.named_parameters() if "vision_model" in n]
    moved = [n for n, p in after.named_parameters() if not torch.equal(p, before.state_dict()[n])]
    assert "action_tokens" in moved and any(n.startswith("head.") for n in moved)
    assert not set(vision) & set(moved), "train_vision: false must keep the vision tower"
    raw["model"] = {"window_size": 4}
    Path(path).write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="window_size"):
        load_train_config(path)
