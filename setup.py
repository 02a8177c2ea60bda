"""Packaging for robovlm_ros (ament_python; also installable with plain pip)."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "robovlm_ros"


def files(pattern):
    """Files matching a glob; a missing folder just gives no files."""
    return sorted(p for p in glob(pattern) if os.path.isfile(p))


data_files = [
    ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
    ("share/" + PACKAGE, ["package.xml"]),
]
for target, pattern in [
    ("share/%s/launch" % PACKAGE, "launch/*.launch.py"),
    ("share/%s/config" % PACKAGE, "config/*.yaml"),
    ("share/%s/config" % PACKAGE, "robovlm_ros/ros/fastdds_large_messages.xml"),
    ("share/%s/config/train" % PACKAGE, "config/train/*"),
]:
    found = files(pattern)
    if found:
        data_files.append((target, found))

setup(
    name=PACKAGE,
    version="0.1.0",
    description=(
        "VLA policies (RoboVLMs-style vision-language-action models) for ROS 2: "
        "policy node, rosbag-to-dataset conversion, training"
    ),
    license="Apache-2.0",
    maintainer="robovlm_ros maintainers",
    maintainer_email="maintainers@robovlm-ros.invalid",
    packages=find_packages(exclude=["test", "test.*"]),
    # the demo policy made by `robovlm-ros demo --retrain` (about 1.4 MB), evaluated by `robovlm-ros demo`
    package_data={PACKAGE: ["sim/demo_policy/*", "ros/fastdds_large_messages.xml"]},
    data_files=data_files,
    python_requires=">=3.10",
    install_requires=[
        # torch is a range on purpose: CI installs torch==2.13.0 (CPU wheel) first.
        "torch>=2.4,<3",
        "transformers>=5.24,<6",
        "peft>=0.17,<1",
        "safetensors>=0.4,<1",
        "numpy>=1.26,<3",
        "pyyaml>=6,<7",
        "tokenizers>=0.22,<1",
        # ROS message / bag IO without a ROS install (same code for the node and the converter)
        "rosbags>=0.11,<0.12",
        "rosbags-image>=0.10,<0.11",
        "opencv-python-headless>=4.9",
        # datasets and training
        "pyarrow>=15",
        "pandas>=2,<3",  # LeRobot's tables (tasks are indexed by their text, as pandas writes an index)
        "av>=14,<16",  # mp4 camera streams as LeRobot stores them (PyAV bundles FFmpeg with SVT-AV1)
        "lightning>=2.4,<3",
        "torchmetrics>=1.4,<2",  # held-out R^2 and gripper accuracy during validation
        "tqdm>=4.60",
        # simulated robot, evaluation plots
        "mujoco>=3.2",
        "matplotlib>=3.8",
    ],
    extras_require={
        # PyPI wheels of ROS 2 Kilted, for machines without an apt ROS 2.
        "ros": [
            "ros-rclpy",
            "ros-sensor-msgs",
            "ros-std-msgs",
            "ros-std-srvs",
            "ros-geometry-msgs",
            "ros-trajectory-msgs",
            "ros-diagnostic-msgs",
            "ros-rmw-fastrtps-cpp",
        ],
        "test": ["pytest>=8", "pytest-timeout"],
        "tensorboard": ["tensorboard>=2.15"],
    },
    entry_points={
        "console_scripts": [
            "robovlm-ros = robovlm_ros.cli:main",
            "policy_node = robovlm_ros.ros.policy_node:main",
            "policy_lifecycle_node = robovlm_ros.ros.policy_lifecycle_node:main",
            "episode_recorder = robovlm_ros.ros.episode_recorder:main",
            "sim_node = robovlm_ros.ros.sim_node:main",
        ],
    },
    zip_safe=False,
)
