"""Training configuration (YAML or JSON): model, data, optim, trainer sections; see config/train/."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import yaml

from ..data.layout import IMAGE_KEYS
from ..model import PolicyConfig


@dataclass
class DataConfig:
    datasets: list[str] = field(default_factory=list)  # LeRobot v3 dataset directories (convert's or LeRobot's)
    # the dataset features the policy's cameras read: static camera (rgb) and gripper camera (hand_rgb)
    image_keys: dict[str, str] = field(default_factory=lambda: dict(IMAGE_KEYS))
    val_fraction: float = 0.1     # share of episodes held out for validation (split by episode)
    batch_size: int = 8
    num_workers: int = 0
    shift_pad: int = 0            # random-shift image augmentation, pixels (0 = off)
    vl_datasets: list[str] = field(default_factory=list)  # optional co-training captions/VQA (JSON lines)


@dataclass
class OptimConfig:
    lr: float = 2e-5              # RoboVLMs' default
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: str = "constant"    # constant | cosine (after warmup)
    min_lr_ratio: float = 0.0     # cosine floor, as a fraction of lr
    grad_clip: float = 1.0
    accumulate: int = 1           # gradient accumulation (batches per optimiser step)
    max_steps: int = 1000         # optimiser steps


@dataclass
class TrainerConfig:
    precision: str = "32-true"    # 32-true | bf16-mixed | 16-mixed
    # mixed precision: frozen linear/conv weights stored in the compute dtype (the values autocast uses
    # anyway; half their memory). Not with FSDP / DeepSpeed, which keep their own dtypes
    frozen_in_compute_dtype: bool = True
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"        # auto | ddp | fsdp | deepspeed_stage_2 ... (passed to Lightning)
    logger: str = "csv"           # csv | tensorboard
    log_every: int = 10
    val_every: int = 0            # optimiser steps between validations (0 = at every checkpoint)
    checkpoint_every: int = 100   # optimiser steps between resumable checkpoints
    progress_bar: bool = True     # on a terminal; other output gets a line every log_every steps


@dataclass
class TrainConfig:
    model: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output_dir: str = "runs/robovlm"
    seed: int = 0
    # a robovlm_ros checkpoint to fine-tune (one ``train`` exported, or ``import-robovlms`` wrote): the policy
    # is the checkpoint's, the ``model`` section only changes how it trains (freezing, LoRA, checkpointing)
    init_checkpoint: str | None = None

    def to_dict(self) -> dict:
        """Everything as plain data; ``train_config_from_dict`` reads it back (the model section then
        holds the resolved PolicyConfig, backbone architecture included)."""
        return dataclasses.asdict(self)


SECTIONS = {"model", "data", "optim", "trainer", "output_dir", "seed", "init_checkpoint"}
# what the model section may change about a policy fine-tuned from init_checkpoint: how it trains, not
# what it is (the weights must fit)
FINETUNE_FIELDS = {"freeze_backbone", "train_text_last_n", "train_vision", "lora", "gradient_checkpointing",
                   "gripper_loss_weight", "arm_loss", "vl_loss_ratio", "extra"}


def policy_config(model: dict) -> PolicyConfig:
    """The ``model`` section: PolicyConfig fields; ``tiny: true`` (+ ``size``: tiny, small, a mapping or a
    real-size preset) builds a random-weight backbone of ``backbone``'s family (PolicyConfig.tiny)."""
    model = dict(model)
    if model.pop("tiny", False):
        backbone = model.pop("backbone", None)
        return PolicyConfig.tiny(backbone, size=model.pop("size", "tiny"), **model)
    if "size" in model:
        raise ValueError("model.size only applies to tiny (random-weight) backbones")
    return PolicyConfig.from_dict(model)


def finetune_policy_config(checkpoint: str, model: dict) -> PolicyConfig:
    """The checkpoint's PolicyConfig with the training fields of the ``model`` section."""
    from ..model.checkpoint import read_config

    other = sorted(set(model) - FINETUNE_FIELDS)
    if other:
        raise ValueError(f"with init_checkpoint the policy is the checkpoint's; the model section may only set "
                         f"{sorted(FINETUNE_FIELDS)}, not {other}")
    return PolicyConfig.from_dict({**read_config(checkpoint).to_dict(), **model})


def _section(cls, data: dict | None, name: str):
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown keys in '{name}': {sorted(unknown)} (allowed: {sorted(names)})")
    if "betas" in data:
        data["betas"] = tuple(data["betas"])
    return cls(**data)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``SECTION.KEY=VALUE`` strings (values in YAML syntax) over a raw configuration; a copy."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        path, sep, value = text.partition("=")
        section, _, key = path.partition(".")
        if not sep or section not in SECTIONS:
            raise ValueError(f"--set {text!r}: expected SECTION.KEY=VALUE with SECTION one of {sorted(SECTIONS)}")
        if key:
            raw.setdefault(section, {})[key] = yaml.safe_load(value)
        else:
            raw[section] = yaml.safe_load(value)
    return raw


def train_config_from_dict(raw: dict, base_dir: str = ".", source: str = "config") -> TrainConfig:
    """A checked TrainConfig; relative dataset paths are taken relative to ``base_dir``."""
    unknown = set(raw) - SECTIONS
    if unknown:
        raise ValueError(f"{source}: unknown sections {sorted(unknown)}")
    data, optim = _section(DataConfig, raw.get("data"), "data"), _section(OptimConfig, raw.get("optim"), "optim")
    trainer = _section(TrainerConfig, raw.get("trainer"), "trainer")
    absolute = lambda paths: [d if os.path.isabs(d) else os.path.normpath(os.path.join(base_dir, d)) for d in paths]  # noqa: E731
    init = raw.get("init_checkpoint")
    if init:
        init = absolute([init])[0]
        model = finetune_policy_config(init, raw.get("model") or {})
    else:
        model = policy_config(raw.get("model") or {})
    cfg = TrainConfig(model=model, data=data, optim=optim, trainer=trainer, init_checkpoint=init,
                      output_dir=raw.get("output_dir", "runs/robovlm"), seed=int(raw.get("seed", 0)))
    cfg.data.datasets, cfg.data.vl_datasets = absolute(cfg.data.datasets), absolute(cfg.data.vl_datasets)
    if not cfg.data.datasets:
        raise ValueError(f"{source}: data.datasets is empty")
    if cfg.optim.schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.schedule must be constant or cosine, not {cfg.optim.schedule!r}")
    return cfg


def load_train_config(path: str, overrides: list[str] = ()) -> TrainConfig:
    """A training config file (YAML or JSON) with ``--set`` overrides; dataset paths relative to the
    file, like most tools."""
    with open(path) as f:
        raw = (json.load(f) if path.endswith(".json") else yaml.safe_load(f)) or {}
    return train_config_from_dict(apply_overrides(raw, list(overrides)), os.path.dirname(os.path.abspath(path)), path)
