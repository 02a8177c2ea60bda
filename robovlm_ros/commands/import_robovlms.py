"""``robovlm-ros import-robovlms``: a released RoboVLMs policy (its run config and Lightning checkpoint) as a
robovlm_ros checkpoint directory that the runner, the node, ``eval`` and ``train`` load."""
from __future__ import annotations

import sys


def run(args) -> int:
    from ..model.robovlms_import import RoboVLMsImportError, import_robovlms

    try:
        report = import_robovlms(args.config, args.checkpoint, args.backbone_path, args.out,
                                 discrete_history=args.discrete_history, action_stats=args.action_stats,
                                 unnorm_key=args.unnorm_key)
    except (RoboVLMsImportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("import-robovlms", help="convert a RoboVLMs run config + checkpoint to a robovlm_ros checkpoint",
                       description=__doc__)
    p.add_argument("--config", required=True, help="RoboVLMs run config (the JSON its training ran with)")
    p.add_argument("--checkpoint", required=True, help="RoboVLMs checkpoint (*.ckpt, Lightning or DeepSpeed fp32)")
    p.add_argument("--backbone-path", required=True,
                   help="the VLM directory the run started from (its config.json, tokenizer and processor)")
    p.add_argument("--out", required=True, help="checkpoint directory to write (atomically)")
    p.add_argument("--discrete-history", choices=("post", "pre"), default="post",
                   help="a discrete policy's window: post = RoboVLMs' evaluation (the newest frame decoded alone), "
                        "pre = RoboVLMs' training layout (the window's frames with their action tokens)")
    p.add_argument("--action-stats", metavar="FILE",
                   help="an Open-X policy's dataset statistics (OpenVLA's dataset_statistics.json, as RoboVLMs' "
                        "SimplerEnv evaluation reads them): the node's commands are then in that dataset's units")
    p.add_argument("--unnorm-key", help="which dataset of a statistics file holding several (e.g. bridge_orig)")
    p.set_defaults(func=run)
