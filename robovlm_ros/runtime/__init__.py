"""ROS-free policy runtime: PolicyRunner, image decoding, safety, chunk execution."""
from .images import ImageDecodeError, decode_image
from .runner import PolicyRunner, resolve_device
from .safety import SafetyLimits, UnsafeActionError

__all__ = ["PolicyRunner", "SafetyLimits", "UnsafeActionError", "ImageDecodeError", "decode_image", "resolve_device"]
