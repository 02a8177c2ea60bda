"""``robovlm-ros bench``: latency of the policy runtime and of the ROS node, as ratios from one run.

Measures (a small random-weight policy by default, or a checkpoint's architecture):
  * policy step p50/p99 for window 1 and window W, with and without the cross-step cache (post history);
  * discrete decoding of a whole chunk with and without the KV cache (on CUDA also the growing cache
    without the CUDA graph, the path the graph replaced, and a discrete ``pre``-history step of
    window W with and without the graph);
  * the node's own overhead at 640x480 with two cameras streamed from another process at 30 Hz: image
    message transport + decoding, the step's work around the policy, the share of frames delivered
    (with the documented Fast DDS profile, ros/transport.py) and the cadence report.
Targets (on a 2-core CPU): window-W cached step <= 1.5x the window-1 step; KV-cached decoding >= 3x
faster than uncached; node overhead p50 <= 5 ms; >= 95 % of the camera frames delivered.
"""
from __future__ import annotations

import argparse
import json


def _policy_factory(args):
    from ..model import PolicyConfig, RoboVLM

    if args.checkpoint:
        base = RoboVLM.from_pretrained(args.checkpoint)
        cfg = base.config
        return lambda **kw: RoboVLM(PolicyConfig.from_dict({**cfg.to_dict(), **kw}), tokenizer=base.tokenizer)
    return lambda **kw: RoboVLM(PolicyConfig.tiny(args.backbone, size=args.size, use_state=True, **kw))


def _backbone_name(args) -> str:
    from ..model.presets import PRESETS

    if args.checkpoint:
        return args.checkpoint
    if isinstance(args.size, str) and args.size in PRESETS:
        return f"{args.size} ({PRESETS[args.size].family}, published architecture, random weights)"
    return f"{args.backbone or 'paligemma'} ({args.size}, random weights)"


def _targets(report: dict, w: int) -> dict:
    r = report["ratios"]
    targets = {f"window{w} cached step <= 1.5x window-1 step": r[f"window{w}_cache_vs_window1"] <= 1.5,
               "KV-cached decoding >= 3x faster": r["decode_speedup_kv_cache"] >= 3.0}
    if "overhead_p50_ms" in report["node"]:
        targets["node overhead p50 <= 5 ms"] = report["node"]["overhead_p50_ms"] <= 5.0
        targets["two 640x480 cameras at 30 Hz: >= 95 % delivered"] = report["node"]["camera_delivery"] >= 0.95
    return targets


def _print(report: dict, device: str) -> None:
    print(f"robovlm-ros bench — {report['hardware']['cpu']}, torch threads {report['hardware']['torch_threads']}, "
          f"device {device}, backbone {report['backbone']}, {report['parameters'] / 1e6:,.1f}M parameters")
    print(f"{'measure':<34} {'p50 ms':>9} {'p99 ms':>9}")
    rows = [("step " + k, v) for k, v in report["step"].items()] + [("decode " + k, v) for k, v in report["decode"].items()]
    for name, v in rows:
        print(f"{name:<34} {v['p50_ms']:>9.2f} {v['p99_ms']:>9.2f}")
    node = report["node"]
    if "overhead_p50_ms" in node:
        print(f"{'node image in (transport+decode)':<34} {node['image_in_p50_ms']:>9.2f} {node['image_in_p99_ms']:>9.2f}")
        print(f"{'node step (minus runner.step)':<34} {node['step_overhead_p50_ms']:>9.2f} "
              f"{node['step_overhead_p99_ms']:>9.2f}")
        print(f"{'node overhead (image in + step)':<34} {node['overhead_p50_ms']:>9.2f}")
        print(f"{'runner preprocessing (no model)':<34} {node['runtime_overhead_p50_ms']:>9.2f}")
        print(f"camera delivery: {node['camera_delivery']:.1%} of two 640x480 rgb8 streams at {node['camera_hz']:.0f} Hz "
              f"from another process (DDS profile: {node['dds_profile'] or 'middleware default'})")
        c = node["cadence"]
        print(f"cadence at {c['period_ms']:.0f} ms: inference p99 {c['infer_ms']['p99_ms']} ms (budget "
              f"{c['inference_budget_ms']:.0f} ms, keeps up: {c['keeps_up']}), send p99 {c['send_ms']['p99_ms']} ms, "
              f"input age p99 {c['input_age_ms']['p99_ms']} ms, starved steps {node['starved']}")
    else:
        print(f"node: {node['skipped']}")
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items()))
    for k, ok in report["targets_met"].items():
        print(f"  [{'ok' if ok else 'MISSED'}] {k}")


def run(args) -> int:
    import torch

    from ..runtime.latency import cpu_name, policy_latency

    torch.manual_seed(0)
    report = {"hardware": {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "device": args.device,
                           "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
              "backbone": _backbone_name(args)}
    measured = policy_latency(_policy_factory(args), args.window, args.steps, args.reps, args.device)
    model = measured.pop("model")
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report.update(measured)
    try:
        from ..ros.node_bench import node_overhead  # ROS code lives in ros/; absent without ROS 2
    except ImportError as e:
        report["node"] = {"skipped": f"ROS 2 Python packages not installed ({e})"}
    else:
        report["node"] = node_overhead(model, args.node_seconds, args.device)
    report["targets_met"] = _targets(report, args.window)
    _print(report, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def size_arg(text: str) -> str | dict:
    """--size: tiny, small, a real-size preset name or a JSON mapping of BackboneSize fields."""
    from ..model.presets import PRESETS

    if text in ("tiny", "small") or text in PRESETS:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither tiny, small, a preset ({', '.join(PRESETS)}) "
                                         "nor a JSON size") from None


def add_parser(sub) -> None:
    from ..model.backbones import FAMILIES

    p = sub.add_parser("bench", help="latency of the policy step, discrete decoding and the ROS node",
                       description=__doc__)
    p.add_argument("--backbone", choices=sorted(FAMILIES),
                   help="random-weight backbone family (default: the preset's, else paligemma)")
    p.add_argument("--size", default="small", type=size_arg,
                   help="random-weight model size: tiny, small (~3.5M parameters, 224 px: compute, not Python "
                        "overhead, dominates the timings), a real-size preset (smolvlm-256m, paligemma-3b-224, "
                        "qwen2-vl-2b, kosmos-2: the published architecture) or a JSON size, e.g. "
                        "'{\"base\": \"small\", \"d\": 1024, \"layers\": 8, \"heads\": 16}'")
    p.add_argument("--checkpoint", help="benchmark this checkpoint's architecture instead of a tiny one")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--node-seconds", type=float, default=6.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the report as JSON")
    p.set_defaults(func=run)
