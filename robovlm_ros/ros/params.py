"""ROS parameter descriptors for the parameters of ``robovlm_policy`` (table in ``node_params.py``)."""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ..node_params import POLICY_PARAMS


def descriptor(name: str) -> ParameterDescriptor:
    default, description, read_only, rng = POLICY_PARAMS[name]
    d = ParameterDescriptor(name=name, description=description, read_only=read_only)
    if rng is not None:
        if isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(rng[0]), to_value=float(rng[1]), step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=1)]
    return d
