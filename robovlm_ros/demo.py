"""``robovlm-ros eval`` and ``robovlm-ros demo``: closed-loop evaluation in the simulated robot.

demo = the whole pipeline on an embedded default: record scripted-expert episodes with the episode
recorder (sim_node over ROS) -> convert the bags -> train a small policy -> evaluate it on held-out
seeds next to a baseline measured in the same run (the same policy given a wrong instruction).
Without --retrain it evaluates the policy shipped with the package (made by this same command).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import yaml

from .atomic_io import write_json

SHIPPED_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sim", "demo_policy")
MADE_BY = "made_by.json"  # how a demo checkpoint was made: command, recipe, expert episodes, results
DEMO_IMAGE_SIZE = 64

# The policy trained by the demo (shipped in sim/demo_policy). Why each choice (measurements: README,
# "What was found on the way"):
# - window_size 1, no state token: with a history or the joint states the policy copies the arm's
#   motion instead of looking, and never starts a motion in closed loop;
# - 8 px patches (blocks rarely share an image token) and 3 layers;
# - batch 64: at smaller batches the colour word is never bound to its block;
# - init_scale 1.0 (fan-in init): with HF's 0.02 a 64-wide decoder's output barely depends on the image;
# - lr 3e-4: faster rates never learn where an object is in the image.
DEMO_TRAIN = {
    "model": {"backbone": "paligemma", "tiny": True, "size": {"patch": 8, "layers": 3, "init_scale": 1.0},
              "image_size": DEMO_IMAGE_SIZE, "window_size": 1, "fwd_pred_next_n": 5, "head": "lstm",
              "head_hidden": 128, "use_state": False, "norm_mode": "quantile", "gripper_loss_weight": 0.1},
    "data": {"batch_size": 64, "val_fraction": 0.0},
    "optim": {"lr": 3e-4, "warmup_steps": 200, "schedule": "cosine", "max_steps": 15000},
    "trainer": {"log_every": 100, "checkpoint_every": 1000, "progress_bar": True},
    "seed": 0,
}
# expert episodes recorded for training (1200 layouts x 3 blocks): with fewer layouts the policy fits
# them without learning the rule "colour word -> that block"
DEMO_EPISODES = 3600
# co-train with questions about the recorded layouts worded as the instruction ("pick up the red block"
# -> "row 4 column 2"): trained on actions alone, no policy followed the instruction
DEMO_GROUNDING_QUESTIONS = True
# sim_node's tracking error while recording them: the expert is pushed off its path and shows how to
# get back, so the policy has seen the states its own small errors lead to (see TabletopEnv)
DEMO_ACTUATION_NOISE = 0.5
# every layout is demonstrated once per block: the images alone then never decide the target
DEMO_EVERY_BLOCK = True
# actions of each predicted 5-step chunk executed before the policy predicts again (chosen on
# validation episodes, README)
DEMO_EXECUTE_STEPS = 2
DEMO_STATE = "demo_run.json"  # in --out: the arguments of demo --retrain and the stages it has finished
DEMO_STAGE_DIRS = ("episodes", "dataset", "grounding_vqa", "run")  # what demo --retrain makes in --out
RETRAIN_ARGS = ("demos", "actuation_noise", "steps", "grounding_questions")  # what a resumed run must repeat


def robot_params_file(path: str, topics: dict, real_time_factor: float) -> str:
    """The simulated robot described like a real one (policy.yaml format), for convert. The bags are
    stamped with wall-clock time while the simulation ran up to ``real_time_factor`` times faster, so
    its 10 Hz control loop appears at up to 10 x real_time_factor Hz in them. The recording ran in
    lockstep (one expert command per physics step) and is converted with every_command, so this rate
    only sets the dataset's fps and how long after an arm command its gripper command is looked for."""
    params = {**topics, "control_rate_hz": 10.0 * real_time_factor, "gripper_open_threshold": 0.027}
    with open(path, "w") as f:
        yaml.safe_dump({"robovlm_policy": {"ros__parameters": params}}, f)
    return path


def print_results(policy: dict, baseline: dict | None) -> None:
    print(f"\n{'task':<26} {'policy':>10} {'baseline':>10}")
    for task, r in policy["per_task"].items():
        b = baseline["per_task"].get(task, {}).get("success_rate") if baseline else None
        print(f"{task:<26} {r['success_rate']:>9.0%} {'' if b is None else f'{b:>9.0%}':>10}  ({r['episodes']} episodes)")
    print(f"{'overall':<26} {policy['success_rate']:>9.0%} "
          f"{'' if baseline is None else format(baseline['success_rate'], '>9.0%'):>10}")


def add_grounding(report: dict, checkpoint: str, image_size: int, device: str = "cpu") -> None:
    """Adds the first-command grounding probe (sim/grounding.py) to an evaluation report and prints it."""
    from .sim.grounding import first_command_grounding, runner_act

    g = first_command_grounding(runner_act(checkpoint, device), image_size=image_size)
    report["first_command_grounding"] = g
    print(f"first command toward the named block: {g['hit_rate']:.0%} of {g['trials']} "
          f"(chance {g['chance']:.0%}; {g['layouts']} held-out layouts x each instruction, arm at home)")


def select_cpu_kernels(choice: str) -> None:
    """``pinned``: the generic CPU kernels and one thread, so the evaluation repeats on x86-64 machines
    with AVX2 and FMA (README, "What varies")."""
    if choice == "pinned":
        from .runtime.cpu_kernels import pin_cpu_kernels

        pin_cpu_kernels()


def run_eval(args) -> int:
    select_cpu_kernels(args.cpu_kernels)
    from .ros.evaluate import evaluate, save_report

    kw = dict(episodes=args.episodes, seed0=args.seed0, max_seconds=args.max_seconds, speed=args.speed,
              image_size=args.image_size, device=args.device, lockstep=not args.realtime,
              execute_steps=args.execute_steps, actuation_noise=args.actuation_noise, noise_seed=args.noise_seed)
    policy = evaluate(args.checkpoint, **kw)
    baseline = evaluate(args.checkpoint, wrong_instruction=True, **kw) if args.baseline else None
    print_results(policy, baseline)
    add_grounding(policy, args.checkpoint, args.image_size, args.device)
    files = save_report(policy, args.out, baseline)
    if args.json:
        shutil.copyfile(files[0], args.json)
    print(f"report and plots: {', '.join(files)}")
    return 0


def demo_state(out: str, arguments: dict, fresh: bool) -> tuple[dict, callable]:
    """The progress of ``demo --retrain`` in ``out`` (DEMO_STATE), so that an interrupted run resumes
    where it stopped when the same command is given again. Returns the state and ``mark(stage, value)``,
    which records a finished stage atomically."""
    if os.path.exists(out) and fresh:
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, DEMO_STATE)
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
        if state["arguments"] != arguments:
            raise SystemExit(f"{out} holds a demo run made with {state['arguments']}, not {arguments}: give those "
                             f"arguments to resume it, or pass --fresh (deletes it) or another --out")
    elif set(os.listdir(out)) & set(DEMO_STAGE_DIRS):  # (an eval/ of the shipped policy may be there)
        raise SystemExit(f"{out} holds pipeline files but no {DEMO_STATE}: pass --fresh (deletes it) or another --out")
    else:
        state = {"arguments": arguments}
        write_json(path, state)

    def mark(stage: str, value) -> None:
        state[stage] = value
        write_json(path, state)
    return state, mark


def run_demo(args) -> int:
    select_cpu_kernels(args.cpu_kernels)
    from .data.convert import convert_bags, print_reports
    from .ros.demonstrations import record_demonstrations, recorded_episodes
    from .ros.evaluate import evaluate, save_report
    from .train.config import load_train_config
    from .train.run import EXPORT_DIR, train

    out = os.path.abspath(args.out)
    checkpoint = SHIPPED_POLICY
    t_start = time.time()
    if args.retrain or not os.path.exists(os.path.join(SHIPPED_POLICY, "config.json")):
        if not args.retrain:
            print(f"no shipped policy at {SHIPPED_POLICY}: training one (robovlm-ros demo --retrain)")
        state, mark = demo_state(out, {k: getattr(args, k) for k in RETRAIN_ARGS}, args.fresh)
        episodes = os.path.join(out, "episodes")
        print(f"1/4 recording {args.demos} scripted-expert episodes through sim_node + episode_recorder")
        before = len(recorded_episodes(episodes))
        if before:
            print(f"    resuming: {before} recorded before")
        rec = record_demonstrations(episodes, args.demos, image_size=DEMO_IMAGE_SIZE, resume=True,
                                    actuation_noise=args.actuation_noise, every_block=DEMO_EVERY_BLOCK)
        print(f"    {rec['successful']}/{rec['recorded']} expert episodes succeeded")
        print("2/4 converting the bags")
        if not state.get("converted"):
            params = robot_params_file(os.path.join(out, "sim_robot.yaml"), rec["topics"], rec["speed"])
            print_reports(convert_bags([episodes], os.path.join(out, "dataset"), params,
                                       overwrite=True, progress=False, every_command=True)[:3])
            mark("converted", True)
        else:
            print("    converted before")
        cfg = {**DEMO_TRAIN, "output_dir": os.path.join(out, "run"),
               "data": {**DEMO_TRAIN["data"], "datasets": [os.path.join(out, "dataset")]},
               "optim": {**DEMO_TRAIN["optim"], "max_steps": args.steps}}
        questions = 0
        if args.grounding_questions:
            from .sim.grounding_vqa import write_grounding_vqa

            if state.get("questions") is None:
                mark("questions", write_grounding_vqa(os.path.join(out, "grounding_vqa"), rec["layouts"],
                                                      image_size=DEMO_IMAGE_SIZE, actuation_noise=args.actuation_noise))
            questions = state["questions"]
            print(f"    {questions} grounding questions about the recorded layouts (vision-language co-training)")
            cfg["data"]["vl_datasets"] = [os.path.join(out, "grounding_vqa", "vqa.jsonl")]
        print("3/4 training")
        with open(os.path.join(out, "train.yaml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        checkpoint = os.path.join(cfg["output_dir"], EXPORT_DIR)
        if state.get("trained") and os.path.exists(os.path.join(checkpoint, "config.json")):
            print(f"    trained before: {checkpoint}")
        else:
            # an interrupted run continues from its last Lightning checkpoint (saved every checkpoint_every steps)
            resume = os.path.exists(os.path.join(cfg["output_dir"], "checkpoints", "last.ckpt"))
            if resume:
                print("    resuming from the last checkpoint")
            else:
                shutil.rmtree(cfg["output_dir"], ignore_errors=True)
            checkpoint = train(load_train_config(os.path.join(out, "train.yaml")), resume=resume)
            mark("trained", True)
    print(f"{'4/4 ' if checkpoint != SHIPPED_POLICY else ''}evaluating {checkpoint} on {args.episodes} held-out episodes "
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
    if checkpoint != SHIPPED_POLICY:  # provenance travels with the checkpoint (see sim/demo_policy/made_by.json)
        write_json(os.path.join(checkpoint, MADE_BY), {
            "command": "robovlm-ros demo --retrain " + " ".join(
                f"--{k.replace('_', '-')} {getattr(args, k)}" for k in (*RETRAIN_ARGS, "episodes") if k != "grounding_questions")
            + (" --grounding-questions" if args.grounding_questions else " --no-grounding-questions"),
            "expert_episodes": {k: rec[k] for k in ("recorded", "successful")},
            "grounding_questions": questions,
            "train_config": {k: v for k, v in cfg.items() if k not in ("output_dir", "data")} | {
                "data": {k: v for k, v in cfg["data"].items() if k not in ("datasets", "vl_datasets")}},
            "evaluation": summary})
    print(f"\ndemo: policy {summary['success_rate']:.0%} vs baseline (wrong instruction) "
          f"{summary['baseline_success_rate']:.0%} on {summary['episodes']} held-out episodes "
          f"in {summary['seconds']:.0f} s; report {files[0]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def add_cpu_kernels_option(parser) -> None:
    parser.add_argument("--cpu-kernels", choices=("pinned", "native"), default="pinned",
                        help="pinned (default): torch, oneDNN and MKL use their generic CPU kernels and one thread, "
                             "so the result is the same on every x86-64 machine with AVX2 and FMA; native: the "
                             "fastest kernels for this CPU (results then differ slightly between CPUs, README "
                             "'What varies')")


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="closed-loop evaluation of a checkpoint in the simulated robot",
                       description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed0", type=int, default=100_000, help="first held-out seed")
    p.add_argument("--max-seconds", type=float, default=6.0, help="simulated seconds per episode")
    p.add_argument("--speed", type=float, default=2.0,
                   help="simulated seconds per wall-clock second (an upper bound in lockstep)")
    p.add_argument("--realtime", action="store_true",
                   help="run the simulator on its clock instead of in lockstep with the policy: late commands "
                        "then cost success, as on a real robot")
    p.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE)
    p.add_argument("--execute-steps", type=int, default=1,
                   help="actions of each predicted chunk executed before predicting again (the demo uses "
                        f"{DEMO_EXECUTE_STEPS}; 1 = replan every control step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--actuation-noise", type=float, default=0.0,
                   help="the simulated arm's relative velocity-tracking error, e.g. 1e-6 to see how much the "
                        "success rate rests on exact arithmetic")
    p.add_argument("--noise-seed", type=int, default=0, help="another draw of that noise for the same episodes")
    add_cpu_kernels_option(p)
    p.add_argument("--baseline", action="store_true", help="also evaluate with a wrong instruction")
    p.add_argument("--out", default="eval_report", help="directory for report.json and plots")
    p.add_argument("--json", help="also copy report.json here")
    p.set_defaults(func=run_eval)

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
    d.set_defaults(func=run_demo)
