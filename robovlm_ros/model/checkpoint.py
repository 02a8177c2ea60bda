"""Checkpoint directory IO (DESIGN.md): config.json, model.safetensors, tokenizer files, normalization.json.

Writes are atomic: everything goes to a temporary sibling directory which then replaces the
target in one rename, so a crash never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic_io import atomic_directory
from .config import PolicyConfig
from .normalization import Normalizer
from .text_tokenizer import load_tokenizer

FORMAT = "robovlm_ros.checkpoint"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, NORM = "config.json", "model.safetensors", "normalization.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete, corrupt or does not match its config."""


def _state_dict(model) -> dict[str, torch.Tensor]:
    # tied / shared tensors are stored once per name; clone so safetensors sees no aliasing
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(model, directory: str) -> None:
    with atomic_directory(directory) as tmp:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "policy": model.config.to_dict()}
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        with open(os.path.join(tmp, NORM), "w") as f:
            json.dump(model.normalizer.to_dict(), f, indent=2, sort_keys=True)
        save_file(_state_dict(model), os.path.join(tmp, WEIGHTS), metadata={"format": FORMAT})
        model.tokenizer.save_pretrained(tmp)


def read_config(directory: str) -> PolicyConfig:
    path = os.path.join(directory, CONFIG)
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint {directory!r} does not exist or is not a directory")
    if not os.path.exists(path):
        raise CheckpointError(f"{directory!r} is not a robovlm_ros checkpoint: {CONFIG} is missing")
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a robovlm_ros checkpoint config (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta['format_version']}; this robovlm_ros reads "
                              f"up to {FORMAT_VERSION}: upgrade robovlm_ros")
    try:
        policy = dict(meta["policy"])
        # written before the family's own image markers existed: its start / end vectors were learned
        policy.setdefault("image_markers", "learned")
        return PolicyConfig.from_dict(policy)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid policy config: {e}") from e


def load_checkpoint(cls, directory: str, map_location="cpu"):
    config = read_config(directory)
    for name in (WEIGHTS, NORM):
        if not os.path.exists(os.path.join(directory, name)):
            raise CheckpointError(f"checkpoint {directory!r} is incomplete: {name} is missing")
    with open(os.path.join(directory, NORM)) as f:
        normalizer = Normalizer.from_dict(json.load(f))
    try:
        tokenizer = load_tokenizer(directory)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {directory!r}: tokenizer files are missing or unreadable ({e})") from e
    model = cls(config, tokenizer=tokenizer, normalizer=normalizer, load_backbone_weights=False)
    try:
        state = load_file(os.path.join(directory, WEIGHTS), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{os.path.join(directory, WEIGHTS)} is corrupt or truncated ({e})") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {directory!r} does not match its config.json:"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            lines.append(f"  unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:5])}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {'; '.join(shapes[:5])}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model.to(map_location)
