"""Parameters of ``robovlm_policy`` with their descriptors (defaults = config/policy.yaml)."""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


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
}


def descriptor(name: str) -> ParameterDescriptor:
    default, description, read_only, rng = POLICY_PARAMS[name]
    d = ParameterDescriptor(name=name, description=description, read_only=read_only)
    if rng is not None:
        if isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(rng[0]), to_value=float(rng[1]), step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=1)]
    return d
