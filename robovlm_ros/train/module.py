"""LightningModule around RoboVLM: the loss is the model's, optimisation is AdamW + warmup/cosine."""
from __future__ import annotations

import math

import lightning as L
import torch

from ..model import RoboVLM
from .config import OptimConfig


def lr_lambda(optim: OptimConfig):
    """Multiplier of the base lr at optimiser step s: linear warmup, then constant or cosine decay."""
    def f(step: int) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, optim.max_steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


class PolicyModule(L.LightningModule):
    def __init__(self, policy: RoboVLM, optim: OptimConfig):
        super().__init__()
        self.policy, self.optim = policy, optim
        self.batches_seen = 0  # where the sample stream stands, for an exact resume (see ResumableSampler)

    def forward(self, batch):
        return self.policy(batch)

    def _log_parts(self, out: dict, prefix: str, batch_size: int) -> None:
        for k, v in out.items():
            self.log(f"{prefix}/{k}", v.detach().float(), batch_size=batch_size, sync_dist=prefix == "val",
                     prog_bar=k == "loss", on_step=prefix == "train", on_epoch=prefix == "val")

    def training_step(self, batch, batch_idx):
        # counted here, not in on_train_batch_end: ModelCheckpoint saves in its own on_train_batch_end,
        # which runs before the module's, and the saved position must include this batch
        self.batches_seen += 1
        out = self.policy(batch)
        self._log_parts(out, "train", batch["rgb"].shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        self._log_parts(self.policy(batch), "val", batch["rgb"].shape[0])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["robovlm_ros"] = {"batches_seen": self.batches_seen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.batches_seen = checkpoint.get("robovlm_ros", {}).get("batches_seen", 0)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.optim.lr, betas=self.optim.betas, weight_decay=self.optim.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.optim))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
