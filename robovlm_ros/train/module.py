"""LightningModule around RoboVLM: the loss is the model's, optimisation is AdamW + warmup/cosine."""
from __future__ import annotations

import math

import lightning as L
import torch
from torchmetrics.classification import BinaryAccuracy
from torchmetrics.regression import R2Score

from ..model import RoboVLM
from ..model.adaptation import frozen_matmul_weights_to, restore_weights
from .config import OptimConfig

# autocast's compute dtype per Lightning precision (the mixed ones)
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


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


def plain_parameters(strategy: type) -> bool:
    """Whether a Lightning strategy trains the module's own parameters as they are (one device, DDP), so
    their dtypes are ours to choose; FSDP, DeepSpeed and XLA (DeepSpeed and XLA derive from DDP) hold their
    own copies and precisions."""
    S = L.pytorch.strategies
    names = ("DeepSpeedStrategy", "XLAStrategy", "SingleDeviceXLAStrategy", "FSDPStrategy", "ModelParallelStrategy")
    own = tuple(c for c in (getattr(S, n, None) for n in names) if c)
    return issubclass(strategy, (S.SingleDeviceStrategy, S.DDPStrategy)) and not issubclass(strategy, own)


class _RestoreOnException(L.Callback):
    def on_exception(self, trainer, module, exception) -> None:
        module.restore_frozen_weights()


class PolicyModule(L.LightningModule):
    def __init__(self, policy: RoboVLM, optim: OptimConfig, frozen_in_compute_dtype: bool = True):
        super().__init__()
        self.policy, self.optim = policy, optim
        self.frozen_in_compute_dtype = frozen_in_compute_dtype
        self._converted: list = []  # frozen weights stored in the compute dtype while fitting
        self.batches_seen = 0  # where the sample stream stands, for an exact resume (see ResumableSampler)
        # how well held-out actions are predicted, scale-free: the loss cannot say whether 0.03 is good,
        # R^2 per arm dimension can (0 = no better than the mean action, 1 = exact); the gripper is +-1
        self.val_r2 = R2Score(multioutput="raw_values")
        self.val_gripper = BinaryAccuracy()

    def setup(self, stage: str) -> None:
        # before the strategy wraps the model and moves it to its device, and before a resumed run's weights are
        # restored into it. Sharded strategies (FSDP, DeepSpeed) keep their own parameter dtypes: left to them.
        self.restore_frozen_weights()  # a fit before this one that ended in an exception
        dtype = AUTOCAST_DTYPES.get(str(self.trainer.precision))
        if (stage == "fit" and self.frozen_in_compute_dtype and dtype is not None
                and plain_parameters(type(self.trainer.strategy))):
            self._converted = frozen_matmul_weights_to(self.policy, dtype)
            n = sum(p.numel() for p, _ in self._converted)
            if n:
                self.print(f"frozen linear/conv weights kept in {str(dtype).removeprefix('torch.')} while training: "
                           f"{n / 1e6:.1f} M values, {n * 2 / 1e9:.2f} GB less device memory than in float32 "
                           f"(the float32 originals wait in host memory)")

    def restore_frozen_weights(self) -> None:
        """The frozen weights' float32 originals back (after a fit, or one that failed): the policy computes and
        exports as before training, the frozen weights unrounded."""
        restore_weights(self._converted)
        self._converted = []

    def on_fit_end(self) -> None:
        self.restore_frozen_weights()

    def configure_callbacks(self):
        return [_RestoreOnException()]  # Lightning calls on_exception on callbacks, not on the module

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
        out = self.policy(batch, return_prediction=True)
        chunk = out.pop("prediction", None)  # continuous: from the loss pass, no second backbone run
        if chunk is None:
            chunk = self.policy.predict(batch, normalized=True)
        self._log_parts(out, "val", batch["rgb"].shape[0])
        # the action the robot would execute next: first step of the newest frame's chunk, normalised
        pred = chunk[:, 0].float()  # [B, 7]
        target = batch["actions"][:, -1, 0].float()  # [B, 7]
        valid = batch["action_mask"][:, -1, 0].bool()
        if valid.any():
            self.val_r2.update(pred[valid, :6], target[valid, :6])
            self.val_gripper.update((pred[valid, 6] > 0).long(), (target[valid, 6] > 0).long())

    def on_validation_epoch_end(self) -> None:
        if self.val_r2.total >= 2:  # R^2 needs two samples (a validation run can be shorter)
            r2 = self.val_r2.compute()  # compute() syncs across processes itself
            self.log("val/r2_arm", r2.mean(), sync_dist=False)
            for i, v in enumerate(r2):
                self.log(f"val/r2_arm{i}", v, sync_dist=False)
            self.log("val/gripper_accuracy", self.val_gripper.compute(), sync_dist=False)
        self.val_r2.reset()
        self.val_gripper.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["robovlm_ros"] = {"batches_seen": self.batches_seen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.batches_seen = checkpoint.get("robovlm_ros", {}).get("batches_seen", 0)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.optim.lr, betas=self.optim.betas, weight_decay=self.optim.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.optim))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
