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
from .lerobot import DatasetSettingsError, LeRobotWriter
from .quality_report import QualityReport
from .video import DEFAULT_CRF


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

    def _gripper_commands(self, stream: list) -> tuple[list[int], list[float], int]:
        """Recorded gripper commands as (times, ±1 values, how many were malformed and skipped)."""
        times, values = [], []
        for t, msg in stream:
            try:
                values.append(gripper_from_command(msg, self.robot.gripper_open_position,
                                                   self.robot.gripper_closed_position))
                times.append(t)
            except FrameError:
                continue
        return times, values, len(stream) - len(times)

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
        grip_times, grips, bad = self._gripper_commands(s.get(self.grip_cmd, []) if self.grip_cmd else [])
        if bad:
            dropped["malformed gripper commands (messages skipped)"] = bad
        rows = {"rgb": [], "hand_rgb": [], "state": [], "action": [], "t": [], "cam_t": []}
        camera_time = {id(msg): t for t, msg in s[self.cam]}
        for k, t in enumerate(aligned.times_ns):
            try:
                frame = self._frame(aligned, k, t, with_commands, grip_times, grips)
            except (ImageDecodeError, FrameError) as e:
                reason = f"malformed: {e}"
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            for key, value in zip(("rgb", "hand_rgb", "state", "action", "t"), frame):
                rows[key].append(value)
            rows["cam_t"].append(camera_time[id(aligned.picks["camera" if with_commands else "reference"][k])])
        if not with_commands:
            self._actions_from_states(rows, dropped)
        elif not grips and len(rows["state"]):  # no gripper commands: the gripper state the step led to
            following = [st[6] for st in rows["state"][1:]] + [rows["state"][-1][6]]
            rows["action"] = [np.r_[a[:6], g] for a, g in zip(rows["action"], following)]
        report.frames, report.candidates, report.dropped = len(rows["state"]), aligned.candidates, dropped
        # frame and camera message receive times feed the quality report (the dataset's timestamps are
        # frame_index / fps, as LeRobot requires)
        frames = {"rgb": np.asarray(rows["rgb"]), "state": np.asarray(rows["state"]).reshape(-1, 7),
                  "action": np.asarray(rows["action"]).reshape(-1, 7),
                  "frame_times_ns": np.asarray(rows["t"], np.int64),
                  "camera_times_ns": np.asarray(rows["cam_t"], np.int64)}
        if self.hand:
            frames["hand_rgb"] = np.asarray(rows["hand_rgb"])
        return frames, report

    def _frame(self, aligned, k: int, t: int, with_commands: bool, grip_times: list, grips: list) -> tuple:
        """(rgb, hand_rgb, state, action or None, t) of aligned frame k; FrameError / ImageDecodeError
        for a malformed message."""
        cam_msg = aligned.picks["camera"][k] if with_commands else aligned.picks["reference"][k]
        rgb = self._image(cam_msg)
        hand = self._image(aligned.picks["gripper camera"][k]) if self.hand else None
        # without a gripper joint the state shows the last gripper command before this frame, as the
        # policy node's does (its previous command; open before the first)
        i = np.searchsorted(grip_times, t, side="left") - 1
        state = self.robot.state(aligned.picks["joints"][k], grips[i] if i >= 0 else GRIPPER_OPEN)
        action = None
        if with_commands:
            arm = arm_from_command(aligned.picks["reference"][k], state[:6])
            # the gripper command of the same control step is sent just after the arm's: take the latest
            # one up to half a period after t (commands are actions, not observations)
            g = np.searchsorted(grip_times, t + int(0.5e9 / self.rate_hz), side="right") - 1
            action = np.r_[arm, grips[g] if g >= 0 else state[6]]
        return rgb, hand, state, action, t

    @staticmethod
    def _actions_from_states(rows: dict, dropped: dict) -> None:
        """No arm commands: joint velocities from consecutive states, the gripper the next state's; the
        last frame has no successor and is dropped."""
        st, ts = np.asarray(rows["state"]), np.asarray(rows["t"], dtype=np.float64) * 1e-9
        if len(st) > 1:
            vel = (st[1:, :6] - st[:-1, :6]) / np.diff(ts)[:, None]
            rows["action"] = list(np.c_[vel, st[1:, 6]])
        for key in ("rgb", "hand_rgb", "state", "t", "cam_t"):
            rows[key] = rows[key][:-1]
        if st.size:
            dropped["last frame (no next state for the action)"] = 1


class NothingConverted(ValueError):
    """No bag gave an episode; ``reports`` says why for each."""

    def __init__(self, message: str, reports: list[BagReport]):
        super().__init__(message)
        self.reports = reports


def convert_bags(paths: list[str], out: str, robot: RobotDescription | None = None, rate_hz: float | None = None,
                 max_age_s: float = 0.25, image_size: int | None = None, include_failed: bool = False,
                 instruction: str | None = None, overwrite: bool = False, progress: bool = True,
                 every_command: bool = False, instruction_topic: str | None = None, storage: str = "video",
                 crf: int = DEFAULT_CRF, plots: bool = True) -> list[BagReport]:
    """A report per bag: converted, skipped or error, with the reason; a bag that cannot be converted
    never stops the others (NothingConverted, with the reports, when none could be). The dataset gets
    its quality report (quality/report.json, a plot per episode unless ``plots`` is off).

    ``robot``: the recorded robot (default: ``RobotDescription()``); ``rate_hz`` the frame rate
    (default: its control rate). ``instruction`` / ``instruction_topic``: see ``read_episode``.
    ``every_command``: a frame for every recorded arm command instead of thinning them to ``rate_hz``
    (recordings where each command answers one observation, like sim_node's lockstep demonstrations).
    ``storage``: "video" (mp4 per camera, LeRobot's default; ``crf`` its quality) or "png" (lossless)."""
    robot = robot or RobotDescription()
    rate_hz = rate_hz or robot.control_rate_hz
    conv = EpisodeConverter(robot, rate_hz, max_age_s, image_size, every_command)
    bags, partial = find_bags(paths)
    reports = [BagReport(p, "skipped", message="incomplete recording (never stopped)") for p in partial]
    writer = LeRobotWriter(out, rate_hz, state_names=list(robot.arm_joints) + ["gripper"],
                           action_names=[f"arm_{i}" for i in range(6)] + ["gripper"],
                           robot_type="ros2_arm", overwrite=overwrite, storage=storage, crf=crf)
    quality = QualityReport(writer.tmp, rate_hz, robot, plots)
    try:
        from tqdm import tqdm

        for path in tqdm(bags, desc="converting", unit="bag", disable=not progress):
            try:
                reports.append(_convert_bag(conv, writer, quality, path, instruction, instruction_topic,
                                            include_failed))
            except BagError as e:
                reports.append(BagReport(path, "error", message=str(e)))
            except (OSError, DatasetSettingsError):
                raise  # the disk or the settings, not the bag: stop
            except Exception as e:  # noqa: BLE001 - bag content nobody foresaw: this bag fails, the rest go on
                reports.append(BagReport(path, "error", message=f"cannot convert: {type(e).__name__}: {e}"))
        if not writer.episodes:
            raise NothingConverted("no episode could be converted: nothing written", reports)
        quality.write()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return reports


def _convert_bag(conv: EpisodeConverter, writer: LeRobotWriter, quality: QualityReport, path: str,
                 instruction: str | None, instruction_topic: str | None, include_failed: bool) -> BagReport:
    episode = read_episode(path, conv.topics, instruction, instruction_topic)
    if not episode.success and not include_failed:
        return BagReport(path, "skipped", instruction=episode.instruction,
                         message="episode marked unsuccessful (--include-failed to keep)")
    required = [conv.cam, conv.joints] + ([conv.hand] if conv.hand else [])
    missing = [t for t in required if not episode.streams.get(t)]
    if missing:
        raise BagError(f"bag {path} has no messages on {', '.join(missing)}; its topics: "
                       + ", ".join(f"{t} ({m})" for t, m in sorted(episode.available.items())))
    frames, report = conv.convert(episode)
    if report.frames < 2:
        report.status, report.message = "skipped", "fewer than 2 aligned frames"
        return report
    index = writer.add_episode(frames, episode.instruction, {
        "success": episode.success, "source_bag": path, "dropped_frames": int(sum(report.dropped.values())),
        "dropped": dict(report.dropped), "first_frame_time_ns": int(frames["frame_times_ns"][0])})
    quality.add(index, path, {t: episode.streams[t] for t in conv.topics if episode.streams.get(t)}, required,
                frames, report)
    return report
