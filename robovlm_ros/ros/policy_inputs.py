"""The policy node's inputs: the newest camera, gripper camera and joint-state messages, checked as they
arrive (bad ones rejected and counted), their ages, and the runner's observation built from them."""
from __future__ import annotations

import time

import numpy as np
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState

from ..robot.description import is_compressed
from ..robot.images import ImageDecodeError, decode_image
from ..robot.messages import GRIPPER_OPEN, FrameError


class _Latest:
    """Newest value of one input, when it arrived (monotonic clock: robust to unsynced stamps) and its
    header stamp in nanoseconds (which step of a lockstep simulator it shows)."""

    def __init__(self):
        self.value, self.t, self.stamp = None, None, None
        self.count = 0  # messages accepted

    def set(self, value, stamp) -> None:
        self.value, self.t = value, time.monotonic()
        self.count += 1
        self.stamp = stamp.sec * 1_000_000_000 + stamp.nanosec

    def age(self, now: float) -> float:
        return float("inf") if self.t is None else now - self.t


class PolicyInputs:
    """Mixin of PolicyCore: the input subscriptions (``_subscribe_inputs``) and what they hold."""

    def _subscribe_inputs(self) -> list:
        r = self.robot
        subs = [self._image_sub(r.camera_topic, self.camera, "camera")]
        if self.uses_hand:
            subs.append(self._image_sub(r.gripper_camera_topic, self.hand, "gripper camera"))
        subs.append(self.create_subscription(JointState, r.joint_states_topic, self._on_joints, qos_profile_sensor_data))
        return subs

    def _image_sub(self, topic: str, slot: _Latest, label: str) -> None:
        def on_image(msg):
            t0 = time.time()
            try:
                image = decode_image(msg)
                if min(image.shape[:2]) < self.p.min_image_size:
                    raise ImageDecodeError(f"{image.shape[1]}x{image.shape[0]} image is smaller than "
                                           f"min_image_size {self.p.min_image_size}")
                slot.set(image, msg.header.stamp)
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                # transport (when the sender stamps with the same clock) + decoding, in ms
                transport = t0 - stamp if 0 < t0 - stamp < 1.0 else 0.0
                self.input_ms.append(1000 * (transport + time.time() - t0))
            except ImageDecodeError as e:
                self.stats["rejected_msgs"] += 1
                self.get_logger().warning(f"rejected {label} image: {e}", throttle_duration_sec=2.0)

        return self.create_subscription(CompressedImage if is_compressed(topic) else Image, topic, on_image,
                                        qos_profile_sensor_data)

    def _on_joints(self, msg: JointState) -> None:
        try:  # checked with the function that builds the state, so a stored message always gives one
            arm = self._state(msg)[:6]
        except FrameError as e:
            self.stats["rejected_msgs"] += 1
            self.get_logger().warning(f"rejected joint state: {e}", throttle_duration_sec=2.0)
            return
        self.joints.set((arm, msg), msg.header.stamp)

    def _state(self, msg: JointState, last_gripper_command: float = GRIPPER_OPEN) -> np.ndarray:
        """The model's state from a JointState: the bag converter's function, so deployment sees what
        training saw (without a gripper joint, the last gripper command this episode)."""
        return self.robot.state(msg, last_gripper_command)

    def _inputs_problem(self, now: float) -> str | None:
        ages = {"camera": self.camera.age(now), "joint states": self.joints.age(now)}
        if self.uses_hand:
            ages["gripper camera"] = self.hand.age(now)
        stale = [f"{k} {'missing' if v == float('inf') else f'{v:.2f}s old'}" for k, v in ages.items()
                 if v > self.p.max_input_age_s]
        return ", ".join(stale) if stale else None

    def _observation(self) -> dict:
        """The newest inputs as the runner's observation (caller holds self.lock); the state shows the
        last gripper command sent, as the bag converter's does."""
        obs = {"rgb": self.camera.value, "state": self._state(self.joints.value[1], self.last_gripper)}
        if self.uses_hand:
            obs["hand_rgb"] = self.hand.value
        return obs
