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
ALL_CASES = sorted(p.name for p in FIX.iterdir() if (p / "run.json").exists())
DISCRETE = [c for c in ALL_CASES if json.loads((FIX / c / "run.json").read_text())["act_head"]["action_space"] == "discrete"]
CASES = [c for c in ALL_CASES if c not in DISCRETE]  # continuous
ACT_TOL = 1e-6
_imported: dict = {}


def backbone_dir(case: str) -> Path:
    family = case.split("_")[0]
    return FIX / (f"{family}_discrete_backbone" if case in DISCRETE else f"{family}_backbone")


def reference(case: str) -> dict:
    return torch.load(FIX / case / "reference.pt", weights_only=True)


def imported(case: str, tmp_path_factory, history: str = "post") -> Path:
    if (case, history) not in _imported:
        out = tmp_path_factory.mktemp("imported") / case
        import_robovlms(str(FIX / case / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)), str(out),
                        discrete_history=history)
        _imported[case, history] = out
    return _imported[case, history]


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
    runs = {c: json.loads((FIX / c / "run.json").read_text()) for c in ALL_CASES}
    heads = {r["act_head"]["type"] for r in runs.values()}
    assert heads == {"LSTMDecoder", "FCDecoder", "GPTDecoder", "DiscreteDecoder"}
    assert {r["model"] for r in runs.values()} == {"kosmos", "paligemma"}
    assert {runs[c]["model"] for c in DISCRETE} == {"kosmos", "paligemma"}
    lstm_post = [r for r in runs.values() if r["act_head"]["type"] == "LSTMDecoder" and r["window_size"] > 1]
    assert {r["use_hand_rgb"] for r in lstm_post} == {True, False}
    assert any(r["act_head"]["latent"] > 1 for r in runs.values())
    assert any(r["use_vision_resampler"] for r in runs.values())
    assert {r["model"] for r in runs.values() if r["act_head"]["history_type"] == "pre"} == {"kosmos", "paligemma"}
    assert {reference(c)["robovlms_commit"] for c in ALL_CASES} == {"8adc1d28d3565699eba90b7d97a97fb6001eb87d"}


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
    # the newest frame's chunk as predict() gives it == RoboVLMs' evaluation, one frame per step (pre
    # history: RoboVLMs' window pass at the newest frame; its evaluation reads the oldest, see README)
    chunk = model.predict(batch_for(model, ref), normalized=True)[0]  # [chunk, 7]
    arm, grip = (ref["step_arm"][0], ref["step_gripper_logits"][0]) if "step_arm" in ref else \
        (ref["window_arm"][0, -1], ref["window_gripper_logits"][0, -1])
    torch.testing.assert_close(chunk[:, :6], arm, atol=ACT_TOL, rtol=0)
    assert torch.equal(chunk[:, 6] > 0, grip > 0)


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
    if "command_arm" not in ref:  # pre history: the newest frame of RoboVLMs' window pass, unnormalised as
        run = json.loads((FIX / case / "run.json").read_text())  # its data_utils.unnoramalize_action does
        arm = 0.5 * (ref["window_arm"][0, -1] + 1) * (run["norm_max"] - run["norm_min"]) + run["norm_min"]
        ref = dict(ref, command_arm=arm, command_gripper01=(ref["window_gripper_logits"][0, -1] > 0).float())
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


def test_open_x_statistics_give_the_commands_of_robovlms_simpler_evaluation(tmp_path):
    """An Open-X policy's commands: RoboVLMs' SimplerEnv wrapper unnormalises the output with norm_min /
    norm_max (data_utils.unnoramalize_action), then each dimension with the dataset's q01 / q99
    (eval/simpler/model_wrapper.py: 0.5 * (a + 1) * (q99 - q01) + q01). The runner's command must be
    that composition of RoboVLMs' actions."""
    from robovlm_ros.runtime import PolicyRunner

    case = "kosmos_lstm_post_hand"
    ref = reference(case)
    q01 = [-0.029, -0.042, -0.026, -0.081, -0.093, -0.207, 0.0]  # bridge_orig-like statistics
    q99 = [0.028, 0.041, 0.040, 0.082, 0.078, 0.204, 1.0]
    (tmp_path / "stats.json").write_text(json.dumps({"bridge_orig": {"action": {"q01": q01, "q99": q99}},
                                                     "fractal20220817_data": {"action": {"q01": [0] * 7, "q99": [1] * 7}}}))
    with pytest.raises(RoboVLMsImportError, match="bridge_orig"):  # several datasets: which one must be said
        import_robovlms(str(FIX / case / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)),
                        str(tmp_path / "x"), action_stats=str(tmp_path / "stats.json"))
    import_robovlms(str(FIX / case / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)),
                    str(tmp_path / "oxe"), action_stats=str(tmp_path / "stats.json"), unnorm_key="bridge_orig")
    runner = PolicyRunner(tmp_path / "oxe", device="cpu", dtype="float32")
    runner.set_instruction(ref["instruction"])
    for t in range(len(ref["rgb_uint8"])):
        chunk = runner.predict_chunk({"rgb": ref["rgb_uint8"][t].numpy(), "hand_rgb": ref["hand_uint8"][t].numpy(),
                                      "state": np.zeros(7)})
    a = 0.5 * (ref["step_arm"][0].double() + 1) * (0.65 - -0.65) + -0.65  # norm_min / norm_max of the run
    lo, hi = torch.tensor(q01[:6], dtype=torch.float64), torch.tensor(q99[:6], dtype=torch.float64)
    expected = 0.5 * (a + 1) * (hi - lo) + lo
    np.testing.assert_allclose(chunk[:, :6], expected.numpy(), atol=1e-7, rtol=1e-5)
    assert np.abs(chunk[:, :6] - ref["command_arm"].numpy()).max() > 0.05  # not the CALVIN command
    # one dataset's file (a top-level "action"), with a mask: a masked-off dimension keeps norm_min / norm_max
    mask = [True, True, False, True, True, True, False]
    (tmp_path / "one.json").write_text(json.dumps({"action": {"q01": q01, "q99": q99, "mask": mask}}))
    with pytest.raises(RoboVLMsImportError, match="unnorm-key"):
        import_robovlms(str(FIX / case / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)),
                        str(tmp_path / "y"), action_stats=str(tmp_path / "one.json"), unnorm_key="bridge_orig")
    import_robovlms(str(FIX / case / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)),
                    str(tmp_path / "one"), action_stats=str(tmp_path / "one.json"))
    model = RoboVLM.from_pretrained(str(tmp_path / "one"))
    arm = model.normalizer.unnormalize_action(torch.cat([ref["step_arm"][0], torch.ones(len(a), 1)], -1))[:, :6]
    np.testing.assert_allclose(arm[:, [0, 1, 3, 4, 5]].double(), expected[:, [0, 1, 3, 4, 5]], atol=1e-7, rtol=1e-5)
    np.testing.assert_allclose(arm[:, 2].double(), a[:, 2], atol=1e-7, rtol=1e-5)  # only norm_min / norm_max


# --- discrete actions ----------------------------------------------------------------------------------
@pytest.fixture(params=DISCRETE)
def dcase(request):
    return request.param


def discrete_train_batch(model: RoboVLM, ref: dict) -> dict:
    """The two windows RoboVLMs scored (the second one's frames in reverse order), in our batch format:
    actions [2, W, chunk, 7] from each sample's W + chunk - 1 steps, the masked last step likewise."""
    p = model.processor
    w, chunk = model.config.window_size, model.config.fwd_pred_next_n
    ids, mask = p.text(ref["train_instructions"])
    steps = torch.arange(w)[:, None] + torch.arange(chunk)[None]  # [W, chunk]: frame i acts at steps i .. i+chunk-1
    batch = {"rgb": p.images(torch.stack([ref["rgb_uint8"], ref["rgb_uint8"].flip(0)]).numpy()),
             "input_ids": ids, "attention_mask": mask, "actions": ref["train_actions"][:, steps],
             "action_mask": ref["train_step_mask"][:, steps].float()}
    if model.config.use_hand_rgb:
        batch["hand_rgb"] = p.images(torch.stack([ref["hand_uint8"], ref["hand_uint8"].flip(0)]).numpy())
    return batch


def test_discrete_prompt_bins_and_token_ids_are_robovlms(dcase, tmp_path_factory):
    """The prompt RoboVLMs' evaluation feeds, its ActionTokenizer's id range (from the tokenizer, as it
    counts it), and every frame of its training sequences: [first prompt token] text actions [EOS]."""
    model = RoboVLM.from_pretrained(str(imported(dcase, tmp_path_factory))).eval()
    ref = reference(dcase)
    ids, _ = model.processor.text([ref["instruction"]])
    assert [model.bos_id] + ids[0].tolist() == ref["lang_x"][0].tolist()
    assert model.config.action_token_end == ref["action_token_end"]
    batch = discrete_train_batch(model, ref)
    torch.testing.assert_close(batch["rgb"], ref["train_rgb"], atol=1e-6, rtol=0)
    n = model.n_action_slots
    tokens = model.action_tokenizer.encode(batch["actions"]).flatten(2)  # [2, W, chunk*7]
    theirs = ref["train_ids"]  # [2, W, L]: RoboVLMs' text ids, the frame's action ids, the EOS
    assert torch.equal(tokens, theirs[:, :, -n - 1: -1])
    assert (theirs[:, :, -1] == model.frame_end_id).all() and (theirs[:, :, 0] == model.bos_id).all()
    text_ids, _ = model.processor.text(ref["train_instructions"])
    assert torch.equal(theirs[:, 0, 1: -n - 1], text_ids)
    assert len(torch.unique(tokens)) > 20  # many bins, both gripper ends: not a degenerate comparison


def test_discrete_decoding_equals_robovlms_evaluation(tmp_path_factory):
    """Frame by frame, as RoboVLMs' CALVIN evaluation decodes a discrete post policy: the first 7 of our
    chunk's tokens are RoboVLMs' greedy tokens; values and the runner's robot command match too."""
    from robovlm_ros.model.decoding import decode_chunk
    from robovlm_ros.runtime import PolicyRunner

    case = "kosmos_discrete_hand"  # RoboVLMs' own discrete PaliGemma evaluation fails (generate.py)
    model = RoboVLM.from_pretrained(str(imported(case, tmp_path_factory))).eval()
    ref = reference(case)
    assert len(torch.unique(ref["step_token_ids"])) >= 8, "RoboVLMs' decoding too repetitive to prove much"
    for t in range(len(ref["rgb_uint8"])):
        batch = batch_for(model, ref, slice(t, t + 1))
        tokens = decode_chunk(model, batch)[0]
        assert tokens.shape == (model.n_action_slots,)  # the whole chunk, where RoboVLMs decodes one action
        assert tokens[:7].tolist() == ref["step_token_ids"][t].tolist()
        values = model.predict(batch, normalized=True)[0, 0]
        torch.testing.assert_close(values, ref["step_actions"][t].float(), atol=ACT_TOL, rtol=0)
    runner = PolicyRunner(imported(case, tmp_path_factory), device="cpu", dtype="float32")
    runner.set_instruction(ref["instruction"])
    for t in range(len(ref["rgb_uint8"])):
        chunk = runner.predict_chunk({"rgb": ref["rgb_uint8"][t].numpy(), "hand_rgb": ref["hand_uint8"][t].numpy(),
                                      "state": np.zeros(7)})
    np.testing.assert_allclose(chunk[0], ref["command"].numpy(), atol=ACT_TOL, rtol=0)


@pytest.mark.parametrize("fault", ["robovlm_ros bins", "static image first", "no sequence start"])
def test_a_planted_fault_breaks_discrete_decoding(fault, tmp_path_factory):
    from robovlm_ros.model.action_tokenizer import ActionTokenizer
    from robovlm_ros.model.decoding import decode_chunk

    case = "kosmos_discrete_hand"
    model = RoboVLM.from_pretrained(str(imported(case, tmp_path_factory))).eval()
    ref = reference(case)
    if fault == "robovlm_ros bins":  # our own binning: the n_bins least used ids, equal intervals
        model.action_tokenizer = ActionTokenizer(model.backbone.vocab_size, set(model.tokenizer.all_special_ids), 256)
    elif fault == "static image first":
        model.config.image_order = "static_first"
    else:
        model.bos_id = model.tokenizer.pad_token_id
    decoded = [decode_chunk(model, batch_for(model, ref, slice(t, t + 1)))[0, :7] for t in range(len(ref["rgb_uint8"]))]
    assert not torch.equal(torch.stack(decoded), ref["step_token_ids"]), fault


def test_discrete_training_loss_equals_robovlms(dcase, tmp_path_factory):
    """Imported with --discrete-history pre, RoboVLMs' training layout: the window one sequence of
    [BOS] images text actions [EOS] frames; cross-entropy over the action tokens of unmasked steps and each
    frame's EOS, on the batch RoboVLMs scored."""
    model = RoboVLM.from_pretrained(str(imported(dcase, tmp_path_factory, history="pre"))).eval()
    ref = reference(dcase)
    batch = discrete_train_batch(model, ref)
    with torch.no_grad():
        loss = model(batch)["loss"]
        torch.testing.assert_close(loss, ref["loss"].float(), rtol=1e-5, atol=1e-7)
        # each part matters: the masked step scored, no frame end, frames scored one by one (post)
        changed = [model(dict(batch, action_mask=torch.ones_like(batch["action_mask"])))["loss"]]
        model.frame_end_id = None
        changed.append(model(batch)["loss"])
        post = RoboVLM.from_pretrained(str(imported(dcase, tmp_path_factory))).eval()
        changed.append(post(batch)["loss"])
    for other in changed:
        assert abs(other.item() - ref["loss"].item()) > 1e-3


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
    "no frame end in pre history": ("kosmos_lstm_pre", lambda m, _: setattr(m, "frame_end_id", None)),
    "another frame end token": ("kosmos_lstm_pre", lambda m, _: setattr(m, "frame_end_id", m.tokenizer.pad_token_id)),
    "another frame start token": ("kosmos_lstm_pre", lambda m, _: setattr(m, "bos_id", m.tokenizer.pad_token_id)),
    "one resampler latent perturbed": ("kosmos_lstm_resampler", lambda m, _: m.resampler.latents.data[0].add_(
        torch.randn(m.resampler.latents.shape[1], generator=torch.Generator().manual_seed(0)) * 0.05)),
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
    ({"act_head__action_space": "discrete"}, "DiscreteDecoder"),
    ({"act_head__action_space": "diffusion"}, "action_space"),
    ({"act_head__type": "DiffusionDecoder"}, "DiffusionDecoder"),
    ({"robovlm_name": "RoboFlamingo"}, "RoboFlamingo"),
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


@pytest.mark.parametrize("changes, words", [
    ({"act_head__min_action": 0}, "min_action"),
    ({"act_head__type": "LSTMDecoder"}, "DiscreteDecoder"),
    ({"train_dataset__model_name": "llama"}, "llama"),
    ({"train_dataset__type": "OpenVLADataset"}, "OpenVLADataset"),
])
def test_unsupported_discrete_settings_are_refused_by_name(changes, words, tmp_path):
    case = "kosmos_discrete_hand"
    (tmp_path / "run.json").write_text(json.dumps(_run(case, **changes)))
    with pytest.raises(RoboVLMsImportError, match=words):
        import_robovlms(str(tmp_path / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)),
                        str(tmp_path / "out"))


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


def test_a_float32_checkpoint_imports_like_its_bfloat16_fixture(tmp_path):
    """The fixtures store their checkpoints' tensors as bfloat16 where that is exact (generate.py compact);
    RoboVLMs' own checkpoints hold float32: the same values in float32 give the same policy."""
    case = "kosmos_lstm_post_hand"
    ckpt = torch.load(FIX / case / "model.ckpt", weights_only=True)
    dtypes = {v.dtype for v in ckpt["state_dict"].values()}
    assert torch.bfloat16 in dtypes
    ckpt["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "fp32.ckpt")
    import_robovlms(str(FIX / case / "run.json"), str(tmp_path / "fp32.ckpt"), str(backbone_dir(case)), str(tmp_path / "a"))
    import_robovlms(str(FIX / case / "run.json"), str(FIX / case / "model.ckpt"), str(backbone_dir(case)), str(tmp_path / "b"))
    a, b = (RoboVLM.from_pretrained(str(tmp_path / x)).state_dict() for x in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype != torch.bfloat16 for v in b.values())  # the imported policy is float32


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


@pytest.mark.parametrize("case, history", [("kosmos_lstm_post", "post"), ("kosmos_discrete_hand", "pre")])
def test_training_continues_from_an_imported_policy(case, history, tmp_path, tmp_path_factory):
    """The main use: fine-tune the imported policy on the user's own converted bags. Training starts from
    the imported weights and moves them; a discrete policy imported with RoboVLMs' training layout keeps it."""
    from test_convert import MS, episode_messages, image, params, write_bag
    from test_training import losses, write_config

    from robovlm_ros.data.convert import convert_bags
    from robovlm_ros.train.config import load_train_config
    from robovlm_ros.train.run import train

    src = imported(case, tmp_path_factory, history)
    hand = case in DISCRETE  # the discrete fixture has a gripper camera
    for name in ("ep1", "ep2"):
        msgs = episode_messages(n=8)
        if hand:
            t0 = 1_000 * MS
            msgs += [("/wrist", "sensor_msgs/msg/Image", t0 + k * 50 * MS, image(t0 + k * 50 * MS, k)) for k in range(16)]
        write_bag(tmp_path / "bags" / name, msgs)
    robot = params(tmp_path, **({"gripper_camera_topic": "/wrist"} if hand else {}))
    convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), robot, progress=False)
    path = write_config(tmp_path / "cfg.yaml", tmp_path / "ds", tmp_path / "run",
                        data={"batch_size": 1, "val_fraction": 0.0}, optim={"lr": 1e-3, "max_steps": 3, "warmup_steps": 0},
                        trainer={"checkpoint_every": 3})
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    raw["model"] = {"train_vision": False}
    raw["init_checkpoint"] = str(src)
    Path(path).write_text(yaml.safe_dump(raw))
    cfg = load_train_config(path)
    assert cfg.model.image_order == "hand_first"
    if hand:
        assert (cfg.model.history_type, cfg.model.frame_end, cfg.model.bin_style) == ("pre", "</s>", "robovlms")
    else:
        assert cfg.model.head_style == "robovlms"
    export = train(cfg)
    assert len(losses(tmp_path / "run")) == 3
    before, after = RoboVLM.from_pretrained(str(src)), RoboVLM.from_pretrained(export)
    assert after.config.prompt == before.config.prompt and after.normalizer.clip_bound == before.normalizer.clip_bound
    vision = [n for n, _ in before.named_parameters() if "vision_model" in n]
    moved = [n for n, p in after.named_parameters() if not torch.equal(p, before.state_dict()[n])]
    if hand:
        assert after.config.action_token_end == before.config.action_token_end
        assert any("lm_head" in n for n in moved) and any("layers.1." in n for n in moved)
    else:
        assert "action_tokens" in moved and any(n.startswith("head.") for n in moved)
    assert not set(vision) & set(moved), "train_vision: false must keep the vision tower"
    raw["model"] = {"window_size": 4}
    Path(path).write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="window_size"):
        load_train_config(path)


# (history: --discrete-history; the continuous case is a pre-history run config)
@pytest.mark.parametrize("case, history", [("kosmos_discrete_hand", "pre"), ("paligemma_lstm_pre", "post")])
def test_an_imported_policy_drives_the_simulated_robot_through_the_node(case, history, tmp_path_factory):
    """`robovlm-ros eval`'s closed loop: policy_node (the imported checkpoint) and the MuJoCo simulator over
    ROS in lockstep, one short episode: every step got its command and the commands moved the arm."""
    pytest.importorskip("rclpy")
    from robovlm_ros.ros.evaluate import evaluate

    report = evaluate(str(imported(case, tmp_path_factory, history)), episodes=1, max_seconds=1.0, image_size=32,
                      progress=False)
    stats, result = report["node_stats"], report["results"][0]
    assert report["episodes"] == 1 and stats["lockstep_timeouts"] == 0 and stats["lockstep_steps"] > 0
    trace = np.asarray(result["trace"])  # [t, twist (6), gripper]
    assert np.abs(trace[:, 1:7]).max() > 1e-4  # the policy's commands reached the physics
