"""``robovlm-ros eval``: closed-loop evaluation of a checkpoint in the simulated robot, over ROS 2
(sim_node + policy_node in lockstep), with an optional wrong-instruction baseline and the
first-command grounding probe; writes report.json and plots."""
from __future__ import annotations

import shutil

from ..sim.demo_recipe import DEMO_EXECUTE_STEPS, DEMO_IMAGE_SIZE


def select_cpu_kernels(choice: str) -> None:
    """``pinned``: the generic CPU kernels and one thread, so the evaluation repeats on x86-64 machines
    with AVX2 and FMA (README, "What varies")."""
    if choice == "pinned":
        from ..runtime.cpu_kernels import pin_cpu_kernels

        pin_cpu_kernels()


def print_results(policy: dict, baseline: dict | None) -> None:
    print(f"\n{'task':<26} {'policy':>10} {'baseline':>10}")
    for task, r in policy["per_task"].items():
        b = baseline["per_task"].get(task, {}).get("success_rate") if baseline else None
        print(f"{task:<26} {r['success_rate']:>9.0%} {'' if b is None else f'{b:>9.0%}':>10}  ({r['episodes']} episodes)")
    print(f"{'overall':<26} {policy['success_rate']:>9.0%} "
          f"{'' if baseline is None else format(baseline['success_rate'], '>9.0%'):>10}")


def add_grounding(report: dict, checkpoint: str, image_size: int, device: str = "cpu") -> None:
    """Adds the first-command grounding probe (sim/grounding.py) to an evaluation report and prints it."""
    from ..sim.grounding import first_command_grounding, runner_act

    g = first_command_grounding(runner_act(checkpoint, device), image_size=image_size)
    report["first_command_grounding"] = g
    print(f"first command toward the named block: {g['hit_rate']:.0%} of {g['trials']} "
          f"(chance {g['chance']:.0%}; {g['layouts']} held-out layouts x each instruction, arm at home)")


def run(args) -> int:
    select_cpu_kernels(args.cpu_kernels)
    from ..ros.evaluate import evaluate, save_report

    kw = dict(episodes=args.episodes, seed0=args.seed0, max_seconds=args.max_seconds, speed=args.speed,
              image_size=args.image_size, device=args.device, lockstep=not args.realtime,
              execute_steps=args.execute_steps, actuation_noise=args.actuation_noise, noise_seed=args.noise_seed,
              execution=args.execution, chunk_combine=args.chunk_combine, inference_delay_ms=args.inference_delay_ms)
    policy = evaluate(args.checkpoint, **kw)
    baseline = evaluate(args.checkpoint, wrong_instruction=True, **kw) if args.baseline else None
    print_results(policy, baseline)
    add_grounding(policy, args.checkpoint, args.image_size, args.device)
    files = save_report(policy, args.out, baseline)
    if args.json:
        shutil.copyfile(files[0], args.json)
    print(f"report and plots: {', '.join(files)}")
    return 0


def add_cpu_kernels_option(parser) -> None:
    parser.add_argument("--cpu-kernels", choices=("pinned", "native"), default="pinned",
                        help="pinned (default): torch, oneDNN and MKL use their generic CPU kernels and one thread, "
                             "so the result is the same on every x86-64 machine with AVX2 and FMA; native: the "
                             "fastest kernels for this CPU (results then differ slightly between CPUs, README "
                             "'What varies')")


def add_parser(sub) -> None:
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
    p.add_argument("--execution", choices=("sync", "async"), default="sync",
                   help="sync: the next chunk is computed once the queue is empty (the arm waits meanwhile); "
                        "async: while the queue still runs, aligned to the arm when it arrives")
    p.add_argument("--chunk-combine", choices=("newest", "average", "weighted", "rtc"), default="newest",
                   help="async: how a new chunk joins the queued actions it overlaps")
    p.add_argument("--inference-delay-ms", type=float, default=0.0,
                   help="each chunk becomes usable this much simulated time after its inputs (whole control "
                        "periods of 100 ms), while the simulator keeps stepping: what inference latency costs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--actuation-noise", type=float, default=0.0,
                   help="the simulated arm's relative velocity-tracking error, e.g. 1e-6 to see how much the "
                        "success rate rests on exact arithmetic")
    p.add_argument("--noise-seed", type=int, default=0, help="another draw of that noise for the same episodes")
    add_cpu_kernels_option(p)
    p.add_argument("--baseline", action="store_true", help="also evaluate with a wrong instruction")
    p.add_argument("--out", default="eval_report", help="directory for report.json and plots")
    p.add_argument("--json", help="also copy report.json here")
    p.set_defaults(func=run)
