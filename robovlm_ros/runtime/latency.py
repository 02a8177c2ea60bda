"""Latency of the policy runtime for ``robovlm-ros bench``: a runner's control step and discrete
decoding, as p50 / p99 over repeated runs, on random-weight policies built by the caller."""
from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np
import torch

from ..model import RoboVLM
from ..model.decoding import static_decoder, static_decoding_on
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


# peak memory bandwidth (GB/s) of GPUs by name, from their data sheets: what a decoding step's weight
# reads are compared with (``bench --peak-bandwidth-gbs`` for any other device)
PEAK_BANDWIDTH_GBS = {"H200": 4800.0, "H100 NVL": 3900.0, "H100 PCIe": 2000.0, "H100": 3350.0,
                      "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100": 1555.0, "RTX 4090": 1008.0,
                      "L40S": 864.0}


def peak_bandwidth_gbs(device_name: str | None) -> float | None:
    for key, value in PEAK_BANDWIDTH_GBS.items():  # most specific names first
        if device_name and key in device_name:
            return value
    return None


def _steady_runner(model: RoboVLM, use_cache: bool, device: str, dtype: str, compile: bool = False,
                   cuda_graphs: bool = True):
    """A runner whose window is full (the steady state), and the random stream of its camera frames."""
    runner = PolicyRunner(model, device=device, dtype=dtype, execute_steps=1, use_cache=use_cache, compile=compile,
                          cuda_graphs=cuda_graphs)
    runner.set_instruction("pick up the red block")
    runner.warmup()
    rng = np.random.default_rng(0)
    for _ in range(model.config.window_size):
        runner.step(_obs(rng, (480, 640)))
    return runner, rng


def step_latency(model: RoboVLM, use_cache: bool, steps: int, device: str, dtype: str = "auto",
                 compile: bool = False, cuda_graphs: bool = True, new_instruction: bool = False) -> dict:
    """The runner's step on 640x480 camera images, once the window is full (the steady state). On CUDA
    with the cache, ``graph``: per graphed part of the step (WindowPredictor.graph_report) how many of the
    timed steps' calls replayed a CUDA graph, and why a part did not (a row measured without its graph says
    so, rather than passing for one). Discrete decoding's own graphs (the step, a post prefix) are not
    counted here. ``warmup_s``: the runner's warm-up; with ``new_instruction``, ``new_instruction_s``:
    set_instruction of another token count afterwards (what the arm holds for at the start of such a task: a
    warm-up where graphs or compiled kernels are bound to the count)."""
    runner, rng = _steady_runner(model, use_cache, device, dtype, compile, cuda_graphs)
    warmup_s = runner.last_warmup_s
    before = runner.policy.graph_report()
    times = []
    for _ in range(steps):
        o = _obs(rng, (480, 640))
        t0 = time.perf_counter()
        runner.step(o)
        times.append(time.perf_counter() - t0)
    result = percentiles(times)
    if runner.device.type == "cuda" and use_cache:
        report = runner.policy.graph_report()
        result["graph"] = {k: report[k] - before[k] for k in report if k.endswith("_replays") and report[k] > before[k]}
        result["graph"]["refused"] = next((v for k, v in report.items() if k.endswith("_refused") and v), None)
    result["warmup_s"] = warmup_s
    if new_instruction:
        t0 = time.perf_counter()
        runner.set_instruction("stack the green block on the blue one")
        result["new_instruction_s"] = time.perf_counter() - t0
    return result


def preprocess_latency(model: RoboVLM, steps: int, device: str, dtype: str = "auto") -> dict:
    """The runner's preprocessing of one observation (two 640x480 camera frames resized on the CPU, where
    they arrive, moved to the device as uint8 and normalised there; the state): part of every step, not of
    the policy."""
    runner = PolicyRunner(model, device=device, dtype=dtype, execute_steps=1)
    rng = np.random.default_rng(0)
    frames = [_obs(rng, (480, 640)) for _ in range(steps + 1)]
    cuda = runner.device.type == "cuda"
    return _timed(lambda: runner.preprocess(frames.pop()), steps, cuda)


KERNEL_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")


def step_profile(model: RoboVLM, steps: int, device: str, dtype: str = "auto", top: int = 10) -> dict:
    """Where the cached step's time goes (continuous or discrete, as ``model`` is), from torch.profiler over
    ``steps`` steady-state steps:
    per step, the device's busy time (its kernels' time summed), kernel launches and aten op calls (nested
    calls counted too), and the ops with the most self time on the CPU and on the device. A device busy for
    a small share of the step means the step waits on Python and kernel launches, not on the GPU (the
    profiler's own overhead makes its wall time longer than an unprofiled step)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    runner, rng = _steady_runner(model, True, device, dtype)
    cuda = runner.device.type == "cuda"
    frames = [_obs(rng, (480, 640)) for _ in range(steps)]
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        for o in frames:
            runner.step(o)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    on_device = [e for e in events if e.device_type == DeviceType.CUDA]

    def ranked(key: str) -> list[dict]:
        ops = sorted((e for e in events if getattr(e, key) > 0), key=lambda e: -getattr(e, key))[:top]
        return [{"op": e.key, "calls_per_step": e.count / steps, "ms_per_step": getattr(e, key) / 1000 / steps}
                for e in ops]

    return {"steps": steps, "profiled_wall_ms_per_step": wall * 1000 / steps,
            "device_busy_ms_per_step": sum(e.self_device_time_total for e in on_device) / 1000 / steps
            if cuda else None,
            "kernel_launches_per_step": sum(e.count for e in events if e.key in KERNEL_LAUNCHES) / steps,
            "graph_launches_per_step": sum(e.count for e in events if e.key in GRAPH_LAUNCHES) / steps,
            "aten_calls_per_step": sum(e.count for e in events if e.key.startswith("aten::")) / steps,
            "top_cpu": ranked("self_cpu_time_total"),
            "top_device": ranked("self_device_time_total") if cuda else []}


def _batch(model: RoboVLM) -> dict:
    """One synthetic window in the model's dtype, without actions."""
    from ..model.synthetic import synthetic_batch

    dtype = next(model.parameters()).dtype
    batch = synthetic_batch(model, batch_size=1)
    del batch["actions"]
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def _timed(fn, reps: int, cuda: bool) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()  # CUDA runs asynchronously: count the work, not its queueing
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def decode_latency(model: RoboVLM, use_cache: bool, reps: int) -> dict:
    """Discrete decoding of a whole chunk (fwd_pred_next_n * 7 tokens) for one window."""
    batch = _batch(model)
    return _timed(lambda: model.predict(batch, normalized=True, use_cache=use_cache), reps, batch["rgb"].is_cuda)


@torch.no_grad()
def prefix_latency(model: RoboVLM, reps: int) -> dict:
    """The prefix alone: the newest frame's images encoded and [BOS] images text run through the decoder into
    the KV cache (what every decoding starts with; the continuous step adds its action tokens and head), as
    decoding runs it: with the preallocated cache (the CUDA default) one CUDA graph replay and the first token
    picked, else eagerly into a fresh cache."""
    batch = _batch(model)
    last = {k: v[:, -1:] if k in ("rgb", "hand_rgb", "state") else v for k, v in batch.items()}
    if static_decoding_on(model, batch["rgb"].device) and model.config.history_type == "post":
        decoder = static_decoder(model)
        return _timed(lambda: decoder.prefix(last, model.n_action_slots), reps, batch["rgb"].is_cuda)

    def prefix():
        embeds, mask, _ = model.sequences(last, None)
        model.extend(embeds, mask)

    return _timed(prefix, reps, batch["rgb"].is_cuda)


def decoder_weight_bytes(model: RoboVLM) -> int:
    """Bytes of weights one decoding step reads: every decoder layer and the final norm, and of a linear LM
    head only the action bins' rows (``next_action_token``); the token table only by the row it looks up,
    left out (a head tied to it counts as the head)."""
    bb = model.backbone
    table, head = bb.embed_tokens.weight, bb.lm_head
    seen, total = {id(table), id(head.weight)}, 0
    for p in bb.language_model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    linear = isinstance(head, torch.nn.Linear)
    rows = model.action_tokenizer.token_ids.numel() if linear else head.weight.shape[0]
    for p in (head.weight, getattr(head, "bias", None)):
        if p is not None:
            total += rows * (p.numel() // p.shape[0]) * p.element_size()
    return total


def policy_latency(make: Callable[..., RoboVLM], window: int, steps: int, reps: int, device: str,
                   dtype: str = "auto", peak_gbs: float | None = None, compile: bool = False,
                   progress: Callable[[str, dict], None] | None = None, profile: int = 0,
                   targets_only: bool = False) -> dict:
    """{"step", "decode", "bandwidth", "ratios"} for policies ``make(**PolicyConfig overrides)``:
    continuous steps at window 1 and ``window`` (cached and not), the preprocessing; discrete decoding of a
    10-action chunk (70 tokens) with and without the KV cache and of one action (7 tokens); the prefix
    alone; the decoding step's share of the memory bandwidth (``peak_gbs``: the device's peak, GB/s); on
    CUDA also the steps without their CUDA graphs and a discrete ``pre`` step of ``window`` (over a quarter
    of ``steps``). ``compile``: every policy torch.compiled (RoboVLM.compile_modules; compilation happens
    in the warm-ups, outside the timings). ``progress(name, percentiles)`` is called as each measure is
    taken (a run stopped at a time limit still shows those).
    ``profile`` N: also ``step_profile`` over N cached steps of the continuous policy, of the discrete one
    (a 70-token decoding per step) and on CUDA of the discrete ``pre`` one, each with the device's busy
    share of that step's p50 ("profile"). ``targets_only``: only what the targets are judged by (the cached
    window step, 7 and 70 tokens with the KV cache, the prefix), each policy built once: a compiled run
    compiles every policy's shapes anew."""
    from .runner import resolve_device

    torch_dtype = resolve_device(device, dtype)[1]
    w = window
    if compile:
        built = make

        def make(**kw):
            # each policy compiles its own shapes, as in a node's process: otherwise the policies before it
            # use up torch._dynamo's per-function recompile limit (8) and its layers run eagerly
            torch._dynamo.reset()
            model = built(**kw)
            model.compile_modules()
            return model
    win1 = None if targets_only else make(window_size=1, history_type="post", fwd_pred_next_n=10).eval()
    winw = make(window_size=w, history_type="post", fwd_pred_next_n=10).eval()
    full = not targets_only
    step, decode = {}, {}

    def take(table: dict, name: str, result: dict) -> None:
        table[name] = result
        if progress:
            progress(name, result)

    if full:
        take(step, "window1", step_latency(win1, True, steps, device, dtype))
    take(step, f"window{w}_cache", step_latency(winw, True, steps, device, dtype, new_instruction=True))
    if full and device.startswith("cuda"):  # the cached step replays CUDA graphs there; eager for comparison
        take(step, f"window{w}_cache_no_graph", step_latency(winw, True, steps, device, dtype, cuda_graphs=False))
    if full:
        take(step, f"window{w}_nocache", step_latency(winw, False, steps, device, dtype))
        take(step, "preprocess", preprocess_latency(winw, steps, device, dtype))
    profiles = {}

    def profiled(name: str, model: RoboVLM, p50_ms: float) -> None:
        prof = profiles[name] = step_profile(model, profile, device, dtype)
        busy = prof["device_busy_ms_per_step"]
        prof["device_busy_share"] = busy / p50_ms if busy is not None else None

    if profile:
        profiled("continuous", winw, step[f"window{w}_cache"]["p50_ms"])
    del win1
    disc = make(window_size=1, action_space="discrete", fwd_pred_next_n=10).to(device, torch_dtype).eval()
    take(decode, "kv_cache", decode_latency(disc, True, reps))
    take(decode, "prefix", prefix_latency(disc, reps))
    one = make(window_size=1, action_space="discrete", fwd_pred_next_n=1).to(device, torch_dtype).eval()
    take(decode, "one_action_kv_cache", decode_latency(one, True, reps))
    del one
    if full:
        take(decode, "no_cache", decode_latency(disc, False, reps))
    if profile:
        profiled("discrete", disc, decode["kv_cache"]["p50_ms"])
    if full and device.startswith("cuda"):  # "kv_cache" replays a CUDA graph there; the growing cache for comparison
        disc.decoding = "dynamic"
        take(decode, "kv_cache_no_graph", decode_latency(disc, True, reps))
        disc.decoding = "auto"
        # on the CPU uncached discrete pre steps take minutes
        pre = make(window_size=w, history_type="pre", action_space="discrete", fwd_pred_next_n=10).eval()
        pre_steps = max(3, steps // 4)  # each step decodes a whole chunk: ~1 s at real size
        take(step, f"discrete_pre{w}_cache", step_latency(pre, True, pre_steps, device, dtype))
        if profile:
            profiled("discrete_pre", pre, step[f"discrete_pre{w}_cache"]["p50_ms"])
        pre.decoding = "dynamic"
        take(step, f"discrete_pre{w}_cache_no_graph", step_latency(pre, True, pre_steps, device, dtype,
                                                                   cuda_graphs=False))
        del pre
    # one decoding step: the 70-token decoding less the 7-token one (the same prefix, run the same way), over the
    # 63 tokens between them: nothing but decoding steps differs
    one_tokens = disc.config.action_dim
    step_ms = ((decode["kv_cache"]["p50_ms"] - decode["one_action_kv_cache"]["p50_ms"])
               / (disc.n_action_slots - one_tokens))
    weights = decoder_weight_bytes(disc)
    bandwidth = {"decode_step_ms": step_ms, "weight_bytes_per_step": weights,
                 "weight_gb_per_s": weights / 1e9 / (step_ms / 1000) if step_ms > 0 else None,
                 "peak_gb_per_s": peak_gbs}
    bandwidth["share_of_peak"] = (bandwidth["weight_gb_per_s"] / peak_gbs
                                  if peak_gbs and bandwidth["weight_gb_per_s"] else None)
    p50 = lambda table, name: table[name]["p50_ms"] if name in table else None  # noqa: E731
    cached = p50(step, f"window{w}_cache")
    ratios = {}
    for name, slower, faster in ((f"window{w}_cache_vs_window1", cached, p50(step, "window1")),
                                 (f"window{w}_nocache_vs_cache", p50(step, f"window{w}_nocache"), cached),
                                 ("decode_speedup_kv_cache", p50(decode, "no_cache"), p50(decode, "kv_cache")),
                                 (f"window{w}_no_graph_vs_graph", p50(step, f"window{w}_cache_no_graph"), cached)):
        if slower is not None and faster is not None:
            ratios[name] = slower / faster
    result = {"step": step, "decode": decode, "bandwidth": bandwidth, "ratios": ratios, "model": winw}
    if profile:
        result["profile"] = profiles
    return result
