"""robot/messages.py: the one JointState -> state function (node and converter) and its rejections."""
from types import SimpleNamespace

import numpy as np
import pytest

from robovlm_ros.robot.messages import FrameError, state_from_joints

ARM = [f"joint{i}" for i in range(1, 7)]


def joint_state(positions, names=ARM + ["gripper_joint"]):
    return SimpleNamespace(name=names, position=list(positions))


def test_state_picks_joints_by_name_and_thresholds_the_gripper():
    msg = joint_state([0.04, 6, 5, 4, 3, 2, 1], names=["gripper_joint"] + ARM[::-1])
    np.testing.assert_array_equal(state_from_joints(msg, ARM, "gripper_joint", 0.02), [1, 2, 3, 4, 5, 6, 1])
    msg.position[0] = 0.01
    assert state_from_joints(msg, ARM, "gripper_joint", 0.02)[6] == -1.0


def test_without_a_gripper_joint_the_last_command_is_the_gripper_state():
    msg = joint_state(range(6), names=ARM)
    assert state_from_joints(msg, ARM, "", 0.02)[6] == 1.0  # no command yet: open
    assert state_from_joints(msg, ARM, "", 0.02, last_gripper_command=-0.3)[6] == -1.0


@pytest.mark.parametrize("positions,names,match", [
    ([0, 1, 2, 3, 4, 5, np.nan], None, "non-finite"),
    ([0, 1, 2, np.inf, 4, 5, 0.04], None, "non-finite"),
    ([0, 1, 2, 1e300, 4, 5, 0.04], None, "beyond"),  # finite but absurd: the normaliser would overflow
    ([0, 1, 2, 3, 4, 5, 2e3], None, "beyond"),
    ([0, 1, 2, 3, 4, 0.04], ARM[1:] + ["gripper_joint"], "lacks"),
    ([0, 1, 2, 3, 4, 5], None, "names but"),
])
def test_corrupt_joint_states_are_rejected(positions, names, match):
    msg = joint_state(positions, names=names or ARM + ["gripper_joint"])
    with pytest.raises(FrameError, match=match):
        state_from_joints(msg, ARM, "gripper_joint", 0.02, max_position=1000.0)
