"""``robovlm-ros``: the package's command line."""
from __future__ import annotations

import argparse
import os
import sys

from . import bench, check, demo
from .data import convert
from .train import run as train_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robovlm-ros", description="VLA policies for ROS 2 robots")
    sub = parser.add_subparsers(dest="command", required=True)
    convert.add_parser(sub)
    train_run.add_parser(sub)
    demo.add_parsers(sub)
    check.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")  # the simulator renders offscreen on the CPU
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
