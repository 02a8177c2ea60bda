"""Last line before the robot: reject non-finite actions and clamp to configured limits.

Action layout: 6 arm values (for Cartesian commands: linear x, y, z, angular x, y, z) + gripper.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..robot.messages import gripper_sign


class UnsafeActionError(ValueError):
    """The policy produced an action that must not be sent (NaN / inf)."""


@dataclass
class SafetyLimits:
    arm_low: tuple[float, ...] = (-np.inf,) * 6  # per-dimension bounds of the 6 arm values
    arm_high: tuple[float, ...] = (np.inf,) * 6
    max_linear: float = float("inf")            # norm bound of arm[0:3] (m/s for a Twist)
    max_angular: float = float("inf")           # norm bound of arm[3:6] (rad/s for a Twist)

    def __post_init__(self):
        lo, hi = np.asarray(self.arm_low, float), np.asarray(self.arm_high, float)
        if lo.shape != (6,) or hi.shape != (6,):
            raise ValueError("arm_low / arm_high need 6 values each")
        if (lo > hi).any():
            raise ValueError("arm_low must be <= arm_high")
        if self.max_linear <= 0 or self.max_angular <= 0:
            raise ValueError("max_linear / max_angular must be > 0")

    def apply(self, action: np.ndarray) -> np.ndarray:
        """float[7] -> a safe float[7] (arm clamped, norms scaled down, gripper +-1); raises on NaN/inf."""
        a = np.asarray(action, dtype=np.float64).copy()
        if a.shape != (7,):
            raise UnsafeActionError(f"action must have 7 values, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise UnsafeActionError(f"non-finite action {a.tolist()}")
        a[:6] = np.clip(a[:6], self.arm_low, self.arm_high)
        for sl, bound in ((slice(0, 3), self.max_linear), (slice(3, 6), self.max_angular)):
            norm = np.linalg.norm(a[sl])
            if norm > bound:
                a[sl] *= bound / norm
        a[6] = gripper_sign(a[6])
        return a
