"""Training configuration (YAML or JSON): model, data, optim, trainer sections; see config/train/."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import yaml

from ..model import PolicyConfig


@dataclass
class DataConfig:
    datasets: list[str] = field(default_factory=list)  # LeRobot v3 dataset directories (robovlm-ros convert)
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
    model: dict = field(default_factory=dict)  # PolicyConfig fields; "tiny": true (+ "size") = random weights
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output_dir: str = "runs/robovlm"
    seed: int = 0

    def policy_config(self) -> PolicyConfig:
        model = dict(self.model)
        if model.pop("tiny", False):
            backbone = model.pop("backbone", "paligemma")
            return PolicyConfig.tiny(backbone, size=model.pop("size", "tiny"), **model)
        if "size" in model:
            raise ValueError("model.size only applies to tiny (random-weight) backbones")
        return PolicyConfig(**model)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _section(cls, data: dict | None, name: str):
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown keys in '{name}': {sorted(unknown)} (allowed: {sorted(names)})")
    if "betas" in data:
        data["betas"] = tuple(data["betas"])
    return cls(**data)


def load_train_config(path: str) -> TrainConfig:
    with open(path) as f:
        raw = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    raw = raw or {}
    unknown = set(raw) - {"model", "data", "optim", "trainer", "output_dir", "seed"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
    base = os.path.dirname(os.path.abspath(path))
    cfg = TrainConfig(model=dict(raw.get("model") or {}), data=_section(DataConfig, raw.get("data"), "data"),
                      optim=_section(OptimConfig, raw.get("optim"), "optim"),
                      trainer=_section(TrainerConfig, raw.get("trainer"), "trainer"),
                      output_dir=raw.get("output_dir", "runs/robovlm"), seed=int(raw.get("seed", 0)))
    # relative dataset paths are relative to the config file, like most tools do
    absolute = lambda paths: [d if os.path.isabs(d) else os.path.normpath(os.path.join(base, d)) for d in paths]  # noqa: E731
    cfg.data.datasets, cfg.data.vl_datasets = absolute(cfg.data.datasets), absolute(cfg.data.vl_datasets)
    if not cfg.data.datasets:
        raise ValueError(f"{path}: data.datasets is empty")
    if cfg.optim.schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.schedule must be constant or cosine, not {cfg.optim.schedule!r}")
    cfg.policy_config()  # validate the model section now, not after loading data
    return cfg
