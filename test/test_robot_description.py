"""One robot description: every node reads the robot from the same fields, one parameters file sets
them all, and the command line does not drag the whole stack in to parse its arguments."""
import dataclasses
import subprocess
import sys

import pytest
import yaml

from robovlm_ros.node_params import PolicyParams, RecorderParams, SimParams, load_policy_params, sim_robot
from robovlm_ros.robot.description import RobotDescription, params_of, ros_parameters


def test_every_node_declares_the_robot_with_the_same_fields():
    robot = params_of(RobotDescription)
    for cls in (PolicyParams, RecorderParams, SimParams):
        fields = params_of(cls)
        assert set(robot) <= set(fields), cls
        for name, f in robot.items():  # same description and mutability: one home for each
            assert fields[name].metadata == f.metadata or name == "gripper_open_threshold", (cls, name)


def test_one_parameters_file_describes_the_robot_to_every_node(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"camera_topic": "/arm/cam", "arm_joints": list("abcdef"), "gripper_joint": ""}},
        "robovlm_policy": {"ros__parameters": {"camera_topic": "/arm/cam/compressed", "control_rate_hz": 15.0}},
        "episode_recorder": {"ros__parameters": {"output_dir": "eps"}}}))
    policy = load_policy_params(str(path))
    assert (policy.camera_topic, policy.control_rate_hz) == ("/arm/cam/compressed", 15.0)  # its own section wins
    assert (policy.arm_joints, policy.gripper_joint) == (list("abcdef"), "")  # from /**
    recorder = RecorderParams(**ros_parameters(str(path), "episode_recorder"))
    assert (recorder.camera_topic, recorder.arm_joints, recorder.output_dir) == ("/arm/cam", list("abcdef"), "eps")


def test_bad_descriptions_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump({"robovlm_policy": {"ros__parameters": {"camera_topik": "/cam"}}}))
    with pytest.raises(ValueError, match="camera_topik"):
        load_policy_params(str(path))
    with pytest.raises(ValueError, match="6 names"):
        RobotDescription(arm_joints=["a", "b"])
    with pytest.raises(ValueError, match="gripper_command_type"):
        RobotDescription(gripper_command_type="float64")
    with pytest.raises(ValueError, match="twist"):
        SimParams(arm_command_type="joint_trajectory")  # the simulated arm takes twists only


def test_namespaced_moves_every_topic_and_nothing_else():
    robot = RobotDescription(gripper_camera_topic="")
    moved = robot.namespaced("ns1")
    assert moved.topics() == {k: "/ns1" + v for k, v in robot.topics().items()}
    assert "gripper_camera_topic" not in moved.topics()  # '' stays "no such topic"
    assert dataclasses.replace(moved, **robot.topics()) == robot
    sim = sim_robot("x")
    assert type(sim) is RobotDescription and sim.gripper_open_threshold == SimParams().gripper_open_threshold


def test_the_command_line_parses_without_the_ros_data_and_training_stacks():
    # `robovlm-ros --help` answers at once: not even torch or transformers are imported to parse
    code = ("import sys; from robovlm_ros.cli import build_parser; build_parser().parse_args(['bench']); "
            "build_parser().parse_args(['check', '--size', 'small']); "
            "print(sorted(m for m in ('rosbags', 'rclpy', 'lightning', 'mujoco', 'cv2', 'pyarrow', 'torch', "
            "'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
