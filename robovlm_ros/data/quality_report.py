"""The dataset's quality report on disk: quality/report.json and quality/episode-NNNNNN.png inside the
dataset directory (LeRobot's tools ignore the folder), written by ``convert`` and read by ``inspect``."""
from __future__ import annotations

import json
import os

from ..node_params import PolicyParams
from .layout import QUALITY_DIR
from .quality import episode_quality, summary_lines
from .quality_plot import plot_episode


def robot_limits(robot) -> dict:
    """The limits the policy node enforces for this robot (its defaults where the description has none)."""
    defaults = PolicyParams()
    return {k: float(getattr(robot, k, getattr(defaults, k)))
            for k in ("max_linear_velocity", "max_angular_velocity", "max_joint_position")}


class QualityReport:
    def __init__(self, dataset_dir: str, rate_hz: float, robot, plots: bool = True):
        self.dir = os.path.join(dataset_dir, QUALITY_DIR)
        self.rate_hz, self.limits, self.plots = rate_hz, robot_limits(robot), plots
        self.names = {t: name for name, t in (("camera", robot.camera_topic), ("gripper camera",
                      robot.gripper_camera_topic), ("joint states", robot.joint_states_topic),
                      ("arm commands", robot.arm_command_topic), ("gripper commands", robot.gripper_command_topic)) if t}
        self.episodes: list[dict] = []

    def add(self, index: int, source: str, streams: dict, needed: list[str], frames: dict, report) -> dict:
        named = {self.names.get(t, t): msgs for t, msgs in streams.items()}
        q = episode_quality(named, [self.names.get(t, t) for t in needed], frames, report.dropped, report.candidates,
                            self.rate_hz, self.limits)
        q = {"episode_index": index, "source": source, **q}
        if self.plots:
            os.makedirs(self.dir, exist_ok=True)
            q["plot"] = f"episode-{index:06d}.png"
            plot_episode(os.path.join(self.dir, q["plot"]), f"episode {index}: {source}", named, frames, q,
                         self.rate_hz)
        self.episodes.append(q)
        return q

    def report(self) -> dict:
        return {"rate_hz": self.rate_hz, "limits": self.limits, "episodes": self.episodes,
                "advise_drop": [e["episode_index"] for e in self.episodes if e["advise_drop"]]}

    def write(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "report.json"), "w") as f:
            json.dump(self.report(), f, indent=1)


def load_report(dataset_dir: str) -> dict:
    path = os.path.join(dataset_dir, QUALITY_DIR, "report.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{dataset_dir} has no quality report ({QUALITY_DIR}/report.json): it was not "
                                f"written by robovlm-ros convert")
    with open(path) as f:
        return json.load(f)


__all__ = ["QualityReport", "load_report", "robot_limits", "summary_lines"]
