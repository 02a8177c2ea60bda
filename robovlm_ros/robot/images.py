"""ROS image messages -> HxWx3 uint8 RGB, with rosbags-image (shared by the node and the bag converter).

Works on any object with the fields of sensor_msgs/Image or sensor_msgs/CompressedImage (rclpy
messages and rosbags' deserialised messages alike); nothing here imports ROS. Malformed messages
raise ``ImageDecodeError`` with the reason, so callers can reject them without guessing.
"""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
from rosbags.image import ImageConversionError, ImageFormatError, compressed_image_to_cvimage, image_to_cvimage

RAW_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB frame."""


def decode_image(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) or CompressedImage (jpeg, png) -> [H, W, 3] uint8."""
    if hasattr(msg, "format"):  # CompressedImage
        if len(msg.data) == 0:
            raise ImageDecodeError("compressed image has no data")
        try:
            img = compressed_image_to_cvimage(msg, "rgb8")
        except (ImageConversionError, ImageFormatError, ValueError, AssertionError, cv2.error) as e:
            # rosbags-image asserts on bytes OpenCV cannot decode
            raise ImageDecodeError(f"cannot decode compressed image ({msg.format!r}): {str(e) or 'not an image'}") from e
        if img is None or img.ndim != 3 or img.shape[2] != 3:
            raise ImageDecodeError(f"compressed image ({msg.format!r}) did not decode to a colour image")
        return np.ascontiguousarray(img)
    channels = RAW_ENCODINGS.get(msg.encoding)
    if channels is None:
        raise ImageDecodeError(f"unsupported encoding {msg.encoding!r}; use one of {', '.join(RAW_ENCODINGS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * channels
    if h == 0 or w == 0:
        raise ImageDecodeError(f"empty image ({w}x{h})")
    if step < row or len(msg.data) != step * h:
        raise ImageDecodeError(f"image size mismatch: {w}x{h} {msg.encoding} needs step >= {row} and "
                               f"step*height bytes, got step {step} and {len(msg.data)} bytes")
    data = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, :row]  # drop row padding
    view = SimpleNamespace(encoding=msg.encoding, height=h, width=w, is_bigendian=msg.is_bigendian,
                           data=np.ascontiguousarray(data).data)
    try:
        img = image_to_cvimage(view, "rgb8")
    except (ImageConversionError, ImageFormatError) as e:
        raise ImageDecodeError(f"cannot convert {msg.encoding} image: {e}") from e
    return np.ascontiguousarray(img)
