"""Writing datasets in the LeRobot v3.0 layout, as LeRobot itself writes them (its tools load, edit,
split, merge and append to them):

    meta/info.json              fps, features (video info per camera), counts, file size limits, path templates
    meta/stats.json             every feature: min, max, mean, std, count, q01, q10, q50, q90, q99
    meta/tasks.parquet          task_index, indexed by the task text
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, data/video file and range,
                                              per-episode ``stats/<feature>/<stat>`` columns
    data/chunk-CCC/file-FFF.parquet            one row per frame; episodes back to back, a new file past
                                              DATA_FILE_MB
    videos/<camera>/chunk-CCC/file-FFF.mp4     (video storage, the default) episodes back to back
    meta/robovlm_ros/episodes.jsonl            our own per-episode fields (success, source bag, drops),
                                              outside LeRobot's tables so its tools can append and merge

With PNG storage the images are PNG bytes inside the data files (LeRobot's ``image`` features) instead.
Frame timestamps are frame_index / fps, as LeRobot requires to find video frames; the recorded times
feed the quality report. The dataset is written into a temporary sibling directory and renamed into
place at the end. The reader is data/lerobot_reader.py.
"""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic_io import finish_files, swap_in, temp_sibling
from .layout import (CHUNK_SIZE, CODEBASE_VERSION, DATA_FILE_MB, DATA_PATH, EPISODES_PATH, EXTRAS_PATH,
                     IMAGE_KEYS, INDEX_FEATURES, TASKS_PATH, VIDEO_FILE_MB, VIDEO_PATH)
from .lerobot_stats import combine_stats, feature_stats, image_stats
from .video import DEFAULT_CODEC, DEFAULT_CRF, VideoFileWriter, check_frame_size, json_number, video_info

STORAGES = ("video", "png")


class DatasetSettingsError(ValueError):
    """The dataset cannot be written with these settings, whichever bag comes next."""


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


def next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 == CHUNK_SIZE else (chunk, file + 1)


class _RollingFiles:
    """Episodes appended to chunk-C/file-F files, a new file once one passes ``limit_mb`` (LeRobot's
    packing). Subclasses open, write and finish one file."""

    def __init__(self, limit_mb: int):
        self.index, self.writer, self.limit = (0, 0), None, limit_mb * 2**20

    def append(self, payload) -> dict:
        """Where the episode went: its file's chunk and file index columns (and time range, for video)."""
        if self.writer is None:
            self.writer = self._open(payload)
        where = self._write(payload)
        if self._size() >= self.limit:
            self.close()
            self.index = next_file(*self.index)
        return where

    def close(self) -> None:
        if self.writer is not None:
            self._finish()
            self.writer = None


class _DataFiles(_RollingFiles):
    """Frame tables in data/chunk-C/file-F.parquet."""

    def __init__(self, root: str):
        super().__init__(DATA_FILE_MB)
        self.root, self.bytes = root, 0

    def _open(self, table: pa.Table):
        path = os.path.join(self.root, DATA_PATH.format(chunk_index=self.index[0], file_index=self.index[1]))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.bytes = 0
        return pq.ParquetWriter(path, table.schema)

    def _write(self, table: pa.Table) -> dict:
        self.writer.write_table(table)
        self.bytes += table.nbytes
        return {"data/chunk_index": self.index[0], "data/file_index": self.index[1]}

    def _size(self) -> int:
        return self.bytes

    def _finish(self) -> None:
        self.writer.close()


class _VideoFiles(_RollingFiles):
    """One camera's frames in videos/<key>/chunk-C/file-F.mp4; an episode is a time range of its file."""

    def __init__(self, root: str, key: str, fps: float, codec: str, crf: int):
        super().__init__(VIDEO_FILE_MB)
        self.root, self.key, self.fps, self.codec, self.crf, self.info = root, key, fps, codec, crf, None

    def _open(self, images: np.ndarray) -> VideoFileWriter:
        path = os.path.join(self.root, VIDEO_PATH.format(video_key=self.key, chunk_index=self.index[0],
                                                          file_index=self.index[1]))
        return VideoFileWriter(path, self.fps, self.codec, self.crf)

    def _write(self, images: np.ndarray) -> dict:
        start = self.writer.frames / self.fps
        self.writer.append(images)
        p = f"videos/{self.key}/"
        return {p + "chunk_index": self.index[0], p + "file_index": self.index[1], p + "from_timestamp": start,
                p + "to_timestamp": self.writer.frames / self.fps}

    def _size(self) -> int:
        return self.writer.size_bytes

    def _finish(self) -> None:
        self.writer.close()
        self.info = self.info or video_info(self.writer.path)


class LeRobotWriter:
    def __init__(self, root: str, fps: float, state_names: list[str], action_names: list[str], robot_type: str,
                 overwrite: bool = False, storage: str = "video", codec: str = DEFAULT_CODEC, crf: int = DEFAULT_CRF):
        if storage not in STORAGES:
            raise ValueError(f"storage {storage!r}: choose one of {', '.join(STORAGES)}")
        self.root = os.path.abspath(root)
        if os.path.exists(self.root) and not overwrite:
            raise FileExistsError(f"{self.root} exists: choose another --out or pass --overwrite")
        self.tmp = temp_sibling(self.root)
        self.fps, self.state_names, self.action_names, self.robot_type = fps, state_names, action_names, robot_type
        self.storage, self.codec, self.crf = storage, codec, crf
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []  # rows of meta/episodes
        self.episode_stats: list[dict] = []
        self.extras: list[dict] = []
        self.values: dict[str, list[np.ndarray]] = {}  # non-image features, for exact dataset statistics
        self.image_shapes: dict[str, tuple] = {}
        self.data = _DataFiles(self.tmp)
        self.videos: dict[str, _VideoFiles] = {}
        self.total = 0

    def add_episode(self, frames: dict, task: str, extra: dict) -> int:
        """frames: "rgb" [T, H, W, 3] uint8, "hand_rgb" (optional), "state" [T, 7], "action" [T, 7].
        ``extra``: our own per-episode fields (JSON-serialisable). Returns the episode index."""
        n, ep = len(frames["state"]), len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        values = {"observation.state": np.asarray(frames["state"], np.float32),
                  "action": np.asarray(frames["action"], np.float32),
                  "timestamp": (np.arange(n) / self.fps).astype(np.float32),
                  "frame_index": np.arange(n, dtype=np.int64), "episode_index": np.full(n, ep, np.int64),
                  "index": np.arange(self.total, self.total + n, dtype=np.int64),
                  "task_index": np.full(n, task_index, np.int64)}
        columns = {k: pa.array(list(v), pa.list_(pa.float32(), v.shape[1])) if v.ndim == 2 else pa.array(v)
                   for k, v in values.items()}
        stats = {k: feature_stats(v) for k, v in values.items()}
        row = {"episode_index": ep, "tasks": [task], "length": n}
        for key, feature in self._image_features(frames).items():
            images = np.asarray(frames[key], np.uint8)
            stats[feature] = image_stats(images)
            if self.storage == "png":
                columns[feature] = pa.array([{"bytes": encode_png(im), "path": None} for im in images],
                                            pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
            else:
                if feature not in self.videos:
                    self.videos[feature] = _VideoFiles(self.tmp, feature, self.fps, self.codec, self.crf)
                row.update(self.videos[feature].append(images))
        row.update(self.data.append(pa.table(columns)))
        row.update({"dataset_from_index": self.total, "dataset_to_index": self.total + n})
        row.update({f"stats/{f}/{k}": v for f, s in stats.items() for k, v in s.items()})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self.episodes.append(row)
        self.episode_stats.append(stats)
        self.extras.append({"episode_index": ep, **extra})
        for k, v in values.items():
            self.values.setdefault(k, []).append(v)
        self.total += n
        return ep

    def _image_features(self, frames: dict) -> dict:
        """The cameras of this episode; every episode must have the same cameras at the same size."""
        keys = {k: f for k, f in IMAGE_KEYS.items() if k in frames}
        if self.episodes and set(keys) != set(self.image_shapes):
            raise ValueError(f"episode has cameras {sorted(keys)}, earlier episodes {sorted(self.image_shapes)}")
        for key in keys:
            shape = tuple(np.shape(frames[key])[1:])
            if self.storage == "video" and not self.image_shapes:
                try:
                    check_frame_size(*shape[:2])
                except ValueError as e:
                    raise DatasetSettingsError(str(e)) from None
            if self.image_shapes.setdefault(key, shape) != shape:
                raise ValueError(f"{key} images are {shape}, earlier episodes {self.image_shapes[key]}: "
                                 f"use --image-size to store one size")
        return keys

    def _stats(self) -> dict:
        stats = {k: feature_stats(np.concatenate(v)) for k, v in self.values.items()}
        for feature in (IMAGE_KEYS[k] for k in self.image_shapes):
            stats[feature] = combine_stats([s[feature] for s in self.episode_stats])
        return stats

    def _features(self) -> dict:
        features = {}
        for key, shape in self.image_shapes.items():
            feature = IMAGE_KEYS[key]
            features[feature] = {"dtype": "image" if self.storage == "png" else "video", "shape": list(shape),
                                 "names": ["height", "width", "channels"]}
            if self.storage == "video":
                features[feature]["info"] = self.videos[feature].info
        features["observation.state"] = {"dtype": "float32", "shape": [7], "names": self.state_names}
        features["action"] = {"dtype": "float32", "shape": [7], "names": self.action_names}
        for name in INDEX_FEATURES:
            features[name] = {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
        return features

    def finish(self) -> dict:
        if not self.episodes:
            self.abort()
            raise ValueError("no episode could be converted: nothing written")
        self.data.close()
        for video in self.videos.values():
            video.close()
        meta = os.path.join(self.tmp, "meta")
        path = os.path.join(self.tmp, EPISODES_PATH.format(chunk_index=0, file_index=0))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), path)
        # LeRobot reads tasks with pandas and looks them up by text: the task is the frame's index
        pd.DataFrame({"task_index": list(self.tasks.values())}, index=list(self.tasks)).to_parquet(
            os.path.join(self.tmp, TASKS_PATH))
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
                "total_episodes": len(self.episodes), "total_frames": self.total, "total_tasks": len(self.tasks),
                "chunks_size": CHUNK_SIZE, "data_files_size_in_mb": DATA_FILE_MB,
                "video_files_size_in_mb": VIDEO_FILE_MB, "fps": json_number(self.fps),
                "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.videos else None, "features": self._features()}
        for name, data in (("info.json", info), ("stats.json", self._stats())):
            with open(os.path.join(meta, name), "w") as f:
                json.dump(data, f, indent=2)
        os.makedirs(os.path.dirname(os.path.join(self.tmp, EXTRAS_PATH)), exist_ok=True)
        with open(os.path.join(self.tmp, EXTRAS_PATH), "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in self.extras)
        finish_files(self.tmp)
        swap_in(self.tmp, self.root)
        return info

    def abort(self) -> None:
        self.data.close()
        for video in self.videos.values():
            try:
                video.close()
            except Exception:  # noqa: BLE001 - the files are deleted next; a failed flush does not matter
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
