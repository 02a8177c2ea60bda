"""Vision-language co-training data (captions / VQA) mixed into action batches (RoboVLMs' multi-task).

A VL dataset is a JSON-lines file; each line ``{"image": "path.png", "prompt": "...", "answer": "..."}``
(image paths relative to the file). The loss is next-token cross-entropy on the answer tokens only.
Each action sample i is paired with VL sample (i * 7919 + seed) mod n, so the mix is deterministic
and survives resuming and multiple loader workers.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE = -100


class VLDataset(Dataset):
    def __init__(self, paths: list[str], processor):
        self.processor, self.items = processor, []
        for path in paths:
            base = os.path.dirname(os.path.abspath(path))
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    missing = {"image", "prompt", "answer"} - set(item)
                    if missing:
                        raise ValueError(f"{path}:{n}: missing {sorted(missing)}")
                    item["image"] = os.path.join(base, item["image"])
                    self.items.append(item)
        if not self.items:
            raise ValueError(f"no vision-language samples in {paths}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        img = cv2.imread(item["image"], cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read image {item['image']}")
        return {"vl_rgb": self.processor.images(np.ascontiguousarray(img[..., ::-1])),
                "prompt": item["prompt"], "answer": item["answer"]}


def tokenize_vl(tokenizer, prompts: list[str], answers: list[str]) -> dict:
    """Prompt + answer (+ EOS), left padded; labels are the answer tokens, -100 elsewhere."""
    seqs, labels = [], []
    for prompt, answer in zip(prompts, answers):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            a = a + [tokenizer.eos_token_id]
        seqs.append(p + a)
        labels.append([IGNORE] * len(p) + a)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    lab = torch.tensor([[IGNORE] * (width - len(lb)) + lb for lb in labels])
    return {"vl_input_ids": ids, "vl_attention_mask": mask, "vl_labels": lab}


class PairedDataset(Dataset):
    """Action windows, each with one vision-language sample attached under "vl"."""

    def __init__(self, actions: Dataset, vl: VLDataset, seed: int):
        self.actions, self.vl, self.seed = actions, vl, seed

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, i: int) -> dict:
        return {**self.actions[i], "vl": self.vl[(i * 7919 + self.seed) % len(self.vl)]}
