"""``episode_recorder``: one rosbag2 per demonstration episode, with its instruction and success flag.

Services (``std_srvs``): ``~/start`` (Trigger; refused without an instruction or with stale inputs),
``~/stop`` (Trigger; the episode is finalised), ``~/discard`` (Trigger; the episode is deleted),
``~/set_success`` (SetBool; flags the current episode, or the last one once stopped).

Each episode is written with the ``rosbags`` library in the on-disk format of ``ros2 bag record``
(mcap or sqlite3) into ``<output_dir>/.recording/<name>/`` and moved to ``<output_dir>/<name>/`` only
after the bag is closed and ``episode.json`` (instruction, success, times, message counts) is
written, so a crash never leaves a half-written bag that looks complete. Messages are stored as received (raw CDR bytes) with
the recorder's receive time as the log time.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import datetime

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import SetBool, Trigger

from ..atomic_io import write_json
from ..data.bags import EPISODE_FILE, RECORDING_DIR
from ..node_params import RecorderParams
from ..robot.description import RobotDescription, is_compressed
from .commands import ARM_TYPES, GRIPPER_TYPES
from .params import declare_params
from .spin import run_node


def _msgtype(cls) -> str:
    """rclpy message class -> 'pkg/msg/Name' as rosbag2 stores it."""
    return f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}"


def recorded_topics(robot: RobotDescription) -> tuple[dict[str, type], list[str]]:
    """topic -> message class of everything recorded, and the inputs that must be fresh to start."""
    image = lambda topic: CompressedImage if is_compressed(topic) else Image  # noqa: E731
    topics: dict[str, type] = {robot.camera_topic: image(robot.camera_topic), robot.joint_states_topic: JointState}
    required = [robot.camera_topic, robot.joint_states_topic]
    if robot.gripper_camera_topic:
        topics[robot.gripper_camera_topic] = image(robot.gripper_camera_topic)
        required.append(robot.gripper_camera_topic)
    if robot.arm_command_topic:
        topics[robot.arm_command_topic] = ARM_TYPES[robot.arm_command_type]
    if robot.gripper_command_topic:
        topics[robot.gripper_command_topic] = GRIPPER_TYPES[robot.gripper_command_type]
    return topics, required


class EpisodeRecorder(Node):
    def __init__(self, **kwargs):
        super().__init__("episode_recorder", **kwargs)
        self.p = p = declare_params(self, RecorderParams)
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self.recording_dir = os.path.join(p.output_dir, RECORDING_DIR)
        os.makedirs(self.recording_dir, exist_ok=True)
        for leftover in sorted(os.listdir(self.recording_dir)):
            self.get_logger().warning(f"incomplete episode from an earlier run left in "
                                      f"{os.path.join(self.recording_dir, leftover)} (not used)")

        self.topics, self.required = recorded_topics(p)
        self.last_rx: dict[str, float] = {}
        for topic, cls in self.topics.items():
            qos = qos_profile_sensor_data if topic in self.required else 10
            self.create_subscription(cls, topic, self._recorder(topic), qos, raw=True)

        self.writer: Writer | None = None
        self.connections: dict = {}
        self.episode: dict | None = None  # metadata of the episode being recorded
        self.last_path: str | None = None  # last finalised episode
        self.counter = 0
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.create_service(Trigger, "~/discard", self._on_discard)
        self.create_service(SetBool, "~/set_success", self._on_set_success)
        self.get_logger().info(f"recording {sorted(self.topics)} into {p.output_dir} ({p.storage})")

    def _recorder(self, topic: str):
        def on_message(data: bytes):
            self.last_rx[topic] = time.monotonic()
            if self.writer is not None:
                self.writer.write(self.connections[topic], self.get_clock().now().nanoseconds, data)
                self.episode["messages"][topic] += 1
        return on_message

    def _stale(self) -> list[str]:
        now, limit = time.monotonic(), self.get_parameter("max_input_age_s").value
        return [t for t in self.required if now - self.last_rx.get(t, -1e18) > limit]

    # ------------------------------------------------------------------ services
    def _on_start(self, request, response):
        instruction = self.get_parameter("instruction").value.strip()
        stale = self._stale()
        if self.writer is not None:
            response.success, response.message = False, f"already recording {self.episode['name']}"
        elif not instruction:
            response.success, response.message = False, "no instruction: set the 'instruction' parameter first"
        elif stale:
            response.success, response.message = False, f"inputs are stale or missing: {', '.join(stale)}"
        else:
            self.counter += 1
            name = f"{self.p.episode_prefix}_{datetime.now().strftime('%Y%m%d_%H%M%S')}_{self.counter:03d}"
            partial = os.path.join(self.recording_dir, name)
            storage = StoragePlugin.MCAP if self.p.storage == "mcap" else StoragePlugin.SQLITE3
            writer = Writer(partial, version=9, storage_plugin=storage)
            writer.open()
            self.connections = {t: writer.add_connection(t, _msgtype(cls), typestore=self.typestore)
                                for t, cls in self.topics.items()}
            self.episode = {"name": name, "instruction": instruction, "success": True,
                            "start_time_ns": self.get_clock().now().nanoseconds,
                            "messages": {t: 0 for t in self.topics}}
            self.writer = writer
            response.success, response.message = True, f"recording {name}"
        if not response.success:
            self.get_logger().warning(f"start refused: {response.message}")
        return response

    def _on_stop(self, request, response):
        if self.writer is None:
            response.success, response.message = False, "not recording"
            return response
        writer, episode, self.writer = self.writer, self.episode, None
        episode["stop_time_ns"] = self.get_clock().now().nanoseconds
        writer.set_custom_data("robovlm_ros.instruction", episode["instruction"])
        writer.close()
        partial = os.path.join(self.recording_dir, episode["name"])
        write_json(os.path.join(partial, EPISODE_FILE), episode)
        final = os.path.join(self.p.output_dir, episode["name"])
        os.rename(partial, final)  # the episode becomes visible complete, or not at all
        self.last_path, self.episode = final, None
        counts = ", ".join(f"{t}: {n}" for t, n in episode["messages"].items())
        response.success, response.message = True, f"saved {final} ({counts})"
        self.get_logger().info(response.message)
        return response

    def _on_discard(self, request, response):
        if self.writer is None:
            response.success, response.message = False, "not recording"
            return response
        self.writer.abort()
        name, self.writer, self.episode = self.episode["name"], None, None
        shutil.rmtree(os.path.join(self.recording_dir, name), ignore_errors=True)
        response.success, response.message = True, f"discarded {name}"
        return response

    def _on_set_success(self, request, response):
        if self.episode is not None:
            self.episode["success"] = bool(request.data)
            response.success, response.message = True, f"{self.episode['name']}: success={bool(request.data)}"
        elif self.last_path is not None:
            path = os.path.join(self.last_path, EPISODE_FILE)
            with open(path) as f:
                meta = json.load(f)
            meta["success"] = bool(request.data)
            write_json(path, meta)
            response.success, response.message = True, f"{os.path.basename(self.last_path)}: success={bool(request.data)}"
        else:
            response.success, response.message = False, "no episode recorded yet"
        return response

    def destroy_node(self):
        if self.writer is not None:  # an unfinished episode stays in .recording/: never taken as complete
            self.writer.close()
            self.writer = None
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(EpisodeRecorder, "episode_recorder", args)


if __name__ == "__main__":
    sys.exit(main())
