"""RoboVLM training steps for every backbone family and both action spaces."""
import pytest
import torch

from conftest import ALL_FAMILIES, make_batch
from robovlm_ros.model import PolicyConfig, RoboVLM


def grads(model, prefix):
    """Parameters under ``prefix``: (names with a non-zero grad, names with no grad at all)."""
    with_grad, without = [], []
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            (with_grad if p.grad is not None and p.grad.abs().sum() > 0 else without).append(name)
    return with_grad, without


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_training_step_full_finetune(family, space):
    model = RoboVLM(PolicyConfig.tiny(family, action_space=space, use_state=True))
    out = model(make_batch(model))
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    out["loss"].backward()
    spec = model.backbone.spec
    # the decoder and the vision tower both receive gradient
    lm_with, _ = grads(model, f"backbone.hf.{spec.language_model}.layers.0.")
    vis_with, _ = grads(model, f"backbone.hf.{spec.vision[0]}.")
    assert lm_with, "no gradient reached the language model"
    assert vis_with, "no gradient reached the vision encoder"
    st_with, st_without = grads(model, "state_")
    assert st_with and not st_without, "state token parameters got no gradient"
    if space == "continuous":
        assert model.action_tokens.grad is not None and model.action_tokens.grad.abs().sum() > 0
        head_with, head_without = grads(model, "head.")
        assert head_with and not head_without
    else:
        assert out["loss_action"] > 1.0  # cross-entropy over a 640-token vocabulary at init


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_frozen_backbone_gets_no_gradient(family, space):
    cfg = PolicyConfig.tiny(family, action_space=space, freeze_backbone=True, train_vision=False,
                            train_text_last_n=1)
    model = RoboVLM(cfg)
    model(make_batch(model))["loss"].backward()
    n_layers = len(model.backbone.decoder_layers)
    lm = f"backbone.hf.{model.backbone.spec.language_model}"
    for name, p in model.named_parameters():
        if name.startswith(f"{lm}.layers.{n_layers - 1}."):
            assert p.requires_grad, name
        elif name.startswith("backbone."):
            assert not p.requires_grad and p.grad is None, f"frozen {name} has a gradient"
    last_with, _ = grads(model, f"{lm}.layers.{n_layers - 1}.")
    assert last_with, "the last decoder layer was unfrozen but got no gradient"


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_train_text_last_n_restricts_a_trained_decoder(lora):
    """RoboVLMs' train_decoder_layers: without freezing, only the last N decoder layers train; the
    embeddings and the vision tower still do (full fine-tuning), or only LoRA (with lora)."""
    cfg = PolicyConfig.tiny("llava", size={"layers": 3}, train_text_last_n=2, lora=lora)
    model = RoboVLM(cfg)
    model(make_batch(model))["loss"].backward()
    lm = f"backbone.hf.{model.backbone.spec.language_model}"
    assert len(model.backbone.decoder_layers) == 3
    first_with, first_without = grads(model, f"{lm}.layers.0.")
    assert not first_with and first_without, "layer 0 is before the last 2 and must not train"
    assert all(p.grad is None and not p.requires_grad for n, p in model.named_parameters() if n.startswith(f"{lm}.layers.0."))
    for i in (1, 2):
        with_grad, _ = grads(model, f"{lm}.layers.{i}.")  # (LoRA's A matrices get no gradient while B is 0)
        assert with_grad, f"layer {i} is among the last 2 and must train"
        assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(f"{lm}.layers.{i}."))
    vis_with, _ = grads(model, f"backbone.hf.{model.backbone.spec.vision[0]}.")
    assert vis_with
    emb = model.backbone.embed_tokens.weight
    assert emb.requires_grad == (lora is None)
    with pytest.raises(ValueError, match="the decoder has 3 layers"):
        RoboVLM(PolicyConfig.tiny("llava", size={"layers": 3}, train_text_last_n=4))


@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_tiny_policy_overfits_fixed_batch(space):
    torch.manual_seed(0)
    cfg = PolicyConfig.tiny("llava", action_space=space, window_size=2, fwd_pred_next_n=2, head="mlp",
                            gripper_loss_weight=1.0)
    model = RoboVLM(cfg)
    batch = make_batch(model, b=2, seed=3)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3 if space == "continuous" else 1e-2)
    first = None
    for _ in range(80):
        loss = model(batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, f"loss {first:.4f} -> {loss.item():.4f}"
    # the fitted policy reproduces the batch's actions for the newest frame
    pred = model.predict(batch, normalized=True)
    target = batch["actions"][:, -1]
    assert torch.equal(pred[..., -1], target[..., -1]), "gripper sign not learned"
    tol = 0.15 if space == "continuous" else 2.5 / cfg.n_bins * 2  # a couple of bins
    assert (pred[..., :-1] - target[..., :-1]).abs().max() < tol


def test_action_mask_excludes_steps_past_episode_end():
    model = RoboVLM(PolicyConfig.tiny("paligemma"))
    batch = make_batch(model)
    batch["action_mask"][:, :, -1] = 0
    base = model(batch)["loss"].item()
    batch["actions"][:, :, -1, :6] = 0.99  # change only masked steps
    assert model(batch)["loss"].item() == pytest.approx(base, rel=1e-6)
    batch["actions"][:, :, 0, :6] = 0.99  # change an unmasked step
    assert model(batch)["loss"].item() != pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_vision_language_loss_added_when_asked(space):
    model = RoboVLM(PolicyConfig.tiny("paligemma", action_space=space, vl_loss_ratio=0.5))
    batch = make_batch(model)
    ids, mask = model.processor.text(["a red block on a table", "a drawer"])
    labels = ids.clone()
    labels[mask == 0] = -100
    s = model.config.image_size
    batch.update(vl_rgb=torch.randn(2, 3, s, s), vl_input_ids=ids, vl_attention_mask=mask, vl_labels=labels)
    action_only = model(batch)
    batch["data_source"] = ["action", "vl"]
    both = model(batch)
    assert "loss_vl" not in action_only
    assert both["loss_vl"] > 1.0
    assert both["loss"].item() == pytest.approx((both["loss_action"] + 0.5 * both["loss_vl"]).item(), rel=1e-5)
    batch["data_source"] = "vl"
    vl_only = model(batch)
    assert "loss_action" not in vl_only and vl_only["loss"].item() == pytest.approx(0.5 * both["loss_vl"].item(), rel=1e-5)
    vl_only["loss"].backward()
    assert model.backbone.lm_head.weight.grad.abs().sum() > 0


def test_bad_batches_raise_clear_errors():
    model = RoboVLM(PolicyConfig.tiny("paligemma", use_state=True))
    batch = make_batch(model)
    del batch["hand_rgb"]
    with pytest.raises(ValueError, match="hand_rgb"):
        model(batch)
    batch = make_batch(model)
    del batch["state"]
    with pytest.raises(ValueError, match="state"):
        model(batch)
    batch = make_batch(model)
    batch["data_source"] = "vl"
    with pytest.raises(ValueError, match="vl_rgb"):
        model(batch)


@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_validation_scores_actions_with_one_backbone_pass_where_the_loss_has_them(space):
    """Continuous: the loss pass's newest chunk is predict(normalized=True)'s, and validation runs the
    backbone once per batch; discrete: teacher forcing predicts nothing, validation decodes itself."""
    from robovlm_ros.train.config import OptimConfig
    from robovlm_ros.train.module import PolicyModule

    model = RoboVLM(PolicyConfig.tiny("llava", action_space=space)).eval()
    batch = make_batch(model, b=3)
    with torch.no_grad():
        out = model(batch, return_prediction=True)
        expected = model.predict(batch, normalized=True)
    assert expected.shape == (3, model.config.fwd_pred_next_n, 7)
    if space == "continuous":
        assert torch.equal(out["prediction"], expected)
    else:
        assert "prediction" not in out
    calls = []
    decode = model.backbone.decode  # counted, and still the real model
    model.backbone.decode = lambda *a, **k: (calls.append(1), decode(*a, **k))[1]
    module = PolicyModule(model, OptimConfig())
    module.log = lambda *a, **k: None  # no Trainer attached: logging is not what is tested here
    with torch.no_grad():
        module.validation_step(batch, 0)
    assert module.val_r2.total == 3
    # the scores are those of predict(normalized=True)'s first step
    first, target = expected[:, 0].float(), batch["actions"][:, -1, 0].float()
    assert torch.allclose(module.val_r2.residual, ((first[:, :6] - target[:, :6]) ** 2).sum(0))
    assert module.val_gripper.compute() == ((first[:, 6] > 0) == (target[:, 6] > 0)).float().mean()
    if space == "continuous":
        assert len(calls) == 1
    else:
        assert len(calls) > 1  # the loss pass plus cached greedy decoding
