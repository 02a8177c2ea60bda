"""Camera transport out of the box: two 640x480 raw camera streams at 30 Hz from another process reach
the policy node, with the documented set-up (the packaged Fast DDS profile, ros/transport.py)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

MEASURE = """
import json, torch
from robovlm_ros.model import PolicyConfig, RoboVLM
from robovlm_ros.ros.node_bench import node_overhead
torch.manual_seed(0)
print(json.dumps(node_overhead(RoboVLM(PolicyConfig.tiny("paligemma", window_size=1)), 6.0, "cpu")))
"""


def test_two_640x480_camera_streams_at_30_hz_reach_the_node():
    """In a fresh process (the middleware reads its profile once): >= 95 % of the frames of each camera
    arrive, and the node's inputs stay fresh."""
    env = {k: v for k, v in os.environ.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"}
    out = subprocess.run([sys.executable, "-c", MEASURE], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    node = json.loads(out.stdout.strip().splitlines()[-1])
    from robovlm_ros.ros.transport import LARGE_MESSAGES_PROFILE

    assert node["dds_profile"] == LARGE_MESSAGES_PROFILE and node["camera_hz"] == 30.0
    assert node["camera_delivery"] >= 0.95, node
    assert node["cadence"]["input_age_ms"]["p99_ms"] < 250, node["cadence"]  # inputs a few frames old at most
