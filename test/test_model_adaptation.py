"""LoRA, freezing and gradient checkpointing."""
import pytest
import torch
from torch import nn

from conftest import ALL_FAMILIES, make_batch
from robovlm_ros.model import PolicyConfig, RoboVLM
from robovlm_ros.model.adaptation import frozen_matmul_weights_to

OWN_MODULES = ("action_tokens", "head.", "state_", "resampler.", "image_start_end")


@pytest.mark.parametrize("family", ["paligemma", "qwen2_vl", "kosmos2"])
@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_lora_trains_only_adapters_and_head(family, space):
    cfg = PolicyConfig.tiny(family, action_space=space, use_state=True, train_vision=False,
                            lora={"r": 4, "alpha": 8})
    model = RoboVLM(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name in trainable:
        assert "lora_" in name or name.startswith(OWN_MODULES), f"{name} should be frozen under LoRA"
    lora = [n for n in trainable if "lora_" in n]
    # every linear layer of the decoder got an adapter: q, k, v, o and the MLP projections
    n_layers = len(model.backbone.decoder_layers)
    assert len(lora) >= 2 * 6 * n_layers
    model(make_batch(model))["loss"].backward()
    lora_b_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert all(g is not None for g in lora_b_grads) and sum(g.abs().sum() for g in lora_b_grads) > 0
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad


def test_lora_starts_as_the_base_model():
    """LoRA B is zero-initialised: injecting adapters must not change the policy's output."""
    torch.manual_seed(0)
    base = RoboVLM(PolicyConfig.tiny("llava")).eval()
    torch.manual_seed(0)
    lora = RoboVLM(PolicyConfig.tiny("llava", lora={"r": 4})).eval()
    lora.load_state_dict(base.state_dict(), strict=False)
    batch = make_batch(base)
    torch.testing.assert_close(lora.predict(batch, normalized=True), base.predict(batch, normalized=True))


@pytest.mark.parametrize("family", ["llava", "idefics3", "kosmos2"])
def test_gradient_checkpointing_recomputes_with_same_loss_and_grads(family):
    torch.manual_seed(0)
    plain = RoboVLM(PolicyConfig.tiny(family, use_state=True))
    torch.manual_seed(0)
    ckpt = RoboVLM(PolicyConfig.tiny(family, use_state=True, gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    batch = make_batch(plain)

    def run(model):
        calls = []
        # transformers checkpoints the layer's forward (hooks on the layer itself run once), so count
        # calls of a linear layer inside it: a recompute runs it again during backward
        inner = next(m for m in model.backbone.decoder_layers[0].modules() if isinstance(m, torch.nn.Linear))
        hook = inner.register_forward_hook(lambda *a: calls.append(1))
        model.train()
        model.zero_grad()
        loss = model(batch)["loss"]
        forward_calls = len(calls)
        loss.backward()
        hook.remove()
        return loss.detach(), forward_calls, len(calls), {n: p.grad.clone() for n, p in model.named_parameters()
                                                          if p.grad is not None}

    loss_a, fwd_a, total_a, grads_a = run(plain)
    loss_b, fwd_b, total_b, grads_b = run(ckpt)
    assert fwd_a == fwd_b == 1
    assert total_a == 1 and total_b == 2, "checkpointed layer was not recomputed in backward"
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_vision_frozen_language_model_trained():
    model = RoboVLM(PolicyConfig.tiny("paligemma", train_vision=False))
    model(make_batch(model))["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("backbone.hf.model.vision_tower", "backbone.hf.model.multi_modal_projector")):
            assert not p.requires_grad and p.grad is None
    assert model.backbone.decoder_layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def _autocast_lora_losses(family, store_frozen_in=None, steps=3):
    """Losses of ``steps`` LoRA steps under CPU bf16 autocast (what bf16-mixed training runs), the frozen
    linear / conv weights first stored in ``store_frozen_in`` if given."""
    torch.manual_seed(0)
    model = RoboVLM(PolicyConfig.tiny(family, use_hand_rgb=True, use_state=True, lora={"r": 4},
                                      train_vision=False)).train()
    converted = frozen_matmul_weights_to(model, store_frozen_in) if store_frozen_in else []
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = make_batch(model, b=2)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, model, converted


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_frozen_matrix_weights_stored_in_bf16_train_as_autocast_does(family):
    """bf16-mixed training keeps frozen linear / conv weights in bf16 (train/module.py): the values autocast
    rounds them to at every use, so the losses are those of the fp32 weights, bit for bit."""
    reference, _, _ = _autocast_lora_losses(family)
    losses, model, converted = _autocast_lora_losses(family, torch.bfloat16)
    assert losses == reference
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    shared = {id(p) for m in model.modules() if not isinstance(m, kinds) for p in m.parameters(recurse=False)}
    frozen = {id(p) for m in model.modules() if isinstance(m, kinds) for p in m.parameters(recurse=False)
              if not p.requires_grad and id(p) not in shared}  # a tied LM head (Kosmos-2) is shared
    assert {id(p) for p, _ in converted} == frozen
    assert all(p.dtype == torch.bfloat16 and old.dtype == torch.float32 and torch.equal(p, old.to(p.dtype))
               for p, old in converted)  # the float32 originals kept, to be restored
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # LoRA, head: fp32
    norms = [p for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.Embedding)) for p in m.parameters()]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    if family == "paligemma":  # a rounding autocast does not do changes them: the equality is not vacuous
        assert _autocast_lora_losses(family, torch.float16)[0] != reference


def test_a_weight_shared_with_an_embedding_stays_in_float32():
    """A language-model head tied to the embedding table: the embedding looks rows up unrounded, outside
    autocast's casts, so the shared weight keeps its dtype; trainable weights keep theirs."""
    emb, head, other, trained = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(4, 4), nn.Linear(4, 4)
    head.weight = emb.weight
    model = nn.ModuleDict(dict(emb=emb, head=head, other=other, trained=trained)).requires_grad_(False)
    trained.requires_grad_(True)
    converted = frozen_matmul_weights_to(model, torch.bfloat16)
    assert {id(p) for p, _ in converted} == {id(other.weight), id(other.bias)}
    assert other.weight.dtype == other.bias.dtype == torch.bfloat16
    assert emb.weight.dtype == head.weight.dtype == trained.weight.dtype == torch.float32
