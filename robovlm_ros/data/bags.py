"""Reading one recorded episode (a rosbag2 directory, sqlite3 or mcap) with the ``rosbags`` library."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

EPISODE_FILE = "episode.json"
RECORDING_DIR = ".recording"  # episode_recorder's episodes in progress (or interrupted)


class BagError(RuntimeError):
    """A bag that cannot be read (missing, truncated, corrupt); the message names it."""


@dataclass
class Episode:
    path: str
    instruction: str
    success: bool
    streams: dict[str, list[tuple[int, object]]] = field(default_factory=dict)  # topic -> [(log time ns, msg)]
    msgtypes: dict[str, str] = field(default_factory=dict)


def find_bags(paths: list[str]) -> tuple[list[str], list[str]]:
    """Bag directories under ``paths`` (a bag itself or a folder of bags), and incomplete recordings."""
    bags, partial = [], []
    for p in paths:
        p = os.path.abspath(p)
        if not os.path.isdir(p):
            raise FileNotFoundError(f"{p} is not a directory")
        if os.path.exists(os.path.join(p, "metadata.yaml")):
            bags.append(p)
            continue
        rec = os.path.join(p, RECORDING_DIR)
        if os.path.isdir(rec):
            partial += [os.path.join(rec, d) for d in sorted(os.listdir(rec))]
        bags += [os.path.join(p, d) for d in sorted(os.listdir(p))
                 if not d.startswith(".") and os.path.isdir(os.path.join(p, d))]
    return bags, partial


def read_episode(path: str, topics: list[str], instruction: str | None = None) -> Episode:
    """All messages of ``topics`` in log-time order, with the episode's instruction and success flag.

    The instruction comes from ``instruction`` (overrides), ``episode.json`` (episode_recorder),
    or the bag's custom data; a bag without any is an error.
    """
    meta = {}
    meta_path = os.path.join(path, EPISODE_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    streams: dict[str, list] = {t: [] for t in topics}
    typestore = get_typestore(Stores.ROS2_KILTED)
    try:
        with Reader(Path(path)) as reader:
            custom = getattr(getattr(reader.storage, "metadata", None), "custom", None) or {}
            conns = [c for c in reader.connections if c.topic in streams]
            msgtypes = {c.topic: c.msgtype for c in conns}
            for conn, timestamp, raw in reader.messages(connections=conns):
                streams[conn.topic].append((timestamp, typestore.deserialize_cdr(raw, conn.msgtype)))
    except Exception as e:  # rosbags raises several types for truncated/corrupt files
        raise BagError(f"cannot read bag {path}: {type(e).__name__}: {e}") from e
    for msgs in streams.values():
        msgs.sort(key=lambda tm: tm[0])
    text = instruction or meta.get("instruction") or custom.get("robovlm_ros.instruction")
    if not text:
        raise BagError(f"bag {path} has no instruction (no episode.json): pass --instruction")
    return Episode(path, text, bool(meta.get("success", True)), streams, msgtypes)
