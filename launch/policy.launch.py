"""Start the robovlm_ros policy node.

    ros2 launch robovlm_ros policy.launch.py checkpoint:=/path/to/ckpt instruction:="pick up the red block"
    ros2 service call /robovlm_policy/start std_srvs/srv/Trigger

Arguments: checkpoint, params_file (default: the installed config/policy.yaml), namespace,
instruction, autostart, lifecycle (true: the managed node, configured and activated by this launch;
it controls as soon as it is active and has an instruction), record (true: also `ros2 bag record` the
node's inputs and outputs into record_dir), dds_profile (the Fast DDS profile for raw camera images on
one machine; README "Camera transport").

Works after `colcon build` (executables in <prefix>/lib/robovlm_ros) and after `pip install .`
(executables on PATH, next to the Python that runs ros2 launch).
"""
import os
import shutil

import lifecycle_msgs.msg
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, LogInfo, OpaqueFunction,
                            RegisterEventHandler, SetEnvironmentVariable)
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "robovlm_ros"
EXECUTABLE = "policy_node"
LIFECYCLE_EXECUTABLE = "policy_lifecycle_node"
NODE_NAME = "robovlm_policy"


def _executable(name):
    """(package, executable) for launch_ros: the colcon layout's lib/<package>/<name>, else the pip
    layout's console script on PATH (package None: launch_ros then runs it as a plain command)."""
    if os.path.exists(os.path.join(get_package_prefix(PACKAGE), "lib", PACKAGE, name)):
        return PACKAGE, name
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is neither in {get_package_prefix(PACKAGE)}/lib/{PACKAGE} (colcon) nor on PATH "
                           f"(pip install .): is robovlm_ros installed in this environment?")
    return None, path


def _policy(context):
    """The plain node, or the managed one driven to active (configure, then activate once inactive)."""
    lifecycle = LaunchConfiguration("lifecycle").perform(context).lower() in ("true", "1")
    package, executable = _executable(LIFECYCLE_EXECUTABLE if lifecycle else EXECUTABLE)
    kwargs = dict(package=package, executable=executable, name=NODE_NAME,
                  namespace=LaunchConfiguration("namespace").perform(context), output="screen",
                  parameters=[LaunchConfiguration("params_file"), {
                      # typed explicitly: an empty or numeric-looking string must stay a string
                      "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                      "instruction": ParameterValue(LaunchConfiguration("instruction"), value_type=str),
                      "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool)}])
    where = LogInfo(msg=f"robovlm_ros: {executable if package is None else os.path.join(get_package_prefix(PACKAGE), 'lib', PACKAGE, executable)}")
    if not lifecycle:
        return [where, Node(**kwargs)]
    node = LifecycleNode(**kwargs)
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))
    return [where, activate, node, configure]


def _transport(context):
    """Raw camera images on one machine: Fast DDS's large-message profile for the nodes this launch
    starts, unless the environment names one already (the camera driver needs the same, README)."""
    from robovlm_ros.ros.transport import LARGE_MESSAGES_PROFILE, PROFILE_VARIABLE

    profile = LaunchConfiguration("dds_profile").perform(context)
    if profile == "default":
        profile = os.environ.get(PROFILE_VARIABLE, LARGE_MESSAGES_PROFILE)
    if not profile:
        return []
    return [SetEnvironmentVariable(PROFILE_VARIABLE, profile), LogInfo(msg=f"robovlm_ros: {PROFILE_VARIABLE}={profile}")]


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
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="the managed node, configured and activated by this launch"),
        DeclareLaunchArgument("dds_profile", default_value="default",
                              description="Fast DDS profile file for the node ('default': $FASTDDS_DEFAULT_PROFILES_FILE "
                                          "if set, else the package's large-message profile; '': the middleware's own)"),
        DeclareLaunchArgument("record", default_value="false", description="also record a rosbag"),
        DeclareLaunchArgument("record_dir", default_value="robovlm_record", description="rosbag output directory"),
    ]
    record = OpaqueFunction(function=_record, condition=IfCondition(LaunchConfiguration("record")))
    return LaunchDescription([*args, OpaqueFunction(function=_transport), OpaqueFunction(function=_policy), record])
