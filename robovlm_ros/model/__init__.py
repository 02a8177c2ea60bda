"""The shared model core: pure torch + transformers (no ROS, data or training imports)."""
from .checkpoint import CheckpointError
from .config import SUPPORTED_BACKBONES, PolicyConfig
from .normalization import Normalizer
from .robovlm import RoboVLM

__all__ = ["PolicyConfig", "RoboVLM", "Normalizer", "CheckpointError", "SUPPORTED_BACKBONES"]
