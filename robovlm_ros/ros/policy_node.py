"""``robovlm_policy``: cameras + joint states in, arm and gripper commands out.

Threads: the executor thread runs subscriptions, services and the control timer; one worker thread
owns the PolicyRunner and computes chunks, so a slow inference never blocks callbacks, services or
the control loop. Every control tick takes the newest inputs and sends the next queued action
(runtime/control.py ``ChunkedControl``): with ``execution: async`` the next chunk is computed while
the queue still runs, so a command goes out every period whatever the inference time; with ``sync``
the arm holds while a chunk is computed (the first tick waits for it). A dry queue sends a hold,
counted as ``starved``. Inputs missing or older than ``max_input_age_s`` send a hold and restart the
history. A new instruction, ``~/reset`` or ``~/stop`` discards queued actions and chunks in flight at
once, under a short lock, so nothing computed before them is sent after them.

With ``wait_for_new_inputs`` (lockstep) a step needs a new set of inputs that all carry the same
header stamp (a simulator in lockstep stamps the messages of one step alike) and the worker does the
whole step (``simulated_inference_delay_steps`` delays each chunk deterministically);
``inputs_stamp_of_last_command`` and ``sent`` let such a simulator in the same process step with the
policy (see sim_node.lockstep_gate).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from ..model import RoboVLM
from ..node_params import POLICY_NODE, PolicyParams
from ..robot.messages import GRIPPER_OPEN, gripper_sign
from ..runtime import PolicyRunner, SafetyLimits, UnsafeActionError
from ..runtime.cadence import Cadence, inference_budget_s
from ..runtime.control import ChunkedControl
from .commands import CommandBuilder, chunk_message
from .diagnostics import policy_diagnostics
from .params import declare_params
from .policy_inputs import PolicyInputs, _Latest
from .spin import run_node

MAX_INSTRUCTION_CHARS = 512
# a chunk being computed finishes before the worker stops: a real-size policy on a CPU takes seconds
WORKER_JOIN_S = 60.0


class PolicyCore(PolicyInputs):
    """The policy node's behaviour, shared by the plain node (PolicyNode, ready once built) and the
    managed one (ros/policy_lifecycle_node.py: configure / activate / deactivate / cleanup)."""

    def _declare(self) -> None:
        """Parameters and their callbacks (the instruction may be set in any state)."""
        self.p = p = declare_params(self, PolicyParams)
        self.robot = p.robot()
        self.period = 1.0 / p.control_rate_hz
        self.lock = threading.Lock()  # guards the flags below and publishing; never held during inference
        self.running = False
        self.hold_reason = "stopped"
        self.instruction: str | None = p.instruction.strip() or None
        self.control = None  # made by _configure
        self.add_on_set_parameters_callback(self._validate_params)
        self.add_post_set_parameters_callback(self._apply_params)

    def _configure(self, model: RoboVLM | None = None) -> float:
        """Load the policy, warm it up, open the topics and services, start the worker; returns the
        warm-up seconds."""
        p = self.p
        self.runner = self._build_runner(p, model)
        # one action per control step from the runner's chunks, computed beside the control loop
        self.control = ChunkedControl(self.runner, p.execution, p.chunk_combine, p.execute_steps or None, p.ensemble,
                                      p.simulated_inference_delay_steps)
        if self.instruction:  # the warm-up meets its token count (another count warms up again when it comes)
            self.runner.set_instruction(self.instruction)
        warm_s = self.runner.warmup()  # the first inference is slow; pay for it before the robot is waiting
        self.uses_hand = self.runner.config.use_hand_rgb
        if self.uses_hand and not p.gripper_camera_topic:
            raise ValueError("the checkpoint uses a gripper camera: set gripper_camera_topic")
        self.commands = CommandBuilder(self.robot, self.period)
        self._init_state()
        self._init_interfaces()
        if self.instruction:
            self.control.clear(self.instruction)
        return warm_s

    def _release(self) -> None:
        """Stop the worker and the timers, close the topics and services, free the policy (and its GPU
        memory). A chunk being computed finishes first; it is discarded."""
        with self.lock:
            self.running, self.hold_reason = False, "stopped"
            if self.control is not None:
                self.control.clear()
        if getattr(self, "_worker", None) is not None:
            with self._work:
                self._alive = False
                self._work.notify()
            self._worker.join(timeout=WORKER_JOIN_S)
            self._worker = None
        for timer in self._timers_made:
            self.destroy_timer(timer)
        for sub in self._subs:
            self.destroy_subscription(sub)
        for pub in self._pubs:
            self.destroy_publisher(pub)
        for srv in self._srvs:
            self.destroy_service(srv)
        self._timers_made, self._subs, self._pubs, self._srvs = [], [], [], []
        device = self.runner.device
        self.control = self.runner = None
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _log_ready(self, warm_s: float) -> None:
        c = self.runner.config
        self.get_logger().info(
            f"policy ready: {c.backbone} {c.action_space} window {c.window_size} chunk {c.fwd_pred_next_n} on "
            f"{self.runner.device} ({self.runner.dtype}), warm-up {warm_s:.1f}s")

    @staticmethod
    def _build_runner(p: PolicyParams, model: RoboVLM | None) -> PolicyRunner:
        if model is None and not p.checkpoint:
            raise ValueError("parameter 'checkpoint' is empty: give the checkpoint directory to run")
        limits = SafetyLimits(tuple(p.action_low), tuple(p.action_high), p.max_linear_velocity,
                              p.max_angular_velocity)
        return PolicyRunner(p.checkpoint if model is None else model, device=p.device, dtype=p.dtype,
                            execute_steps=p.execute_steps or None, ensemble=p.ensemble, limits=limits,
                            compile=p.compile, cuda_graphs=p.cuda_graphs)

    def _init_state(self) -> None:
        self.last_gripper = GRIPPER_OPEN  # the last gripper command sent in this episode
        self.camera, self.hand, self.joints = _Latest(), _Latest(), _Latest()
        # steps: commands from the policy; inferences: chunks predicted (fewer with execute_steps > 1)
        self.stats = {"steps": 0, "inferences": 0, "holds": 0, "overruns": 0, "rejected_msgs": 0, "unsafe_actions": 0}
        # header stamp of the inputs behind the newest published command, and the messages sent so far
        # (a lockstep simulator steps once it has received them all)
        self.inputs_stamp_of_last_command = -1
        self.sent = {"arm": 0, "gripper": 0}
        self._stamp_of_last_job = -1  # for wait_for_new_inputs
        s = self.control.schedule
        self.cadence = Cadence(self.period, inference_budget_s(self.p.execution, s.chunk_len, s.execute_steps,
                                                               self.period))
        self.input_ms: deque[float] = deque(maxlen=200)  # image message: transport + decode
        self.runtime_overhead_ms: deque[float] = deque(maxlen=200)  # a chunk's runner time minus inference (preprocessing)

    def _init_interfaces(self) -> None:
        """Subscriptions, publishers, services, the worker thread and the timers."""
        r = self.robot
        self._subs = self._subscribe_inputs()
        self._subs.append(self.create_subscription(String, "~/instruction", self._on_instruction_msg, 10))
        self.arm_pub = self.create_publisher(self.commands.arm_msg_type, r.arm_command_topic, 10)
        self.gripper_pub = self.create_publisher(self.commands.gripper_msg_type, r.gripper_command_topic, 10)
        self.chunk_pub = self.create_publisher(Float64MultiArray, "~/action", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._pubs = [self.arm_pub, self.gripper_pub, self.chunk_pub, self.diag_pub]
        self._srvs = [self.create_service(Trigger, f"~/{name}", handler)
                      for name, handler in (("start", self._on_start), ("stop", self._on_stop), ("reset", self._on_reset))]
        self._work = threading.Condition()
        self._job = None  # the next job for the worker: ("chunk" | "lockstep", ChunkJob, observation, stamp)
        self.worker_busy = False
        self._alive = True
        self._worker = threading.Thread(target=self._work_loop, name="policy_inference", daemon=True)
        self._worker.start()
        self._timers_made = [self.create_timer(self.period, self._on_tick),
                             self.create_timer(1.0, self._publish_diagnostics)]

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
                self.instruction = text
                self._new_episode(text)  # queued actions of the old instruction are never executed
                self.get_logger().info(f"instruction: {text!r}")
            else:
                self.instruction = None
                self._new_episode()
                if self.running:
                    self.running, self.hold_reason = False, "instruction cleared"
                    self._publish_hold()
        self._instruction_changed()

    def _instruction_changed(self) -> None:
        """Hook: the managed node starts controlling when an instruction arrives while it is active."""

    def _new_episode(self, instruction: str | None = None) -> None:
        """Discard queued actions and chunks in flight; the history restarts (caller holds self.lock)."""
        if self.control is not None:  # (not configured yet: nothing queued)
            self.control.clear(instruction)
        self.last_gripper = GRIPPER_OPEN  # no gripper command yet in the new episode

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
                self._new_episode()
                self.running, self.hold_reason = True, ""
            response.success, response.message = True, f"running: {self.instruction!r}"
        return response

    def _on_stop(self, request, response):
        with self.lock:
            was = self.running
            self.running, self.hold_reason = False, "stopped"
            self._new_episode()
            self._publish_hold()
        response.success, response.message = True, "stopped" if was else "already stopped"
        return response

    def _on_reset(self, request, response):
        with self.lock:
            self._new_episode()
        response.success, response.message = True, "history cleared"
        return response

    # ------------------------------------------------------------------ control loop
    def _on_tick(self) -> None:
        t_tick = time.perf_counter()
        with self.lock:
            if not self.running:
                return
            problem = self._inputs_problem(time.monotonic())
            if problem:
                self._new_episode()  # the window would mix frames from before and after the gap
                self.hold_reason = f"stale inputs: {problem}"
                self.stats["holds"] += 1
                self._publish_hold()
                self.get_logger().warning(f"holding: {problem}", throttle_duration_sec=2.0)
                return
            self.hold_reason = ""
            stamp = self.joints.stamp
            if self.p.wait_for_new_inputs:
                slots = [self.camera, self.joints] + ([self.hand] if self.uses_hand else [])
                if any(s.stamp != stamp for s in slots) or stamp <= self._stamp_of_last_job:
                    return  # not yet one new step's inputs: stepping now would mix or repeat steps
            obs = self._observation()
            now = time.monotonic()
            self.cadence.input_age.append(max(s.age(now) for s in (self.camera, self.joints, self.hand)[:2 + self.uses_hand]))
            if not self.p.wait_for_new_inputs:
                action, job = self.control.control_step(obs)
                if action is not None:
                    self._send(action, obs["state"][:6], stamp, t_tick)
                elif job is None or not job.owed:  # dry: the next chunk is late
                    self._publish_hold(stamp)
                if job is not None:
                    self._submit(("chunk", job, obs, stamp))
                return
        self._submit(("lockstep", None, obs, stamp))  # the worker does the whole step

    def _submit(self, job: tuple) -> None:
        with self._work:
            if self._job is not None and job[0] == "lockstep":
                self.stats["overruns"] += 1  # the worker is still on the previous step
                return
            self._job = job  # a chunk job replaces one still waiting (that one was discarded by a clear)
            if job[0] == "lockstep":
                self._stamp_of_last_job = job[3]
            self._work.notify()

    def _work_loop(self) -> None:
        while True:
            with self._work:
                while self._job is None and self._alive:
                    self._work.wait()
                if not self._alive:
                    return
                kind, job, obs, stamp = self._job
                self._job, self.worker_busy = None, True
            try:
                if kind == "chunk":
                    self._chunk(job, obs, stamp)
                else:
                    self._lockstep(obs, stamp)
            except Exception as e:  # never let the inference thread die: hold and report
                self.get_logger().error(f"policy step failed: {e!r}", throttle_duration_sec=2.0)
                if kind == "chunk":
                    self.control.deliver(job, None)
                with self.lock:
                    self._publish_hold()
            finally:
                self.worker_busy = False

    def _chunk(self, job, obs: dict, stamp: int) -> None:
        """Worker: compute a chunk while the control timer keeps executing the queue."""
        t0 = time.perf_counter()
        chunk = self.control.compute(job)
        if chunk is None:  # the runner warmed up for a new instruction first: the next step asks with fresh inputs
            self.control.deliver(job, None)
            self._log_warmup()
            return
        self._chunk_done(time.perf_counter() - t0)
        t_ready = time.perf_counter()
        action = self.control.deliver(job, chunk)
        with self.lock:
            if action is not None and self.running:
                self._send(action, obs["state"][:6], stamp, t_ready)

    def _lockstep(self, obs: dict, stamp: int) -> None:
        """Worker: one step of a lockstep simulation (the simulator waits for this step's command)."""
        t0, warmups = time.perf_counter(), self.runner.warmups
        chunks_before = self.runner.last_chunk
        action = self.control.lockstep_step(obs)
        runner_s = time.perf_counter() - t0
        if self.runner.warmups != warmups:  # a new instruction's warm-up ran first (the simulator waited for it)
            runner_s -= self.runner.last_warmup_s
            self._log_warmup()
        if self.runner.last_chunk is not chunks_before:
            self._chunk_done(runner_s)
        t_ready = time.perf_counter()
        with self.lock:
            if not self.running:  # stopped while we were computing: the hold was already sent
                return
            if action is not None:
                self._send(action, obs["state"][:6], stamp, t_ready)
            else:
                self._publish_hold(stamp)

    def _log_warmup(self) -> None:
        self.get_logger().info(f"warmed up in {self.runner.last_warmup_s:.2f} s for the instruction's "
                               f"{self.runner.warm_tokens} tokens (graphs and compiled shapes are bound to the "
                               f"count), before its first chunk")

    def _chunk_done(self, runner_s: float) -> None:
        with self.lock:
            inference = self.runner.last_inference_s or 0.0
            self.cadence.infer.append(inference)
            self.runtime_overhead_ms.append(1000 * (runner_s - inference))
            self.stats["inferences"] += 1
            self.chunk_pub.publish(chunk_message(self.runner.last_chunk))

    def _send(self, action: np.ndarray, joints: np.ndarray, inputs_stamp: int, t_start: float) -> None:
        """Publish one action through the safety limits (caller holds self.lock)."""
        try:
            action = self.runner.limits.apply(action)
        except UnsafeActionError as e:
            self.stats["unsafe_actions"] += 1
            self.get_logger().warning(f"holding: {e}", throttle_duration_sec=2.0)
            self._publish_hold(inputs_stamp)
            return
        stamp = self.get_clock().now().to_msg()
        self.arm_pub.publish(self.commands.arm(action[:6], joints, stamp))
        self.gripper_pub.publish(self.commands.gripper(action[6], stamp))
        self.sent["arm"] += 1
        self.sent["gripper"] += 1
        self.cadence.send.append(time.perf_counter() - t_start)
        self.last_gripper = gripper_sign(action[6])
        self.inputs_stamp_of_last_command = inputs_stamp
        self.stats["steps"] += 1

    def on_exit(self) -> None:
        """The node is going (a signal, its parent process gone): control stops and a last hold goes out, so a
        controller that keeps executing its last command (a twist) stops the arm (run_node calls this while
        ROS is still up)."""
        with self.lock:
            self.running, self.hold_reason = False, "shutting down"
            if getattr(self, "arm_pub", None) in getattr(self, "_pubs", ()):  # configured, not yet released
                self._publish_hold()

    def _publish_hold(self, inputs_stamp: int | None = None) -> None:
        """Zero / hold-position arm command (caller holds self.lock); ``inputs_stamp``: the step it answers."""
        joints = self.joints.value[0] if self.joints.value is not None else None
        msg = self.commands.arm_hold(joints, self.get_clock().now().to_msg())
        if msg is not None:
            self.arm_pub.publish(msg)
            self.sent["arm"] += 1
        if inputs_stamp is not None:
            self.inputs_stamp_of_last_command = inputs_stamp

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        with self.lock:
            self.diag_pub.publish(policy_diagnostics(self, self.get_clock().now().to_msg()))



class PolicyNode(PolicyCore, Node):
    """``model``: run this in-memory policy instead of loading the ``checkpoint`` parameter (benchmarks);
    everything else (device, dtype, chunk execution, safety limits) comes from the parameters."""

    def __init__(self, model: RoboVLM | None = None, **kwargs):
        Node.__init__(self, POLICY_NODE, **kwargs)
        self._declare()
        warm_s = self._configure(model)
        if self.instruction and self.p.autostart:
            self.running, self.hold_reason = True, ""
        self._log_ready(warm_s)
        self.get_logger().info("running" if self.running else "call ~/start to run")

    def destroy_node(self):
        with self._work:
            self._alive = False
            self._work.notify()
        self._worker.join(timeout=WORKER_JOIN_S)
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(PolicyNode, POLICY_NODE, args)


if __name__ == "__main__":
    sys.exit(main())
