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
    normalizer = Normalizer(mode=policy_cfg.norm_mode, clip_bound=policy_cfg.clip_bound, clip_low=policy_cfg.clip_low,
                            stats=dataset_stats(sources))
    if cfg.init_checkpoint:
        model = finetune_from(cfg.init_checkpoint, policy_cfg, normalizer)
    else:
        model = RoboVLM(policy_cfg, normalizer=normalizer)
    return model, PolicyModule(model, cfg.optim, cfg.trainer.frozen_in_compute_dtype), PolicyDataModule(cfg.data, model, cfg.seed, sources)


def finetune_from(checkpoint: str, policy_cfg, normalizer: Normalizer) -> RoboVLM:
    """The checkpoint's policy with ``policy_cfg``'s training setup. Its arm normalisation (mode and
    bounds: what the head's outputs mean) is kept; the statistics are the new datasets'."""
    base = RoboVLM.from_pretrained(checkpoint)
    old = base.normalizer
    if old.mode == "quantile":
        normalizer.stats.setdefault("action", {}).update({k: v for k, v in old.stats.get("action", {}).items()
                                                          if k in ("q01", "q99")})
    normalizer.mode, normalizer.clip_bound, normalizer.clip_low = old.mode, old.clip_bound, old.clip_low
    model = RoboVLM(policy_cfg, tokenizer=base.tokenizer, normalizer=normalizer, load_backbone_weights=False)
    ours = model.state_dict()
    state = {}
    for k, v in base.state_dict().items():
        if k not in ours:  # a linear layer LoRA wraps keeps its weights as base_layer.*
            stem, _, leaf = k.rpartition(".")
            k = f"{stem}.base_layer.{leaf}"
        state[k] = v
    missing = [k for k in set(ours) - set(state) if "lora_" not in k]
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: weights do not fit the fine-tuning policy (missing {sorted(missing)[:4]}, "
                         f"unexpected {unexpected[:4]})")
    model.load_state_dict(state, strict=False)
    return model


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
