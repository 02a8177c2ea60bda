"""Parameter dataclasses (``node_params.py``) as ROS parameters: declared with their descriptors,
read back into a typed object, and given to a node as overrides."""
from __future__ import annotations

import dataclasses

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from ..robot.description import params_of


def descriptor(f: dataclasses.Field) -> ParameterDescriptor:
    meta = f.metadata
    d = ParameterDescriptor(name=f.name, description=meta["description"], read_only=meta["read_only"])
    rng = meta["range"]
    if rng is not None:
        if f.type == "float":
            d.floating_point_range = [FloatingPointRange(from_value=float(rng[0]), to_value=float(rng[1]), step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=1)]
    return d


def declare_params(node, cls):
    """Declare every field of ``cls`` on ``node``; returns a ``cls`` with the values the node was given
    (ValueError when they do not describe a usable robot or node)."""
    defaults = cls()
    for name, f in params_of(cls).items():
        node.declare_parameter(name, getattr(defaults, name), descriptor(f))
    return cls(**{name: node.get_parameter(name).value for name in params_of(cls)})


def overrides(values) -> list[Parameter]:
    """``parameter_overrides`` for a node from a dict or a parameter dataclass (a RobotDescription)."""
    if dataclasses.is_dataclass(values):
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    return [Parameter(name, value=value) for name, value in values.items()]
