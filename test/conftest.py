"""Shared helpers: tiny policies and synthetic batches (real transformers models, tiny configs)."""
import os

import pytest
import torch

from robovlm_ros.model.synthetic import synthetic_batch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MUJOCO_GL", "egl")
# Node tests talk over DDS: keep them on this machine and off the default domain, so they neither
# disturb nor hear a ROS graph (a real robot) that runs beside them. Subprocesses inherit this.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))  # 1..100: safe DDS port range

ALL_FAMILIES = ("paligemma", "kosmos2", "llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm")


def make_batch(model, b=2, seed=0, instructions=None):
    return synthetic_batch(model, batch_size=b, seed=seed, instructions=instructions)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
