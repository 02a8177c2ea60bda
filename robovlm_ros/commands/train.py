"""``robovlm-ros train --config FILE [--resume] [--set SECTION.KEY=VALUE ...]``: fit a policy on
converted datasets, checkpoint resumably, export the policy.

Output directory layout:
    train_config.yaml    the resolved configuration
    checkpoints/         Lightning checkpoints (every ``checkpoint_every`` steps + last.ckpt), atomic
    logs/                CSV or TensorBoard logs (a resumed run continues them)
    checkpoint/          the exported policy (DESIGN.md checkpoint directory) that policy_node loads
"""
from __future__ import annotations

HELP = "train or fine-tune a policy on converted datasets"


def run(args) -> int:
    from ..train.config import load_train_config
    from ..train.run import train

    cfg = load_train_config(args.config, args.set or [])
    if args.output_dir:
        cfg.output_dir = args.output_dir
    train(cfg, resume=args.resume)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=__doc__)
    p.add_argument("--config", required=True, help="training config (YAML or JSON; examples in config/train/)")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set optim.max_steps=50 (repeatable)")
    p.set_defaults(func=run)
