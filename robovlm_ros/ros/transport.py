"""Camera transport that works out of the box on one machine: the Fast DDS profile with a shared-memory
segment large enough for raw camera images (fastdds_large_messages.xml, installed with the package and
to share/robovlm_ros/config/). Only Fast DDS reads it; other middlewares ignore the variable."""
from __future__ import annotations

import os

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
LARGE_MESSAGES_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastdds_large_messages.xml")


def use_large_message_profile(environ=os.environ) -> str:
    """Point Fast DDS at the profile unless the user chose one; returns the profile in use. Call it
    before rclpy.init in every process that sends or receives images."""
    return environ.setdefault(PROFILE_VARIABLE, LARGE_MESSAGES_PROFILE)
