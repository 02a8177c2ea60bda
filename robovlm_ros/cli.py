"""``robovlm-ros``: the package's command line (one module per subcommand in ``commands/``)."""
from __future__ import annotations

import argparse
import os
import sys

from .commands import bench, check, convert, demo, import_robovlms, inspect, train
from .commands import eval as eval_command

SUBCOMMANDS = (convert, inspect, train, eval_command, demo, check, bench, import_robovlms)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robovlm-ros", description="VLA policies for ROS 2 robots")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")  # the simulator renders offscreen on the CPU
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
