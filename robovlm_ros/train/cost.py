"""What a training step costs: time and peak GPU memory of real Lightning steps, and the activation bytes a
forward pass keeps for backward (what gradient checkpointing saves, measurable on any device).

``robovlm-ros bench --training`` reports them for a policy built from a preset with random weights
(issue 15: PaliGemma-3B with LoRA, gradient checkpointing and bf16-mixed; full fine-tuning with FSDP).
"""
from __future__ import annotations

import time

import lightning as L
import torch

from ..model import PolicyConfig, RoboVLM
from ..model.synthetic import synthetic_batch
from .config import OptimConfig
from .module import PolicyModule


def saved_activation_bytes(model: RoboVLM, batch: dict) -> int:
    """Bytes of the tensors one training forward keeps for its backward pass, parameters not counted
    (each storage once). Gradient checkpointing keeps only the checkpointed layers' inputs."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return total


class _StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []
        self.parameter_bytes = self.frozen_converted = 0

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_start(self, trainer, module) -> None:
        # what the parameters occupy while training (frozen weights may be stored in the compute dtype)
        self.parameter_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        self.frozen_converted = sum(p.numel() for p, _ in module._converted)  # 0 where it does not apply (FSDP)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._sync(trainer)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync(trainer)
        self.times.append(time.perf_counter() - self._t0)


def training_cost(config: PolicyConfig, batch_size: int, steps: int = 5, device: str = "cpu",
                  precision: str = "32-true", strategy: str = "auto", frozen_in_compute_dtype: bool = True) -> dict:
    """``steps`` optimiser steps of the policy ``config`` builds, on synthetic batches, through the same
    LightningModule as ``robovlm-ros train``: step times (the first step, with its one-off setup, left out)
    and, on CUDA, the peak memory allocated."""
    cuda = device.startswith("cuda")
    with torch.device(device if cuda else "cpu"):  # a 3 B policy is built where it trains
        model = RoboVLM(config)
    batches = [synthetic_batch(model, batch_size=batch_size, seed=i) for i in range(steps)]
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    module = PolicyModule(model, OptimConfig(lr=1e-5, max_steps=steps), frozen_in_compute_dtype)
    timer = _StepTimer()
    trainer = L.Trainer(max_steps=steps, accelerator="cuda" if cuda else "cpu", devices=1, precision=precision,
                        strategy=strategy, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
                        use_distributed_sampler=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    # step times in seconds, the first (one-off setup) left out; bench turns them into percentiles
    out = {"steps": trainer.global_step, "step_s": timer.times[1:] or timer.times,
           "parameters": n_params, "trainable_parameters": n_train, "batch_size": batch_size,
           "window": config.window_size, "precision": precision, "strategy": strategy,
           "gradient_checkpointing": config.gradient_checkpointing, "lora": config.lora,
           "frozen_values_in_compute_dtype": timer.frozen_converted, "parameter_gb": timer.parameter_bytes / 1e9,
           "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
    return out
