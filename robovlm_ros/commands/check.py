"""``robovlm-ros check``: does this backbone train, decode and round-trip as a policy here?

Builds a policy (a tiny random-weight one, or real weights from a local directory), then for each
action space: fits a fixed synthetic batch for a few steps, checks the loss falls, checks KV-cached
decoding against uncached decoding (discrete), and checks that save -> load gives identical actions.
"""
from __future__ import annotations

import json


def run(args) -> int:
    import torch

    from ..model import PolicyConfig
    from ..model.check import check_policy

    rows = []
    for space in (["continuous", "discrete"] if args.action_space == "both" else [args.action_space]):
        for family in args.backbone or [_preset_family(args.size) or "paligemma"]:
            overrides = dict(action_space=space, history_type=args.history, use_state=True)
            if args.backbone_path:
                cfg = PolicyConfig(backbone=family, backbone_path=args.backbone_path, window_size=2,
                                   fwd_pred_next_n=2, **overrides)
            elif args.size in ("tiny", "small") or isinstance(args.size, dict):
                cfg = PolicyConfig.tiny(family, size=args.size, **overrides)
            else:  # a real-size preset: one frame, one camera, vision frozen keep a CPU step in seconds
                cfg = PolicyConfig.tiny(family, size=args.size, window_size=1, fwd_pred_next_n=2, use_hand_rgb=False,
                                        train_vision=False, **overrides)
            real_size = bool(args.backbone_path or _preset_family(args.size))
            lr = args.lr if args.lr else (3e-4 if real_size else 3e-3 if space == "continuous" else 1e-2)
            rows.append(check_policy(cfg, args.steps, lr, args.device, batch_size=1 if real_size else 2))
    header = f"{'backbone':<11} {'action':<10} {'hist':<4} {'params':>9} {'loss first→last':>18} {'÷':>7} " \
             f"{'step ms':>8} {'kv exact':>8} {'save/load':>9}"
    print(header)
    print("-" * len(header))
    ok = True
    for r in rows:
        kv = r.get("kv_cache_exact")
        good = r["loss_ratio"] >= args.min_ratio and r["save_load_exact"] and kv is not False
        ok &= good
        print(f"{r['backbone']:<11} {r['action_space']:<10} {r['history']:<4} {r['parameters']:>9,} "
              f"{r['loss_first']:>8.4f} → {r['loss_last']:<7.4f} {r['loss_ratio']:>7.1f} {1000 * r['train_step_s']:>8.1f} "
              f"{'-' if kv is None else ('yes' if kv else 'NO'):>8} {'yes' if r['save_load_exact'] else 'NO':>9}"
              f"{'' if good else '   <- FAILED'}")
    print(f"\n{'all checks passed' if ok else 'some checks FAILED'} "
          f"(loss must fall >= {args.min_ratio:g}x in {args.steps} steps on a fixed batch)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ok": ok, "results": rows, "torch": torch.__version__}, f, indent=2)
    return 0 if ok else 1


def _preset_family(size) -> str | None:
    from ..model.presets import PRESETS

    return PRESETS[size].family if isinstance(size, str) and size in PRESETS else None


def add_parser(sub) -> None:
    from .bench import family_arg, size_arg

    p = sub.add_parser("check", help="train / decode / save-load check of a policy backbone on this machine",
                       description=__doc__)
    p.add_argument("--backbone", nargs="+", type=family_arg,
                   help="backbone families to check (default: the preset's, else paligemma)")
    p.add_argument("--backbone-path", help="local directory of real weights (default: tiny random weights)")
    p.add_argument("--size", default="tiny", type=size_arg,
                   help="random-weight size: tiny, small, a real-size preset (smolvlm-256m, paligemma-3b-224, "
                        "qwen2-vl-2b, kosmos-2) or a JSON size")
    p.add_argument("--action-space", choices=["continuous", "discrete", "both"], default="both")
    p.add_argument("--history", choices=["post", "pre"], default="post")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-ratio", type=float, default=10.0, help="required loss reduction factor")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results as JSON to this path")
    p.set_defaults(func=run)
