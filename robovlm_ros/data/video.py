"""Camera streams as mp4 files the way LeRobot v3 stores them (PyAV): one file per camera holds
consecutive episodes back to back, each episode a [from_timestamp, to_timestamp) stretch of it.

Encoding follows LeRobot's defaults (AV1 through SVT-AV1, yuv420p, a keyframe every 2 frames, crf 30),
so random access decodes at most two frames and LeRobot's decoders read the files as their own.
"""
from __future__ import annotations

import logging
import os

import numpy as np

DEFAULT_CODEC = "libsvtav1"
DEFAULT_CRF = 30
MIN_SIDE = 32  # SVT-AV1 kills the process (SIGFPE) on frames of 24 px; 30 px encode


def _av():
    """PyAV, imported when a video is written or read: the model, the runner, training and PNG-stored
    datasets work without it (a GPU machine's image without the codec library, say)."""
    import av

    return av


def check_frame_size(height: int, width: int) -> None:
    """Raise ValueError for a frame size the encoder cannot take (checked before it can crash)."""
    if min(height, width) < MIN_SIDE or height % 2 or width % 2:
        raise ValueError(f"video storage needs images of at least {MIN_SIDE} x {MIN_SIDE} pixels with even sides, "
                         f"not {height} x {width}: resize them (--image-size) or store PNG (--storage png)")


def codec_options(codec: str, crf: int) -> dict:
    options = {"g": "2"}
    if codec in ("libsvtav1", "libx264", "libx265", "h264", "hevc"):
        options["crf"] = str(crf)
    if codec == "libsvtav1":
        options["preset"] = "12"
    return options


class VideoFileWriter:
    """Frames [H, W, 3] uint8 appended to one mp4 file; ``close`` checks that the file holds them all."""

    def __init__(self, path: str, fps: float, codec: str = DEFAULT_CODEC, crf: int = DEFAULT_CRF):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        logging.getLogger("libav").setLevel(logging.ERROR)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner and settings per file: errors only
        self.path, self.fps, self.frames = path, fps, 0
        self.container = _av().open(path, "w", options={"movflags": "faststart"})
        self.stream = self.container.add_stream(codec, rate=_rate(fps), options=codec_options(codec, crf))
        self.stream.pix_fmt = "yuv420p"
        self.shape: tuple | None = None

    def append(self, images: np.ndarray) -> None:
        """images [T, H, W, 3] uint8 RGB."""
        if self.shape is None:
            check_frame_size(*images.shape[1:3])
            self.shape = images.shape[1:3]
            self.stream.height, self.stream.width = self.shape
        video_frame = _av().VideoFrame
        for image in images:
            frame = video_frame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            self.container.mux(self.stream.encode(frame))
            self.frames += 1

    @property
    def size_bytes(self) -> int:
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()
        stored = count_frames(self.path)
        if stored != self.frames:
            raise RuntimeError(f"{self.path}: {stored} video frames stored for {self.frames} rows")


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def count_frames(path: str) -> int:
    """Video frames in the file's first video stream, counted from its packets (no decoding)."""
    with _av().open(path) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)


def video_info(path: str) -> dict:
    """The ``info`` block LeRobot keeps for a video feature in info.json."""
    with _av().open(path) as container:
        stream = container.streams.video[0]
        return {"video.height": stream.height, "video.width": stream.width, "video.codec": stream.codec.canonical_name,
                "video.pix_fmt": stream.pix_fmt, "video.is_depth_map": False,
                "video.fps": json_number(float(stream.average_rate or stream.base_rate)), "video.channels": 3,
                "has_audio": bool(container.streams.audio)}


def json_number(x: float):
    return int(x) if float(x).is_integer() else x


def decode_frames(path: str, from_timestamp: float, count: int, fps: float) -> np.ndarray:
    """``count`` frames [count, H, W, 3] uint8 RGB starting at ``from_timestamp`` seconds; a frame is the
    one whose presentation time is nearest frame k's nominal time (k / fps from the start)."""
    out, filled = None, 0
    first = round(from_timestamp * fps)
    with _av().open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        container.seek(int(from_timestamp / tb), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            k = round(frame.pts * tb * fps) - first
            if k >= count:
                break
            if k < 0:
                continue
            if out is None:
                out = np.empty((count, frame.height, frame.width, 3), np.uint8)
            out[k] = frame.to_ndarray(format="rgb24")
            filled += 1
    if filled != count:
        raise ValueError(f"{path}: {filled} of {count} frames found from {from_timestamp:.3f} s")
    return out
