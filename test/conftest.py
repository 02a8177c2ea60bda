"""Shared helpers: tiny policies and synthetic batches (real transformers models, tiny configs)."""
import os

import pytest
import torch

from robovlm_ros.model.synthetic import synthetic_batch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALL_FAMILIES = ("paligemma", "kosmos2", "llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm")


def make_batch(model, b=2, seed=0, instructions=None):
    return synthetic_batch(model, batch_size=b, seed=seed, instructions=instructions)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
