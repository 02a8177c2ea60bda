"""``robovlm-ros convert``: rosbag2 episodes -> a LeRobot v3 dataset with normalisation statistics.

Topics, joint names and command types come from the robot's parameters file (the one the policy
node runs with, ``--params``), so a robot is described once for recording, training and deployment.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..node_params import load_params_file
from ..runtime.images import ImageDecodeError, decode_image
from ..robot.messages import GRIPPER_OPEN, FrameError, arm_from_command, gripper_from_command, state_from_joints
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
    def __init__(self, params: dict, rate_hz: float, max_age_s: float, image_size: int | None,
                 every_command: bool = False):
        self.p, self.rate_hz, self.max_age_s, self.image_size = params, rate_hz, max_age_s, image_size
        self.every_command = every_command  # one frame per recorded arm command: no thinning to rate_hz
        self.cam, self.hand, self.joints = params["camera_topic"], params["gripper_camera_topic"], params["joint_states_topic"]
        self.arm_cmd, self.grip_cmd = params["arm_command_topic"], params["gripper_command_topic"]

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
        return gripper_from_command(streams[self.grip_cmd][i][1], self.p["gripper_open_position"],
                                    self.p["gripper_closed_position"])

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
                state = state_from_joints(aligned.picks["joints"][k], self.p["arm_joints"], self.p["gripper_joint"],
                                          self.p["gripper_open_threshold"], last_grip, self.p["max_joint_position"])
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


def convert_bags(paths: list[str], out: str, params_file: str | None = None, rate_hz: float | None = None,
                 max_age_s: float = 0.25, image_size: int | None = None, include_failed: bool = False,
                 instruction: str | None = None, overwrite: bool = False, progress: bool = True,
                 every_command: bool = False) -> list[BagReport]:
    """``every_command``: a frame for every recorded arm command instead of thinning them to ``rate_hz``
    (recordings where each command answers one observation, like sim_node's lockstep demonstrations)."""
    params = load_params_file(params_file)
    rate_hz = rate_hz or params["control_rate_hz"]
    conv = EpisodeConverter(params, rate_hz, max_age_s, image_size, every_command)
    bags, partial = find_bags(paths)
    reports = [BagReport(p, "skipped", message="incomplete recording (never stopped)") for p in partial]
    writer = LeRobotWriter(out, rate_hz, state_names=params["arm_joints"] + ["gripper"],
                           action_names=[f"arm_{i}" for i in range(6)] + ["gripper"],
                           robot_type=params.get("robot_type", "ros2_arm"), overwrite=overwrite)
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


def print_reports(reports: list[BagReport]) -> None:
    for r in reports:
        drops = ", ".join(f"{n} {why}" for why, n in r.dropped.items()) or "none"
        line = f"[{r.status}] {r.bag}"
        if r.status == "converted":
            line += f": {r.frames}/{r.candidates} frames kept, dropped: {drops}; task {r.instruction!r}"
        if r.message:
            line += f": {r.message}"
        print(line)


def run(args) -> int:
    try:
        reports = convert_bags(args.bags, args.out, args.params, args.rate, args.max_age, args.image_size,
                               args.include_failed, args.instruction, args.overwrite,
                               every_command=args.every_command)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}")
        return 1
    print_reports(reports)
    converted = [r for r in reports if r.status == "converted"]
    print(f"wrote {args.out}: {len(converted)} episodes, {sum(r.frames for r in converted)} frames; "
          f"{sum(r.status == 'error' for r in reports)} bags with errors, "
          f"{sum(r.status == 'skipped' for r in reports)} skipped")
    if args.report:
        with open(args.report, "w") as f:
            json.dump([r.__dict__ for r in reports], f, indent=2)
    return 0 if converted else 1


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="rosbag2 episodes -> LeRobot v3 dataset", description=__doc__)
    p.add_argument("bags", nargs="+", help="bag directories, or folders of them (episode_recorder output)")
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--params", help="the robot's parameters file (config/policy.yaml format): topics, joints")
    p.add_argument("--rate", type=float, help="control rate to resample to (default: control_rate_hz)")
    p.add_argument("--max-age", type=float, default=0.25, help="max age (s) of a stream's message at a frame")
    p.add_argument("--image-size", type=int, help="store images resized to N x N (default: as recorded)")
    p.add_argument("--instruction", help="instruction for bags recorded without episode_recorder")
    p.add_argument("--include-failed", action="store_true", help="keep episodes marked unsuccessful")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--every-command", action="store_true",
                   help="a frame per recorded arm command, not thinned to --rate (lockstep simulator recordings)")
    p.add_argument("--report", help="write the per-bag report as JSON")
    p.set_defaults(func=run)
