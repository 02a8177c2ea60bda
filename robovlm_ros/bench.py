"""``robovlm-ros bench``: latency of the policy runtime and of the ROS node, as ratios from one run.

Measures (a small random-weight policy by default, or a checkpoint's architecture):
  * policy step p50/p99 for window 1 and window W, with and without the cross-step cache (post history);
  * discrete decoding of a whole chunk with and without the KV cache (on CUDA also the growing cache
    without the CUDA graph, the path the graph replaced, and a discrete ``pre``-history step of
    window W with and without the graph);
  * the node's own overhead at 640x480 with two cameras streamed from another process: image message
    transport + decoding, plus inference job -> command published minus the model time.
Targets (issue 3, on a 2-core CPU): window-W cached step <= 1.5x the window-1 step; KV-cached
decoding >= 3x faster than uncached; node overhead p50 <= 5 ms.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from .model import PolicyConfig, RoboVLM
from .runtime import PolicyRunner


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pct(xs) -> dict:
    a = np.asarray(xs) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


def _obs(rng, size):
    return {"rgb": rng.integers(0, 255, (*size, 3), dtype=np.uint8),
            "hand_rgb": rng.integers(0, 255, (*size, 3), dtype=np.uint8),
            "state": np.r_[rng.normal(size=6), 1.0]}


def step_latency(model: RoboVLM, use_cache: bool, steps: int, device: str) -> dict:
    runner = PolicyRunner(model, device=device, execute_steps=1, use_cache=use_cache)
    runner.warmup()
    runner.set_instruction("pick up the red block")
    rng = np.random.default_rng(0)
    for _ in range(model.config.window_size):  # fill the window first: steady state is what matters
        runner.step(_obs(rng, (480, 640)))
    times = []
    for _ in range(steps):
        o = _obs(rng, (480, 640))
        t0 = time.perf_counter()
        runner.step(o)
        times.append(time.perf_counter() - t0)
    return _pct(times)


def decode_latency(model: RoboVLM, use_cache: bool, reps: int) -> dict:
    from .model.synthetic import synthetic_batch

    batch = synthetic_batch(model, batch_size=1)
    del batch["actions"]
    model.decode_actions(batch, use_cache=use_cache)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.decode_actions(batch, use_cache=use_cache)
        if batch["rgb"].is_cuda:
            torch.cuda.synchronize()  # CUDA runs asynchronously: count the work, not its queueing
        times.append(time.perf_counter() - t0)
    return _pct(times)


def run(args) -> int:
    torch.manual_seed(0)
    if args.checkpoint:
        base = RoboVLM.from_pretrained(args.checkpoint)
        cfg = base.config
        make = lambda **kw: RoboVLM(PolicyConfig.from_dict({**cfg.to_dict(), **kw}), tokenizer=base.tokenizer)  # noqa: E731
    else:
        make = lambda **kw: RoboVLM(PolicyConfig.tiny(args.backbone, size=args.size, use_state=True, **kw))  # noqa: E731
    w = args.window
    report = {"hardware": {"cpu": _cpu_name(), "torch_threads": torch.get_num_threads(), "device": args.device,
                           "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
              "backbone": f"{args.backbone} ({args.size}, random weights)" if not args.checkpoint else args.checkpoint}
    win1 = make(window_size=1, history_type="post", fwd_pred_next_n=10).eval()
    winw = make(window_size=w, history_type="post", fwd_pred_next_n=10).eval()
    report["step"] = {
        "window1": step_latency(win1, True, args.steps, args.device),
        f"window{w}_cache": step_latency(winw, True, args.steps, args.device),
        f"window{w}_nocache": step_latency(winw, False, args.steps, args.device),
    }
    disc = make(window_size=1, action_space="discrete", fwd_pred_next_n=10).to(args.device).eval()
    report["decode"] = {"kv_cache": decode_latency(disc, True, args.reps),
                        "no_cache": decode_latency(disc, False, args.reps)}
    if args.device.startswith("cuda"):  # "kv_cache" replays a CUDA graph there; the growing cache for comparison
        disc.decoding = "dynamic"
        report["decode"]["kv_cache_no_graph"] = decode_latency(disc, True, args.reps)
        # discrete pre history: the window is one sequence in one preallocated cache, its chunk decoded
        # by a graph bound to that cache (runtime/incremental.py); on the CPU uncached steps take minutes
        pre = make(window_size=w, history_type="pre", action_space="discrete", fwd_pred_next_n=10).eval()
        report["step"][f"discrete_pre{w}_cache"] = step_latency(pre, True, args.steps, args.device)
        pre.decoding = "dynamic"
        report["step"][f"discrete_pre{w}_cache_no_graph"] = step_latency(pre, True, args.steps, args.device)
    s = report["step"]
    report["ratios"] = {
        f"window{w}_cache_vs_window1": s[f"window{w}_cache"]["p50_ms"] / s["window1"]["p50_ms"],
        f"window{w}_nocache_vs_cache": s[f"window{w}_nocache"]["p50_ms"] / s[f"window{w}_cache"]["p50_ms"],
        "decode_speedup_kv_cache": report["decode"]["no_cache"]["p50_ms"] / report["decode"]["kv_cache"]["p50_ms"],
    }
    try:
        from .ros.node_bench import node_overhead  # ROS code lives in ros/; absent without ROS 2

        report["node"] = node_overhead(winw, args.node_seconds, args.device)
    except ImportError as e:
        report["node"] = {"skipped": f"ROS 2 Python packages not installed ({e})"}
    r = report["ratios"]
    targets = {f"window{w} cached step <= 1.5x window-1 step": r[f"window{w}_cache_vs_window1"] <= 1.5,
               "KV-cached decoding >= 3x faster": r["decode_speedup_kv_cache"] >= 3.0}
    if "overhead_p50_ms" in report["node"]:
        targets["node overhead p50 <= 5 ms"] = report["node"]["overhead_p50_ms"] <= 5.0
    report["targets_met"] = targets

    print(f"robovlm-ros bench — {report['hardware']['cpu']}, torch threads {report['hardware']['torch_threads']}, "
          f"device {args.device}, backbone {report['backbone']}")
    print(f"{'measure':<34} {'p50 ms':>9} {'p99 ms':>9}")
    for name, v in list(report["step"].items()) + [(f"decode {k}", v) for k, v in report["decode"].items()]:
        print(f"{'step ' + name if not name.startswith('decode') else name:<34} {v['p50_ms']:>9.2f} {v['p99_ms']:>9.2f}")
    node = report["node"]
    if "overhead_p50_ms" in node:
        print(f"{'node image in (transport+decode)':<34} {node['image_in_p50_ms']:>9.2f} {node['image_in_p99_ms']:>9.2f}")
        print(f"{'node step (minus runner.step)':<34} {node['step_overhead_p50_ms']:>9.2f} "
              f"{node['step_overhead_p99_ms']:>9.2f}")
        print(f"{'node overhead (image in + step)':<34} {node['overhead_p50_ms']:>9.2f}")
        print(f"{'runner preprocessing (no model)':<34} {node['runtime_overhead_p50_ms']:>9.2f}")
    else:
        print(f"node: {node['skipped']}")
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    for k, ok in targets.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {k}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _size(text: str) -> str | dict:
    if text in ("tiny", "small"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither tiny, small nor a JSON size") from None


def add_parser(sub) -> None:
    from .model.backbones import FAMILIES

    p = sub.add_parser("bench", help="latency of the policy step, discrete decoding and the ROS node",
                       description=__doc__)
    p.add_argument("--backbone", default="paligemma", choices=sorted(FAMILIES), help="random-weight backbone family")
    p.add_argument("--size", default="small", type=_size,
                   help="random-weight model size: tiny, small (~3.5M parameters, 224 px: compute, not Python "
                        "overhead, dominates the timings) or a JSON size, e.g. "
                        "'{\"base\": \"small\", \"d\": 1024, \"layers\": 8, \"heads\": 16}'")
    p.add_argument("--checkpoint", help="benchmark this checkpoint's architecture instead of a tiny one")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--node-seconds", type=float, default=6.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the report as JSON")
    p.set_defaults(func=run)
