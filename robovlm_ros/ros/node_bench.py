"""The policy node's own overhead, measured over loopback DDS for ``robovlm-ros bench``."""
from __future__ import annotations

import os
import time

import numpy as np

from ..model import RoboVLM
from ..robot.description import RobotDescription
from .transport import PROFILE_VARIABLE, use_large_message_profile


CAMERA_HZ = 30.0  # two 640x480 rgb8 streams: what the camera transport must carry


def _camera_process(robot: RobotDescription, stop, sent) -> None:
    """A separate process playing the camera drivers: two 640x480 rgb8 streams + joint states at
    CAMERA_HZ, with the documented transport set-up (ros/transport.py); ``sent`` counts frames per stream."""
    use_large_message_profile()
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    rclpy.init()
    node = rclpy.create_node("bench_camera")
    cam = node.create_publisher(Image, robot.camera_topic, qos_profile_sensor_data)
    hand = node.create_publisher(Image, robot.gripper_camera_topic, qos_profile_sensor_data)
    joints = node.create_publisher(JointState, robot.joint_states_topic, qos_profile_sensor_data)
    rng = np.random.default_rng(0)
    frames = [Image(height=480, width=640, encoding="rgb8", step=640 * 3,
                    data=rng.integers(0, 255, (480, 640, 3), dtype=np.uint8).tobytes()) for _ in range(4)]
    names = list(robot.arm_joints) + [robot.gripper_joint]
    t0 = time.monotonic()
    while not stop.is_set():
        for pub in (cam, hand):
            msg = frames[sent.value % 4]
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)
        js = JointState(name=names, position=[0.1] * 7)
        js.header.stamp = node.get_clock().now().to_msg()
        joints.publish(js)
        sent.value += 1
        time.sleep(max(0.0, t0 + sent.value / CAMERA_HZ - time.monotonic()))
    node.destroy_node()
    rclpy.try_shutdown()


MIN_SENDS = 5


def node_overhead(model: RoboVLM, seconds: float, device: str) -> dict:
    """Run the policy node on camera streams from another process, over loopback DDS."""
    import multiprocessing

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .params import overrides
    from .policy_node import PolicyNode

    use_large_message_profile()  # before rclpy.init: the participant reads it
    rclpy.init()
    try:
        ns = f"bench{int(time.time() * 1000) % 100000}"
        robot = RobotDescription().namespaced(ns)
        node = PolicyNode(model=model, namespace=ns, parameter_overrides=overrides({
            **robot.as_params(), "device": device, "control_rate_hz": 10.0, "execute_steps": 1,
            "max_input_age_s": 1.0, "instruction": "pick up the red block", "autostart": True}))
        ctx = multiprocessing.get_context("spawn")  # a fresh process: no forked rclpy/torch state
        stop, sent = ctx.Event(), ctx.Value("i", 0)
        camera = ctx.Process(target=_camera_process, args=(robot, stop, sent))
        camera.start()
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        t_start = time.monotonic()
        while node.stats["steps"] == 0 and time.monotonic() - t_start < 30:  # the camera process starting up
            ex.spin_once(timeout_sec=0.05)
        sent0, received0 = sent.value, (node.camera.count, node.hand.count)
        node.input_ms.clear()
        node.cadence.send.clear()
        node.cadence.input_age.clear()
        t_end = time.monotonic() + seconds
        # a real-size policy on a CPU takes seconds per chunk: wait (up to a minute longer) for a few sends
        while time.monotonic() < t_end or (len(node.cadence.send) < MIN_SENDS and time.monotonic() < t_end + 60):
            ex.spin_once(timeout_sec=0.05)
        sent_n, received = sent.value - sent0, (node.camera.count - received0[0], node.hand.count - received0[1])
        stop.set()
        camera.join(timeout=10)
        image_in, step = np.asarray(node.input_ms), 1000 * np.asarray(node.cadence.send)
        if not len(step) or not len(image_in):
            ex.remove_node(node)
            node.destroy_node()
            return {"skipped": f"the node sent no command in {seconds + 60:.0f} s (policy step too slow here)"}
        result = {"image_in_p50_ms": float(np.percentile(image_in, 50)),
                  "image_in_p99_ms": float(np.percentile(image_in, 99)),
                  "step_overhead_p50_ms": float(np.percentile(step, 50)),
                  "step_overhead_p99_ms": float(np.percentile(step, 99)),
                  "runtime_overhead_p50_ms": float(np.percentile(node.runtime_overhead_ms, 50)),
                  "commands": int(node.stats["steps"]), "starved": int(node.control.starved),
                  # share of the frames sent that reached the node, the worse of the two cameras
                  "camera_delivery": min(received) / max(sent_n, 1), "camera_hz": CAMERA_HZ,
                  "dds_profile": os.environ.get(PROFILE_VARIABLE, ""),
                  "cadence": node.cadence.report()}
        # the ROS layer's share: one image's way in (transport + decode) plus the step's work around the
        # policy runner (input snapshot, command messages, publishing); the runner's own preprocessing is
        # reported apart (runtime_overhead) because it belongs to the policy, wherever it runs
        result["overhead_p50_ms"] = result["image_in_p50_ms"] + result["step_overhead_p50_ms"]
        ex.remove_node(node)
        node.destroy_node()
        return result
    finally:
        rclpy.try_shutdown()
