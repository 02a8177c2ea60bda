"""Training windows from LeRobot v3 datasets (``robovlm-ros convert``'s or LeRobot's own).

A sample is a window of ``window_size`` consecutive frames of one episode; frame t carries the
``fwd_pred_next_n`` actions a[t], ..., a[t+n-1], masked where they would run past the episode end
(RoboVLMs' layout). Images, states and actions go through the model's own preprocessing.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .lerobot_reader import LeRobotEpisodes
from .vl import tokenize_vl


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """[W, 3, S, S] -> same size, shifted by up to ``pad`` pixels (edge padding); one shift per window."""
    s = images.shape[-1]
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy:dy + s, dx:dx + s]


class WindowDataset(Dataset):
    def __init__(self, sources: list[LeRobotEpisodes], episodes: list[tuple[int, int]], processor, window: int,
                 chunk: int, use_hand_rgb: bool, shift_pad: int = 0, seed: int = 0):
        self.sources, self.processor = sources, processor
        self.window, self.chunk, self.use_hand, self.shift_pad, self.seed = window, chunk, use_hand_rgb, shift_pad, seed
        self.index = []  # (source, episode, start frame)
        self.too_short = 0
        for si, ei in episodes:
            ep = sources[si].episodes[ei]
            if use_hand_rgb and "hand_rgb" not in ep:
                raise ValueError(f"{sources[si].root} has no gripper camera images but the policy uses them")
            n = len(ep["state"])
            if n < window:
                self.too_short += 1
            self.index += [(si, ei, s) for s in range(n - window + 1)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        si, ei, s = self.index[i]
        ep = self.sources[si].episodes[ei]
        n, p = len(ep["state"]), self.processor
        frames = range(s, s + self.window)
        sample = {"rgb": p.images(np.stack([ep["rgb"][f] for f in frames]))}
        if self.use_hand:
            sample["hand_rgb"] = p.images(np.stack([ep["hand_rgb"][f] for f in frames]))
        if self.shift_pad:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            for key in ("rgb", "hand_rgb"):
                if key in sample:
                    sample[key] = random_shift(sample[key], self.shift_pad, g)
        sample["state"] = p.state(ep["state"][s : s + self.window])
        # actions [W, chunk, 7]: frame f carries a[f : f + chunk], masked past the episode end
        idx = np.arange(s, s + self.window)[:, None] + np.arange(self.chunk)[None]
        mask = idx < n
        actions = ep["action"][np.minimum(idx, n - 1)]
        sample["actions"] = p.actions(actions)
        sample["action_mask"] = torch.as_tensor(mask, dtype=torch.float32)
        sample["instruction"] = ep["task"]
        return sample


class Collate:
    """Stack samples and tokenise their instructions (a picklable callable for worker processes)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples: list[dict]) -> dict:
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k not in ("instruction", "vl")}
        batch["input_ids"], batch["attention_mask"] = self.processor.text([s["instruction"] for s in samples])
        batch["data_source"] = "action"
        if "vl" in samples[0]:  # co-training: a vision-language batch rides along (see data/vl.py)
            vl = [s["vl"] for s in samples]
            batch["vl_rgb"] = torch.stack([v["vl_rgb"] for v in vl])
            batch.update(tokenize_vl(self.processor.tokenizer, [v["prompt"] for v in vl], [v["answer"] for v in vl]))
            batch["data_source"] = ["action", "vl"]
        return batch
