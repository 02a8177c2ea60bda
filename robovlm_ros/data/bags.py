"""Reading one recorded episode (a rosbag2 directory, sqlite3 or mcap) with the ``rosbags`` library."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

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
    available: dict[str, str] = field(default_factory=dict)  # every topic of the bag -> its message type


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


def typestore_for(connections):
    """The ROS 2 Kilted typestore plus the types a bag defines itself (mcap stores each connection's
    message definition): messages of other packages (control_msgs, a vendor's) deserialise too."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    for conn in connections:
        if conn.msgtype in typestore.fielddefs:
            continue
        text = getattr(conn.msgdef, "data", conn.msgdef)
        try:
            typestore.register(get_types_from_msg(text, conn.msgtype))
        except Exception as e:  # noqa: BLE001 - the bag names a type it does not define
            raise BagError(f"bag's topic {conn.topic} has type {conn.msgtype}, which neither ROS 2's common "
                           f"interfaces nor the bag define ({type(e).__name__})") from e
    return typestore


def _instruction_in_topics(path: str, streams: dict, instruction_topics: list[str]) -> str | None:
    """The instruction published on String topics of the bag: None when there is none; BagError when
    several different ones were (one episode, one task: split the bag)."""
    texts = {m.data.strip(): topic for topic in instruction_topics for _, m in streams.get(topic, [])
             if m.data.strip()}
    if len(texts) > 1:
        listed = "; ".join(f"{t!r} on {topic}" for t, topic in texts.items())
        raise BagError(f"bag {path} holds {len(texts)} different instructions ({listed}): split it into one "
                       f"bag per task, or pass --instruction")
    return next(iter(texts), None)


def read_episode(path: str, topics: list[str], instruction: str | None = None,
                 instruction_topic: str | None = None) -> Episode:
    """All messages of ``topics`` in log-time order, with the episode's instruction and success flag.

    The instruction comes from ``instruction`` (overrides), ``episode.json`` (episode_recorder), the
    bag's custom data, or a std_msgs/String topic of the bag: ``instruction_topic``, or else any String
    topic whose name ends in "instruction" (the policy node's ``~/instruction``); a bag without any,
    or with several different ones, is an error.
    """
    meta = {}
    meta_path = os.path.join(path, EPISODE_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    streams: dict[str, list] = {t: [] for t in topics}
    try:
        with Reader(Path(path)) as reader:
            custom = getattr(getattr(reader.storage, "metadata", None), "custom", None) or {}
            available = {c.topic: c.msgtype for c in reader.connections}
            strings = [c.topic for c in reader.connections if c.msgtype == "std_msgs/msg/String"
                       and (c.topic == instruction_topic if instruction_topic else c.topic.endswith("instruction"))]
            streams.update({t: [] for t in strings})
            conns = [c for c in reader.connections if c.topic in streams]
            typestore = typestore_for(conns)
            msgtypes = {c.topic: c.msgtype for c in conns}
            for conn, timestamp, raw in reader.messages(connections=conns) if conns else ():  # ([]: all)
                streams[conn.topic].append((timestamp, typestore.deserialize_cdr(raw, conn.msgtype)))
    except BagError:
        raise
    except Exception as e:  # rosbags raises several types for truncated/corrupt files
        raise BagError(f"cannot read bag {path}: {type(e).__name__}: {e}") from e
    for msgs in streams.values():
        msgs.sort(key=lambda tm: tm[0])
    text = (instruction or meta.get("instruction") or custom.get("robovlm_ros.instruction")
            or _instruction_in_topics(path, streams, strings))
    if not text:
        where = f" (String topics: {', '.join(strings)})" if strings else ""
        raise BagError(f"bag {path} has no instruction: no episode.json, no instruction topic{where}; pass "
                       f"--instruction or --instruction-topic")
    return Episode(path, text, bool(meta.get("success", True)), streams, msgtypes, available)
