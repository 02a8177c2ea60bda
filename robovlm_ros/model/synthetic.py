"""Synthetic batches in RoboVLMs keys, for smoke checks (``robovlm-ros check``) and tests."""
from __future__ import annotations

import torch

INSTRUCTIONS = ("pick up the red block", "open the drawer", "push the blue cube to the left side")


def synthetic_batch(model, batch_size: int = 2, seed: int = 0, instructions=None) -> dict:
    """A normalised random batch matching ``model.config`` (window, chunk, image size, state), on the
    model's device (drawn on the CPU, so a seed gives the same batch on every device)."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    b, w, s, n = batch_size, c.window_size, c.image_size, c.fwd_pred_next_n
    texts = list(instructions or (INSTRUCTIONS * (b // len(INSTRUCTIONS) + 1))[:b])
    ids, mask = model.processor.text(texts)
    sign = lambda *shape: torch.where(torch.rand(*shape, generator=g) > 0.5, 1.0, -1.0)  # noqa: E731
    batch = {
        "rgb": torch.randn(b, w, 3, s, s, generator=g),
        "hand_rgb": torch.randn(b, w, 3, s, s, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "state": torch.cat([torch.randn(b, w, c.arm_dim, generator=g), sign(b, w, 1)], -1),
        "actions": torch.cat([torch.rand(b, w, n, c.arm_dim, generator=g) * 2 - 1, sign(b, w, n, 1)], -1),
        "action_mask": torch.ones(b, w, n),
        "data_source": "action",
    }
    device = next(model.parameters()).device
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
