"""Reading LeRobot v3.0 datasets for training: ours (``robovlm-ros convert``) and those LeRobot itself
wrote (its recorder, its dataset tools), with cameras stored as mp4 video or as images.

Video frames are decoded once, when the dataset is opened, into an unlinked temporary file mapped into
memory: a window reads its frames without decoding, worker processes share the pages, and memory holds
only what the operating system caches.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .layout import IMAGE_KEYS, TASKS_PATH
from .lerobot import decode_png
from .lerobot_stats import feature_stats
from .video import decode_frames


class PngFrames:
    """An episode's camera frames stored as PNG bytes; [i] -> [H, W, 3] uint8 RGB."""

    def __init__(self, images: list[bytes]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return decode_png(self.images[i])


class _FrameStore:
    """Decoded frames [N, H, W, 3] uint8 of one camera over all episodes, in a memory-mapped temp file."""

    def __init__(self, capacity: int, height: int, width: int):
        self.file = tempfile.TemporaryFile(prefix="robovlm_frames-")
        self.frames = np.memmap(self.file, np.uint8, "w+", shape=(max(capacity, 1), height, width, 3))
        self.used = 0

    def add(self, frames: np.ndarray) -> np.ndarray:
        view = self.frames[self.used : self.used + len(frames)]
        view[:] = frames
        self.used += len(frames)
        return view


class LeRobotEpisodes:
    """All episodes of one dataset: per episode "task", "state" [T, 7], "action" [T, 7] and, per camera
    key of ``image_keys`` ({"rgb": feature, "hand_rgb": feature}; default ours), indexable frames."""

    def __init__(self, root: str, image_keys: dict | None = None):
        self.root = root
        info_path = os.path.join(root, "meta", "info.json")
        if not os.path.exists(info_path):
            raise FileNotFoundError(f"{root} is not a LeRobot dataset (meta/info.json missing)")
        with open(info_path) as f:
            self.info = json.load(f)
        stats_path = os.path.join(root, "meta", "stats.json")
        self.stats = {}  # per feature, as the dataset carries them
        if os.path.exists(stats_path):
            with open(stats_path) as f:
                self.stats = json.load(f)
        self.image_keys = dict(image_keys or IMAGE_KEYS)
        features = self.info["features"]
        cameras = {k: f for k, f in self.image_keys.items() if f in features}
        if "rgb" not in cameras:
            found = [k for k, f in features.items() if f["dtype"] in ("image", "video")]
            raise ValueError(f"{root} has no camera {self.image_keys['rgb']!r}; its cameras: "
                             f"{', '.join(found) or 'none'} (map them with data.image_keys)")
        task_of = self._tasks()
        stores = {}
        self.episodes = []
        tables = {}  # a data file holds many episodes
        for ep in self._episode_rows():
            data = self._data_table(tables, ep)
            rows = np.flatnonzero(data.column("episode_index").to_numpy() == ep["episode_index"])
            cols = data.take(rows).select([c for c in data.column_names
                                           if c in ("task_index", "observation.state", "action")
                                           or c in cameras.values()]).to_pydict()
            record = {"task": task_of[cols["task_index"][0]], "episode_index": ep["episode_index"],
                      "state": np.asarray(cols["observation.state"], np.float32),
                      "action": np.asarray(cols["action"], np.float32)}
            for key, feature in cameras.items():
                if features[feature]["dtype"] == "video":
                    if feature not in stores:
                        h, w = self._frame_size(feature)
                        stores[feature] = _FrameStore(self.info["total_frames"], h, w)
                    record[key] = stores[feature].add(self._video_frames(feature, ep))
                else:
                    record[key] = PngFrames([self._image_bytes(im) for im in cols[feature]])
            self.episodes.append(record)

    def _tasks(self) -> dict:
        tasks = pd.read_parquet(os.path.join(self.root, TASKS_PATH))
        if "task" in tasks.columns:  # datasets written before the task became the index
            return dict(zip(tasks["task_index"], tasks["task"]))
        return dict(zip(tasks["task_index"], tasks.index))

    def _episode_rows(self) -> list[dict]:
        files = sorted(glob.glob(os.path.join(self.root, "meta", "episodes", "*", "*.parquet")))
        rows = [r for path in files for r in pq.read_table(path).to_pylist()]
        return sorted(rows, key=lambda r: r["episode_index"])

    def _data_table(self, cache: dict, ep: dict):
        path = os.path.join(self.root, self.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                                     file_index=ep["data/file_index"]))
        if path not in cache:
            cache[path] = pq.read_table(path)
        return cache[path]

    def _frame_size(self, feature: str) -> tuple[int, int]:
        f = self.info["features"][feature]
        info = f.get("info") or {}
        if "video.height" in info:
            return info["video.height"], info["video.width"]
        names = f.get("names") or ["height", "width", "channels"]
        return f["shape"][names.index("height")], f["shape"][names.index("width")]

    def _video_frames(self, feature: str, ep: dict) -> np.ndarray:
        p = f"videos/{feature}/"
        path = os.path.join(self.root, self.info["video_path"].format(
            video_key=feature, chunk_index=ep[p + "chunk_index"], file_index=ep[p + "file_index"]))
        return decode_frames(path, ep[p + "from_timestamp"], ep["length"], self.info["fps"])

    def _image_bytes(self, image: dict) -> bytes:
        if image.get("bytes"):
            return image["bytes"]
        with open(os.path.join(self.root, image["path"]), "rb") as f:
            return f.read()


def dataset_stats(sources: list[LeRobotEpisodes]) -> dict:
    """Normaliser statistics ({"action": ..., "state": ...}): a single dataset's own ``stats.json``;
    over several datasets they are computed from all their frames (quantiles do not combine)."""
    if len(sources) == 1 and {"action", "observation.state"} <= set(sources[0].stats):
        stats = sources[0].stats
        return {"action": stats["action"], "state": stats["observation.state"]}
    states = np.concatenate([ep["state"] for s in sources for ep in s.episodes])
    actions = np.concatenate([ep["action"] for s in sources for ep in s.episodes])
    return {"action": feature_stats(actions), "state": feature_stats(states)}
