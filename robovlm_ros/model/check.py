"""Does a backbone train, decode and round-trip as a policy on this machine (``robovlm-ros check``)?

``check_policy`` builds the policy, fits a fixed synthetic batch for a few steps (the loss must
fall), compares KV-cached with uncached decoding (discrete) and save -> load actions.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from .config import PolicyConfig
from .robovlm import RoboVLM
from .synthetic import synthetic_batch


def check_policy(config: PolicyConfig, steps: int, lr: float, device: str = "cpu", batch_size: int = 2) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = RoboVLM(config).to(device)
    build_s = time.perf_counter() - t0
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in synthetic_batch(model, batch_size, seed=1).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    step_s = (time.perf_counter() - t0) / max(steps, 1)
    model.eval()
    query = {k: v for k, v in batch.items() if k != "actions"}
    result = {
        "backbone": config.backbone, "action_space": config.action_space, "history": config.history_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "loss_first": losses[0], "loss_last": losses[-1], "loss_ratio": losses[0] / max(losses[-1], 1e-12),
        "build_s": build_s, "train_step_s": step_s,
    }
    if config.action_space == "discrete":
        result["kv_cache_exact"] = bool(torch.equal(model.predict(query, normalized=True, use_cache=True),
                                                    model.predict(query, normalized=True, use_cache=False)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt")
        model.save_pretrained(path)
        loaded = RoboVLM.from_pretrained(path, map_location=device)
        result["save_load_exact"] = bool(torch.equal(loaded.predict(query), model.predict(query)))
    return result
