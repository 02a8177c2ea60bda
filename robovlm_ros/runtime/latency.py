"""Latency of the policy runtime for ``robovlm-ros bench``: a runner's control step and discrete
decoding, as p50 / p99 over repeated runs, on random-weight policies built by the caller."""
from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np
import torch

from ..model import RoboVLM
from .runner import PolicyRunner


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentiles(seconds) -> dict:
    a = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


def _obs(rng, size):
    return {"rgb": rng.integers(0, 255, (*size, 3), dtype=np.uint8),
            "hand_rgb": rng.integers(0, 255, (*size, 3), dtype=np.uint8),
            "state": np.r_[rng.normal(size=6), 1.0]}


def step_latency(model: RoboVLM, use_cache: bool, steps: int, device: str) -> dict:
    """The runner's step on 640x480 camera images, once the window is full (the steady state)."""
    runner = PolicyRunner(model, device=device, execute_steps=1, use_cache=use_cache)
    runner.warmup()
    runner.set_instruction("pick up the red block")
    rng = np.random.default_rng(0)
    for _ in range(model.config.window_size):
        runner.step(_obs(rng, (480, 640)))
    times = []
    for _ in range(steps):
        o = _obs(rng, (480, 640))
        t0 = time.perf_counter()
        runner.step(o)
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def decode_latency(model: RoboVLM, use_cache: bool, reps: int) -> dict:
    """Discrete decoding of a whole chunk for one window."""
    from ..model.synthetic import synthetic_batch

    batch = synthetic_batch(model, batch_size=1)
    del batch["actions"]
    model.predict(batch, normalized=True, use_cache=use_cache)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.predict(batch, normalized=True, use_cache=use_cache)
        if batch["rgb"].is_cuda:
            torch.cuda.synchronize()  # CUDA runs asynchronously: count the work, not its queueing
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def policy_latency(make: Callable[..., RoboVLM], window: int, steps: int, reps: int, device: str) -> dict:
    """{"step": ..., "decode": ..., "ratios": ...} for policies ``make(**PolicyConfig overrides)``:
    continuous steps at window 1 and ``window`` (cached and not), discrete decoding with and without
    the KV cache; on CUDA also without the CUDA graph and a discrete ``pre`` step of ``window``."""
    w = window
    win1 = make(window_size=1, history_type="post", fwd_pred_next_n=10).eval()
    winw = make(window_size=w, history_type="post", fwd_pred_next_n=10).eval()
    step = {"window1": step_latency(win1, True, steps, device),
            f"window{w}_cache": step_latency(winw, True, steps, device),
            f"window{w}_nocache": step_latency(winw, False, steps, device)}
    disc = make(window_size=1, action_space="discrete", fwd_pred_next_n=10).to(device).eval()
    decode = {"kv_cache": decode_latency(disc, True, reps), "no_cache": decode_latency(disc, False, reps)}
    if device.startswith("cuda"):  # "kv_cache" replays a CUDA graph there; the growing cache for comparison
        disc.decoding = "dynamic"
        decode["kv_cache_no_graph"] = decode_latency(disc, True, reps)
        # on the CPU uncached discrete pre steps take minutes
        pre = make(window_size=w, history_type="pre", action_space="discrete", fwd_pred_next_n=10).eval()
        step[f"discrete_pre{w}_cache"] = step_latency(pre, True, steps, device)
        pre.decoding = "dynamic"
        step[f"discrete_pre{w}_cache_no_graph"] = step_latency(pre, True, steps, device)
    ratios = {f"window{w}_cache_vs_window1": step[f"window{w}_cache"]["p50_ms"] / step["window1"]["p50_ms"],
              f"window{w}_nocache_vs_cache": step[f"window{w}_nocache"]["p50_ms"] / step[f"window{w}_cache"]["p50_ms"],
              "decode_speedup_kv_cache": decode["no_cache"]["p50_ms"] / decode["kv_cache"]["p50_ms"]}
    return {"step": step, "decode": decode, "ratios": ratios, "model": winw}
