"""The launch file and the parameters file agree with the node and the installed executables."""
import ast
import os
import re

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "policy.launch.py")


def test_policy_yaml_matches_the_declared_parameters():
    from robovlm_ros.node_params import PolicyParams, load_policy_params
    from robovlm_ros.robot.description import params_of

    with open(os.path.join(REPO, "config", "policy.yaml")) as f:
        params = yaml.safe_load(f)["robovlm_policy"]["ros__parameters"]
    assert set(params) == set(params_of(PolicyParams))
    defaults = PolicyParams()
    for name, value in params.items():
        default = getattr(defaults, name)
        assert value == default and type(value) is type(default), name
    assert load_policy_params(os.path.join(REPO, "config", "policy.yaml")) == defaults


def test_launch_file_parses_and_names_the_installed_executable_and_config():
    tree = ast.parse(open(LAUNCH).read())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {"robovlm_ros", "policy_node", "policy_lifecycle_node", "robovlm_policy", "policy.yaml", "config"} <= strings
    declared = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    assert {"checkpoint", "params_file", "namespace", "instruction", "autostart", "lifecycle", "record"} <= declared
    funcs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    # the executable the launch file names is a console script that setup.py installs
    setup_py = open(os.path.join(REPO, "setup.py")).read()
    assert re.search(r'"policy_node = robovlm_ros\.ros\.policy_node:main"', setup_py)
    assert re.search(r'"policy_lifecycle_node = robovlm_ros\.ros\.policy_lifecycle_node:main"', setup_py)
    assert '"share/%s/launch" % PACKAGE, "launch/*.launch.py"' in setup_py
    assert '"share/%s/config" % PACKAGE, "config/*.yaml"' in setup_py


def test_launch_description_builds_under_ros2_launch():
    """Only where the launch system is installed (an apt ROS 2); PyPI has no `launch` package."""
    pytest.importorskip("launch_ros")  # first: the repo's own launch/ folder would pass for `launch`
    import launch
    import importlib.util

    spec = importlib.util.spec_from_file_location("policy_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, launch.LaunchDescription)
