"""Datasets, the episode split and a sampler that resumes mid-epoch exactly."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..data.dataset import Collate, WindowDataset
from ..data.lerobot_reader import LeRobotEpisodes
from ..data.vl import PairedDataset, VLDataset
from .config import DataConfig


class ResumableSampler(Sampler[int]):
    """An endless stream of sample indices: pass e reads a fresh permutation seeded by (seed, e).

    It can start at any position of the stream, so a resumed run reads exactly the samples the
    uninterrupted run would have read next (training is bounded by max_steps, not by epochs). Each
    rank reads its own equal share of every permutation.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start
        self.per_pass = n // world

    def __iter__(self):
        position = self.start
        while True:
            epoch, offset = divmod(position, self.per_pass)
            share = np.random.default_rng([self.seed, epoch]).permutation(self.n)[
                self.rank * self.per_pass : (self.rank + 1) * self.per_pass]
            for i in share[offset:].tolist():
                yield i
            position = (epoch + 1) * self.per_pass


def split_episodes(sources: list[LeRobotEpisodes], val_fraction: float, seed: int):
    """(train, val) lists of (source, episode); at least one of each when there are 2+ episodes."""
    all_eps = [(si, ei) for si, s in enumerate(sources) for ei in range(len(s.episodes))]
    order = np.random.default_rng(seed).permutation(len(all_eps))
    n_val = int(round(val_fraction * len(all_eps)))
    if val_fraction > 0 and len(all_eps) > 1:
        n_val = min(max(1, n_val), len(all_eps) - 1)
    val = sorted(all_eps[i] for i in order[:n_val])
    train = sorted(all_eps[i] for i in order[n_val:])
    return train, val


class PolicyDataModule(L.LightningDataModule):
    """Episodes, statistics and the split are made at construction (identically on every rank);
    the loaders are made once Lightning knows this process's rank and any resume position."""

    def __init__(self, cfg: DataConfig, model, seed: int, sources: list[LeRobotEpisodes]):
        super().__init__()
        self.cfg, self.model, self.seed, self.sources = cfg, model, seed, sources
        self.train_eps, self.val_eps = split_episodes(self.sources, cfg.val_fraction, seed)
        c = model.config
        windows = self._windows(self.train_eps, cfg.shift_pad)
        vl = VLDataset(cfg.vl_datasets, model.processor) if cfg.vl_datasets else None
        # multi-task: every action batch also carries a caption/VQA batch
        self.train_ds = PairedDataset(windows, vl, seed) if vl else windows
        self.val_ds = self._windows(self.val_eps, 0) if self.val_eps else None
        self.collate = Collate(model.processor)
        self.info = {"train_episodes": len(self.train_eps), "val_episodes": len(self.val_eps),
                     "train_windows": len(self.train_ds), "window": c.window_size,
                     "episodes_shorter_than_window": windows.too_short, "vl_samples": len(vl) if vl else 0}

    def _windows(self, episodes, shift):
        c = self.model.config
        return WindowDataset(self.sources, episodes, self.model.processor, c.window_size, c.fwd_pred_next_n,
                             c.use_hand_rgb, shift, self.seed)

    def train_dataloader(self):
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(self.train_ds) < self.cfg.batch_size * world:
            raise ValueError(f"only {len(self.train_ds)} training windows for batch size {self.cfg.batch_size} x "
                             f"{world} processes: record more or longer episodes, or lower batch_size")
        batches_seen = getattr(self.trainer.lightning_module, "batches_seen", 0)  # > 0 after a resume
        sampler = ResumableSampler(len(self.train_ds), self.seed, rank, world, start=batches_seen * self.cfg.batch_size)
        return DataLoader(self.train_ds, batch_size=self.cfg.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.cfg.num_workers, collate_fn=self.collate,
                          persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self):
        if not self.val_ds or not len(self.val_ds):
            return []
        return DataLoader(self.val_ds, batch_size=self.cfg.batch_size, shuffle=False,
                          num_workers=self.cfg.num_workers, collate_fn=self.collate)


def seed_everything(seed: int) -> None:
    L.seed_everything(seed, workers=True, verbose=False)
    torch.manual_seed(seed)
