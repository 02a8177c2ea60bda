"""Training a policy (``robovlm-ros train``): fit, checkpoint resumably, export the policy into
``output_dir`` (its layout is the command's help, commands/train.py)."""
from __future__ import annotations

import os
import sys

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..atomic_io import atomic_file
from ..data.lerobot_reader import LeRobotEpisodes, dataset_stats
from ..model import Normalizer, RoboVLM
from .config import TrainConfig
from .data import PolicyDataModule, seed_everything
from .logs import ProgressLines, ResumableCSVLogger, checkpoint_step
from .module import PolicyModule

EXPORT_DIR = "checkpoint"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each Lightning checkpoint to a temporary file and rename it into place."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = str(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)


def build(cfg: TrainConfig):
    """Policy (normalised with the datasets' statistics), Lightning module and data module."""
    seed_everything(cfg.seed)
    policy_cfg = cfg.model
    sources = [LeRobotEpisodes(d, cfg.data.image_keys) for d in cfg.data.datasets]
    # the statistics travel with the policy: the node unnormalises with exactly these
    normalizer = Normalizer(mode=policy_cfg.norm_mode, clip_bound=policy_cfg.clip_bound, stats=dataset_stats(sources))
    model = RoboVLM(policy_cfg, normalizer=normalizer)
    return model, PolicyModule(model, cfg.optim), PolicyDataModule(cfg.data, model, cfg.seed, sources)


def make_trainer(cfg: TrainConfig, resume_step: int | None = None) -> L.Trainer:
    """``resume_step``: the step of the checkpoint a resumed run continues from (keeps earlier logs)."""
    t, out = cfg.trainer, cfg.output_dir
    if t.logger == "tensorboard":
        logger = L.pytorch.loggers.TensorBoardLogger(out, name="logs", version="")
    elif t.logger == "csv":
        logger = ResumableCSVLogger(out, name="logs", version="", resume_step=resume_step)
    else:
        raise ValueError(f"trainer.logger must be csv or tensorboard, not {t.logger!r}")
    strategy = t.strategy
    if strategy == "ddp":
        # a VLM policy leaves some parameters without gradient in a step (the LM head with continuous
        # actions and no VL batch, vision layers past the selected feature layer); plain DDP rejects
        # that. Name ddp_find_unused_parameters_false explicitly when those parts are frozen.
        strategy = "ddp_find_unused_parameters_true"
    ckpt = ModelCheckpoint(dirpath=os.path.join(out, "checkpoints"), filename="step-{step:06d}",
                           auto_insert_metric_name=False, every_n_train_steps=t.checkpoint_every, save_top_k=-1,
                           save_last=True)
    callbacks = [ckpt, LearningRateMonitor(logging_interval="step")]
    # the bar only where someone watches it; a log file gets a line every log_every steps instead
    progress_bar = t.progress_bar and sys.stderr.isatty()
    if t.progress_bar and not progress_bar:
        callbacks.append(ProgressLines(t.log_every))
    return L.Trainer(
        max_steps=cfg.optim.max_steps, accumulate_grad_batches=cfg.optim.accumulate,
        gradient_clip_val=cfg.optim.grad_clip or None, precision=t.precision, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=strategy, logger=logger,
        callbacks=callbacks, log_every_n_steps=t.log_every,
        # the training stream is endless (see ResumableSampler): validate every N steps, not per epoch
        val_check_interval=(t.val_every or t.checkpoint_every) * cfg.optim.accumulate, check_val_every_n_epoch=None,
        enable_progress_bar=progress_bar, plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
        default_root_dir=out, num_sanity_val_steps=0,
    )


def train(cfg: TrainConfig, resume: bool = False) -> str | None:
    """Train; returns the exported checkpoint directory on the main process (None on other ranks)."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    last = os.path.join(cfg.output_dir, "checkpoints", "last.ckpt")
    if resume and not os.path.exists(last):
        raise FileNotFoundError(f"--resume: no {last} to continue from")
    if not resume and os.path.exists(last):
        raise FileExistsError(f"{cfg.output_dir} already holds a run: pass --resume to continue it, "
                              f"or choose another output_dir")
    model, module, data = build(cfg)
    trainer = make_trainer(cfg, resume_step=checkpoint_step(last) if resume else None)
    if trainer.is_global_zero:
        with open(os.path.join(cfg.output_dir, "train_config.yaml"), "w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
        print(f"data: {data.info}")
    trainer.fit(module, datamodule=data, ckpt_path=last if resume else None)
    if not trainer.is_global_zero:
        return None
    export = os.path.join(cfg.output_dir, EXPORT_DIR)
    model.save_pretrained(export)
    print(f"exported {export}  (ros2 launch robovlm_ros policy.launch.py checkpoint:={os.path.abspath(export)})")
    return export
