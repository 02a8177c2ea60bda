"""Runs inside a LeRobot 0.4.4 environment (make test-lerobot), not in ours: LeRobot's own library
loads, iterates, edits, splits, merges and appends to a dataset robovlm-ros wrote, and writes one of its
own. Everything it reads is saved under WORK for test_lerobot_compat.py to compare with what was written.

usage: lerobot_check.py DATASET WORK
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from lerobot.datasets.compute_stats import aggregate_stats
from lerobot.datasets.dataset_tools import _load_episode_with_stats, delete_episodes, merge_datasets, split_dataset
from lerobot.datasets.lerobot_dataset import LeRobotDataset

CAMERAS = ("observation.images.rgb", "observation.images.hand_rgb")


def read_all(ds: LeRobotDataset, out: Path, name: str) -> dict:
    """Every frame through LeRobot's __getitem__ (its video decoder for video features)."""
    frames = [ds[i] for i in range(len(ds))]
    for cam in CAMERAS:
        if cam in ds.meta.camera_keys:
            images = np.stack([(f[cam].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in frames])
            np.save(out / f"{name}.{cam}.npy", images)
    return {"frames": len(ds), "episodes": ds.meta.total_episodes, "tasks": [f["task"] for f in frames],
            "episode_index": [int(f["episode_index"]) for f in frames],
            "state": [f["observation.state"].tolist() for f in frames],
            "action": [f["action"].tolist() for f in frames]}


def windows(root: Path, fps: float) -> dict:
    """LeRobot's delta_timestamps windows: the next 3 actions of every frame, padded past the episode end."""
    ds = LeRobotDataset("local/windows", root=root, delta_timestamps={"action": [0, 1 / fps, 2 / fps]})
    items = [ds[i] for i in range(len(ds))]
    return {"action": [x["action"].tolist() for x in items], "pad": [x["action_is_pad"].tolist() for x in items]}


def nested(value) -> np.ndarray:
    """pandas' nested object arrays (a parquet list of lists) -> one float array."""
    return np.array(json.loads(json.dumps(value, default=lambda o: o.tolist())), np.float64)


def stats(ds: LeRobotDataset) -> dict:
    """The dataset's stats as LeRobot loads them, and LeRobot's aggregation of the per-episode stats."""
    loaded = {f: {k: list(np.shape(v)) for k, v in s.items()} for f, s in ds.meta.stats.items()}
    per_episode = []
    for e in range(ds.meta.total_episodes):
        ep = _load_episode_with_stats(ds, e)
        per_episode.append({f: {k: nested(ep[f"stats/{f}/{k}"]) for k in ds.meta.stats[f]} for f in ds.meta.stats})
    aggregated = aggregate_stats(per_episode)
    return {"shapes": loaded, "features": sorted(ds.meta.features),
            "mean": {f: np.asarray(ds.meta.stats[f]["mean"]).tolist() for f in ds.meta.stats},
            "aggregated_mean": {f: np.asarray(aggregated[f]["mean"]).tolist() for f in aggregated}}


def append_episode(root: Path, out: Path, length: int) -> dict:
    """Resume recording into the dataset with LeRobot's recorder API: one more episode."""
    ds = LeRobotDataset("local/appended", root=root)
    rng = np.random.default_rng(7)
    shape = ds.meta.features[CAMERAS[0]]["shape"]
    images = {cam: np.stack([np.full(shape, 10 * t + 40 * c, np.uint8) for t in range(length)])
              for c, cam in enumerate(CAMERAS) if cam in ds.meta.camera_keys}
    state, action = rng.normal(size=(2, length, 7)).astype(np.float32)
    for t in range(length):
        ds.add_frame({**{cam: im[t] for cam, im in images.items()}, "observation.state": state[t],
                      "action": action[t], "task": "stack the green cube"})
    ds.save_episode()
    ds.finalize()
    for cam, im in images.items():
        np.save(out / f"appended_input.{cam}.npy", im)
    np.save(out / "appended_input.state.npy", state)
    return read_all(LeRobotDataset("local/appended", root=root), out, "appended")


def lerobot_written(root: Path, out: Path) -> dict:
    """A dataset LeRobot writes itself (its camera names), for our training reader."""
    shape = (48, 64, 3)
    features = {"observation.images.front": {"dtype": "video", "shape": shape, "names": ["height", "width", "channels"]},
                "observation.images.wrist": {"dtype": "video", "shape": shape, "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": (7,), "names": [f"s{i}" for i in range(7)]},
                "action": {"dtype": "float32", "shape": (7,), "names": [f"a{i}" for i in range(7)]}}
    ds = LeRobotDataset.create("local/written", fps=10, features=features, root=root, robot_type="arm")
    rng = np.random.default_rng(3)
    written = {"task": [], "state": [], "action": []}
    for e, task in enumerate(["open the drawer", "close the drawer", "open the drawer"]):
        for t in range(10 + 2 * e):
            front = np.zeros(shape, np.uint8)
            front[..., 0], front[8:24, 8:24, 1] = 15 * t, 60 * e
            frame = {"observation.images.front": front, "observation.images.wrist": front[::-1].copy(),
                     "observation.state": rng.normal(size=7).astype(np.float32),
                     "action": rng.normal(size=7).astype(np.float32), "task": task}
            ds.add_frame(frame)
            for k in ("state", "action"):
                written[k].append(frame[f"observation.{k}" if k == "state" else k].tolist())
            written["task"].append(task)
            written.setdefault("front", []).append(front)
        ds.save_episode()
    ds.finalize()
    np.save(out / "written_input.front.npy", np.stack(written.pop("front")))
    return written


def main(dataset: str, work: str) -> None:
    src, out = Path(dataset), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    ds = LeRobotDataset("local/ours", root=src)
    result = {"read": read_all(ds, out, "read"), "stats": stats(ds), "windows": windows(src, ds.fps),
              "task_index": {t: ds.meta.get_task_index(t) for t in set(ds.meta.tasks.index)}}
    deleted = delete_episodes(ds, [1], output_dir=out / "deleted", repo_id="local/deleted")
    result["deleted"] = read_all(LeRobotDataset("local/deleted", root=deleted.root), out, "deleted")
    parts = split_dataset(ds, {"train": [0, 2], "val": [1]}, output_dir=out / "split")
    result["split"] = {k: [v.meta.total_episodes, v.meta.total_frames] for k, v in parts.items()}
    merged = merge_datasets([parts["val"], parts["train"]], "local/merged", output_dir=out / "merged")
    result["merged"] = read_all(LeRobotDataset("local/merged", root=merged.root), out, "merged")
    shutil.copytree(src, out / "appended")
    result["appended"] = append_episode(out / "appended", out, length=9)
    result["written"] = lerobot_written(out / "written", out)
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
