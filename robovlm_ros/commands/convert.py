"""``robovlm-ros convert``: rosbag2 episodes -> a LeRobot v3 dataset with normalisation statistics.

Topics, joint names and command types come from the robot's parameters file (the one the policy
node runs with, ``--params``), so a robot is described once for recording, training and deployment.
"""
from __future__ import annotations

import json


def print_reports(reports) -> None:
    """One line per bag: converted (frames kept, what was dropped and why), skipped or error (why)."""
    for r in reports:
        drops = ", ".join(f"{n} {why}" for why, n in r.dropped.items()) or "none"
        line = f"[{r.status}] {r.bag}"
        if r.status == "converted":
            line += f": {r.frames}/{r.candidates} frames kept, dropped: {drops}; task {r.instruction!r}"
        if r.message:
            line += f": {r.message}"
        print(line)


def _robot(args):
    """The robot from --params, else found by message type in the first bag (printed to confirm)."""
    from ..data.bags import find_bags
    from ..data.discover import describe, discover_robot
    from ..node_params import load_policy_params

    if args.params:
        return load_policy_params(args.params)
    bags, _ = find_bags(args.bags)
    if not bags:
        raise ValueError(f"no bag in {', '.join(args.bags)}")
    robot = discover_robot(bags[0])
    print(f"no --params: topics and joints found by type in {bags[0]} (a parameters file chooses others; "
          f"gripper positions and limits are the defaults of config/policy.yaml):\n{describe(robot)}")
    return robot


def run(args) -> int:
    from ..data.convert import NothingConverted, convert_bags

    try:
        robot = _robot(args)
        reports = convert_bags(args.bags, args.out, robot, args.rate, args.max_age,
                               args.image_size, args.include_failed, args.instruction, args.overwrite,
                               every_command=args.every_command, instruction_topic=args.instruction_topic,
                               storage=args.storage, crf=args.crf, plots=not args.no_plots)
    except NothingConverted as e:
        print_reports(e.reports)
        print(f"error: {e}")
        return 1
    except (ValueError, FileExistsError, RuntimeError) as e:  # (BagError is a RuntimeError)
        print(f"error: {e}")
        return 1
    print_reports(reports)
    converted = [r for r in reports if r.status == "converted"]
    print(f"wrote {args.out}: {len(converted)} episodes, {sum(r.frames for r in converted)} frames; "
          f"{sum(r.status == 'error' for r in reports)} bags with errors, "
          f"{sum(r.status == 'skipped' for r in reports)} skipped")
    if args.report:
        with open(args.report, "w") as f:
            json.dump([r.__dict__ for r in reports], f, indent=2)
    from ..data.quality_report import load_report, summary_lines

    for line in summary_lines(load_report(args.out)):
        print(line)
    print(f"quality report: {args.out}/quality/report.json (robovlm-ros inspect {args.out})")
    return 0 if converted else 1


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="rosbag2 episodes -> LeRobot v3 dataset", description=__doc__)
    p.add_argument("bags", nargs="+", help="bag directories, or folders of them (episode_recorder output)")
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--params", help="the robot's parameters file (config/policy.yaml format): topics, joints, "
                                    "gripper; without it they are found by message type in the first bag")
    p.add_argument("--rate", type=float, help="control rate to resample to (default: control_rate_hz)")
    p.add_argument("--max-age", type=float, default=0.25, help="max age (s) of a stream's message at a frame")
    p.add_argument("--image-size", type=int, help="store images resized to N x N (default: as recorded)")
    p.add_argument("--instruction", help="instruction for bags recorded without episode_recorder")
    p.add_argument("--instruction-topic",
                   help="std_msgs/String topic the instruction was published on (default: any String topic "
                        "whose name ends in 'instruction', e.g. the policy node's ~/instruction)")
    p.add_argument("--include-failed", action="store_true", help="keep episodes marked unsuccessful")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--every-command", action="store_true",
                   help="a frame per recorded arm command, not thinned to --rate (lockstep simulator recordings)")
    p.add_argument("--storage", choices=("video", "png"), default="video",
                   help="cameras as mp4 video per camera (LeRobot's default, AV1) or lossless PNG frames")
    p.add_argument("--crf", type=int, default=30, help="video quality: lower is closer to the recorded images")
    p.add_argument("--no-plots", action="store_true", help="no per-episode plot in the quality report")
    p.add_argument("--report", help="write the per-bag report as JSON")
    p.set_defaults(func=run)
