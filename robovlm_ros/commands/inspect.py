"""``robovlm-ros inspect DATASET``: what a LeRobot v3 dataset holds and what is wrong with it (the
quality report ``convert`` wrote: rates, gaps, stale and frozen frames, idle stretches, limits)."""
from __future__ import annotations

import json
import os


def dataset_lines(root: str) -> list[str]:
    import pandas as pd

    from ..data.layout import TASKS_PATH

    with open(os.path.join(root, "meta", "info.json")) as f:
        info = json.load(f)
    cameras = [f"{k} ({f['dtype']}, {'x'.join(map(str, f['shape']))})" for k, f in info["features"].items()
               if f["dtype"] in ("image", "video")]
    tasks = pd.read_parquet(os.path.join(root, TASKS_PATH))
    texts = tasks["task"] if "task" in tasks.columns else tasks.index
    return [f"{root}: LeRobot {info['codebase_version']}, {info['total_episodes']} episodes, "
            f"{info['total_frames']} frames at {info['fps']} Hz",
            f"cameras: {', '.join(cameras) or 'none'}", f"tasks: {'; '.join(map(str, texts))}"]


def run(args) -> int:
    from ..data.quality_report import load_report, summary_lines

    if not os.path.exists(os.path.join(args.dataset, "meta", "info.json")):
        print(f"error: {args.dataset} is not a LeRobot dataset (no meta/info.json)")
        return 1
    for line in dataset_lines(args.dataset):
        print(line)
    try:
        report = load_report(args.dataset)
    except FileNotFoundError as e:
        print(e)
        return 0
    if args.episode is not None:
        matches = [e for e in report["episodes"] if e["episode_index"] == args.episode]
        if not matches:
            print(f"error: no episode {args.episode} in the quality report")
            return 1
        print(json.dumps(matches[0], indent=1))
        return 0
    for line in summary_lines(report):
        print(line)
    print(f"full report: {os.path.join(args.dataset, 'quality', 'report.json')} (plots beside it)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="a dataset's contents and quality report", description=__doc__)
    p.add_argument("dataset", help="LeRobot v3 dataset directory")
    p.add_argument("--episode", type=int, help="print this episode's full quality record")
    p.set_defaults(func=run)
