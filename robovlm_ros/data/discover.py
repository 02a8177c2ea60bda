"""The robot's topics and joints found in a bag by message type, for ``convert`` without a parameters
file: a bag recorded with ``ros2 bag record`` around any arm. What is found is printed so the user can
confirm it; anything ambiguous is an error that lists the candidates (then pass ``--params``)."""
from __future__ import annotations

from pathlib import Path

from rosbags.rosbag2 import Reader

from ..robot.description import RobotDescription
from .bags import BagError, typestore_for

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ARM_TYPES = {"geometry_msgs/msg/TwistStamped": "twist", "trajectory_msgs/msg/JointTrajectory": "joint_trajectory",
             "std_msgs/msg/Float64MultiArray": "float64_array"}  # in order of preference
GRIPPER_TYPES = ("std_msgs/msg/Float64", "std_msgs/msg/Float64MultiArray", "trajectory_msgs/msg/JointTrajectory",
                 "control_msgs/msg/GripperCommand")
WRIST_WORDS = ("gripper", "wrist", "hand")
GRIPPER_WORDS = ("grip", "finger")


def _has(topic: str, words) -> bool:
    return any(w in topic.lower() for w in words)


def _one(kind: str, candidates: list[str]) -> str:
    if len(candidates) > 1:
        raise BagError(f"several {kind} topics ({', '.join(candidates)}): name them in a parameters file (--params)")
    return candidates[0] if candidates else ""


def discover_robot(bag: str) -> RobotDescription:
    """The robot of ``bag`` (a rosbag2 directory): cameras, joint states, arm and gripper commands by
    type and name, arm and gripper joints from the first JointState. Gripper positions and limits keep
    RobotDescription's defaults."""
    try:
        with Reader(Path(bag)) as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            joint_conns = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/JointState"]
            first = None
            if len(joint_conns) == 1:
                typestore = typestore_for(joint_conns)
                for conn, _, raw in reader.messages(connections=joint_conns):
                    first = typestore.deserialize_cdr(raw, conn.msgtype)
                    break
    except BagError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt bag: say so
        raise BagError(f"cannot read bag {bag}: {type(e).__name__}: {e}") from e
    images = sorted(t for t, m in topics.items() if m in IMAGE_TYPES)
    wrist = [t for t in images if _has(t, WRIST_WORDS)]
    static = [t for t in images if t not in wrist]
    joints = _one("JointState", [c.topic for c in joint_conns])
    if not static or not joints:
        raise BagError(f"bag {bag} has no {'camera' if not static else 'JointState'} topic; its topics: "
                       + ", ".join(f"{t} ({m})" for t, m in sorted(topics.items())))
    gripper_cmd = _one("gripper command", sorted(t for t, m in topics.items() if m in GRIPPER_TYPES
                                                 and _has(t, GRIPPER_WORDS)))
    arm_cmd, arm_type = "", "float64_array"
    for msgtype, kind in ARM_TYPES.items():
        found = sorted(t for t, m in topics.items() if m == msgtype and t != gripper_cmd and not _has(t, GRIPPER_WORDS))
        if found:
            arm_cmd, arm_type = _one("arm command", found), kind
            break
    names = list(first.name) if first is not None else []
    gripper_joint = next((n for n in names if _has(n, GRIPPER_WORDS)), "")
    arm = [n for n in names if n != gripper_joint and not _has(n, GRIPPER_WORDS)][:6]
    if len(arm) < 6:
        raise BagError(f"{joints} names {names}: fewer than 6 arm joints; list them in a parameters file (--params)")
    gripper_type = "joint_trajectory" if topics.get(gripper_cmd) == "trajectory_msgs/msg/JointTrajectory" \
        else "float64_array"
    return RobotDescription(camera_topic=_one("static camera", static), gripper_camera_topic=_one("wrist camera", wrist),
                            joint_states_topic=joints, arm_joints=arm, gripper_joint=gripper_joint,
                            arm_command_type=arm_type, arm_command_topic=arm_cmd, gripper_command_topic=gripper_cmd,
                            gripper_command_type=gripper_type)


def describe(robot: RobotDescription) -> str:
    """What convert will read, one line per role."""
    rows = [("static camera", robot.camera_topic), ("wrist camera", robot.gripper_camera_topic or "(none)"),
            ("joint states", f"{robot.joint_states_topic}: arm {list(robot.arm_joints)}, gripper "
                             f"{robot.gripper_joint or '(none: the last gripper command)'}"),
            ("arm commands", f"{robot.arm_command_topic} ({robot.arm_command_type})" if robot.arm_command_topic
             else "(none: joint velocities from consecutive states)"),
            ("gripper commands", robot.gripper_command_topic or "(none: the gripper state each step led to)")]
    return "\n".join(f"  {role:<17} {what}" for role, what in rows)
