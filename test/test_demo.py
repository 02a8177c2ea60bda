"""The simulated pipeline at small scale through the real nodes."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("rclpy")
os.environ.setdefault("MUJOCO_GL", "egl")

from robovlm_ros.cli import main  # noqa: E402
from robovlm_ros.data.dataset import LeRobotEpisodes  # noqa: E402
from robovlm_ros.data.lerobot import decode_png  # noqa: E402
from robovlm_ros.demo import DEMO_ACTUATION_NOISE, DEMO_IMAGE_SIZE  # noqa: E402
from robovlm_ros.sim.tabletop import TabletopEnv  # noqa: E402


def test_record_convert_train_eval_end_to_end_small(tmp_path, capsys):
    """robovlm-ros demo --retrain at toy scale: recorder + sim_node + expert -> convert -> train -> eval,
    co-training with grounding questions about the recorded layout."""
    summary = tmp_path / "summary.json"
    rc = main(["demo", "--retrain", "--demos", "3", "--steps", "8", "--episodes", "2", "--out", str(tmp_path / "demo"),
               "--speed", "3", "--json", str(summary), "--grounding-questions"])
    printed = capsys.readouterr().out
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
    g = report["policy"]["first_command_grounding"]  # the grounding probe ran on the trained policy
    assert g["trials"] == 120 and g["hit_rate"] == g["hits"] / 120 and s["first_command_grounding"] == g["hit_rate"]
    trace = np.asarray(report["policy"]["results"][0]["trace"])
    assert trace.shape[1] == 8 and np.isfinite(trace).all()
    for name in ("success_per_task.png", "action_trace.png", "frames.png"):
        assert (tmp_path / "demo" / "eval" / name).stat().st_size > 1000
    episodes = [d for d in os.listdir(tmp_path / "demo" / "episodes") if not d.startswith(".")]
    assert len(episodes) == 3  # one rosbag2 per recorded expert episode
    # one layout demonstrated once per block: three episodes, three instructions
    tasks = pq.read_table(tmp_path / "demo" / "dataset" / "meta" / "tasks.parquet").column("task").to_pylist()
    assert sorted(tasks) == [f"pick up the {c} block" for c in ("blue", "green", "red")]
    # one dataset frame per simulated control step although the bags ran 3x faster than real time:
    # an expert pick (descend ~14 cm at <= 0.15 m/s, close 4 steps, lift) takes well over 20 steps
    info = json.loads((tmp_path / "demo" / "dataset" / "meta" / "info.json").read_text())
    assert info["total_frames"] / info["total_episodes"] > 20, info["total_frames"]
    # recorded in lockstep, converted a frame per command: each action is the one applied right after
    # its frame, so replaying the actions in a fresh simulator reproduces the recorded images
    # (free-running, the timers slipped and replays drifted 15 to 40 grey levels away within 10 steps)
    ep = LeRobotEpisodes(str(tmp_path / "demo" / "dataset")).episodes[0]
    env = TabletopEnv(image_size=DEMO_IMAGE_SIZE, actuation_noise=DEMO_ACTUATION_NOISE)
    env.reset(0, target=ep["task"].split()[3])  # the first layout (seed 0), its task's block
    errors = []
    for img, action in zip(ep["hand_rgb"], ep["action"]):
        errors.append(np.abs(env.render("gripper").astype(float) - decode_png(img)).mean())
        env.step(action)
    env.close()
    assert len(errors) > 20 and max(errors) < 2.0, np.round(errors, 2)
    assert os.path.exists(tmp_path / "demo" / "run" / "checkpoint" / "model.safetensors")
    # the checkpoint says how it was made (what sim/demo_policy/made_by.json shows for the shipped one)
    made_by = json.loads((tmp_path / "demo" / "run" / "checkpoint" / "made_by.json").read_text())
    assert made_by["command"].startswith("robovlm-ros demo --retrain --demos 3 ")
    assert made_by["expert_episodes"]["recorded"] == 3 and made_by["train_config"]["optim"]["max_steps"] == 8
    assert made_by["evaluation"]["success_rate"] == s["success_rate"]
    # the questions are about the one recorded layout (seed 0), asked with the task's instructions,
    # and training read every one of them
    questions = [json.loads(line) for line in (tmp_path / "demo" / "grounding_vqa" / "vqa.jsonl").read_text().splitlines()]
    assert {q["image"].split("_")[0] for q in questions} == {"img/0"}
    assert {q["prompt"] for q in questions} == set(tasks) and len(questions) >= 6
    assert made_by["grounding_questions"] == len(questions) and f"'vl_samples': {len(questions)}" in printed
    assert made_by["command"].endswith(" --grounding-questions")
