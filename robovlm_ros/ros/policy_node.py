"""``robovlm_policy``: cameras + joint states in, arm and gripper commands out.

Threads: the executor thread runs subscriptions, services and the control timer; one worker thread
owns the PolicyRunner and runs the policy, so a slow inference never blocks callbacks or services.
Services only set flags under a short lock (start/stop/reset, new instruction); the worker applies
them before its next step and publishes only while the node is still running, so a command computed
before ~/stop is never sent after it. Every control tick takes the
newest inputs; if any is missing or older than ``max_input_age_s`` the arm gets a hold command
instead (and the history restarts once inputs are back). A tick that finds the worker still busy is
counted as an overrun and skipped. With ``wait_for_new_inputs`` a step needs a new set of inputs that
all carry the same header stamp (a simulator in lockstep stamps the messages of one step alike);
``inputs_stamp_of_last_command`` (the stamp of the inputs behind the newest command) and ``sent``
(messages published) let such a simulator in the same process step in lockstep with the policy
(see sim_node.lockstep_gate).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from ..model import RoboVLM
from ..node_params import POLICY_NODE, PolicyParams
from ..robot.description import is_compressed
from ..robot.images import ImageDecodeError, decode_image
from ..robot.messages import GRIPPER_OPEN, FrameError, gripper_sign
from ..runtime import PolicyRunner, SafetyLimits, UnsafeActionError
from .commands import CommandBuilder, chunk_message
from .params import declare_params
from .spin import run_node

MAX_INSTRUCTION_CHARS = 512


class _Latest:
    """Newest value of one input, when it arrived (monotonic clock: robust to unsynced stamps) and its
    header stamp in nanoseconds (which step of a lockstep simulator it shows)."""

    def __init__(self):
        self.value, self.t, self.stamp = None, None, None

    def set(self, value, stamp) -> None:
        self.value, self.t = value, time.monotonic()
        self.stamp = stamp.sec * 1_000_000_000 + stamp.nanosec

    def age(self, now: float) -> float:
        return float("inf") if self.t is None else now - self.t


class PolicyNode(Node):
    """``model``: run this in-memory policy instead of loading the ``checkpoint`` parameter (benchmarks);
    everything else (device, dtype, chunk execution, safety limits) comes from the parameters."""

    def __init__(self, model: RoboVLM | None = None, **kwargs):
        super().__init__(POLICY_NODE, **kwargs)
        self.p = p = declare_params(self, PolicyParams)
        self.robot = p.robot()
        self.period = 1.0 / p.control_rate_hz
        self.runner = self._build_runner(p, model)
        warm_s = self.runner.warmup()  # the first inference is slow; pay for it before the robot is waiting
        self.uses_hand = self.runner.config.use_hand_rgb
        if self.uses_hand and not p.gripper_camera_topic:
            raise ValueError("the checkpoint uses a gripper camera: set gripper_camera_topic")
        self.commands = CommandBuilder(self.robot, self.period)
        self._init_state()
        self._init_interfaces()
        if p.instruction.strip():
            self._set_instruction(p.instruction)
            self.running = bool(p.autostart)
            self.hold_reason = "" if self.running else "stopped"
        c = self.runner.config
        self.get_logger().info(
            f"policy ready: {c.backbone} {c.action_space} window {c.window_size} chunk {c.fwd_pred_next_n} on "
            f"{self.runner.device} ({self.runner.dtype}), warm-up {warm_s:.1f}s; "
            f"{'running' if self.running else 'call ~/start to run'}")

    @staticmethod
    def _build_runner(p: PolicyParams, model: RoboVLM | None) -> PolicyRunner:
        if model is None and not p.checkpoint:
            raise ValueError("parameter 'checkpoint' is empty: give the checkpoint directory to run")
        limits = SafetyLimits(tuple(p.action_low), tuple(p.action_high), p.max_linear_velocity,
                              p.max_angular_velocity)
        return PolicyRunner(p.checkpoint if model is None else model, device=p.device, dtype=p.dtype,
                            execute_steps=p.execute_steps or None, ensemble=p.ensemble, limits=limits)

    def _init_state(self) -> None:
        self.lock = threading.Lock()  # guards the flags below and publishing; never held during inference
        self.running = False
        self.needs_reset = False  # worker resets the runner's history before its next step
        self.instruction: str | None = None
        self.pending_instruction: str | None = None  # worker hands it to the runner before its next step
        self.last_gripper = GRIPPER_OPEN  # the last gripper command of this episode (worker thread only)
        self.camera, self.hand, self.joints = _Latest(), _Latest(), _Latest()
        # steps: commands from the policy; inferences: chunks predicted (fewer with execute_steps > 1)
        self.stats = {"steps": 0, "inferences": 0, "holds": 0, "overruns": 0, "rejected_msgs": 0, "unsafe_actions": 0}
        # header stamp of the inputs behind the newest published command, and the messages sent so far
        # (a lockstep simulator steps once it has received them all)
        self.inputs_stamp_of_last_command = -1
        self.sent = {"arm": 0, "gripper": 0}
        self._stamp_of_last_job = -1  # for wait_for_new_inputs
        self.latencies: deque[float] = deque(maxlen=200)  # inference seconds per predicted chunk
        self.input_ms: deque[float] = deque(maxlen=200)  # image message: transport + decode
        self.step_overhead_ms: deque[float] = deque(maxlen=200)  # job -> commands out, minus runner.step
        self.runtime_overhead_ms: deque[float] = deque(maxlen=200)  # runner.step minus inference (preprocessing)
        self.hold_reason = "stopped"

    def _init_interfaces(self) -> None:
        """Subscriptions, publishers, services, the worker thread and the timers."""
        r = self.robot
        self._image_sub(r.camera_topic, self.camera, "camera")
        if self.uses_hand:
            self._image_sub(r.gripper_camera_topic, self.hand, "gripper camera")
        self.create_subscription(JointState, r.joint_states_topic, self._on_joints, qos_profile_sensor_data)
        self.create_subscription(String, "~/instruction", self._on_instruction_msg, 10)
        self.arm_pub = self.create_publisher(self.commands.arm_msg_type, r.arm_command_topic, 10)
        self.gripper_pub = self.create_publisher(self.commands.gripper_msg_type, r.gripper_command_topic, 10)
        self.chunk_pub = self.create_publisher(Float64MultiArray, "~/action", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.add_on_set_parameters_callback(self._validate_params)
        self.add_post_set_parameters_callback(self._apply_params)

        self._work = threading.Condition()
        self._job = None
        self._alive = True
        self._worker = threading.Thread(target=self._work_loop, name="policy_inference", daemon=True)
        self._worker.start()
        self.create_timer(self.period, self._on_tick)
        self.create_timer(1.0, self._publish_diagnostics)

    # ------------------------------------------------------------------ inputs
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

        self.create_subscription(CompressedImage if is_compressed(topic) else Image, topic, on_image, qos_profile_sensor_data)

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

    # ------------------------------------------------------------------ instruction
    def _validate_params(self, params: list[Parameter]) -> SetParametersResult:
        for prm in params:
            if prm.name == "instruction":
                if prm.type_ != Parameter.Type.STRING:
                    return SetParametersResult(successful=False, reason="instruction must be a string")
                if len(prm.value) > MAX_INSTRUCTION_CHARS:
                    return SetParametersResult(successful=False,
                                               reason=f"instruction longer than {MAX_INSTRUCTION_CHARS} characters")
        return SetParametersResult(successful=True)

    def _apply_params(self, params: list[Parameter]) -> None:
        for prm in params:
            if prm.name == "instruction":
                self._set_instruction(prm.value)
            elif prm.name == "max_input_age_s":
                self.p.max_input_age_s = prm.value

    def _set_instruction(self, text: str) -> None:
        text = text.strip()
        with self.lock:
            if text:
                self.instruction = self.pending_instruction = text  # the runner restarts its history with it
                self.get_logger().info(f"instruction: {text!r}")
            else:
                self.instruction = self.pending_instruction = None
                if self.running:
                    self.running, self.hold_reason = False, "instruction cleared"
                    self._publish_hold()

    def _on_instruction_msg(self, msg: String) -> None:
        result = self.set_parameters([Parameter("instruction", Parameter.Type.STRING, msg.data)])[0]
        if not result.successful:
            self.get_logger().warning(f"instruction rejected: {result.reason}")

    # ------------------------------------------------------------------ services
    def _on_start(self, request, response):
        with self.lock:
            if self.instruction is None:
                response.success, response.message = False, "no instruction: set the 'instruction' parameter first"
                return response
            if not self.running:
                self.running, self.needs_reset, self.hold_reason = True, True, ""
            response.success, response.message = True, f"running: {self.instruction!r}"
        return response

    def _on_stop(self, request, response):
        with self.lock:
            was = self.running
            self.running, self.hold_reason = False, "stopped"
            self._publish_hold()
        response.success, response.message = True, "stopped" if was else "already stopped"
        return response

    def _on_reset(self, request, response):
        with self.lock:
            self.needs_reset = True
        response.success, response.message = True, "history cleared"
        return response

    # ------------------------------------------------------------------ control loop
    def _inputs_problem(self, now: float) -> str | None:
        ages = {"camera": self.camera.age(now), "joint states": self.joints.age(now)}
        if self.uses_hand:
            ages["gripper camera"] = self.hand.age(now)
        stale = [f"{k} {'missing' if v == float('inf') else f'{v:.2f}s old'}" for k, v in ages.items()
                 if v > self.p.max_input_age_s]
        return ", ".join(stale) if stale else None

    def _on_tick(self) -> None:
        with self.lock:
            if not self.running:
                return
            problem = self._inputs_problem(time.monotonic())
            if problem:
                self.needs_reset = True  # the window would mix frames from before and after the gap
                self.hold_reason = f"stale inputs: {problem}"
                self.stats["holds"] += 1
                self._publish_hold()
                self.get_logger().warning(f"holding: {problem}", throttle_duration_sec=2.0)
                return
            self.hold_reason = ""
            arm, joint_msg = self.joints.value
            slots = [self.camera, self.joints] + ([self.hand] if self.uses_hand else [])
            stamp = self.joints.stamp
            if self.p.wait_for_new_inputs and (any(s.stamp != stamp for s in slots)
                                                  or stamp <= self._stamp_of_last_job):
                return  # not yet one new step's inputs: stepping now would mix or repeat steps
            obs = {"rgb": self.camera.value}  # the state is built by the worker (it knows the last command)
            if self.uses_hand:
                obs["hand_rgb"] = self.hand.value
        with self._work:
            if self._job is not None:
                self.stats["overruns"] += 1
                return
            self._job = (obs, joint_msg, stamp)
            self._stamp_of_last_job = stamp
            self._work.notify()

    def _work_loop(self) -> None:
        while True:
            with self._work:
                while self._job is None and self._alive:
                    self._work.wait()
                if not self._alive:
                    return
                obs, joint_msg, inputs_stamp = self._job
            try:
                t_job = time.perf_counter()
                self._step(obs, joint_msg, t_job, inputs_stamp)
            except Exception as e:  # never let the inference thread die: hold and report
                self.get_logger().error(f"policy step failed: {e!r}", throttle_duration_sec=2.0)
                with self.lock:
                    self._publish_hold()
            finally:
                with self._work:
                    self._job = None

    def _step(self, obs: dict, joint_msg: JointState, t_job: float, inputs_stamp: int) -> None:
        with self.lock:
            if not self.running:
                return
            instruction, self.pending_instruction = self.pending_instruction, None
            reset, self.needs_reset = self.needs_reset, False
        if instruction is not None:
            self.runner.set_instruction(instruction)
        elif reset:
            self.runner.reset()
        if instruction is not None or reset:
            self.last_gripper = GRIPPER_OPEN  # a new episode: no gripper command yet
        obs["state"] = self._state(joint_msg, self.last_gripper)
        joints = obs["state"][:6]
        chunk_before = self.runner.last_chunk
        t_runner = time.perf_counter()
        try:
            action = self.runner.step(obs)
            error = None
        except (UnsafeActionError, ValueError) as e:
            error = e
        runner_s = time.perf_counter() - t_runner
        with self.lock:
            if not self.running:  # stopped while we were computing: the hold was already sent
                return
            if error is not None:
                self.stats["unsafe_actions"] += isinstance(error, UnsafeActionError)
                self.get_logger().warning(f"holding: {error}", throttle_duration_sec=2.0)
                self._publish_hold()
                return
            inference = 0.0
            if self.runner.last_chunk is not chunk_before:
                inference = self.runner.last_inference_s
                self.latencies.append(inference)
                self.stats["inferences"] += 1
                self.chunk_pub.publish(chunk_message(self.runner.last_chunk))
            stamp = self.get_clock().now().to_msg()
            self.arm_pub.publish(self.commands.arm(action[:6], joints, stamp))
            self.gripper_pub.publish(self.commands.gripper(action[6], stamp))
            self.sent["arm"] += 1
            self.sent["gripper"] += 1
            self.step_overhead_ms.append(1000 * (time.perf_counter() - t_job - runner_s))
            self.runtime_overhead_ms.append(1000 * (runner_s - inference))
            self.last_gripper = gripper_sign(action[6])
            self.inputs_stamp_of_last_command = inputs_stamp
            self.stats["steps"] += 1

    def _publish_hold(self) -> None:
        """Zero / hold-position arm command (caller holds self.lock)."""
        joints = self.joints.value[0] if self.joints.value is not None else None
        msg = self.commands.arm_hold(joints, self.get_clock().now().to_msg())
        if msg is not None:
            self.arm_pub.publish(msg)
            self.sent["arm"] += 1

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        lat = np.array(self.latencies) * 1000 if self.latencies else None
        with self.lock:
            state = "running" if self.running and not self.hold_reason else (
                "holding" if self.running else "stopped")
            level = DiagnosticStatus.OK if state != "holding" else DiagnosticStatus.WARN
            values = {
                "state": state, "instruction": self.instruction or "",
                "inference_p50_ms": f"{np.percentile(lat, 50):.1f}" if lat is not None else "",
                "inference_p99_ms": f"{np.percentile(lat, 99):.1f}" if lat is not None else "",
                "image_in_p50_ms": f"{np.percentile(self.input_ms, 50):.2f}" if self.input_ms else "",
                "step_overhead_p50_ms": f"{np.percentile(self.step_overhead_ms, 50):.2f}" if self.step_overhead_ms else "",
                "camera_age_s": f"{self.camera.age(now):.3f}", "joint_states_age_s": f"{self.joints.age(now):.3f}",
                **({"gripper_camera_age_s": f"{self.hand.age(now):.3f}"} if self.uses_hand else {}),
                **{k: str(v) for k, v in self.stats.items()},
            }
            message = state + (f": {self.hold_reason}" if self.hold_reason else "")
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: policy", message=message,
                                  hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def destroy_node(self):
        with self._work:
            self._alive = False
            self._work.notify()
        self._worker.join(timeout=5.0)
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(PolicyNode, POLICY_NODE, args)


if __name__ == "__main__":
    sys.exit(main())
