"""ROS-free policy runtime: PolicyRunner, safety, chunk execution."""
from .runner import PolicyRunner, resolve_device
from .safety import SafetyLimits, UnsafeActionError

__all__ = ["PolicyRunner", "SafetyLimits", "UnsafeActionError", "resolve_device"]
