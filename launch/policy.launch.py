"""Start the robovlm_ros policy node.

    ros2 launch robovlm_ros policy.launch.py checkpoint:=/path/to/ckpt instruction:="pick up the red block"
    ros2 service call /robovlm_policy/start std_srvs/srv/Trigger

Arguments: checkpoint, params_file (default: the installed config/policy.yaml), namespace,
instruction, autostart, record (true: also `ros2 bag record` the node's inputs and outputs into
record_dir).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "robovlm_ros"
EXECUTABLE = "policy_node"
NODE_NAME = "robovlm_policy"


def _record(context):
    """`ros2 bag record` of the node's inputs and outputs (the robot's topics from the parameters file)."""
    from robovlm_ros.node_params import load_policy_params

    robot = load_policy_params(LaunchConfiguration("params_file").perform(context))
    ns = LaunchConfiguration("namespace").perform(context).strip("/")
    node = f"/{ns}/{NODE_NAME}" if ns else f"/{NODE_NAME}"
    topics = list(robot.topics().values())
    topics += [f"{node}/action", f"{node}/instruction", "/diagnostics", "/parameter_events"]
    return [ExecuteProcess(cmd=["ros2", "bag", "record", "-o", LaunchConfiguration("record_dir").perform(context),
                                *topics], output="screen")]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "policy.yaml")
    args = [
        DeclareLaunchArgument("checkpoint", description="checkpoint directory written by training"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("instruction", default_value="", description="initial language instruction"),
        DeclareLaunchArgument("autostart", default_value="false", description="start controlling at once"),
        DeclareLaunchArgument("record", default_value="false", description="also record a rosbag"),
        DeclareLaunchArgument("record_dir", default_value="robovlm_record", description="rosbag output directory"),
    ]
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                # typed explicitly: an empty or numeric-looking string must stay a string
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "instruction": ParameterValue(LaunchConfiguration("instruction"), value_type=str),
                "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
            },
        ],
    )
    record = OpaqueFunction(function=_record, condition=IfCondition(LaunchConfiguration("record")))
    return LaunchDescription([*args, node, record])
