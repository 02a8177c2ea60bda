"""``robovlm-ros demo``: the main job on an embedded default.

The whole pipeline: record scripted-expert episodes with the episode recorder (sim_node over ROS) ->
convert the bags -> train a small policy -> evaluate it on held-out seeds next to a baseline measured
in the same run (the same policy given a wrong instruction). Without --retrain it evaluates the
policy shipped with the package (made by this same command).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from ..sim.demo_recipe import (DEMO_ACTUATION_NOISE, DEMO_EPISODES, DEMO_EXECUTE_STEPS, DEMO_GROUNDING_QUESTIONS,
                               DEMO_IMAGE_SIZE, DEMO_TRAIN, MADE_BY, SHIPPED_POLICY)
from .eval import add_cpu_kernels_option, add_grounding, print_results, select_cpu_kernels

RETRAIN_ARGS = ("demos", "actuation_noise", "steps", "grounding_questions")  # what a resumed run must repeat


def retrain_command(args) -> str:
    """The command line that makes this checkpoint again (recorded in made_by.json)."""
    return ("robovlm-ros demo --retrain " + " ".join(
        f"--{k.replace('_', '-')} {getattr(args, k)}" for k in (*RETRAIN_ARGS, "episodes") if k != "grounding_questions")
        + (" --grounding-questions" if args.grounding_questions else " --no-grounding-questions"))


def run(args) -> int:
    select_cpu_kernels(args.cpu_kernels)
    from ..atomic_io import write_json
    from ..ros.evaluate import evaluate, save_report

    out, t_start, made = os.path.abspath(args.out), time.time(), None
    checkpoint = SHIPPED_POLICY
    if args.retrain or not os.path.exists(os.path.join(SHIPPED_POLICY, "config.json")):
        from ..ros.demo_pipeline import retrain

        if not args.retrain:
            print(f"no shipped policy at {SHIPPED_POLICY}: training one (robovlm-ros demo --retrain)")
        made = retrain(out, args.demos, args.actuation_noise, args.steps, args.grounding_questions, args.fresh)
        checkpoint = made["checkpoint"]
    print(f"{'4/4 ' if made else ''}evaluating {checkpoint} on {args.episodes} held-out episodes "
          f"({DEMO_EXECUTE_STEPS} actions of each predicted chunk executed)")
    kw = dict(episodes=args.episodes, image_size=DEMO_IMAGE_SIZE, speed=args.speed, execute_steps=DEMO_EXECUTE_STEPS)
    policy = evaluate(checkpoint, **kw)
    baseline = evaluate(checkpoint, wrong_instruction=True, **kw)
    print_results(policy, baseline)
    add_grounding(policy, checkpoint, DEMO_IMAGE_SIZE)
    files = save_report(policy, os.path.join(out, "eval"), baseline)
    summary = {"success_rate": policy["success_rate"], "baseline_success_rate": baseline["success_rate"],
               "first_command_grounding": policy["first_command_grounding"]["hit_rate"],
               "episodes": policy["episodes"], "execute_steps": DEMO_EXECUTE_STEPS, "checkpoint": checkpoint,
               "seconds": round(time.time() - t_start, 1)}
    if made:  # provenance travels with the checkpoint (see sim/demo_policy/made_by.json)
        from ..ros.demo_pipeline import made_by

        write_json(os.path.join(checkpoint, MADE_BY), made_by(made, retrain_command(args), summary))
    print(f"\ndemo: policy {summary['success_rate']:.0%} vs baseline (wrong instruction) "
          f"{summary['baseline_success_rate']:.0%} on {summary['episodes']} held-out episodes "
          f"in {summary['seconds']:.0f} s; report {files[0]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the main job: expert demos -> dataset -> policy -> closed-loop success",
                       description=__doc__)
    d.add_argument("--retrain", action="store_true", help="run the whole pipeline instead of the shipped policy")
    d.add_argument("--demos", type=int, default=DEMO_EPISODES, help="expert episodes to record (with --retrain)")
    d.add_argument("--actuation-noise", type=float, default=DEMO_ACTUATION_NOISE,
                   help="sim_node's tracking error while recording the expert (with --retrain)")
    d.add_argument("--grounding-questions", action=argparse.BooleanOptionalAction, default=DEMO_GROUNDING_QUESTIONS,
                   help="co-train with questions about the recorded layouts, asked with the instruction itself "
                        "(\"pick up the red block\" -> \"row 4 column 2\", sim/grounding_vqa.py); with --retrain")
    d.add_argument("--steps", type=int, default=DEMO_TRAIN["optim"]["max_steps"], help="training steps")
    d.add_argument("--episodes", type=int, default=30, help="held-out evaluation episodes")
    d.add_argument("--speed", type=float, default=2.0,
                   help="simulated seconds per wall-clock second at most (evaluation runs in lockstep)")
    d.add_argument("--out", default="robovlm_demo", help="working directory")
    d.add_argument("--fresh", action="store_true",
                   help="delete --out first (else an interrupted --retrain with the same arguments resumes there)")
    add_cpu_kernels_option(d)
    d.add_argument("--json", help="write the summary as JSON")
    d.set_defaults(func=run)
