"""rosbag2 episodes -> a LeRobot v3 dataset with normalisation statistics (``robovlm-ros convert``).

Topics, joint names, the gripper and command types come from the robot's description
(``robot/description.py``; on the command line, the policy node's parameters file).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..robot.description import RobotDescription
from ..robot.images import ImageDecodeError, decode_image
from ..robot.messages import GRIPPER_OPEN, FrameError, arm_from_command, gripper_from_command
from .align import align
from .bags import BagError, find_bags, read_episode
from .lerobot import LeRobotWriter


@dataclass
class BagReport:
    bag: str
    status: str  # converted | skipped | error
    frames: int = 0
    candidates: int = 0
    dropped: dict = field(default_factory=dict)
    instruction: str = ""
    message: str = ""


class EpisodeConverter:
    def __init__(self, robot: RobotDescription, rate_hz: float, max_age_s: float, image_size: int | None,
                 every_command: bool = False):
        self.robot, self.rate_hz, self.max_age_s, self.image_size = robot, rate_hz, max_age_s, image_size
        self.every_command = every_command  # one frame per recorded arm command: no thinning to rate_hz
        self.cam, self.hand, self.joints = robot.camera_topic, robot.gripper_camera_topic, robot.joint_states_topic
        self.arm_cmd, self.grip_cmd = robot.arm_command_topic, robot.gripper_command_topic

    @property
    def topics(self) -> list[str]:
        return [t for t in (self.cam, self.hand, self.joints, self.arm_cmd, self.grip_cmd) if t]

    def _image(self, msg) -> np.ndarray:
        img = decode_image(msg)
        if self.image_size and img.shape[:2] != (self.image_size, self.image_size):
            img = cv2.resize(img, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        return img

    def _gripper_at(self, streams: dict, grip_times: list, i: int) -> float:
        """The i-th recorded gripper command as ±1 (open when there is none: i < 0)."""
        if i < 0:
            return GRIPPER_OPEN
        return gripper_from_command(streams[self.grip_cmd][i][1], self.robot.gripper_open_position,
                                    self.robot.gripper_closed_position)

    def convert(self, episode) -> tuple[dict, BagReport]:
        s = episode.streams
        report = BagReport(episode.path, "converted", instruction=episode.instruction)
        with_commands = bool(self.arm_cmd and s.get(self.arm_cmd))
        reference = s[self.arm_cmd] if with_commands else s[self.cam]
        others = {"joints": s[self.joints]}
        if with_commands:
            others["camera"] = s[self.cam]
        if self.hand:
            others["gripper camera"] = s[self.hand]
        aligned = align(reference, others, self.rate_hz, self.max_age_s,
                        thin_reference=not (self.every_command and with_commands))
        dropped = dict(aligned.dropped)
        grip_times = [t for t, _ in s.get(self.grip_cmd, [])] if self.grip_cmd else []
        half_period = int(0.5e9 / self.rate_hz)
        rows = {"rgb": [], "hand_rgb": [], "state": [], "action": [], "t": []}
        for k, t in enumerate(aligned.times_ns):
            try:
                cam_msg = aligned.picks["camera"][k] if with_commands else aligned.picks["reference"][k]
                rgb = self._image(cam_msg)
                hand = self._image(aligned.picks["gripper camera"][k]) if self.hand else None
                # without a gripper joint the state shows the last gripper command before this frame, as
                # the policy node's does (its previous command)
                last_grip = self._gripper_at(s, grip_times, np.searchsorted(grip_times, t, side="left") - 1)
                state = self.robot.state(aligned.picks["joints"][k], last_grip)
                if with_commands:
                    arm = arm_from_command(aligned.picks["reference"][k], state[:6])
                    # the gripper command of the same control step is sent just after the arm's: take the
                    # latest one up to half a period after t (commands are actions, not observations)
                    g = np.searchsorted(grip_times, t + half_period, side="right") - 1
                    grip = self._gripper_at(s, grip_times, g) if g >= 0 else state[6]
                    rows["action"].append(np.r_[arm, grip])
            except (ImageDecodeError, FrameError) as e:
                reason = f"malformed: {e}"
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            rows["rgb"].append(rgb)
            rows["hand_rgb"].append(hand)
            rows["state"].append(state)
            rows["t"].append(t)
        if not with_commands:  # derive actions from consecutive states; the last frame has no successor
            st, ts = np.asarray(rows["state"]), np.asarray(rows["t"], dtype=np.float64) * 1e-9
            if len(st) > 1:
                vel = (st[1:, :6] - st[:-1, :6]) / np.diff(ts)[:, None]
                rows["action"] = list(np.c_[vel, st[1:, 6]])
            for key in ("rgb", "hand_rgb", "state", "t"):
                rows[key] = rows[key][:-1]
            if st.size:
                dropped["last frame (no next state for the action)"] = 1
        report.frames, report.candidates, report.dropped = len(rows["state"]), aligned.candidates, dropped
        t0 = rows["t"][0] if rows["t"] else 0
        frames = {"rgb": np.asarray(rows["rgb"]), "state": np.asarray(rows["state"]),
                  "action": np.asarray(rows["action"]), "timestamp": (np.asarray(rows["t"]) - t0) * 1e-9}
        if self.hand:
            frames["hand_rgb"] = np.asarray(rows["hand_rgb"])
        return frames, report


def convert_bags(paths: list[str], out: str, robot: RobotDescription | None = None, rate_hz: float | None = None,
                 max_age_s: float = 0.25, image_size: int | None = None, include_failed: bool = False,
                 instruction: str | None = None, overwrite: bool = False, progress: bool = True,
                 every_command: bool = False) -> list[BagReport]:
    """``robot``: the recorded robot (default: ``RobotDescription()``); ``rate_hz`` the frame rate
    (default: its control rate). ``every_command``: a frame for every recorded arm command instead of
    thinning them to ``rate_hz`` (recordings where each command answers one observation, like
    sim_node's lockstep demonstrations)."""
    robot = robot or RobotDescription()
    rate_hz = rate_hz or robot.control_rate_hz
    conv = EpisodeConverter(robot, rate_hz, max_age_s, image_size, every_command)
    bags, partial = find_bags(paths)
    reports = [BagReport(p, "skipped", message="incomplete recording (never stopped)") for p in partial]
    writer = LeRobotWriter(out, rate_hz, state_names=list(robot.arm_joints) + ["gripper"],
                           action_names=[f"arm_{i}" for i in range(6)] + ["gripper"],
                           robot_type="ros2_arm", overwrite=overwrite)
    try:
        from tqdm import tqdm

        for path in tqdm(bags, desc="converting", unit="bag", disable=not progress):
            try:
                episode = read_episode(path, conv.topics, instruction)
            except BagError as e:
                reports.append(BagReport(path, "error", message=str(e)))
                continue
            if not episode.success and not include_failed:
                reports.append(BagReport(path, "skipped", instruction=episode.instruction,
                                         message="episode marked unsuccessful (--include-failed to keep)"))
                continue
            frames, report = conv.convert(episode)
            if report.frames < 2:
                report.status, report.message = "skipped", "fewer than 2 aligned frames"
            else:
                writer.add_episode(frames, episode.instruction,
                                   {"success": episode.success, "source_bag": path,
                                    "dropped_frames": int(sum(report.dropped.values()))})
            reports.append(report)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return reports
