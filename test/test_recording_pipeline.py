"""Recorder node over loopback -> rosbag2 -> convert -> LeRobot dataset -> train -> PolicyRunner."""
import json
import os
import time
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import TwistStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from ros_helpers import ARM_JOINTS, wait_for  # noqa: E402
from ros_helpers import call as ros_call  # noqa: E402
from robovlm_ros.data.convert import convert_bags  # noqa: E402
from robovlm_ros.node_params import load_policy_params  # noqa: E402
from robovlm_ros.data.lerobot_reader import LeRobotEpisodes  # noqa: E402
from robovlm_ros.ros.episode_recorder import EpisodeRecorder  # noqa: E402
from robovlm_ros.ros.spin import BackgroundExecutor  # noqa: E402

RATE = 10.0


class Demonstrator(Node):
    """Publishes a scripted demonstration whose values encode a counter, to check alignment later.

    Sensors at 30 Hz: image pixels = sensor counter % 250, joint i = counter + i / 10.
    Commands at 10 Hz: twist linear.x = command counter, gripper alternates every 5 commands.
    Every command is published right after a sensor message, so the latest observation before
    command k has sensor counter 3k (+ start offset).
    """

    def __init__(self, ns):
        super().__init__("demonstrator", namespace=ns)
        self.cam = self.create_publisher(Image, f"/{ns}/camera/image_raw", qos_profile_sensor_data)
        self.hand = self.create_publisher(Image, f"/{ns}/gripper_camera/image_raw", qos_profile_sensor_data)
        self.joints = self.create_publisher(JointState, f"/{ns}/joint_states", qos_profile_sensor_data)
        self.arm = self.create_publisher(TwistStamped, f"/{ns}/arm_cmd", 10)
        self.grip = self.create_publisher(Float64MultiArray, f"/{ns}/grip_cmd", 10)
        self.sensor_count = 0
        self.command_count = 0
        self.commanding = False
        self.sent = []  # (command counter, sensor counter just before it)
        self.create_timer(1 / 30, self._tick)

    def _tick(self):
        c = self.sensor_count
        img = np.full((24, 32, 3), c % 250, np.uint8)
        for pub in (self.cam, self.hand):
            pub.publish(Image(height=24, width=32, encoding="rgb8", step=96, data=img.tobytes()))
        self.joints.publish(JointState(name=ARM_JOINTS + ["gripper_joint"],
                                       position=[c + i / 10 for i in range(6)] + [0.04 if c % 2 else 0.0]))
        self.sensor_count += 1
        if self.commanding and c % 3 == 0:
            k = self.command_count
            msg = TwistStamped()
            msg.twist.linear.x = float(k)
            self.arm.publish(msg)
            self.grip.publish(Float64MultiArray(data=[0.04 if (k // 5) % 2 == 0 else 0.0]))
            self.sent.append((k, c))
            self.command_count += 1


@pytest.fixture
def ros_system(tmp_path):
    rclpy.init()
    spinner = BackgroundExecutor().start()
    ns = f"r{uuid.uuid4().hex[:8]}"
    params = {"output_dir": str(tmp_path / "episodes"), "camera_topic": f"/{ns}/camera/image_raw",
              "gripper_camera_topic": f"/{ns}/gripper_camera/image_raw", "joint_states_topic": f"/{ns}/joint_states",
              "arm_command_topic": f"/{ns}/arm_cmd", "gripper_command_topic": f"/{ns}/grip_cmd",
              "max_input_age_s": 0.5}

    def start(storage="mcap"):
        rec = EpisodeRecorder(namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in
                                                                  {**params, "storage": storage}.items()])
        demo = Demonstrator(ns)
        client = rclpy.create_node("client", namespace=ns)
        spinner.add(rec, demo, client)
        return rec, demo, client

    yield start, ns, params
    spinner.close()
    rclpy.shutdown()
    assert not spinner.errors, spinner.errors


def call(client, srv, name, req):
    return ros_call(client, name, srv, req)


def params_file(tmp_path, ns):
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump({"robovlm_policy": {"ros__parameters": {
        "camera_topic": f"/{ns}/camera/image_raw", "gripper_camera_topic": f"/{ns}/gripper_camera/image_raw",
        "joint_states_topic": f"/{ns}/joint_states", "arm_command_topic": f"/{ns}/arm_cmd",
        "gripper_command_topic": f"/{ns}/grip_cmd", "control_rate_hz": RATE}}}))
    return load_policy_params(str(path))  # the robot as `robovlm-ros convert --params` reads it


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_record_convert_matches_what_was_published(ros_system, tmp_path, storage):
    start, ns, params = ros_system
    rec, demo, client = start(storage)
    srv = lambda name: f"/{ns}/episode_recorder/{name}"  # noqa: E731
    # no instruction -> refused; then stale inputs would be refused too (checked below via a fresh node)
    assert not call(client, Trigger, srv("start"), Trigger.Request()).success
    rec.set_parameters([Parameter("instruction", value="push the red block")])
    assert wait_for(lambda: demo.sensor_count > 5)
    assert call(client, Trigger, srv("start"), Trigger.Request()).success
    time.sleep(0.2)
    demo.commanding = True
    assert wait_for(lambda: demo.command_count >= 12, 10.0)
    demo.commanding = False
    time.sleep(0.2)
    stop = call(client, Trigger, srv("stop"), Trigger.Request())
    assert stop.success
    sent = list(demo.sent)
    # a second episode that is discarded, and a third that is flagged unsuccessful
    assert call(client, Trigger, srv("start"), Trigger.Request()).success
    time.sleep(0.3)
    assert call(client, Trigger, srv("discard"), Trigger.Request()).success
    assert call(client, Trigger, srv("start"), Trigger.Request()).success
    demo.commanding = True
    assert wait_for(lambda: demo.command_count >= len(sent) + 4, 10.0)
    demo.commanding = False
    assert call(client, SetBool, srv("set_success"), SetBool.Request(data=False)).success
    assert call(client, Trigger, srv("stop"), Trigger.Request()).success

    episodes = sorted(e for e in os.listdir(params["output_dir"]) if not e.startswith("."))
    assert len(episodes) == 2 and os.listdir(os.path.join(params["output_dir"], ".recording")) == []
    meta = json.loads(open(os.path.join(params["output_dir"], episodes[0], "episode.json")).read())
    assert meta["instruction"] == "push the red block" and meta["success"] is True
    assert json.loads(open(os.path.join(params["output_dir"], episodes[1], "episode.json")).read())["success"] is False

    out = tmp_path / "dataset"
    reports = convert_bags([params["output_dir"]], str(out), params_file(tmp_path, ns), max_age_s=0.2, storage="png",
                           progress=False)
    assert [r.status for r in reports] == ["converted", "skipped"]  # the failed episode is left out
    ds = LeRobotEpisodes(str(out))
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 1 and info["fps"] == RATE
    ep = ds.episodes[0]
    assert ep["task"] == "push the red block"
    # every published command became one frame, in order, and nothing was dropped
    assert reports[0].frames == len(sent) == len(ep["action"])
    np.testing.assert_array_equal(ep["action"][:, 0], [k for k, _ in sent])
    np.testing.assert_array_equal(ep["action"][:, 6], [1.0 if (k // 5) % 2 == 0 else -1.0 for k, _ in sent])
    # observations are the latest at or before each command: the sensor tick published just before it
    for (k, c), state, rgb in zip(sent, ep["state"], ep["rgb"]):
        np.testing.assert_allclose(state[:6], [c + i / 10 for i in range(6)], atol=1e-4)
        assert state[6] == (1.0 if c % 2 else -1.0)
        assert rgb[0, 0, 0] == c % 250
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert stats["action"]["max"][0] == max(k for k, _ in sent) and stats["action"]["count"] == [len(sent)]
    episodes_table = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert episodes_table[0]["length"] == len(sent)
    extras = [json.loads(line) for line in (out / "meta" / "robovlm_ros" / "episodes.jsonl").read_text().splitlines()]
    assert extras[0]["success"] is True and extras[0]["source_bag"].endswith(episodes[0])


def test_start_refused_with_stale_inputs(ros_system):
    start, ns, params = ros_system
    rec, demo, client = start()
    for timer in list(demo.timers):  # sensors never arrive
        demo.destroy_timer(timer)
    rec.set_parameters([Parameter("instruction", value="go")])
    res = call(client, Trigger, f"/{ns}/episode_recorder/start", Trigger.Request())
    assert not res.success and "stale" in res.message


def test_recorded_episodes_train_a_policy_the_runner_loads(ros_system, tmp_path):
    """The whole offline path through the real nodes: record -> convert -> train -> PolicyRunner."""
    from robovlm_ros.runtime import PolicyRunner
    from robovlm_ros.train.config import load_train_config
    from robovlm_ros.train.run import train

    start, ns, params = ros_system
    rec, demo, client = start()
    srv = lambda name: f"/{ns}/episode_recorder/{name}"  # noqa: E731
    assert wait_for(lambda: demo.sensor_count > 5)
    for task in ("push the red block", "lift the blue cube"):
        rec.set_parameters([Parameter("instruction", value=task)])
        assert call(client, Trigger, srv("start"), Trigger.Request()).success
        demo.command_count, target = 0, 15
        demo.commanding = True
        assert wait_for(lambda: demo.command_count >= target, 10.0)
        demo.commanding = False
        assert call(client, Trigger, srv("stop"), Trigger.Request()).success
    reports = convert_bags([params["output_dir"]], str(tmp_path / "ds"), params_file(tmp_path, ns), max_age_s=0.2,
                           progress=False, image_size=32)  # video storage: 24 x 32 frames are too small to encode
    assert [r.status for r in reports] == ["converted", "converted"]
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"),
        "model": {"backbone": "paligemma", "tiny": True, "window_size": 2, "fwd_pred_next_n": 2, "head": "mlp",
                  "use_state": True, "norm_mode": "quantile", "gripper_loss_weight": 0.1},
        "data": {"datasets": [str(tmp_path / "ds")], "batch_size": 4, "val_fraction": 0.0},
        "optim": {"lr": 0.003, "max_steps": 30},
        "trainer": {"checkpoint_every": 30, "log_every": 1, "progress_bar": False}}))
    export = train(load_train_config(str(cfg_path)))
    import csv

    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        curve = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert np.mean(curve[-3:]) < 0.5 * np.mean(curve[:3])
    runner = PolicyRunner(export, device="cpu")
    runner.set_instruction("push the red block")
    obs = {"rgb": np.full((24, 32, 3), 30, np.uint8), "hand_rgb": np.full((24, 32, 3), 30, np.uint8),
           "state": np.r_[[30 + i / 10 for i in range(6)], 1.0]}
    actions = np.stack([runner.step(obs) for _ in range(3)])
    assert np.isfinite(actions).all() and set(actions[:, 6]) <= {-1.0, 1.0}
