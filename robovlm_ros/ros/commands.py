"""Policy actions -> ROS command messages, and the matching hold commands.

Arm (6 values):
  * ``twist``            geometry_msgs/TwistStamped for MoveIt Servo: linear x, y, z (m/s), angular x, y, z
                         (rad/s) in ``frame_id``; hold = zero twist.
  * ``float64_array``    std_msgs/Float64MultiArray of 6 joint velocities for a ros2_control forward
                         velocity controller; hold = zeros.
  * ``joint_trajectory`` trajectory_msgs/JointTrajectory with one point: current joint positions +
                         velocity * control period, reached after one period; hold = current positions.
Gripper (+1 open / -1 close):
  * ``float64_array``    [open_position] or [closed_position] for a forward position controller.
  * ``joint_trajectory`` one point for the gripper joint.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..robot.description import ARM_COMMAND_TYPES, GRIPPER_COMMAND_TYPES, RobotDescription
from ..robot.messages import gripper_position

# the message class of each command type RobotDescription names (parsing them: robot/messages.py)
ARM_TYPES = {"twist": TwistStamped, "float64_array": Float64MultiArray, "joint_trajectory": JointTrajectory}
GRIPPER_TYPES = {"float64_array": Float64MultiArray, "joint_trajectory": JointTrajectory}
assert set(ARM_TYPES) == set(ARM_COMMAND_TYPES) and set(GRIPPER_TYPES) == set(GRIPPER_COMMAND_TYPES)


def _duration(seconds: float) -> Duration:
    return Duration(sec=int(seconds), nanosec=int(round((seconds - int(seconds)) * 1e9)))


class CommandBuilder:
    """Command messages for the robot ``robot`` (a RobotDescription) at the control period ``period_s``."""

    def __init__(self, robot: RobotDescription, period_s: float):
        self.arm_type, self.gripper_type, self.frame_id = robot.arm_command_type, robot.gripper_command_type, \
            robot.twist_frame_id
        self.arm_joints, self.gripper_joint = list(robot.arm_joints), robot.gripper_joint
        self.open_position, self.closed_position = robot.gripper_open_position, robot.gripper_closed_position
        self.period_s = period_s

    @property
    def arm_msg_type(self):
        return ARM_TYPES[self.arm_type]

    @property
    def gripper_msg_type(self):
        return GRIPPER_TYPES[self.gripper_type]

    def arm(self, arm: np.ndarray, joint_positions: np.ndarray | None, stamp):
        """6 arm values -> arm command (velocity semantics, see module doc)."""
        arm = [float(x) for x in arm]
        if self.arm_type == "twist":
            msg = TwistStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
            (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z,
             msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = arm
            return msg
        if self.arm_type == "float64_array":
            return Float64MultiArray(data=arm)
        if joint_positions is None:
            raise ValueError("joint_trajectory commands need the current joint positions")
        target = np.asarray(joint_positions, float) + np.asarray(arm) * self.period_s
        point = JointTrajectoryPoint(positions=target.tolist(), velocities=arm,
                                     time_from_start=_duration(self.period_s))
        msg = JointTrajectory(joint_names=self.arm_joints, points=[point])
        msg.header.stamp = stamp
        return msg

    def arm_hold(self, joint_positions: np.ndarray | None, stamp):
        """The command that keeps the arm where it is."""
        if self.arm_type == "joint_trajectory" and joint_positions is None:
            return None  # nothing known to hold at; the controller keeps its last goal
        return self.arm(np.zeros(6), joint_positions, stamp)

    def gripper(self, gripper: float, stamp):
        position = gripper_position(gripper, self.open_position, self.closed_position)
        if self.gripper_type == "float64_array":
            return Float64MultiArray(data=[float(position)])
        point = JointTrajectoryPoint(positions=[float(position)], time_from_start=_duration(self.period_s))
        msg = JointTrajectory(joint_names=[self.gripper_joint], points=[point])
        msg.header.stamp = stamp
        return msg


def chunk_message(chunk: np.ndarray) -> Float64MultiArray:
    """[chunk, 7] unnormalised actions -> Float64MultiArray with a 2-D layout (steps x action values)."""
    msg = Float64MultiArray(data=[float(x) for x in np.asarray(chunk).reshape(-1)])
    n, d = chunk.shape
    msg.layout.dim = [MultiArrayDimension(label="step", size=n, stride=n * d),
                      MultiArrayDimension(label="action", size=d, stride=d)]
    return msg
