"""The parameters of the package's nodes as plain data (no ROS imports): each extends the robot's
description (``robot/description.py``) with what that node alone needs.

``ros/params.py`` declares them as ROS parameters; ``config/policy.yaml`` repeats ``PolicyParams``
(a test keeps the two equal); the bag converter reads the same file to learn the robot.
"""
from __future__ import annotations

from dataclasses import dataclass

from .robot.description import RobotDescription, from_params, param, ros_parameters

POLICY_NODE = "robovlm_policy"


@dataclass
class PolicyParams(RobotDescription):
    """``robovlm_policy`` (ros/policy_node.py)."""
    checkpoint: str = param("", "checkpoint directory written by training (config.json, model.safetensors, ...)")
    device: str = param("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:N")
    dtype: str = param("auto", "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    compile: bool = param(False, "torch.compile the vision tower, decoder layers and head (compiled during the "
                                 "warm-up, once per input size and instruction length)")
    cuda_graphs: bool = param(True, "on CUDA, replay the policy step's VLM pass and discrete decoding as CUDA graphs "
                                    "(captured at the first step of an instruction length, checked against the "
                                    "eager step first); false: eager kernels only")
    min_image_size: int = param(16, "images narrower or lower than this many pixels are rejected", range=(1, 100000))
    instruction: str = param("", "language instruction; a new value restarts the history", read_only=False)
    max_input_age_s: float = param(0.5, "inputs older than this are stale: the arm holds", read_only=False,
                                   range=(0.001, 60.0))
    execute_steps: int = param(0, "actions of each predicted chunk executed before replanning (0 = whole chunk)",
                               range=(0, 1000))
    ensemble: bool = param(False, "predict every step and average overlapping chunks (temporal ensembling)")
    execution: str = param("sync", "sync: the next chunk is computed once the queue is empty (the arm holds while "
                                   "it is); async: it is computed while the queue still runs, once execute_steps "
                                   "actions were executed, and joins it aligned to the arm")
    chunk_combine: str = param("newest", "async: how a new chunk is combined with the queued actions it overlaps: "
                                         "newest, average, weighted (2/3 newest), rtc (keep the committed prefix, "
                                         "then ease into the new chunk)")
    simulated_inference_delay_steps: int = param(0, "with wait_for_new_inputs (lockstep): a chunk becomes usable "
                                                    "this many control steps after its inputs, to measure what "
                                                    "inference latency costs", range=(0, 1000))
    action_low: list = param([-1.0] * 6, "per-dimension lower bound of the 6 arm values")
    action_high: list = param([1.0] * 6, "per-dimension upper bound of the 6 arm values")
    max_linear_velocity: float = param(0.25, "norm bound of arm values 0..2 (m/s for twist)", range=(1e-6, 1e9))
    max_angular_velocity: float = param(1.0, "norm bound of arm values 3..5 (rad/s for twist)", range=(1e-6, 1e9))
    autostart: bool = param(False, "start controlling as soon as an instruction is set")
    wait_for_new_inputs: bool = param(False, "step only on a new set of inputs that all carry the same header stamp "
                                             "(a lockstep simulator stamps one step's messages alike); a real arm "
                                             "controller wants a command every period")


@dataclass
class SimParams(RobotDescription):
    """``sim_node`` (ros/sim_node.py): the simulated robot takes twists and Float64MultiArray gripper
    positions and publishes its joints under the described names."""
    gripper_open_threshold: float = param(0.027, "gripper joint position at or above which the gripper counts as "
                                                 "open (the simulated fingers open to 0.04 m)")
    image_size: int = param(96, "camera images are image_size x image_size")
    real_time_factor: float = param(1.0, "simulated seconds per wall-clock second")
    command_timeout_s: float = param(0.5, "an older twist is treated as zero (simulated seconds)")
    seed: int = param(0, "seed of the episode the next ~/reset starts", read_only=False)
    target: str = param("", "block the next ~/reset asks for (red, green, blue); empty: drawn from the seed",
                        read_only=False)
    max_episode_seconds: float = param(0.0, "the physics stops after this many simulated seconds of an episode, "
                                            "until the next ~/reset (0: never)")
    stop_on_success: bool = param(False, "the physics stops once the task succeeds, until the next ~/reset")
    lockstep_resend_s: float = param(1.0, "with a step gate (lockstep): publish the unanswered step again after "
                                          "this wait, wall-clock seconds")
    lockstep_timeout_s: float = param(60.0, "with a step gate (lockstep): longest wait for the policy, wall-clock "
                                            "seconds")
    actuation_noise: float = param(0.0, "velocity-tracking error: each commanded twist component is scaled by "
                                        "1 + N(0, this), redrawn every 5 steps and seeded by the episode (0: an "
                                        "ideal arm)")
    noise_seed: int = param(0, "another draw of the actuation noise for the same episodes (0: the episode's own)")

    def check(self) -> None:
        super().check()
        if (self.arm_command_type, self.gripper_command_type) != ("twist", "float64_array"):
            raise ValueError("the simulated arm takes twist arm commands and float64_array gripper commands")


@dataclass
class RecorderParams(RobotDescription):
    """``episode_recorder`` (ros/episode_recorder.py): records the robot's topics ('' = not recorded)."""
    output_dir: str = param("episodes", "directory that receives one rosbag2 directory per episode")
    storage: str = param("mcap", "rosbag2 storage: mcap or sqlite3")
    episode_prefix: str = param("episode", "episode directory names: <prefix>_<date>_<time>_<n>")
    instruction: str = param("", "language instruction stored with the next episode", read_only=False)
    max_input_age_s: float = param(1.0, "~/start is refused when a camera or the joint states are older than this",
                                   read_only=False)

    def check(self) -> None:
        super().check()
        if self.storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage must be mcap or sqlite3, not {self.storage!r}")


def load_policy_params(path: str | None) -> PolicyParams:
    """The policy node's parameters from a ROS 2 parameters file (its ``robovlm_policy`` or ``/**``
    section); defaults without a file. Unknown names are refused."""
    if not path:
        return PolicyParams()
    return from_params(PolicyParams, ros_parameters(path, POLICY_NODE), path)


def sim_robot(ns: str = "") -> RobotDescription:
    """The simulated robot (sim_node's defaults), its topics under ``/ns`` when given."""
    robot = SimParams().robot()
    return robot.namespaced(ns) if ns else robot
