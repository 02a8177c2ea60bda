"""The main job: README.md's first command runs the demo, and this test runs exactly that demo.

The shipped policy (robovlm_ros/sim/demo_policy, made by ``robovlm-ros demo --retrain``) is evaluated
in closed loop over ROS on held-out seeds next to the wrong-instruction baseline, as a user would see
it. This test checks that the demo runs as README says, that it meets the issue's target (policy >=
80 %, baseline < 40 %), and that the numbers it prints are the ones in its report and in README (the
evaluation runs in lockstep, so it gives the same numbers on every machine).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_JOB = "robovlm-ros demo"


def readme_commands() -> list[str]:
    """The command lines of README.md's first bash block: [main job, tests]."""
    with open(os.path.join(REPO, "README.md")) as f:
        block = re.search(r"```bash\n(.*?)```", f.read(), re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_first_command_installs_and_runs_the_demo_and_second_runs_the_tests():
    main, tests = readme_commands()
    steps = [s.strip() for s in main.split("&&")]
    assert steps[-1] == MAIN_JOB
    assert "pip install torch==2.13.0" in steps and any(s.startswith("pip install '.[ros") for s in steps)
    assert tests.split("&&")[-1].strip() == "python -m pytest"
    with open(os.path.join(REPO, ".ci", "run")) as f:
        assert "python -m pytest" in f.read()  # CI runs what README says


@pytest.mark.timeout(1200)
def test_the_main_job_evaluates_the_shipped_policy_and_reports_it(tmp_path):
    pytest.importorskip("rclpy")
    exe = shutil.which(shlex.split(MAIN_JOB)[0]) or shutil.which(shlex.split(MAIN_JOB)[0],
                                                                 path=os.path.dirname(sys.executable))
    assert exe, "robovlm-ros is not installed: run README's commands (pip install '.[ros,test]')"
    env = {**os.environ, "PATH": os.path.dirname(exe) + os.pathsep + os.environ.get("PATH", "")}
    run = subprocess.run(shlex.split(MAIN_JOB), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "training" not in run.stdout  # the shipped policy was evaluated, nothing was retrained
    report = json.loads((tmp_path / "robovlm_demo" / "eval" / "report.json").read_text())
    policy, baseline = report["policy"], report["baseline"]
    assert policy["episodes"] == baseline["episodes"] == 30
    assert len({e["seed"] for e in policy["results"]}) == 30  # 30 different held-out episodes
    assert all(e["seed"] >= 100_000 for e in policy["results"])  # never a training seed (those start at 0)
    assert [e["seed"] for e in baseline["results"]] == [e["seed"] for e in policy["results"]]
    for r in (policy, baseline):
        assert r["success_rate"] == sum(e["success"] for e in r["results"]) / 30
    assert policy["success_rate"] >= 0.8 and baseline["success_rate"] < 0.4  # issue 5's target
    assert (f"demo: policy {policy['success_rate']:.0%} vs baseline (wrong instruction) "
            f"{baseline['success_rate']:.0%} on 30 held-out episodes") in run.stdout
    assert report["policy"]["node_stats"]["lockstep_timeouts"] == 0  # every step waited for its command
    # the demo pins the CPU kernels, so this count is the same on every x86-64 machine with AVX2 + FMA
    numerics = policy["conditions"]["numerics"]
    assert numerics["pinned"] and numerics["cpu_capability"] == "DEFAULT" and numerics["threads"] == 1
    # the shipped policy is what `demo --retrain` made, and README reports what this command measures,
    # with the spread measured around it (native kernel paths, 1e-6 actuation noise): the count may
    # differ from README's on a machine that computes differently, never beyond the measured spread
    made_by = json.loads(open(os.path.join(REPO, "robovlm_ros", "sim", "demo_policy", "made_by.json")).read())
    assert made_by["command"].startswith("robovlm-ros demo --retrain")
    with open(os.path.join(REPO, "README.md")) as f:
        readme = " ".join(f.read().replace("**", "").split())  # prose wraps anywhere
    stated = re.search(r"policy (\d+) % \((\d+)/30\), wrong-instruction baseline (\d+) % \((\d+)/30\)", readme)
    spread = re.search(r"measured spread (\d+)-(\d+)/30", readme)
    assert stated and spread, "README must state the demo's figure and its measured spread"
    lo, hi = int(spread[1]), int(spread[2])
    n = sum(e["success"] for e in policy["results"])
    assert lo <= int(stated[2]) <= hi and lo <= n <= hi, (n, stated[0], spread[0])
    assert int(stated[1]) == round(100 * int(stated[2]) / 30) and int(stated[4]) < 12  # README's own target
    g = policy["first_command_grounding"]
    assert g["trials"] == 3 * g["layouts"] == 120 and g["hit_rate"] == g["hits"] / 120
    assert f"first command toward the named block: {g['hit_rate']:.0%} of 120" in run.stdout
    probe = re.search(r"first command heads for the named block in (\d+) % \((\d+)/120\)", readme)
    assert probe and abs(int(probe[2]) - g["hits"]) <= 2


def test_the_shipped_policy_is_what_demo_retrain_makes_with_its_defaults():
    """README documents `robovlm-ros demo --retrain` as the command that made the shipped policy: the
    command recorded in its made_by.json must parse to the same arguments as that bare command, and
    the recipe it was trained with must be the one the demo trains with now."""
    from robovlm_ros.cli import build_parser
    from robovlm_ros.commands.demo import RETRAIN_ARGS
    from robovlm_ros.sim.demo_recipe import DEMO_TRAIN

    made_by = json.loads(open(os.path.join(REPO, "robovlm_ros", "sim", "demo_policy", "made_by.json")).read())
    recorded = build_parser().parse_args(shlex.split(made_by["command"])[1:])
    bare = build_parser().parse_args(["demo", "--retrain"])
    for k in (*RETRAIN_ARGS, "episodes"):
        assert getattr(recorded, k) == getattr(bare, k), k
    assert made_by["train_config"] == DEMO_TRAIN
    assert made_by["expert_episodes"]["recorded"] == bare.demos
    assert made_by["grounding_questions"] > 0
