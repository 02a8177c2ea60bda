"""Parameters of the ``robovlm_policy`` node as plain data (no ROS imports).

``ros/params.py`` turns them into ROS parameter descriptors; ``config/policy.yaml`` repeats them
(a test keeps the three equal); the bag converter reads the same file to learn the robot's topics
and joints, so one parameters file describes a robot for recording, training and deployment.
"""
from __future__ import annotations

import yaml

NODE_NAME = "robovlm_policy"

# name: (default, description, read_only, range)
POLICY_PARAMS: dict[str, tuple] = {
    "checkpoint": ("", "checkpoint directory written by training (config.json, model.safetensors, ...)", True, None),
    "device": ("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:N", True, None),
    "dtype": ("auto", "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16", True, None),
    "camera_topic": ("/camera/image_raw", "static camera; a name ending in /compressed means CompressedImage", True, None),
    "gripper_camera_topic": ("/gripper_camera/image_raw", "wrist camera ('' = none)", True, None),
    "joint_states_topic": ("/joint_states", "sensor_msgs/JointState with the arm and gripper joints", True, None),
    "arm_joints": (["joint1", "joint2", "joint3", "joint4", "joint5", "joint6"],
                   "the 6 arm joints, in the order of the policy's state", True, None),
    "gripper_joint": ("gripper_joint", "gripper joint in JointState ('' = use the last gripper command)", True, None),
    "gripper_open_threshold": (0.02, "gripper joint position at or above which the gripper counts as open", True, None),
    "max_joint_position": (1000.0, "a joint state with a position beyond +-this (rad or m) is rejected as corrupt",
                           True, (1e-6, 1e12)),
    "min_image_size": (16, "images narrower or lower than this many pixels are rejected", True, (1, 100000)),
    "instruction": ("", "language instruction; a new value restarts the history", False, None),
    "control_rate_hz": (10.0, "control loop rate", True, (0.1, 1000.0)),
    "max_input_age_s": (0.5, "inputs older than this are stale: the arm holds", False, (0.001, 60.0)),
    "execute_steps": (0, "actions of each predicted chunk executed before replanning (0 = whole chunk)", True, (0, 1000)),
    "ensemble": (False, "predict every step and average overlapping chunks (temporal ensembling)", True, None),
    "arm_command_type": ("twist", "twist (MoveIt Servo), float64_array (forward velocity controller), "
                                  "joint_trajectory", True, None),
    "arm_command_topic": ("/servo_node/delta_twist_cmds", "where arm commands are published", True, None),
    "twist_frame_id": ("base_link", "frame of TwistStamped commands", True, None),
    "gripper_command_type": ("float64_array", "float64_array (forward position controller) or joint_trajectory",
                             True, None),
    "gripper_command_topic": ("/gripper_controller/commands", "where gripper commands are published", True, None),
    "gripper_open_position": (0.04, "gripper command for open (+1)", True, None),
    "gripper_closed_position": (0.0, "gripper command for closed (-1)", True, None),
    "action_low": ([-1.0] * 6, "per-dimension lower bound of the 6 arm values", True, None),
    "action_high": ([1.0] * 6, "per-dimension upper bound of the 6 arm values", True, None),
    "max_linear_velocity": (0.25, "norm bound of arm values 0..2 (m/s for twist)", True, (1e-6, 1e9)),
    "max_angular_velocity": (1.0, "norm bound of arm values 3..5 (rad/s for twist)", True, (1e-6, 1e9)),
    "autostart": (False, "start controlling as soon as an instruction is set", True, None),
    "wait_for_new_inputs": (False, "step only on a new set of inputs that all carry the same header stamp (a "
                                   "lockstep simulator stamps one step's messages alike); a real arm controller "
                                   "wants a command every period", True, None),
}


def load_params_file(path: str | None, node: str = NODE_NAME) -> dict:
    """Defaults overlaid with ``node``'s ``ros__parameters`` from a ROS 2 parameters YAML file."""
    params = {name: spec[0] for name, spec in POLICY_PARAMS.items()}
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        section = data.get(node, data.get(f"/{node}", data.get("/**", {})))
        given = section.get("ros__parameters", {})
        unknown = set(given) - set(params)
        if unknown:
            raise ValueError(f"{path}: unknown parameters {sorted(unknown)}")
        params.update(given)
    return params
