"""Datasets in the LeRobot v3 layout (so LeRobot tools can open them): the writer ``convert`` uses,
the reader training uses, and their statistics.

    meta/info.json                       fps, features, counts, path templates   (codebase_version v3.0)
    meta/stats.json                      per feature: mean, std, min, max, q01, q99, count
    meta/tasks.parquet                   task_index, task
    meta/episodes/chunk-000/file-000.parquet   one row per episode (length, index range, file, success, source)
    data/chunk-000/file-NNN.parquet      one row per frame; images as PNG bytes ({"bytes", "path"} structs)

The whole dataset is written into a temporary sibling directory and renamed into place at the end.
Statistics are computed on the values as stored (float32), so training reads back exactly these.
"""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic_io import finish_files, swap_in, temp_sibling

CODEBASE_VERSION = "v3.0"
CHUNK_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
IMAGE_KEYS = {"rgb": "observation.images.rgb", "hand_rgb": "observation.images.hand_rgb"}


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a PNG/JPEG image")
    return img[..., ::-1]


def feature_stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
            "max": x.max(0).tolist(), "q01": np.quantile(x, 0.01, axis=0).tolist(),
            "q99": np.quantile(x, 0.99, axis=0).tolist(), "count": [len(x)]}


class LeRobotWriter:
    def __init__(self, root: str, fps: float, state_names: list[str], action_names: list[str], robot_type: str,
                 overwrite: bool = False):
        self.root = os.path.abspath(root)
        if os.path.exists(self.root) and not overwrite:
            raise FileExistsError(f"{self.root} exists: choose another --out or pass --overwrite")
        self.tmp = temp_sibling(self.root)
        self.fps, self.state_names, self.action_names, self.robot_type = fps, state_names, action_names, robot_type
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.states, self.actions = [], []
        self.image_shapes: dict[str, tuple] = {}
        self.total = 0

    def add_episode(self, frames: dict, task: str, extra: dict) -> None:
        """frames: "rgb" [T, H, W, 3] uint8, "hand_rgb" (optional), "state" [T, 7], "action" [T, 7],
        "timestamp" [T] seconds from the episode start."""
        n = len(frames["state"])
        ep = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        columns = {
            "index": pa.array(np.arange(self.total, self.total + n), pa.int64()),
            "episode_index": pa.array(np.full(n, ep), pa.int64()),
            "frame_index": pa.array(np.arange(n), pa.int64()),
            "timestamp": pa.array(np.asarray(frames["timestamp"], np.float32)),
            "task_index": pa.array(np.full(n, task_index), pa.int64()),
            "observation.state": pa.array(list(np.asarray(frames["state"], np.float32)), pa.list_(pa.float32(), 7)),
            "action": pa.array(list(np.asarray(frames["action"], np.float32)), pa.list_(pa.float32(), 7)),
        }
        for key, feature in IMAGE_KEYS.items():
            if key in frames:
                shape = tuple(frames[key].shape[1:])
                if self.image_shapes.setdefault(key, shape) != shape:
                    raise ValueError(f"{key} images are {shape}, earlier episodes {self.image_shapes[key]}: "
                                     f"use --image-size to store one size")
                columns[feature] = pa.array([{"bytes": encode_png(im), "path": None} for im in frames[key]],
                                            pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        chunk, file = divmod(ep, CHUNK_SIZE)
        rel = DATA_PATH.format(chunk_index=chunk, file_index=file)
        os.makedirs(os.path.dirname(os.path.join(self.tmp, rel)), exist_ok=True)
        pq.write_table(pa.table(columns), os.path.join(self.tmp, rel))
        self.episodes.append({"episode_index": ep, "tasks": [task], "length": n, "data/chunk_index": chunk,
                              "data/file_index": file, "dataset_from_index": self.total,
                              "dataset_to_index": self.total + n, **extra})
        self.states.append(np.asarray(frames["state"], np.float32))
        self.actions.append(np.asarray(frames["action"], np.float32))
        self.total += n

    def finish(self) -> dict:
        if not self.episodes:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise ValueError("no episode could be converted: nothing written")
        meta = os.path.join(self.tmp, "meta")
        os.makedirs(os.path.join(meta, "episodes", "chunk-000"), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), os.path.join(self.tmp, EPISODES_PATH))
        pq.write_table(pa.table({"task_index": list(self.tasks.values()), "task": list(self.tasks)}),
                       os.path.join(meta, "tasks.parquet"))
        stats = {"observation.state": feature_stats(np.concatenate(self.states)),
                 "action": feature_stats(np.concatenate(self.actions))}
        features = {
            "observation.state": {"dtype": "float32", "shape": [7], "names": self.state_names},
            "action": {"dtype": "float32", "shape": [7], "names": self.action_names},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        }
        for key, shape in self.image_shapes.items():
            features[IMAGE_KEYS[key]] = {"dtype": "image", "shape": list(shape), "names": ["height", "width", "channels"]}
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
                "total_episodes": len(self.episodes), "total_frames": self.total, "total_tasks": len(self.tasks),
                "chunks_size": CHUNK_SIZE, "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"},
                "data_path": DATA_PATH, "video_path": None, "features": features}
        for name, data in (("info.json", info), ("stats.json", stats)):
            with open(os.path.join(meta, name), "w") as f:
                json.dump(data, f, indent=2)
        finish_files(self.tmp)
        swap_in(self.tmp, self.root)
        return info

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class LeRobotEpisodes:
    """All episodes of one dataset directory in memory (arrays + PNG bytes)."""

    def __init__(self, root: str):
        self.root = root
        info_path = os.path.join(root, "meta", "info.json")
        if not os.path.exists(info_path):
            raise FileNotFoundError(f"{root} is not a LeRobot dataset (meta/info.json missing)")
        with open(info_path) as f:
            self.info = json.load(f)
        stats_path = os.path.join(root, "meta", "stats.json")
        self.stats = {}  # per feature, as written at conversion (stats.json)
        if os.path.exists(stats_path):
            with open(stats_path) as f:
                self.stats = json.load(f)
        tasks = pq.read_table(os.path.join(root, "meta", "tasks.parquet")).to_pylist()
        task_of = {t["task_index"]: t["task"] for t in tasks}
        self.episodes = []
        tables = {}  # a data file may hold several episodes (LeRobot v3)
        for ep in pq.read_table(os.path.join(root, EPISODES_PATH)).to_pylist():
            path = os.path.join(root, self.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                                     file_index=ep["data/file_index"]))
            if path not in tables:
                tables[path] = pq.read_table(path)
            table = tables[path]
            rows = np.flatnonzero(table.column("episode_index").to_numpy() == ep["episode_index"])
            cols = table.take(rows).to_pydict()
            record = {"task": task_of[cols["task_index"][0]],
                      "state": np.asarray(cols["observation.state"], np.float32),
                      "action": np.asarray(cols["action"], np.float32)}
            for key, feature in IMAGE_KEYS.items():
                if feature in cols:
                    record[key] = [im["bytes"] for im in cols[feature]]
            self.episodes.append(record)


def dataset_stats(sources: list[LeRobotEpisodes]) -> dict:
    """Normaliser statistics ({"action": ..., "state": ...}): a single dataset's own ``stats.json``;
    over several datasets they are computed from all their frames (quantiles do not combine)."""
    if len(sources) == 1 and {"action", "observation.state"} <= set(sources[0].stats):
        stats = sources[0].stats
        return {"action": stats["action"], "state": stats["observation.state"]}
    states = np.concatenate([ep["state"] for s in sources for ep in s.episodes])
    actions = np.concatenate([ep["action"] for s in sources for ep in s.episodes])
    return {"action": feature_stats(actions), "state": feature_stats(states)}
