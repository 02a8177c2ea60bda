"""Our datasets are LeRobot's own, checked by LeRobot 0.4.4 itself (in its own environment, see
tools/lerobot-venv): it loads and iterates them (decoding the videos with its decoder), finds tasks by
text, builds delta_timestamps windows, aggregates our per-episode statistics, deletes, splits, merges
and appends episodes. And training reads a dataset LeRobot wrote itself.

Run with `make test-lerobot` (marker ``lerobot``; ROBOVLM_LEROBOT_PYTHON names the environment's python).
"""
import json
import os
import subprocess

import numpy as np
import pytest

from robovlm_ros.data.lerobot import LeRobotWriter
from robovlm_ros.data.lerobot_reader import LeRobotEpisodes
from robovlm_ros.runtime import PolicyRunner
from robovlm_ros.train.config import train_config_from_dict
from robovlm_ros.train.run import train

pytestmark = pytest.mark.lerobot
HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ["pick the red block", "pick the blue block", "pick the red block"]
LENGTHS = [12, 13, 14]
RGB, HAND = "observation.images.rgb", "observation.images.hand_rgb"


@pytest.fixture(scope="module")
def lerobot_python():
    python = os.environ.get("ROBOVLM_LEROBOT_PYTHON")
    if not python or not os.path.exists(python):
        pytest.skip("no LeRobot environment: run `make test-lerobot` (ROBOVLM_LEROBOT_PYTHON)")
    return python


def episodes():
    """Smooth images (lossy video keeps them close), random states and actions."""
    rng = np.random.default_rng(0)
    out = []
    for e, n in enumerate(LENGTHS):
        rgb = np.zeros((n, 48, 64, 3), np.uint8)
        rgb[..., 0] = (15 * np.arange(n))[:, None, None]
        rgb[:, 10:30, 10:30, 1], rgb[..., 2] = 200, 60 * e
        out.append({"rgb": rgb, "hand_rgb": np.ascontiguousarray(rgb[:, ::-1]),
                    "state": rng.normal(size=(n, 7)).astype(np.float32),
                    "action": rng.normal(size=(n, 7)).astype(np.float32)})
    return out


def checked_by_lerobot(python, tmp_path, storage, monkeypatch=None, one_file_per_episode=False):
    if one_file_per_episode:  # file size limits of 0: every episode starts new data and video files
        import robovlm_ros.data.lerobot as writer_module

        monkeypatch.setattr(writer_module, "DATA_FILE_MB", 0)
        monkeypatch.setattr(writer_module, "VIDEO_FILE_MB", 0)
    eps = episodes()
    w = LeRobotWriter(str(tmp_path / "ds"), 10.0, [f"j{i}" for i in range(6)] + ["gripper"],
                      [f"arm_{i}" for i in range(6)] + ["gripper"], "ros2_arm", storage=storage)
    for ep, task in zip(eps, TASKS):
        w.add_episode(ep, task, {"success": True, "source_bag": "bag"})
    w.finish()
    work = tmp_path / "work"
    run = subprocess.run([python, os.path.join(HERE, "lerobot_check.py"), str(tmp_path / "ds"), str(work)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return eps, json.loads((work / "result.json").read_text()), work


def concat(eps, key, keep=None):
    return np.concatenate([e[key] for i, e in enumerate(eps) if keep is None or i in keep])


def assert_images_close(decoded, expected, storage):
    err = np.abs(decoded.astype(int) - expected.astype(int)).mean()
    if storage == "png":
        assert err == 0
    else:  # AV1 at crf 30: small, smooth images come back within a few grey levels
        assert err < 4, err


@pytest.mark.parametrize("storage, one_file_per_episode", [("video", False), ("png", False), ("video", True)])
def test_lerobot_loads_iterates_and_edits_our_dataset(lerobot_python, tmp_path, monkeypatch, storage,
                                                      one_file_per_episode):
    eps, r, work = checked_by_lerobot(lerobot_python, tmp_path, storage, monkeypatch, one_file_per_episode)
    files = sorted(p.name for p in (tmp_path / "ds" / "data" / "chunk-000").iterdir())
    assert len(files) == (3 if one_file_per_episode else 1)
    read = r["read"]
    assert (read["frames"], read["episodes"]) == (sum(LENGTHS), 3)
    assert read["tasks"] == [t for t, n in zip(TASKS, LENGTHS) for _ in range(n)]  # the text, not an index
    assert r["task_index"] == {"pick the red block": 0, "pick the blue block": 1}
    np.testing.assert_array_equal(np.float32(read["state"]), concat(eps, "state"))
    np.testing.assert_array_equal(np.float32(read["action"]), concat(eps, "action"))
    for cam, key in ((RGB, "rgb"), (HAND, "hand_rgb")):
        lerobot_frames = np.load(work / f"read.{cam}.npy")
        assert_images_close(lerobot_frames, concat(eps, key), storage)
        ours = np.concatenate([np.stack(list(e[key])) for e in LeRobotEpisodes(str(tmp_path / "ds")).episodes])
        assert np.abs(ours.astype(int) - lerobot_frames.astype(int)).mean() < 1.0  # same frames, both decoders

    # delta_timestamps windows: the next three actions, padded (repeating the last) past the episode end
    actions, start = concat(eps, "action"), np.cumsum([0] + LENGTHS)
    for i in range(sum(LENGTHS)):
        end = start[np.searchsorted(start, i, side="right")]
        idx = np.minimum(i + np.arange(3), end - 1)
        np.testing.assert_array_equal(np.float32(r["windows"]["action"][i]), actions[idx])
        assert r["windows"]["pad"][i] == list(i + np.arange(3) >= end)

    # statistics for every feature, images per channel, agreeing with LeRobot's aggregation of ours
    stats = r["stats"]
    assert set(stats["shapes"]) == set(stats["features"])
    assert stats["shapes"][RGB]["mean"] == [3, 1, 1] and stats["shapes"][RGB]["q10"] == [3, 1, 1]
    for feature in ("observation.state", "action", RGB):
        np.testing.assert_allclose(stats["mean"][feature], stats["aggregated_mean"][feature], atol=1e-6)

    deleted = r["deleted"]
    assert (deleted["episodes"], deleted["frames"]) == (2, LENGTHS[0] + LENGTHS[2])
    np.testing.assert_array_equal(np.float32(deleted["state"]), concat(eps, "state", keep={0, 2}))
    assert_images_close(np.load(work / f"deleted.{RGB}.npy"), concat(eps, "rgb", keep={0, 2}), storage)
    assert r["split"] == {"train": [2, LENGTHS[0] + LENGTHS[2]], "val": [1, LENGTHS[1]]}
    merged = r["merged"]
    assert (merged["episodes"], merged["frames"]) == (3, sum(LENGTHS))
    assert sorted(merged["tasks"]) == sorted(read["tasks"])

    # LeRobot appended an episode: it reads back, and so does our training reader, old episodes intact
    appended = r["appended"]
    assert (appended["episodes"], appended["frames"]) == (4, sum(LENGTHS) + 9)
    ours = LeRobotEpisodes(str(work / "appended")).episodes
    assert [e["task"] for e in ours] == TASKS + ["stack the green cube"]
    np.testing.assert_array_equal(ours[3]["state"], np.load(work / "appended_input.state.npy"))
    np.testing.assert_array_equal(ours[1]["action"], eps[1]["action"])
    appended_input = np.load(work / f"appended_input.{RGB}.npy")
    assert np.abs(np.stack(list(ours[3]["rgb"])).astype(int) - appended_input).mean() < 4
    assert_images_close(np.stack(list(ours[0]["rgb"])), eps[0]["rgb"], storage)


def test_training_reads_a_dataset_lerobot_wrote(lerobot_python, tmp_path):
    _, r, work = checked_by_lerobot(lerobot_python, tmp_path, "video")
    written = r["written"]
    keys = {"rgb": "observation.images.front", "hand_rgb": "observation.images.wrist"}
    with pytest.raises(ValueError, match="observation.images.front"):  # the cameras are named in the error
        LeRobotEpisodes(str(work / "written"))
    ds = LeRobotEpisodes(str(work / "written"), keys)
    assert [t for e in ds.episodes for t in [e["task"]] * len(e["state"])] == written["task"]
    np.testing.assert_array_equal(np.concatenate([e["state"] for e in ds.episodes]), np.float32(written["state"]))
    np.testing.assert_array_equal(np.concatenate([e["action"] for e in ds.episodes]), np.float32(written["action"]))
    front = np.concatenate([np.stack(list(e["rgb"])) for e in ds.episodes])
    assert np.abs(front.astype(int) - np.load(work / "written_input.front.npy")).mean() < 4

    cfg = train_config_from_dict({
        "output_dir": str(tmp_path / "run"), "seed": 0,
        "model": {"backbone": "llava", "tiny": True, "window_size": 2, "fwd_pred_next_n": 2, "head": "mlp"},
        "data": {"datasets": [str(work / "written")], "image_keys": keys, "batch_size": 4, "val_fraction": 0.0},
        "optim": {"max_steps": 3}, "trainer": {"checkpoint_every": 3, "progress_bar": False}})
    runner = PolicyRunner(train(cfg), device="cpu")
    # the LeRobot dataset's own statistics travel with the policy
    assert runner.model.normalizer.stats["action"]["count"] == [len(written["action"])]
