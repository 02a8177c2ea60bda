"""Robot state and actions from ROS messages (rclpy or rosbags-deserialised; fields are the same).

state  = 6 arm joint positions (picked by name) + gripper (+1 open / -1 closed, by a position threshold;
         a robot without a gripper joint reports the last gripper command instead, +1 before the first)
action = 6 arm values + gripper +-1, in the units of the command the robot received:
  TwistStamped        linear x, y, z, angular x, y, z        (what MoveIt Servo executed)
  Float64MultiArray   the 6 values (joint velocities)
  JointTrajectory     the first point's velocities, or (target - current positions) / time_from_start
  no commands         joint velocities from consecutive states: (q[k+1] - q[k]) / dt   (documented choice:
                      the policy then drives a forward velocity controller, arm_command_type float64_array)
gripper action: the commanded position nearer the open position -> +1, else -1 (Float64,
                Float64MultiArray, JointTrajectory or control_msgs GripperCommand); without gripper
                commands, the gripper state of the next frame (what the command achieved).

The policy node and the bag converter both build the state with ``state_from_joints``, so the model
sees in deployment exactly what it was trained on.
"""
from __future__ import annotations

import numpy as np

GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, -1.0


class FrameError(ValueError):
    """A message that cannot give a state or action (missing joints, NaN, wrong size)."""


def gripper_sign(value: float) -> float:
    """The policy's gripper output (a logit or an average of ±1) as the ±1 command: >= 0 is open."""
    return GRIPPER_OPEN if value >= 0 else GRIPPER_CLOSED


def gripper_from_position(value: float, open_position: float, closed_position: float) -> float:
    """A commanded gripper position as ±1: nearer the open position is open."""
    return GRIPPER_OPEN if abs(value - open_position) <= abs(value - closed_position) else GRIPPER_CLOSED


def gripper_position(sign: float, open_position: float, closed_position: float) -> float:
    """The ±1 gripper action as the position to command."""
    return open_position if sign >= 0 else closed_position


def state_from_joints(msg, arm_joints: list[str], gripper_joint: str, open_threshold: float,
                      last_gripper_command: float = GRIPPER_OPEN, max_position: float = np.inf) -> np.ndarray:
    """[6 arm positions, gripper ±1] from a JointState; ``gripper_joint`` '' means the robot reports no
    gripper joint: the gripper is then the last gripper command sent before this state (±1; open
    before the first command of an episode). Raises FrameError for missing joints, non-finite
    values or a position beyond ±``max_position`` (a corrupt message, not a robot)."""
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [j for j in arm_joints + ([gripper_joint] if gripper_joint else []) if j not in index]
    if missing:
        raise FrameError(f"joint state lacks {missing}")
    pos = np.asarray(msg.position, dtype=np.float64)
    if len(pos) != len(msg.name):
        raise FrameError(f"joint state has {len(msg.name)} names but {len(pos)} positions")
    arm = pos[[index[j] for j in arm_joints]]
    used = np.r_[arm, pos[index[gripper_joint]]] if gripper_joint else arm
    if not np.isfinite(used).all():
        raise FrameError("joint state has non-finite positions")
    if np.abs(used).max() > max_position:
        raise FrameError(f"joint state has a position beyond +-{max_position:g} ({np.abs(used).max():.3g})")
    if gripper_joint:
        grip = pos[index[gripper_joint]]
        grip = GRIPPER_OPEN if grip >= open_threshold else GRIPPER_CLOSED
    else:
        grip = gripper_sign(last_gripper_command)
    return np.r_[arm, grip]


def arm_from_command(msg, current_arm: np.ndarray) -> np.ndarray:
    if hasattr(msg, "twist"):
        t = msg.twist
        a = [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]
    elif hasattr(msg, "points"):
        if not msg.points:
            raise FrameError("joint trajectory without points")
        p = msg.points[0]
        if len(p.velocities) == 6:
            a = list(p.velocities)
        else:
            dt = p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
            if dt <= 0 or len(p.positions) != 6:
                raise FrameError("joint trajectory point without velocities, positions or duration")
            a = list((np.asarray(p.positions) - current_arm) / dt)
    else:
        a = list(msg.data)
        if len(a) != 6:
            raise FrameError(f"arm command has {len(a)} values, expected 6")
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise FrameError("arm command has non-finite values")
    return a


def gripper_command_value(msg) -> float:
    """The commanded gripper position of a gripper command message:
      std_msgs/Float64               data
      std_msgs/Float64MultiArray     data[0] (one value)
      trajectory_msgs/JointTrajectory  the first point's first position
      control_msgs/GripperCommand    position (also inside an action goal: command.position)
    Raises FrameError for another message or a malformed / non-finite one."""
    if hasattr(msg, "points"):
        if not msg.points or not len(msg.points[0].positions):
            raise FrameError("gripper trajectory without a point position")
        value = msg.points[0].positions[0]
    elif hasattr(msg, "command") and hasattr(msg.command, "position"):
        value = msg.command.position
    elif hasattr(msg, "position") and hasattr(msg, "max_effort"):
        value = msg.position
    elif hasattr(msg, "data"):
        data = msg.data
        if np.ndim(data) == 0:
            value = data
        elif len(data) == 1:
            value = data[0]
        else:
            raise FrameError(f"gripper command has {len(data)} values, expected 1")
    else:
        raise FrameError(f"{type(msg).__name__} is not a gripper command message")
    value = float(value)
    if not np.isfinite(value):
        raise FrameError("gripper command is not finite")
    return value


def gripper_from_command(msg, open_position: float, closed_position: float) -> float:
    """A gripper command message (gripper_command_value's types) as ±1."""
    return gripper_from_position(gripper_command_value(msg), open_position, closed_position)
