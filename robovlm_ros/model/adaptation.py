"""What trains: backbone freezing, last-N decoder layers, vision on/off, LoRA, gradient checkpointing.

Rules (PolicyConfig fields):
  * parts RoboVLM adds (action tokens, state encoder, resampler, image start/end, head) always train;
  * the language model (embeddings, decoder, lm_head) trains unless ``freeze_backbone`` or ``lora``;
  * ``train_text_last_n`` restricts the decoder layers that train to the last N (RoboVLMs'
    ``train_decoder_layers``): the earlier layers freeze in a trained language model, the last N
    unfreeze in a frozen / LoRA one;
  * the vision encoder + projector train iff ``train_vision`` (and the backbone is not frozen);
  * ``lora`` injects peft LoRA adapters into every linear layer of the language model and trains
    only those (plus the rules above);
  * ``gradient_checkpointing`` turns on transformers' non-reentrant checkpointing of each layer
    (activations are recomputed in backward; only active in train mode).

Under mixed precision, training stores frozen matrix weights in the compute dtype
(``frozen_matmul_weights_to``): the values autocast would compute with anyway, in half the memory.
"""
from __future__ import annotations

import torch
from torch import nn

# the modules whose weights autocast casts to its dtype at every use (matrix products and convolutions)
_AUTOCAST_CAST = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _set(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def lora_target_modules(language_model: nn.Module) -> list[str]:
    """Names (leaf) of all linear layers of the decoder, e.g. q_proj ... down_proj."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in language_model.named_modules() if isinstance(m, nn.Linear)})


def inject_lora(language_model: nn.Module, lora: dict) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(
        r=int(lora.get("r", 16)), lora_alpha=int(lora.get("alpha", 2 * int(lora.get("r", 16)))),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora.get("target_modules") or lora_target_modules(language_model),
    )
    inject_adapter_in_model(cfg, language_model)


def apply_adaptation(model) -> None:
    """Apply the config's freezing / LoRA / checkpointing to a freshly built RoboVLM (in place)."""
    cfg, bb = model.config, model.backbone
    if cfg.lora:
        inject_lora(bb.language_model, cfg.lora)
    frozen_lm = cfg.freeze_backbone or bool(cfg.lora)
    _set(bb, not frozen_lm)
    for vision in bb.vision_modules:
        _set(vision, cfg.train_vision and not cfg.freeze_backbone)
    if cfg.lora:
        for name, p in bb.language_model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    if cfg.train_text_last_n:
        layers = bb.decoder_layers
        if not 0 < cfg.train_text_last_n <= len(layers):
            raise ValueError(f"train_text_last_n={cfg.train_text_last_n}: the decoder has {len(layers)} layers")
        for i, layer in enumerate(layers):
            _set(layer, i >= len(layers) - cfg.train_text_last_n)
    if cfg.gradient_checkpointing:
        # non-reentrant: works when no decoder input requires grad (frozen embeddings)
        bb.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def frozen_matmul_weights_to(model: nn.Module, dtype: torch.dtype) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Store the frozen weights (and biases) of linear and convolution layers in ``dtype``; returns each
    converted parameter with its former tensor, on the CPU (``restore_weights`` puts it back). Under autocast
    to ``dtype`` this changes no value the model computes: autocast rounds these weights to ``dtype`` at every
    use, the same rounding, while float32 copies of weights that never train cost twice the device memory
    and a cast per use. A weight another kind of module shares (a language-model head tied to the embedding
    table) stays as it is: the other module computes with it unrounded. Only for training under autocast:
    outside it a linear layer would get inputs of another dtype."""
    owners: dict[int, set] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(isinstance(module, _AUTOCAST_CAST))
    converted = []
    for module in model.modules():
        if not isinstance(module, _AUTOCAST_CAST):
            continue
        for p in module.parameters(recurse=False):
            if not p.requires_grad and p.is_floating_point() and p.dtype != dtype and owners[id(p)] == {True}:
                converted.append((p, p.data.to("cpu")))  # no copy when built on the CPU, as training does
                p.data = p.data.to(dtype)
    return converted


def restore_weights(converted: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Undo ``frozen_matmul_weights_to``: each parameter gets its former tensor back, on its current device."""
    for p, original in converted:
        p.data = original.to(p.device)
