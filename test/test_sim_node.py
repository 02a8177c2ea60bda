"""sim_node over real rclpy: the scripted expert solves seeded episodes through the ROS topics."""
import os
import threading
import uuid

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros_helpers import wait_for  # noqa: E402
from robovlm_ros.ros.sim_node import ExpertNode, SimNode  # noqa: E402


@pytest.fixture
def sim_system():
    rclpy.init()
    ex = SingleThreadedExecutor()
    ns = f"s{uuid.uuid4().hex[:8]}"
    topics = {"camera_topic": f"/{ns}/camera/image_raw", "gripper_camera_topic": f"/{ns}/gripper_camera/image_raw",
              "joint_states_topic": f"/{ns}/joint_states", "arm_command_topic": f"/{ns}/arm_cmd",
              "gripper_command_topic": f"/{ns}/grip_cmd"}
    sim = SimNode(namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in
                                                      {**topics, "image_size": 48, "real_time_factor": 3.0}.items()])
    expert = ExpertNode(sim, namespace=ns)
    client = rclpy.create_node("client", namespace=ns)
    for n in (sim, expert, client):
        ex.add_node(n)
    thread = threading.Thread(target=ex.spin, daemon=True)
    thread.start()
    yield sim, expert, client, ns, topics
    sim.release_renderer()
    ex.shutdown()
    for n in (sim, expert, client):
        n.destroy_node()
    rclpy.shutdown()


def call(client, name):
    cli = client.create_client(Trigger, name)
    assert cli.wait_for_service(timeout_sec=10)
    fut = cli.call_async(Trigger.Request())
    assert wait_for(fut.done, 10)
    return fut.result()


def test_expert_solves_seeded_episodes_through_the_topics(sim_system):
    sim, expert, client, ns, topics = sim_system
    images, joints = [], []
    client.create_subscription(Image, topics["camera_topic"], images.append, qos_profile_sensor_data)
    client.create_subscription(JointState, topics["joint_states_topic"], joints.append, qos_profile_sensor_data)
    results = []
    for seed in range(500, 520):
        sim.set_parameters([Parameter("seed", value=seed)])
        instruction = call(client, f"/{ns}/sim_node/reset").message
        assert instruction.startswith("pick up the ")
        t0 = sim.sim_time
        expert.start()
        wait_for(lambda: sim.env.success() or sim.sim_time - t0 > 8.0, 30.0)
        results.append(call(client, f"/{ns}/sim_node/success").success)  # the service reports the physics
        expert.stop()
    assert np.mean(results) >= 0.95, results
    assert images and images[-1].width == 48 and images[-1].encoding == "rgb8"
    assert joints[-1].name[-1] == "gripper_joint" and len(joints[-1].position) == 7


def test_stale_twist_stops_the_arm(sim_system):
    sim, expert, client, ns, topics = sim_system
    expert.start()
    assert wait_for(lambda: sim.sim_time > 1.0, 10)
    expert.stop()  # commands stop arriving: after the timeout the arm must come to rest
    t_stop = sim.sim_time
    assert wait_for(lambda: sim.sim_time > t_stop + 1.0, 10)
    q1 = sim.env.joint_positions()
    assert wait_for(lambda: sim.sim_time > t_stop + 1.5, 10)
    np.testing.assert_allclose(sim.env.joint_positions(), q1, atol=2e-3)


def test_reset_can_ask_for_a_given_block_of_the_same_layout(sim_system):
    sim, expert, client, ns, topics = sim_system
    layouts = {}
    for target in ("red", "green", "blue", ""):
        sim.set_parameters([Parameter("seed", value=42), Parameter("target", value=target)])
        answer = call(client, f"/{ns}/sim_node/reset")
        assert answer.success and answer.message == f"pick up the {target or sim.env.target} block"
        layouts[target] = {c: sim.env.block_position(c).round(4).tolist() for c in sim.env.colors}
    assert all(layout == layouts["red"] for layout in layouts.values())  # one layout, the named block differs
    sim.set_parameters([Parameter("target", value="purple")])
    answer = call(client, f"/{ns}/sim_node/reset")
    assert not answer.success and "purple" in answer.message
