"""Scripted expert for the tabletop task, acting through the same twist + gripper commands a policy uses.

Above the named block -> down to grasp height -> close -> lift; a proportional controller on the
tool position and orientation (tool pointing down), speeds clipped like a servo would be.
"""
from __future__ import annotations

import numpy as np

from .tabletop import TOOL_DOWN, TabletopEnv, orientation_error

MAX_LINEAR, MAX_ANGULAR = 0.15, 0.8


class ScriptedExpert:
    def __init__(self, env: TabletopEnv):
        self.env = env
        self.reset()

    def reset(self) -> None:
        self.phase, self.closing_steps, self.hold = "above", 0, None

    def act(self) -> np.ndarray:
        """[linear (3), angular (3), gripper] for the current physics state."""
        p, R = self.env.tool_pose()
        block = self.env.block_position(self.env.target)
        grip = 1.0
        if self.phase == "above":
            goal = np.r_[block[:2], 0.15]
            if np.linalg.norm(goal - p) < 0.01:
                self.phase = "descend"
        if self.phase == "descend":
            goal = np.r_[block[:2], 0.012]
            if np.linalg.norm(goal - p) < 0.006:
                self.phase, self.hold = "close", goal
        if self.phase == "close":
            goal, grip = self.hold, -1.0
            self.closing_steps += 1
            if self.closing_steps >= 4:
                self.phase = "lift"
        if self.phase == "lift":
            goal, grip = np.r_[p[:2], 0.22], -1.0
        linear = np.clip(3.0 * (goal - p), -MAX_LINEAR, MAX_LINEAR)
        angular = np.clip(2.0 * orientation_error(R, TOOL_DOWN), -MAX_ANGULAR, MAX_ANGULAR)
        return np.r_[linear, angular, grip]
