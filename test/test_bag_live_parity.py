"""Bag-vs-live parity: a recorded bag replayed through the policy node gives the model exactly the
inputs the dataset converted from the same bag gives training (images, state, preprocessing)."""
import uuid

import numpy as np
import pytest
import torch
import yaml

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402

from ros_helpers import wait_for  # noqa: E402
from robovlm_ros.data.convert import convert_bags  # noqa: E402
from robovlm_ros.data.lerobot_reader import LeRobotEpisodes  # noqa: E402
from robovlm_ros.model import PolicyConfig, RoboVLM  # noqa: E402
from robovlm_ros.node_params import load_policy_params  # noqa: E402
from robovlm_ros.ros.policy_node import PolicyNode  # noqa: E402
from robovlm_ros.ros.spin import BackgroundExecutor  # noqa: E402

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
MS = 1_000_000
STEPS = 12


def stamp(t):
    return T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9)


def record_bag(path, ns):
    """A teleoperation-like bag: two 40x48 cameras and joint states at 20 Hz, arm and gripper commands at
    10 Hz, 10 ms after a camera frame, the gripper joint closing half-way through."""
    rng = np.random.default_rng(0)
    names = [f"joint{i}" for i in range(1, 7)] + ["gripper_joint"]
    msgs, t0 = [], 1_000 * MS
    for k in range(2 * STEPS):
        t = t0 + k * 50 * MS
        for topic in ("camera/image_raw", "gripper_camera/image_raw"):
            data = rng.integers(0, 255, 40 * 48 * 3, dtype=np.uint8)
            msgs.append((f"/{ns}/{topic}", "sensor_msgs/msg/Image", t, T["sensor_msgs/msg/Image"](
                header=T["std_msgs/msg/Header"](stamp=stamp(t), frame_id="cam"), height=40, width=48,
                encoding="rgb8", is_bigendian=0, step=144, data=data)))
        pos = np.r_[rng.normal(size=6), 0.04 if k < STEPS else 0.0]
        msgs.append((f"/{ns}/joint_states", "sensor_msgs/msg/JointState", t + MS, T["sensor_msgs/msg/JointState"](
            header=T["std_msgs/msg/Header"](stamp=stamp(t), frame_id=""), name=names, position=pos,
            velocity=np.zeros(0), effort=np.zeros(0))))
    f64 = lambda v: T["std_msgs/msg/Float64MultiArray"](  # noqa: E731
        layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=np.asarray(v, float))
    for j in range(STEPS):
        t = t0 + j * 100 * MS + 10 * MS
        msgs.append((f"/{ns}/arm_cmd", "std_msgs/msg/Float64MultiArray", t, f64(rng.normal(size=6) * 0.1)))
        msgs.append((f"/{ns}/grip_cmd", "std_msgs/msg/Float64MultiArray", t + MS, f64([0.04 if j < 6 else 0.0])))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for topic, msgtype, t, msg in sorted(msgs, key=lambda m: m[2]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=TS)
            w.write(conns[topic], t, TS.serialize_cdr(msg, msgtype))
        w.set_custom_data("robovlm_ros.instruction", "pick up the red block")
    return path


def test_a_bag_replayed_through_the_node_gives_the_model_what_training_saw(tmp_path):
    ns = f"p{uuid.uuid4().hex[:8]}"
    robot_yaml = tmp_path / "robot.yaml"
    robot_yaml.write_text(yaml.safe_dump({"robovlm_policy": {"ros__parameters": {
        "camera_topic": f"/{ns}/camera/image_raw", "gripper_camera_topic": f"/{ns}/gripper_camera/image_raw",
        "joint_states_topic": f"/{ns}/joint_states", "arm_command_topic": f"/{ns}/arm_cmd",
        "arm_command_type": "float64_array", "gripper_command_topic": f"/{ns}/grip_cmd"}}}))
    robot = load_policy_params(str(robot_yaml))
    bag = record_bag(tmp_path / "bags" / "ep", ns)
    convert_bags([str(tmp_path / "bags")], str(tmp_path / "ds"), robot, progress=False, storage="png")
    ep = LeRobotEpisodes(str(tmp_path / "ds")).episodes[0]
    assert len(ep["state"]) == STEPS and set(ep["state"][:, 6]) == {1.0, -1.0}

    torch.manual_seed(0)
    RoboVLM(PolicyConfig.tiny("llava", use_state=True, window_size=2, fwd_pred_next_n=3)).save_pretrained(
        tmp_path / "ckpt")
    rclpy.init()
    spinner = BackgroundExecutor().start()
    try:
        node = PolicyNode(namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in {
            **robot.as_params(), "checkpoint": str(tmp_path / "ckpt"), "device": "cpu", "execute_steps": 1,
            "control_rate_hz": 50.0, "max_input_age_s": 30.0, "wait_for_new_inputs": True, "autostart": True,
            "instruction": "pick up the red block", "gripper_open_threshold": robot.gripper_open_threshold}.items()])
        seen, predict = [], node.runner.predict_chunk
        node.runner.predict_chunk = lambda obs: (seen.append(obs), predict(obs))[1]
        replay = rclpy.create_node("bag_replay", namespace=ns)
        pubs = {t: replay.create_publisher(cls, t, qos_profile_sensor_data) for t, cls in (
            (robot.camera_topic, Image), (robot.gripper_camera_topic, Image), (robot.joint_states_topic, JointState))}
        spinner.add(node, replay)
        # the bag's messages as recorded; each control step gets the latest of each stream before the step's
        # arm command (what convert pairs), under one stamp so the node steps once per command
        with Reader(bag) as reader:
            stream = [(c.topic, t, TS.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages()]
        commands = [t for topic, t, _ in stream if topic.endswith("/arm_cmd")]
        for j, t_cmd in enumerate(commands):
            latest = {}
            for topic, t, msg in stream:
                if topic in pubs and t <= t_cmd:
                    latest[topic] = msg
            step_stamp = 10**18 + j
            for topic, msg in latest.items():
                msg.header.stamp = stamp(step_stamp)
                pubs[topic].publish(TS.serialize_cdr(msg, reader_type(topic, robot)).tobytes())
            assert wait_for(lambda: node.inputs_stamp_of_last_command == step_stamp, 10.0)
    finally:
        spinner.close()
        rclpy.shutdown()
    assert len(seen) == STEPS
    processor = node.runner.model.processor
    for j, obs in enumerate(seen):
        np.testing.assert_array_equal(obs["rgb"], ep["rgb"][j])
        np.testing.assert_array_equal(obs["hand_rgb"], ep["hand_rgb"][j])
        # the dataset stores float32, the node hands float64 to the processor, which makes float32 of it
        np.testing.assert_array_equal(obs["state"].astype(np.float32), ep["state"][j])
        assert torch.equal(processor.images(obs["rgb"]), processor.images(ep["rgb"][j]))
        assert torch.equal(processor.state(obs["state"]), processor.state(ep["state"][j]))


def reader_type(topic, robot):
    return "sensor_msgs/msg/JointState" if topic == robot.joint_states_topic else "sensor_msgs/msg/Image"
