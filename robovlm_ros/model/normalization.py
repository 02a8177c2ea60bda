"""Action and state normalisation, kept with the checkpoint so training and the node agree.

Actions are 7 values: 6 arm dims (normalised to [-1, 1]) + gripper (-1 close / +1 open, untouched).
Modes for the arm, as in RoboVLMs' configs:
  * ``clip``:     clip to [clip_low, clip_bound] (clip_low defaults to -clip_bound), map to [-1, 1]
                  (RoboVLMs' norm_min / norm_max, default +-0.65)
  * ``quantile``: map per-dimension [q01, q99] to [-1, 1], then clip  (needs dataset stats)
  * ``none``:     values are already in [-1, 1]
State arm dims are standardised with mean/std when stats are present (else passed through).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

ARM_DIM = 6


def snap_gripper(chunk: torch.Tensor) -> torch.Tensor:
    """[..., 7] with the gripper value (a logit or a bin value) snapped to +1 open (> 0) / -1 closed."""
    grip = torch.where(chunk[..., ARM_DIM:] > 0, 1.0, -1.0).to(chunk.dtype)
    return torch.cat([chunk[..., :ARM_DIM], grip], dim=-1)


@dataclass
class Normalizer:
    mode: str = "clip"
    clip_bound: float = 0.65
    clip_low: float | None = None  # None: -clip_bound
    stats: dict = field(default_factory=dict)  # {"action": {"q01": [7], ...}, "state": {"mean": [7], ...}}

    def __post_init__(self):
        if self.mode not in ("clip", "quantile", "none"):
            raise ValueError(f"normalisation mode must be clip, quantile or none, not {self.mode!r}")
        if self.mode == "clip" and self.clip_low is not None and not self.clip_low < self.clip_bound:
            raise ValueError(f"clip_low {self.clip_low} must be below clip_bound {self.clip_bound}")
        if self.mode == "quantile":
            act = self.stats.get("action", {})
            if "q01" not in act or "q99" not in act:
                raise ValueError("quantile normalisation needs action q01/q99 statistics")

    def _arm_bounds(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "quantile":
            lo = torch.as_tensor(self.stats["action"]["q01"][:ARM_DIM], dtype=ref.dtype, device=ref.device)
            hi = torch.as_tensor(self.stats["action"]["q99"][:ARM_DIM], dtype=ref.dtype, device=ref.device)
            return lo, torch.maximum(hi, lo + 1e-6)
        hi = self.clip_bound if self.mode == "clip" else 1.0
        lo = -hi if self.mode != "clip" or self.clip_low is None else self.clip_low
        return (torch.full((ARM_DIM,), lo, dtype=ref.dtype, device=ref.device),
                torch.full((ARM_DIM,), hi, dtype=ref.dtype, device=ref.device))

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """[..., 7] raw -> [..., 7] with arm in [-1, 1] and gripper as +-1."""
        lo, hi = self._arm_bounds(action)
        arm = (2 * (action[..., :ARM_DIM] - lo) / (hi - lo) - 1).clamp(-1, 1)
        return torch.cat([arm, binarize_gripper(action[..., ARM_DIM:])], dim=-1)

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        lo, hi = self._arm_bounds(action)
        arm = (action[..., :ARM_DIM].clamp(-1, 1) + 1) / 2 * (hi - lo) + lo
        return torch.cat([arm, action[..., ARM_DIM:]], dim=-1)

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        st = self.stats.get("state")
        arm = state[..., :ARM_DIM]
        if st and "mean" in st and "std" in st:
            mean = torch.as_tensor(st["mean"][:ARM_DIM], dtype=state.dtype, device=state.device)
            std = torch.as_tensor(st["std"][:ARM_DIM], dtype=state.dtype, device=state.device)
            arm = (arm - mean) / std.clamp(min=1e-6)
        return torch.cat([arm, binarize_gripper(state[..., ARM_DIM:])], dim=-1)

    def to_dict(self) -> dict:
        d = {"mode": self.mode, "clip_bound": self.clip_bound, "stats": self.stats}
        if self.clip_low is not None:
            d["clip_low"] = self.clip_low
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(mode=d.get("mode", "clip"), clip_bound=d.get("clip_bound", 0.65), clip_low=d.get("clip_low"),
                   stats=d.get("stats", {}))


def binarize_gripper(g: torch.Tensor) -> torch.Tensor:
    """Gripper values -> -1 (close) / +1 (open) by sign; 0 counts as open."""
    return torch.where(g >= 0, torch.ones_like(g), -torch.ones_like(g))
