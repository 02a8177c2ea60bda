"""``robovlm-ros bench``: latency of the policy runtime and of the ROS node, as ratios from one run.

Measures (a small random-weight policy by default, or a checkpoint's architecture):
  * policy step p50/p99 for window 1 and window W, with and without the cross-step cache (post history), and
    the preprocessing every step does (two 640x480 frames resized, moved to the device, normalised);
  * discrete decoding of a whole chunk (10 actions, 70 tokens) with and without the KV cache, of one
    action (7 tokens), and the prefix alone (images + text into the KV cache); a decoding step's weight
    reads against the device's memory bandwidth; on CUDA also the cached step without its CUDA graph and
    the growing cache without the decoding graph (the paths the graphs replaced), and a discrete
    ``pre``-history step of window W with and without its graph;
  * with --profile, where the cached steps' time goes, continuous and discrete (torch.profiler: launches,
    graph launches, the device's busy share);
  * the node's own overhead at 640x480 with two cameras streamed from another process at 30 Hz: image
    message transport + decoding, the step's work around the policy, the share of frames delivered
    (with the documented Fast DDS profile, ros/transport.py) and the cadence report.
Targets (on a 2-core CPU): window-W cached step <= 1.5x the window-1 step; KV-cached decoding >= 3x
faster than uncached; node overhead p50 <= 5 ms; >= 95 % of the camera frames delivered. On a GPU with
a real-size preset, issue 15's: paligemma-3b-224 continuous step p50 <= 15 ms, 7 tokens <= 25 ms,
70 tokens <= 150 ms; smolvlm-256m step p50 <= 5 ms; a decoding step >= 50 % of the memory bandwidth.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys


def _policy_factory(args):
    import torch

    from ..model import PolicyConfig, RoboVLM

    # real-size policies are built on the device itself: initialising 3 B parameters on the CPU first
    # would take longer than the measurement
    where = torch.device(args.device) if args.device.startswith("cuda") else torch.device("cpu")
    if args.checkpoint:
        base = RoboVLM.from_pretrained(args.checkpoint)
        cfg = base.config

        def make(**kw):
            with where:
                return RoboVLM(PolicyConfig.from_dict({**cfg.to_dict(), **kw}), tokenizer=base.tokenizer)
        return make

    def make(**kw):
        with where:
            return RoboVLM(PolicyConfig.tiny(args.backbone, size=args.size, use_state=True, **kw))
    return make


def _backbone_name(args) -> str:
    from ..model.presets import PRESETS

    if args.checkpoint:
        return args.checkpoint
    if isinstance(args.size, str) and args.size in PRESETS:
        return f"{args.size} ({PRESETS[args.size].family}, published architecture, random weights)"
    return f"{args.backbone or 'paligemma'} ({args.size}, random weights)"


# issue 15's GPU targets, p50 ms by preset: continuous step (window W, cached), 7 and 70 tokens
GPU_TARGETS = {"paligemma-3b-224": {"step": 15.0, "one_action_kv_cache": 25.0, "kv_cache": 150.0},
               "smolvlm-256m": {"step": 5.0}}


def _targets(report: dict, w: int, size, device: str) -> dict:
    r = report["ratios"]
    targets = {}
    if f"window{w}_cache_vs_window1" in r:  # not with --targets-only
        targets[f"window{w} cached step <= 1.5x window-1 step"] = r[f"window{w}_cache_vs_window1"] <= 1.5
    if "decode_speedup_kv_cache" in r:
        targets["KV-cached decoding >= 3x faster"] = r["decode_speedup_kv_cache"] >= 3.0
    gpu = GPU_TARGETS.get(size) if isinstance(size, str) and device.startswith("cuda") else None
    for name, ms in (gpu or {}).items():
        got = report["step"][f"window{w}_cache"] if name == "step" else report["decode"][name]
        targets[f"{size} {name} p50 <= {ms:g} ms"] = got["p50_ms"] <= ms
    if gpu and report["bandwidth"]["share_of_peak"] is not None:
        targets["decoding step >= 50 % of the memory bandwidth"] = report["bandwidth"]["share_of_peak"] >= 0.5
    if "overhead_p50_ms" in report["node"]:
        targets["node overhead p50 <= 5 ms"] = report["node"]["overhead_p50_ms"] <= 5.0
        targets["two 640x480 cameras at 30 Hz: >= 95 % delivered"] = report["node"]["camera_delivery"] >= 0.95
    return targets


def _graph_note(result: dict) -> str:
    """How a CUDA step row ran its graphed parts (WindowPredictor.graph_report): their replays, or why not."""
    g = result.get("graph")
    if g is None:
        return ""
    replays = ", ".join(f"{k[: -len('_replays')]} {n}" for k, n in g.items() if k.endswith("_replays"))
    if not replays:
        return f"  (no CUDA graph: {g['refused'] or 'disabled'})"
    return f"  (CUDA graph replays: {replays}{'; ' + g['refused'] if g['refused'] else ''})"


def _print(report: dict, device: str) -> None:
    print(f"robovlm-ros bench — {report['hardware']['cpu']}, torch threads {report['hardware']['torch_threads']}, "
          f"device {device}, backbone {report['backbone']}, {report['parameters'] / 1e6:,.1f}M parameters")
    print(f"{'measure':<34} {'p50 ms':>9} {'p99 ms':>9}")
    rows = [("step " + k, v) for k, v in report["step"].items()] + [("decode " + k, v) for k, v in report["decode"].items()]
    for name, v in rows:
        print(f"{name:<34} {v['p50_ms']:>9.2f} {v['p99_ms']:>9.2f}{_graph_note(v)}")
    bw = report["bandwidth"]
    print(f"decoding step {bw['decode_step_ms']:.3f} ms reads {bw['weight_bytes_per_step'] / 1e9:.3f} GB of weights: "
          + (f"{bw['weight_gb_per_s']:.0f} GB/s" if bw["weight_gb_per_s"] else "n/a")
          + (f", {bw['share_of_peak']:.0%} of the {bw['peak_gb_per_s']:.0f} GB/s peak" if bw["share_of_peak"] else ""))
    for kind, prof in report.get("profile", {}).items():
        busy = prof["device_busy_ms_per_step"]
        print(f"profile of the cached {kind} step ({prof['steps']} steps): {prof['kernel_launches_per_step']:.0f} "
              f"kernel launches, {prof['graph_launches_per_step']:.0f} graph launches, "
              f"{prof['aten_calls_per_step']:.0f} aten calls per step"
              + (f"; device busy {busy:.2f} ms per step, {prof['device_busy_share']:.0%} of the step's p50"
                 if busy is not None else ""))
        for side in ("top_cpu", "top_device"):
            for op in prof[side][:5]:
                print(f"  {side[4:]:<6} {op['op'][:60]:<60} {op['ms_per_step']:>8.3f} ms x{op['calls_per_step']:.0f}")
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


def run_training(args) -> int:
    """--training: Lightning steps of the policy on synthetic batches (train/cost.py)."""
    import torch

    from ..model import PolicyConfig
    from ..runtime.latency import percentiles
    from ..train.cost import saved_activation_bytes, training_cost

    kw = dict(window_size=args.window, fwd_pred_next_n=10, use_hand_rgb=True,
              gradient_checkpointing=args.gradient_checkpointing,
              lora={"r": args.lora, "alpha": 2 * args.lora, "dropout": 0.0} if args.lora else None)
    config = PolicyConfig.tiny(args.backbone, size=args.size, **kw)
    report = {"backbone": _backbone_name(args), "device": args.device,
              "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, **training_cost(config, args.batch, args.train_steps, args.device,
                                                            args.precision, args.strategy,
                                                            frozen_in_compute_dtype=not args.frozen_fp32)}
    report["step_ms"] = percentiles(report.pop("step_s"))
    if args.activations:  # one more forward + backward, outside Lightning
        from ..model import RoboVLM
        from ..model.synthetic import synthetic_batch

        with torch.device(args.device if args.device.startswith("cuda") else "cpu"):
            model = RoboVLM(config)
        report["saved_activation_gb"] = saved_activation_bytes(model, synthetic_batch(model, args.batch)) / 1e9
    print(f"robovlm-ros bench --training — {report['backbone']}, {report['parameters'] / 1e6:,.1f}M parameters "
          f"({report['trainable_parameters'] / 1e6:,.1f}M trained), batch {args.batch}, window {args.window}, "
          f"{args.precision}, strategy {args.strategy}, gradient checkpointing {args.gradient_checkpointing}")
    print(f"step p50 {report['step_ms']['p50_ms']:.1f} ms, p99 {report['step_ms']['p99_ms']:.1f} ms"
          + (f", peak memory {report['peak_memory_gb']:.2f} GB" if report["peak_memory_gb"] is not None else "")
          + f", parameters {report['parameter_gb']:.2f} GB while training"
          + (f", activations kept for backward {report['saved_activation_gb']:.2f} GB"
             if "saved_activation_gb" in report else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def run(args) -> int:
    import torch

    if args.training:
        return run_training(args)

    from ..runtime.latency import cpu_name, peak_bandwidth_gbs, policy_latency
    from ..runtime.runner import resolve_device

    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    peak = args.peak_bandwidth_gbs or peak_bandwidth_gbs(gpu)
    report = {"hardware": {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "device": args.device,
                           "cuda": gpu, "torch": torch.__version__},
              "dtype": str(resolve_device(args.device, args.dtype)[1]).replace("torch.", ""),
              "backbone": _backbone_name(args)}
    report["compiled"] = args.compile

    def progress(name: str, result: dict) -> None:
        warm = f"; warm-up {result['warmup_s']:.2f} s" if "warmup_s" in result else ""
        if "new_instruction_s" in result:
            warm += f", a new instruction's {result['new_instruction_s']:.2f} s"
        print(f"  {name}: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms{_graph_note(result)}{warm}",
              file=sys.stderr, flush=True)

    measured = policy_latency(_policy_factory(args), args.window, args.steps, args.reps, args.device,
                              args.dtype, peak, args.compile, progress, profile=args.profile,
                              targets_only=args.targets_only)
    model = measured.pop("model")
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report.update(measured)
    try:  # ROS code lives in ros/; rclpy is absent without ROS 2 (a GPU machine's image, say)
        importlib.import_module("rclpy")
        from ..ros.node_bench import node_overhead
    except ImportError as e:
        report["node"] = {"skipped": f"ROS 2 Python packages not installed ({e})"}
    else:
        report["node"] = node_overhead(model, args.node_seconds, args.device)
    report["targets_met"] = _targets(report, args.window, args.size, args.device)
    _print(report, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def size_arg(text: str) -> str | dict:
    """--size: tiny, small, a real-size preset name or a JSON mapping of BackboneSize fields (the presets,
    which import torch and transformers, only looked up for another name: parsing stays light)."""
    if text in ("tiny", "small"):
        return text
    from ..model.presets import PRESETS

    if text in PRESETS:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither tiny, small, a preset ({', '.join(PRESETS)}) "
                                         "nor a JSON size") from None


def family_arg(text: str) -> str:
    """--backbone: a family name of model/backbones.py (looked up when given: parsing stays light)."""
    from ..model.backbones import FAMILIES

    if text not in FAMILIES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a backbone family ({', '.join(sorted(FAMILIES))})")
    return text


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency of the policy step, discrete decoding and the ROS node",
                       description=__doc__)
    p.add_argument("--backbone", type=family_arg,
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
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every policy (vision tower, decoder layers, head), as the node's compile "
                        "parameter does")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile STEPS cached steps of the continuous and the discrete policy (torch.profiler): "
                        "kernel and graph launches per step, the "
                        "device's busy share of the step, the costliest ops")
    p.add_argument("--targets-only", action="store_true",
                   help="measure only what the targets are judged by (cached window step, 7 and 70 tokens, the "
                        "prefix): a --compile run compiles each policy it builds")
    p.add_argument("--peak-bandwidth-gbs", type=float,
                   help="the device's peak memory bandwidth in GB/s (known GPUs are looked up by name)")
    p.add_argument("--json", help="write the report as JSON")
    t = p.add_argument_group("training (--training: step time and peak memory of training steps instead)")
    t.add_argument("--training", action="store_true")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--train-steps", type=int, default=5)
    t.add_argument("--lora", type=int, default=0, metavar="R", help="LoRA rank (0: full fine-tuning)")
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    t.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. fsdp")
    t.add_argument("--activations", action="store_true",
                   help="also measure the activation bytes a forward keeps for backward")
    t.add_argument("--frozen-fp32", action="store_true",
                   help="keep frozen weights in float32 under mixed precision (training's "
                        "frozen_in_compute_dtype: false), to compare")
    p.set_defaults(func=run)
