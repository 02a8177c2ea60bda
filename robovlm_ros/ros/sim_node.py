"""``sim_node``: the MuJoCo tabletop robot behind the same ROS 2 topics as a real arm.

Publishes the static and gripper cameras (``sensor_msgs/Image``, rgb8) and ``JointState``
(``arm_joints`` + ``gripper_joint`` = finger opening in metres) every control period; consumes
``TwistStamped`` end-effector velocity commands (differential IK) and ``Float64MultiArray`` gripper
commands (nearer ``gripper_open_position`` = open). A twist older than ``command_timeout_s`` counts
as zero, like MoveIt Servo's halt. Services: ``~/reset`` (Trigger: a new episode from the ``seed``
parameter, asking for the ``target`` block if set; the message is the instruction, also published on
``~/instruction``) and ``~/success``
(Trigger: success read from the physics). ``real_time_factor`` > 1 runs the clock faster.

Every publish stamps the two images and the joint state of one physics step with the same header
stamp, strictly increasing (``stamp_ns``): the stamp names the step, so a consumer can tell which
messages belong together. Lockstep (the ``step_gate`` attribute, see ``lockstep_gate``; for a policy
or the expert in the same process): the physics advances only once a command computed from exactly
the newest published step has arrived, so results do not depend on how fast the commander runs on
this machine. ``real_time_factor`` is then an upper bound. Unanswered for ``lockstep_resend_s`` (a
sensor message lost), the same step is published again, same stamp; after ``lockstep_timeout_s`` the
step is taken anyway and counted in ``lockstep["timeouts"]`` (an evaluation treats that as an error).
"""
from __future__ import annotations

import hashlib
import sys
import threading
import time
from typing import Callable

import numpy as np
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from ..node_params import SimParams
from ..robot.messages import FrameError, arm_from_command, gripper_from_command
from ..sim.tabletop import TabletopEnv
from .commands import CommandBuilder
from .params import declare_params
from .spin import run_node

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class SimNode(Node):
    def __init__(self, env: TabletopEnv | None = None, **kwargs):
        super().__init__("sim_node", **kwargs)
        self.p = p = declare_params(self, SimParams)
        self.env = env or TabletopEnv(image_size=p.image_size, control_hz=p.control_rate_hz,
                                      actuation_noise=p.actuation_noise, noise_seed=p.noise_seed)
        self.cam_pub = self.create_publisher(Image, p.camera_topic, qos_profile_sensor_data)
        self.hand_pub = self.create_publisher(Image, p.gripper_camera_topic, qos_profile_sensor_data)
        self.joint_pub = self.create_publisher(JointState, p.joint_states_topic, qos_profile_sensor_data)
        self.joint_names = list(p.arm_joints) + [p.gripper_joint or "gripper_joint"]
        self.instruction_pub = self.create_publisher(String, "~/instruction", LATCHED)
        self.create_subscription(TwistStamped, p.arm_command_topic, self._on_twist, 10)
        self.create_subscription(Float64MultiArray, p.gripper_command_topic, self._on_gripper, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/success", self._on_success)
        self.sim_time = 0.0
        self.last_images: dict[str, np.ndarray] = {}  # newest frame per camera (for reports)
        self.twist, self.twist_time, self.gripper = np.zeros(6), -np.inf, 1.0
        # step_gate(stamp_ns) -> True once a command computed from the sensors stamped stamp_ns has
        # arrived; None (default) runs the physics on the clock
        self.step_gate: Callable[[int], bool] | None = None
        self.stamp_ns = 0  # header stamp of the newest published step (nanoseconds)
        self.published_at = time.monotonic()  # when it was last published (wall clock, for the waits)
        self.step_started = self.published_at  # when it was first published
        self._sensor_msgs: list[tuple] = []  # (publisher, message) of the newest step, for a resend
        self.lockstep = {"steps": 0, "resends": 0, "timeouts": 0}
        self.received = {"arm": 0, "gripper": 0}  # command messages, valid or not
        self.reset_episode(p.seed, p.target)
        self.tick_timer = self.create_timer(1.0 / (p.control_rate_hz * p.real_time_factor), self._tick)

    def reset_episode(self, seed: int, target: str = "") -> str:
        if target and target not in self.env.colors:
            raise ValueError(f"target must be one of {self.env.colors} or empty, not {target!r}")
        instruction = self.env.reset(int(seed), target=target or None)
        self.twist, self.twist_time, self.gripper = np.zeros(6), -np.inf, 1.0
        self.applied = hashlib.sha1()  # of every action the physics applied this episode (float64 bytes)
        self.sensors_out = False  # nothing of this episode published yet
        self.episode_start, self.episode_over = self.sim_time, False
        self.instruction_pub.publish(String(data=instruction))
        self.get_logger().info(f"episode seed {seed}: {instruction!r}")
        return instruction

    def _on_twist(self, msg: TwistStamped) -> None:
        self.received["arm"] += 1
        try:
            self.twist, self.twist_time = arm_from_command(msg, np.zeros(6)), self.sim_time
        except FrameError as e:
            self.get_logger().warning(f"ignored a twist: {e}", throttle_duration_sec=2.0)

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        self.received["gripper"] += 1
        try:
            self.gripper = gripper_from_command(msg, self.p.gripper_open_position, self.p.gripper_closed_position)
        except FrameError as e:
            self.get_logger().warning(f"ignored a gripper command: {e}", throttle_duration_sec=2.0)

    def _on_reset(self, request, response):
        try:
            response.message = self.reset_episode(self.get_parameter("seed").value, self.get_parameter("target").value)
        except ValueError as e:
            response.success, response.message = False, str(e)
            return response
        self.publish_sensors()  # the new episode's first observation, without waiting for a tick
        response.success = True
        return response

    def _on_success(self, request, response):
        response.success = self.env.success()
        response.message = f"{self.env.target} block at height {self.env.block_position(self.env.target)[2]:.3f} m"
        return response

    def release_renderer(self, timeout: float = 5.0) -> None:
        """Stop the simulation and free the renderer on the executor thread that owns its EGL context
        (call while the executor spins, before shutting it down)."""
        done = threading.Event()

        def close():
            timer.cancel()
            self.tick_timer.cancel()  # a later tick would render, and so create a new context
            self.env.close()
            done.set()

        timer = self.create_timer(0.0, close)
        done.wait(timeout)

    def _tick(self) -> None:
        if self.episode_over:
            return
        if self.step_gate is not None:
            if not self.sensors_out:  # a new episode: the policy needs its first observation
                self.publish_sensors()
                return
            if not self.step_gate(self.stamp_ns):
                waited = time.monotonic() - self.step_started
                if waited < self.p.lockstep_timeout_s:
                    if time.monotonic() - self.published_at >= self.p.lockstep_resend_s:
                        self.lockstep["resends"] += 1  # a sensor message may be lost: the same step again
                        self._publish(self._sensor_msgs)
                    return  # the policy has not answered the newest step yet
                self.lockstep["timeouts"] += 1
                self.get_logger().error("lockstep: no command for the newest sensors in "
                                        f"{self.p.lockstep_timeout_s} s, stepping anyway",
                                        throttle_duration_sec=2.0)
            self.lockstep["steps"] += 1
        twist = self.twist if self.sim_time - self.twist_time <= self.p.command_timeout_s else np.zeros(6)
        action = np.r_[twist, self.gripper].astype(np.float64)
        self.applied.update(action.tobytes())
        self.env.step(action)
        self.sim_time += self.env.dt
        limit = self.p.max_episode_seconds
        self.episode_over = bool((limit and self.sim_time - self.episode_start >= limit - 1e-9)
                                 or (self.p.stop_on_success and self.env.success()))
        self.publish_sensors()

    def publish_sensors(self) -> None:
        """Publish the current step: both cameras and the joint state under one new stamp."""
        self.sensors_out = True
        # strictly increasing, so that two steps never share a stamp (the clock can stand still)
        self.stamp_ns = max(self.get_clock().now().nanoseconds, self.stamp_ns + 1)
        stamp = Time(nanoseconds=self.stamp_ns).to_msg()
        size = self.env.image_size
        msgs = []
        for pub, camera in ((self.cam_pub, "static"), (self.hand_pub, "gripper")):
            # rendering stays on this (executor) thread: an EGL context belongs to the thread that made it
            self.last_images[camera] = self.env.render(camera)
            msg = Image(height=size, width=size, encoding="rgb8", step=3 * size,
                        data=self.last_images[camera].tobytes())
            msg.header.stamp, msg.header.frame_id = stamp, camera
            msgs.append((pub, msg))
        js = JointState(name=self.joint_names,
                        position=[float(x) for x in self.env.joint_positions()] + [self.env.gripper_width()])
        js.header.stamp = stamp
        msgs.append((self.joint_pub, js))
        self._sensor_msgs = msgs
        self.step_started = time.monotonic()
        self._publish(msgs)

    def _publish(self, msgs: list[tuple]) -> None:
        self.published_at = time.monotonic()
        for pub, msg in msgs:
            pub.publish(msg)


def lockstep_gate(commander, sim: SimNode) -> Callable[[int], bool]:
    """A step gate for ``sim``: ``commander`` (a PolicyNode or ExpertNode in the same process) has
    published a command computed from the sensors stamped ``stamp_ns``
    (``commander.inputs_stamp_of_last_command``), and the simulator has received every command message
    it sent (``commander.sent``: arm and gripper topics are delivered independently)."""
    return lambda stamp_ns: (commander.inputs_stamp_of_last_command == stamp_ns
                             and sim.received == commander.sent)


class ExpertNode(Node):
    """The scripted expert as a ROS node: it reads the simulator's ground truth (same process) and
    publishes the same twist and gripper commands a policy would, at the control rate. With
    ``lockstep`` it answers each published state once (pair it with ``lockstep_gate``), so every
    recorded command is the action for the observation just before it."""

    def __init__(self, sim: SimNode, lockstep: bool = False, **kwargs):
        from ..sim.expert import ScriptedExpert

        super().__init__("scripted_expert", **kwargs)
        self.sim, self.expert, self.active = sim, ScriptedExpert(sim.env), False
        self.lockstep = lockstep
        self.inputs_stamp_of_last_command = -1  # stamp_ns of the step last answered
        self.sent = {"arm": 0, "gripper": 0}
        p = sim.p
        self.commands = CommandBuilder(p.robot(), 1.0 / p.control_rate_hz)  # the policy node's messages
        self.arm_pub = self.create_publisher(self.commands.arm_msg_type, p.arm_command_topic, 10)
        self.grip_pub = self.create_publisher(self.commands.gripper_msg_type, p.gripper_command_topic, 10)
        self.create_timer(1.0 / (p.control_rate_hz * p.real_time_factor), self._tick)

    def start(self) -> None:
        self.expert.reset()
        self.active = True

    def stop(self) -> None:
        self.active = False

    def _tick(self) -> None:
        if not self.active:
            return
        stamp_ns = self.sim.stamp_ns  # the step the sensors show (lockstep: the current one)
        if self.lockstep and stamp_ns == self.inputs_stamp_of_last_command:
            return  # this step has its command already
        a = self.expert.act()
        stamp = self.get_clock().now().to_msg()
        self.arm_pub.publish(self.commands.arm(a[:6], None, stamp))
        self.grip_pub.publish(self.commands.gripper(a[6], stamp))
        self.sent["arm"] += 1
        self.sent["gripper"] += 1
        self.inputs_stamp_of_last_command = stamp_ns


def main(args=None) -> int:
    return run_node(SimNode, "sim_node", args)


if __name__ == "__main__":
    sys.exit(main())
