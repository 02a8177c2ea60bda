"""The simulated pipeline at small scale through the real nodes."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("rclpy")
os.environ.setdefault("MUJOCO_GL", "egl")

from robovlm_ros.cli import main  # noqa: E402


def test_record_convert_train_eval_end_to_end_small(tmp_path):
    """robovlm-ros demo --retrain at toy scale: recorder + sim_node + expert -> convert -> train -> eval."""
    summary = tmp_path / "summary.json"
    rc = main(["demo", "--retrain", "--demos", "3", "--steps", "8", "--episodes", "2", "--out", str(tmp_path / "demo"),
               "--speed", "3", "--json", str(summary)])
    assert rc == 0
    s = json.loads(summary.read_text())
    assert s["episodes"] == 2 and 0.0 <= s["success_rate"] <= 1.0 and 0.0 <= s["baseline_success_rate"] <= 1.0
    report = json.loads((tmp_path / "demo" / "eval" / "report.json").read_text())
    for key in ("policy", "baseline"):
        r = report[key]
        assert r["episodes"] == 2 and set(r["per_task"]) <= {f"pick up the {c} block" for c in ("red", "green", "blue")}
        assert all({"seed", "task", "success", "seconds", "trace"} <= set(e) for e in r["results"])
        assert r["node_stats"]["steps"] > 0  # the policy node really drove the simulated arm
    # baseline episodes ask for another block than the one success is measured on
    assert all(e["asked"] != e["task"] for e in report["baseline"]["results"])
    trace = np.asarray(report["policy"]["results"][0]["trace"])
    assert trace.shape[1] == 8 and np.isfinite(trace).all()
    for name in ("success_per_task.png", "action_trace.png", "frames.png"):
        assert (tmp_path / "demo" / "eval" / name).stat().st_size > 1000
    episodes = [d for d in os.listdir(tmp_path / "demo" / "episodes") if not d.startswith(".")]
    assert len(episodes) == 3  # one rosbag2 per recorded expert episode
    assert os.path.exists(tmp_path / "demo" / "run" / "checkpoint" / "model.safetensors")
