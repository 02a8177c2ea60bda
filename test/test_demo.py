"""The simulated pipeline at small scale through the real nodes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("rclpy")
os.environ.setdefault("MUJOCO_GL", "egl")

from robovlm_ros.cli import main  # noqa: E402
from robovlm_ros.data.lerobot_reader import LeRobotEpisodes  # noqa: E402
from robovlm_ros.sim.demo_recipe import DEMO_ACTUATION_NOISE, DEMO_EXECUTE_STEPS, DEMO_IMAGE_SIZE  # noqa: E402
from robovlm_ros.sim.tabletop import TabletopEnv  # noqa: E402


def test_record_convert_train_eval_end_to_end_small(tmp_path, capsys):
    """robovlm-ros demo --retrain at toy scale: recorder + sim_node + expert -> convert -> train -> eval,
    co-training with grounding questions about the recorded layout."""
    summary = tmp_path / "summary.json"
    rc = main(["demo", "--retrain", "--demos", "3", "--steps", "8", "--episodes", "2", "--out", str(tmp_path / "demo"),
               "--speed", "3", "--json", str(summary), "--grounding-questions",
               "--cpu-kernels", "native"])  # pinning needs a fresh process: this one computed already
    printed = capsys.readouterr().out
    assert rc == 0
    s = json.loads(summary.read_text())
    assert s["episodes"] == 2 and 0.0 <= s["success_rate"] <= 1.0 and 0.0 <= s["baseline_success_rate"] <= 1.0
    report = json.loads((tmp_path / "demo" / "eval" / "report.json").read_text())
    for key in ("policy", "baseline"):
        r = report[key]
        assert r["episodes"] == 2 and set(r["per_task"]) <= {f"pick up the {c} block" for c in ("red", "green", "blue")}
        assert all({"seed", "task", "success", "seconds", "trace"} <= set(e) for e in r["results"])
        stats = r["node_stats"]
        assert stats["steps"] > 0  # the policy node really drove the simulated arm
        # the demo executes DEMO_EXECUTE_STEPS actions of each chunk: a prediction every second command
        # (an episode's first command always comes from a new chunk)
        assert stats["execute_steps"] == DEMO_EXECUTE_STEPS == 2
        assert stats["steps"] / 2 <= stats["inferences"] <= stats["steps"] / 2 + r["episodes"]
    # baseline episodes ask for another block than the one success is measured on
    assert all(e["asked"] != e["task"] for e in report["baseline"]["results"])
    g = report["policy"]["first_command_grounding"]  # the grounding probe ran on the trained policy
    assert g["trials"] == 120 and g["hit_rate"] == g["hits"] / 120 and s["first_command_grounding"] == g["hit_rate"]
    trace = np.asarray(report["policy"]["results"][0]["trace"])
    assert trace.shape[1] == 8 and np.isfinite(trace).all()
    for name in ("success_per_task.png", "action_trace.png", "frames.png"):
        assert (tmp_path / "demo" / "eval" / name).stat().st_size > 1000
    episodes = [d for d in os.listdir(tmp_path / "demo" / "episodes") if not d.startswith(".")]
    # one rosbag2 per recorded expert episode, and how they were recorded (for resuming)
    assert sorted(episodes)[-1] == "recording.json" and len(episodes) == 4
    # one layout demonstrated once per block: three episodes, three instructions
    tasks = list(pd.read_parquet(tmp_path / "demo" / "dataset" / "meta" / "tasks.parquet").index)
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
        errors.append(np.abs(env.render("gripper").astype(float) - img).mean())
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

    # the same command again resumes instead of redoing: nothing recorded, converted or trained twice
    dataset_mtime = os.stat(tmp_path / "demo" / "dataset" / "meta" / "info.json").st_mtime_ns
    weights = (tmp_path / "demo" / "run" / "checkpoint" / "model.safetensors").read_bytes()
    argv = ["demo", "--retrain", "--demos", "3", "--steps", "8", "--episodes", "1", "--out", str(tmp_path / "demo"),
            "--speed", "3", "--grounding-questions", "--cpu-kernels", "native"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "resuming: 3 recorded before" in printed and "converted before" in printed and "trained before" in printed
    assert sorted(d for d in os.listdir(tmp_path / "demo" / "episodes") if not d.startswith(".")) == sorted(episodes)
    assert os.stat(tmp_path / "demo" / "dataset" / "meta" / "info.json").st_mtime_ns == dataset_mtime
    # training stopped before its export: it continues from the last Lightning checkpoint (at its last step
    # here, so nothing is left to fit and the export holds the same weights)
    state = json.loads((tmp_path / "demo" / "demo_run.json").read_text())
    assert state["converted"] and state["trained"] and state["questions"] == len(questions)
    del state["trained"]
    (tmp_path / "demo" / "demo_run.json").write_text(json.dumps(state))
    os.remove(tmp_path / "demo" / "run" / "checkpoint" / "config.json")
    assert main(argv) == 0
    assert "resuming from the last checkpoint" in capsys.readouterr().out
    assert (tmp_path / "demo" / "run" / "checkpoint" / "model.safetensors").read_bytes() == weights
    # other arguments would mix two runs: refused with the way out named
    with pytest.raises(SystemExit, match="--fresh"):
        main([*argv[:5], "9", *argv[6:]])
    # nor is a folder with another pipeline's files in it taken over (before anything is recorded)
    (tmp_path / "other" / "dataset").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no demo_run.json"):
        main([*argv[:9], str(tmp_path / "other"), *argv[10:]])
    assert os.listdir(tmp_path / "other") == ["dataset"]


def test_recording_resumes_after_an_interruption(tmp_path):
    """``kill`` stops a recording at once and leaves only complete episodes (with rclpy's own signal
    handler it shut the context down under the spinning nodes and failed 11 s later with "service did
    not answer"); record_demonstrations(resume=True) keeps them, records the rest on the same topics
    in the same layout/block order, and refuses to mix in episodes recorded otherwise."""
    from robovlm_ros.ros.demonstrations import record_demonstrations, recorded_episodes

    out = str(tmp_path / "episodes")
    kw = dict(image_size=32, speed=4.0, every_block=True, progress=False)
    script = (f"from robovlm_ros.ros.demonstrations import record_demonstrations as r; "
              f"r({out!r}, 100, **{kw!r})")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(recorded_episodes(out)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the recording did not stop")
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    kept = [m["name"] for m in recorded_episodes(out)]
    assert 2 <= len(kept) < 100
    n = len(kept) + 2
    with pytest.raises(FileExistsError):  # without resume nothing is appended to a run's episodes
        record_demonstrations(out, n, **kw)
    with pytest.raises(ValueError, match="recorded with"):
        record_demonstrations(out, n, **{**kw, "image_size": 48}, resume=True)
    rest = record_demonstrations(out, n, **kw, resume=True)
    metas = recorded_episodes(out)
    assert [m["name"] for m in metas[:len(kept)]] == kept and len(metas) == n
    assert rest["layouts"] == list(range((n + 2) // 3)) and rest["recorded"] == n
    assert rest["successful"] == sum(m["success"] for m in metas)
    colors = ("red", "green", "blue")
    assert [m["instruction"] for m in metas] == [f"pick up the {colors[i % 3]} block" for i in range(n)]
    assert all(set(m["messages"]) == set(rest["robot"].topics().values()) for m in metas)  # one namespace for all
    again = record_demonstrations(out, n, **kw, resume=True)
    assert again == rest and len(recorded_episodes(out)) == n  # complete: nothing recorded
