"""The managed policy node over real rclpy: lifecycle transitions through the ChangeState service,
including one requested while a chunk is being computed."""
import gc
import time
import uuid
import weakref

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ros_helpers import FakeRobot, wait_for  # noqa: E402
from test_policy_node import checkpoint  # noqa: E402,F401,F811  (the same tiny checkpoint fixture)
from robovlm_ros.ros.commands import ARM_TYPES, GRIPPER_TYPES  # noqa: E402
from robovlm_ros.ros.policy_lifecycle_node import LifecyclePolicyNode  # noqa: E402
from robovlm_ros.ros.spin import BackgroundExecutor  # noqa: E402

RATE = 10.0


@pytest.fixture
def managed(checkpoint):
    rclpy.init()
    ns = f"m{uuid.uuid4().hex[:8]}"
    node = LifecyclePolicyNode(namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in {
        "checkpoint": str(checkpoint), "device": "cpu", "camera_topic": f"/{ns}/camera/image_raw",
        "gripper_camera_topic": f"/{ns}/gripper_camera/image_raw", "joint_states_topic": f"/{ns}/joint_states",
        "arm_command_topic": f"/{ns}/arm_cmd", "gripper_command_topic": f"/{ns}/grip_cmd", "control_rate_hz": RATE,
        "execute_steps": 1, "max_input_age_s": 1.0}.items()])
    robot = FakeRobot("fake_robot", ns, ARM_TYPES["twist"], GRIPPER_TYPES["float64_array"])
    spinner = BackgroundExecutor().start()
    spinner.add(node, robot)
    yield node, robot
    spinner.close()
    rclpy.shutdown()
    assert not spinner.errors, spinner.errors


def transition(robot, transition_id):
    return robot.call(ChangeState, f"/{robot.ns}/robovlm_policy/change_state",
                      ChangeState.Request(transition=Transition(id=transition_id))).success


def state(robot):
    return robot.call(GetState, f"/{robot.ns}/robovlm_policy/get_state", GetState.Request()).current_state.label


def slowed(predict):
    return lambda obs: (time.sleep(0.6), predict(obs))[1]


def moving_since(robot, t0):
    return [m for t, m in robot.received["arm"] if t > t0 and np.any([m.twist.linear.x, m.twist.linear.y,
                                                                       m.twist.linear.z, m.twist.angular.x])]


def test_configure_activate_deactivate_cleanup_shutdown(managed):
    node, robot = managed
    assert state(robot) == "unconfigured" and node.control is None  # nothing loaded yet
    assert transition(robot, Transition.TRANSITION_CONFIGURE) and state(robot) == "inactive"
    model = weakref.ref(node.runner.model)
    robot.set_instruction("pick up the red block")
    time.sleep(0.5)
    assert not node.running and not robot.received["arm"]  # configured, not active: no command
    assert not robot.trigger("start").success  # ~/start needs the active state

    t_active = time.monotonic()
    assert transition(robot, Transition.TRANSITION_ACTIVATE) and state(robot) == "active"
    assert wait_for(lambda: len(moving_since(robot, t_active)) >= 3, 10.0)  # control started with it

    # deactivate while a chunk is being computed: the worker's chunk is discarded, a hold goes out
    predict = node.runner.predict_chunk
    node.runner.predict_chunk = slowed(predict)
    assert wait_for(lambda: node.worker_busy, 5.0)
    assert transition(robot, Transition.TRANSITION_DEACTIVATE) and state(robot) == "inactive"
    t_inactive = time.monotonic()
    time.sleep(1.5)  # the computing chunk finishes meanwhile
    assert not moving_since(robot, t_inactive)
    assert robot.received["arm"] and not np.any(robot.received["arm"][-1][1].twist.linear.x)  # the hold

    # active again, then cleanup: the policy is freed
    node.runner.predict_chunk = predict
    assert transition(robot, Transition.TRANSITION_ACTIVATE)
    assert wait_for(lambda: len(moving_since(robot, time.monotonic() - 0.3)) >= 1, 10.0)
    assert transition(robot, Transition.TRANSITION_DEACTIVATE)
    assert transition(robot, Transition.TRANSITION_CLEANUP) and state(robot) == "unconfigured"
    assert node.runner is None and node.control is None
    del predict  # (the test's own reference to the old runner)
    gc.collect()
    assert model() is None  # the model's memory is given back

    # configure again, activate, and shut down from active
    assert transition(robot, Transition.TRANSITION_CONFIGURE)
    t_again = time.monotonic()
    assert transition(robot, Transition.TRANSITION_ACTIVATE)
    assert wait_for(lambda: len(moving_since(robot, t_again)) >= 2, 10.0)
    assert transition(robot, Transition.TRANSITION_ACTIVE_SHUTDOWN) and state(robot) == "finalized"
    assert node.runner is None
    t_final = time.monotonic()
    time.sleep(0.5)
    assert not moving_since(robot, t_final)


def test_a_missing_checkpoint_fails_configure_and_stays_unconfigured(managed):
    node, robot = managed
    node.p.checkpoint = "/nonexistent/checkpoint"  # (read-only over ROS: as if the node was started with it)
    assert not transition(robot, Transition.TRANSITION_CONFIGURE)
    assert state(robot) == "unconfigured" and node.control is None
