"""The robot, described once: topics, joints, gripper, command types and control rate.

``RobotDescription`` is what the policy node, the episode recorder, the simulator, the bag converter,
the launch file and the evaluation all read; each node's parameters extend it (``node_params.py``),
so one ROS 2 parameters file (``config/policy.yaml``) describes a robot for recording, training and
deployment. Plain data, no ROS imports.

Every field is declared with ``param()``: its default, the description ``ros2 param describe`` shows,
whether it is fixed at start-up and its numeric range. ``ros/params.py`` turns such dataclasses into
ROS parameters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import yaml

from .messages import state_from_joints

ARM_COMMAND_TYPES = ("twist", "float64_array", "joint_trajectory")
GRIPPER_COMMAND_TYPES = ("float64_array", "joint_trajectory")


def param(default, description: str, read_only: bool = True, range: tuple | None = None):  # noqa: A002
    """A dataclass field that is also a ROS parameter (lists are copied per instance)."""
    meta = {"description": description, "read_only": read_only, "range": range}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def params_of(cls) -> dict[str, dataclasses.Field]:
    """name -> field of a parameter dataclass, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


@dataclass
class RobotDescription:
    camera_topic: str = param("/camera/image_raw", "static camera; a name ending in /compressed means CompressedImage")
    gripper_camera_topic: str = param("/gripper_camera/image_raw", "wrist camera ('' = none)")
    joint_states_topic: str = param("/joint_states", "sensor_msgs/JointState with the arm and gripper joints")
    arm_joints: list = param(["joint1", "joint2", "joint3", "joint4", "joint5", "joint6"],
                             "the 6 arm joints, in the order of the policy's state")
    gripper_joint: str = param("gripper_joint", "gripper joint in JointState ('' = use the last gripper command)")
    gripper_open_threshold: float = param(0.02, "gripper joint position at or above which the gripper counts as open")
    max_joint_position: float = param(1000.0, "a joint state with a position beyond +-this (rad or m) is rejected "
                                              "as corrupt", range=(1e-6, 1e12))
    control_rate_hz: float = param(10.0, "control loop rate", range=(0.1, 1000.0))
    arm_command_type: str = param("twist", "twist (MoveIt Servo), float64_array (forward velocity controller), "
                                           "joint_trajectory")
    arm_command_topic: str = param("/servo_node/delta_twist_cmds", "where arm commands are published")
    twist_frame_id: str = param("base_link", "frame of TwistStamped commands")
    gripper_command_type: str = param("float64_array", "float64_array (forward position controller) or "
                                                       "joint_trajectory")
    gripper_command_topic: str = param("/gripper_controller/commands", "where gripper commands are published")
    gripper_open_position: float = param(0.04, "gripper command for open (+1)")
    gripper_closed_position: float = param(0.0, "gripper command for closed (-1)")

    TOPIC_FIELDS = ("camera_topic", "gripper_camera_topic", "joint_states_topic", "arm_command_topic",
                    "gripper_command_topic")

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raises ValueError for a description no node can work with."""
        if len(self.arm_joints) != 6:
            raise ValueError(f"arm_joints needs 6 names, got {list(self.arm_joints)}")
        if self.arm_command_type not in ARM_COMMAND_TYPES:
            raise ValueError(f"arm_command_type must be one of {list(ARM_COMMAND_TYPES)}, not {self.arm_command_type!r}")
        if self.gripper_command_type not in GRIPPER_COMMAND_TYPES:
            raise ValueError(f"gripper_command_type must be one of {list(GRIPPER_COMMAND_TYPES)}, "
                             f"not {self.gripper_command_type!r}")

    # ------------------------------------------------------------------ views
    def robot(self) -> RobotDescription:
        """The robot part of a node's parameters (a subclass instance)."""
        return RobotDescription(**{name: getattr(self, name) for name in params_of(RobotDescription)})

    def topics(self) -> dict[str, str]:
        """field name -> topic, for the topics this robot has ('' = none is left out)."""
        return {name: getattr(self, name) for name in self.TOPIC_FIELDS if getattr(self, name)}

    def namespaced(self, ns: str) -> RobotDescription:
        """The same robot with every topic under ``/ns`` (several robots or test runs side by side)."""
        moved = {name: f"/{ns.strip('/')}/{topic.lstrip('/')}" for name, topic in self.topics().items()}
        return dataclasses.replace(self, **moved)

    def as_params(self) -> dict:
        """field name -> value: ROS parameter overrides of a node that reads this description."""
        return {name: getattr(self, name) for name in params_of(type(self))}

    # ------------------------------------------------------------------ messages
    def state(self, joint_state, last_gripper_command: float) -> np.ndarray:
        """[6 arm positions, gripper ±1] from a JointState (robot/messages.py ``state_from_joints``)."""
        return state_from_joints(joint_state, list(self.arm_joints), self.gripper_joint, self.gripper_open_threshold,
                                 last_gripper_command, self.max_joint_position)


def is_compressed(topic: str) -> bool:
    """Image topics named ``.../compressed`` carry sensor_msgs/CompressedImage."""
    return topic.rstrip("/").endswith("/compressed")


def ros_parameters(path: str, node: str) -> dict:
    """``node``'s ``ros__parameters`` from a ROS 2 parameters YAML file, as ROS reads it: the ``/**``
    section (every node) overlaid with the node's own (``node`` or ``/node``)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    params = {}
    for key in ("/**", node, f"/{node}"):
        params.update((data.get(key) or {}).get("ros__parameters", {}))
    return params


def from_params(cls, given: dict, source: str = "parameters"):
    """An instance of the parameter dataclass ``cls`` from a name -> value dict; unknown names refused."""
    unknown = set(given) - set(params_of(cls))
    if unknown:
        raise ValueError(f"{source}: unknown parameters {sorted(unknown)}")
    return cls(**given)
