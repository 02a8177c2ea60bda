"""A stand-in robot for node tests: real publishers/subscribers/services over loopback DDS."""
import threading
import time

import cv2
import numpy as np
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger

from robovlm_ros.ros.spin import ServiceCaller

ARM_JOINTS = [f"joint{i}" for i in range(1, 7)]


class FakeRobot(Node):
    """Streams camera images and joint states; records every message the policy node sends."""

    def __init__(self, name, ns, arm_type, gripper_type, rate_hz=30.0, size=(48, 64), compressed_camera=False):
        super().__init__(name, namespace=ns)
        self.ns = ns
        self.lock = threading.Lock()
        self.stream_camera = self.stream_hand = self.stream_joints = True
        self.bad_image = self.bad_joints = False
        self.joint_positions = np.linspace(0.1, 0.6, 6)
        self.rng = np.random.default_rng(0)
        self.size = size
        self.compressed_camera = compressed_camera
        if compressed_camera:
            self.cam_pub = self.create_publisher(CompressedImage, f"/{ns}/camera/image_raw/compressed",
                                                 qos_profile_sensor_data)
        else:
            self.cam_pub = self.create_publisher(Image, f"/{ns}/camera/image_raw", qos_profile_sensor_data)
        self.hand_pub = self.create_publisher(Image, f"/{ns}/gripper_camera/image_raw", qos_profile_sensor_data)
        self.joint_pub = self.create_publisher(JointState, f"/{ns}/joint_states", qos_profile_sensor_data)
        self.received = {"arm": [], "gripper": [], "action": [], "diagnostics": []}
        for key, (msg_type, topic) in {"arm": (arm_type, f"/{ns}/arm_cmd"), "gripper": (gripper_type, f"/{ns}/grip_cmd"),
                                       "action": (None, f"/{ns}/robovlm_policy/action")}.items():
            from std_msgs.msg import Float64MultiArray
            self.create_subscription(msg_type or Float64MultiArray, topic, self._recorder(key), 10)
        from diagnostic_msgs.msg import DiagnosticArray
        self.create_subscription(DiagnosticArray, "/diagnostics", self._recorder("diagnostics"), 10)
        self.create_timer(1.0 / rate_hz, self._publish)
        self.caller = ServiceCaller(self, timeout=30.0)

    def _recorder(self, key):
        def record(msg):
            with self.lock:
                self.received[key].append((time.monotonic(), msg))
        return record

    def jpeg(self):
        h, w = self.size
        img = self.rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        data = cv2.imencode(".jpg", img)[1].tobytes() if not self.bad_image else b"garbage"
        msg = CompressedImage(format="jpeg", data=data)
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    def image(self):
        h, w = self.size
        img = self.rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        msg = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=img.tobytes())
        if self.bad_image:
            msg.step = w * 3 + 7  # size / step mismatch
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    def _publish(self):
        if self.stream_camera:
            self.cam_pub.publish(self.jpeg() if self.compressed_camera else self.image())
        if self.stream_hand:
            self.hand_pub.publish(self.image())
        if self.stream_joints:
            self.joint_pub.publish(self.joint_state())

    def joint_state(self):
        names = ARM_JOINTS + ["gripper_joint"]
        pos = list(self.joint_positions) + [0.04]
        if self.bad_joints:
            names, pos = names[1:], pos[1:]  # joint1 missing
        msg = JointState(name=names, position=[float(p) for p in pos])
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    def since(self, key, t0):
        with self.lock:
            return [m for t, m in self.received[key] if t >= t0]

    def call(self, srv_type, name, request):
        # one kept client per service (ServiceCaller): a client made for one call can lose its answer
        return self.caller(name, srv_type, request)

    def trigger(self, service):
        return self.call(Trigger, f"/{self.ns}/robovlm_policy/{service}", Trigger.Request())

    def set_instruction(self, text, name="instruction"):
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=text)
        req = SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)])
        return self.call(SetParameters, f"/{self.ns}/robovlm_policy/set_parameters", req).results[0]


def call(node, name, srv_type=Trigger, request=None, timeout=30.0):
    """A blocking service call from the test thread through ``node``'s kept clients (ServiceCaller)."""
    if not hasattr(node, "_test_caller"):
        node._test_caller = ServiceCaller(node, timeout=timeout)
    return node._test_caller(name, srv_type, request)


def wait_for(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
