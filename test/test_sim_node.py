"""sim_node over real rclpy: the scripted expert solves seeded episodes through the ROS topics."""
import os
import uuid

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402

from ros_helpers import call, wait_for  # noqa: E402
from robovlm_ros.ros.sim_node import ExpertNode, SimNode  # noqa: E402
from robovlm_ros.ros.spin import BackgroundExecutor  # noqa: E402


@pytest.fixture
def sim_system(request):
    rclpy.init()
    ns = f"s{uuid.uuid4().hex[:8]}"
    topics = {"camera_topic": f"/{ns}/camera/image_raw", "gripper_camera_topic": f"/{ns}/gripper_camera/image_raw",
              "joint_states_topic": f"/{ns}/joint_states", "arm_command_topic": f"/{ns}/arm_cmd",
              "gripper_command_topic": f"/{ns}/grip_cmd"}
    extra = getattr(request, "param", {})  # more sim_node parameters (indirect parametrization)
    sim = SimNode(namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in
                                                      {**topics, "image_size": 48, "real_time_factor": 3.0,
                                                       **extra}.items()])
    expert = ExpertNode(sim, namespace=ns)
    client = rclpy.create_node("client", namespace=ns)
    spinner = BackgroundExecutor()
    spinner.add(sim, expert, client)
    spinner.start()
    yield sim, expert, client, ns, topics
    sim.release_renderer()
    spinner.close()
    rclpy.shutdown()
    assert not spinner.errors, spinner.errors


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


@pytest.mark.parametrize("sim_system", [{"max_episode_seconds": 6.0, "stop_on_success": True}], indirect=True)
def test_the_physics_stops_at_the_time_limit_and_at_success(sim_system):
    sim, expert, client, ns, topics = sim_system
    sim.set_parameters([Parameter("seed", value=3)])
    assert call(client, f"/{ns}/sim_node/reset").success
    assert wait_for(lambda: sim.episode_over, 10)  # nobody commands the arm: only the time limit ends it
    assert sim.sim_time - sim.episode_start == pytest.approx(6.0, abs=1e-6)
    t_end = sim.sim_time
    assert not wait_for(lambda: sim.sim_time > t_end, 0.5)  # frozen until the next reset
    results = []
    for seed in (4, 5):
        sim.set_parameters([Parameter("seed", value=seed)])
        assert call(client, f"/{ns}/sim_node/reset").success
        assert sim.episode_start == t_end  # a reset restarts the episode's clock (and the physics)
        expert.start()
        assert wait_for(lambda: sim.episode_over, 20)
        expert.stop()
        results.append((sim.env.success(), round(sim.sim_time - sim.episode_start, 3)))
        t_end = sim.sim_time
    # the expert lifts the block in about 4 s: stopped at success, before the limit
    assert all(ok and s < 6.0 for ok, s in results), results
    assert call(client, f"/{ns}/sim_node/success").success  # and it stays a success while frozen


def _drive_with_a_policy(checkpoint, delay_s, lockstep, steps=24):
    """A tiny policy drives the sim over the topics; returns the first ``steps`` commands the physics
    applied (twist + gripper) and the sim's lockstep counters. ``delay_s`` slows every policy step."""
    import time

    from robovlm_ros.ros.policy_node import PolicyNode
    from robovlm_ros.node_params import sim_robot
    from robovlm_ros.ros.params import overrides
    from robovlm_ros.ros.sim_node import lockstep_gate

    rclpy.init()
    ns = f"l{uuid.uuid4().hex[:8]}"
    robot = sim_robot(ns).as_params()
    policy = PolicyNode(namespace=ns, parameter_overrides=overrides({
        **robot, "checkpoint": str(checkpoint), "device": "cpu", "control_rate_hz": 40.0, "max_input_age_s": 2.0,
        "execute_steps": 1, "autostart": True, "instruction": "pick up the red block",
        "wait_for_new_inputs": lockstep}))
    predict = policy.runner.predict_chunk  # execute_steps 1: a chunk every step
    policy.runner.predict_chunk = lambda obs: (time.sleep(delay_s), predict(obs))[1]
    sim = SimNode(namespace=ns, parameter_overrides=overrides({
        **robot, "image_size": 32, "real_time_factor": 4.0, "seed": 7}))
    if lockstep:
        sim.step_gate = lockstep_gate(policy, sim)
    applied = []
    env_step = sim.env.step
    sim.env.step = lambda action: (applied.append(np.asarray(action, float).copy()), env_step(action))[1]
    spinner = BackgroundExecutor()
    spinner.add(sim, policy)
    spinner.start()
    try:
        assert wait_for(lambda: len(applied) >= steps, 60)
        sim.release_renderer()
    finally:
        spinner.close()
        rclpy.shutdown()
    return np.stack(applied[:steps]), dict(sim.lockstep)


def test_lockstep_makes_the_episode_independent_of_inference_speed(tmp_path):
    import torch

    from robovlm_ros.model import PolicyConfig, RoboVLM

    torch.manual_seed(0)
    # a history window of 3: a frame stepped twice would shift every later action
    model = RoboVLM(PolicyConfig.tiny("paligemma", window_size=3, fwd_pred_next_n=1, use_state=True,
                                      size={"init_scale": 1.0}))
    model.save_pretrained(tmp_path / "ckpt")
    fast, fast_counts = _drive_with_a_policy(tmp_path / "ckpt", 0.0, lockstep=True)
    slow, slow_counts = _drive_with_a_policy(tmp_path / "ckpt", 0.15, lockstep=True)
    assert fast_counts["timeouts"] == slow_counts["timeouts"] == 0
    assert len(np.unique(fast[1:, 0])) > 5  # the policy's commands vary with what it sees
    np.testing.assert_array_equal(slow, fast)  # the same commands at the same physics steps
    # free-running, the slow policy's commands land steps late: the comparison above can fail
    late, _ = _drive_with_a_policy(tmp_path / "ckpt", 0.15, lockstep=False)
    assert not np.array_equal(late, fast)


@pytest.mark.parametrize("sim_system", [{"lockstep_resend_s": 0.3}], indirect=True)
def test_lockstep_publishes_an_unanswered_step_again_under_its_stamp(sim_system):
    """Every message of one step carries the step's stamp; a step nobody answered is published again
    under the same stamp (a lost sensor message must not stall lockstep) and the physics waits."""
    sim, expert, client, ns, topics = sim_system
    got = {"joints": [], "camera": []}
    stamp = lambda m: m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec  # noqa: E731
    client.create_subscription(JointState, topics["joint_states_topic"], lambda m: got["joints"].append(stamp(m)),
                               qos_profile_sensor_data)
    client.create_subscription(Image, topics["camera_topic"], lambda m: got["camera"].append(stamp(m)),
                               qos_profile_sensor_data)
    answered = set()
    sim.step_gate = lambda stamp_ns: stamp_ns in answered
    assert wait_for(lambda: sim.lockstep["resends"] >= 1, 10)
    held, steps = sim.stamp_ns, sim.lockstep["steps"]
    for v in got.values():
        v.clear()
    assert wait_for(lambda: len(got["joints"]) >= 2 and len(got["camera"]) >= 2, 10)  # published again and again
    assert set(got["joints"]) == set(got["camera"]) == {held} and sim.lockstep["steps"] == steps
    answered.add(held)  # the command for it arrives: the physics steps, the next step gets a new stamp
    assert wait_for(lambda: sim.lockstep["steps"] > steps and sim.stamp_ns > held, 10)


def test_an_evaluation_fails_loudly_when_lockstep_breaks(tmp_path, monkeypatch):
    """A policy that does not answer a step within the lockstep limit stops the evaluation with an
    error, instead of a result that depends on this machine's speed."""
    import time

    import torch

    from robovlm_ros.model import PolicyConfig, RoboVLM
    from robovlm_ros.ros import evaluate as ev
    from robovlm_ros.ros import policy_node
    from robovlm_ros.runtime import PolicyRunner

    torch.manual_seed(0)
    RoboVLM(PolicyConfig.tiny("paligemma", fwd_pred_next_n=1, image_size=32)).save_pretrained(tmp_path / "ckpt")

    class StuckRunner(PolicyRunner):
        def predict_chunk(self, obs):
            time.sleep(2.0)
            return super().predict_chunk(obs)

    monkeypatch.setattr(policy_node, "PolicyRunner", StuckRunner)  # the runner the evaluation's node builds
    monkeypatch.setattr(ev, "LOCKSTEP_TIMEOUT_S", 0.5)
    with pytest.raises(RuntimeError, match="lockstep broke in episode seed 100000"):
        ev.evaluate(str(tmp_path / "ckpt"), episodes=1, image_size=32, speed=4.0, progress=False)
