"""A function of tensors replayed as one CUDA graph: what makes a policy step cost its kernels, not its
launches.

Why: at real size a policy step is bound by launching kernels, not by the GPU (docs/PERFORMANCE.md: a
PaliGemma-3B continuous step launches ~1,650 kernels and takes 36.8 ms on an H200 for ~3.3 ms of
compute). Captured once as a CUDA graph, the same kernels are one launch.

A graph replays exactly what was captured: the same kernels on the same memory. So a function is only
captured when it is fit for that, and the graph is only used once it has been shown to compute what the
function computes:

* ``host_syncs`` runs the function (after one plain call, which does any one-off initialisation) under
  a dispatch mode that records every op that makes the host wait for the device (``.item()``,
  ``nonzero``, boolean indexing, ``if tensor:``) or copies between the host and the device: such an op
  fails a capture, or bakes one call's value into every replay. A function with one is not captured (the
  log names the op and where it is called from) and runs eagerly.
* a capture that fails anyway turns graphs off for the rest of the process (an error in the log): PyTorch
  may be left mid-capture in its allocator, where later captures fail too.
* after the capture the graph is replayed on *different* inputs (the floating-point inputs redrawn) and
  compared with the eager function on the same inputs: a graph that kept something of the capture's
  inputs fails this, is dropped, and the function runs eagerly (warned, once).
* a graph is bound to its inputs' shapes and to the model's weights (their addresses: ``guard``); a new
  shape is captured anew (a few shapes keep their graphs, ``max_graphs``), moved weights free them all.
* a graph is captured and replayed on the device its inputs are on (``capture``, ``replay``), not on the
  thread's current device: a policy on ``cuda:1`` captured on ``cuda:0``'s stream would record nothing
  (its kernels run on cuda:1's stream) and replay nothing.

Off CUDA the function simply runs: the CPU path is the eager function itself.
"""
from __future__ import annotations

import logging
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger(__name__)

# ops that read a device value on the host: inside a capture they fail it (or, on the CPU, would)
_SYNC_OPS = frozenset({"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique", "_unique2",
                       "unique_dim", "unique_consecutive", "equal", "is_nonzero", "allclose", "tolist"})


def _caller() -> str:
    """dir/file:line of the innermost frame outside torch (transformers', ours, a user's: where it can change)."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and not path.endswith("/model/cuda_graph.py"):
            return f"{'/'.join(path.rsplit('/', 2)[-2:])}:{frame.lineno}"
    return "?"


def _host_tensors(args, kwargs) -> bool:
    """Whether an op's arguments (lists included) hold a host tensor of more than one value."""
    stack = [*args, *kwargs.values()]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() > 0:
            return True
        if isinstance(x, (list, tuple)):
            stack.extend(x)
    return False


class _HostSyncScan(TorchDispatchMode):
    """Records (op, caller) for every op that syncs with the host or brings host data into the call."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def _note(self, what: str) -> None:
        entry = f"{what} at {_caller()}"
        if entry not in self.found:
            self.found.append(entry)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in _SYNC_OPS:
            self._note(name)
        elif name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()):
            self._note("boolean indexing")
        elif name == "repeat_interleave" and func._overloadname != "self_int" and kwargs.get("output_size") is None:
            self._note("repeat_interleave with tensor repeats")  # its output size is read on the host
        out = func(*args, **kwargs)
        if name.startswith("lift_fresh") and (out.dim() > 0 or out.device.type != "cpu"):
            self._note("a tensor made from host data")  # torch.tensor(python data) on every call
        elif name in ("_to_copy", "copy_") and isinstance(out, torch.Tensor):
            # between devices, a scalar too: from pageable host memory or to the host, a copy waits for the
            # device, which fails a capture
            src = args[1] if name == "copy_" else args[0]
            if isinstance(src, torch.Tensor) and src.device != out.device:
                self._note("a copy from host memory" if src.device.type == "cpu" else
                           "a copy to host memory" if out.device.type == "cpu" else "a copy between devices")
        elif isinstance(out, torch.Tensor) and out.device.type != "cpu" and _host_tensors(args, kwargs):
            # a host tensor (not a one-value scalar, which a kernel takes as an argument) read by a device op,
            # an index for one: copied in by the op itself
            self._note("host data read by a device op")
        return out


class _HostDataMade(TorchFunctionMode):
    """Records ``torch.tensor(data, device=...)`` and the like made on a device from host data: the copy
    happens below the dispatcher, where the scan's dispatch mode does not see it."""

    MAKERS = (torch.tensor, torch.as_tensor, torch.asarray)

    def __init__(self, scan: _HostSyncScan):
        super().__init__()
        self.scan = scan

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        data = args[0] if args else None
        if (func in self.MAKERS and isinstance(out, torch.Tensor) and out.device.type != "cpu"
                and not (isinstance(data, torch.Tensor) and data.device == out.device)):
            self.scan._note("a tensor made from host data")
        return out


def host_syncs(fn: Callable, *args):
    """Run ``fn(*args)`` once, recording ops unfit for a CUDA graph: returns (result, ["op at file:line", ...])."""
    scan = _HostSyncScan()
    with _HostDataMade(scan), scan:
        out = fn(*args)
    return out, scan.found


def on_cuda(device: torch.device) -> bool:
    """Whether work on ``device`` is captured as CUDA graphs (the tests' CPU stand-in for capture says yes)."""
    return device.type == "cuda"


_disabled: str | None = None  # why graphs are off for the rest of the process (a capture failed)


def graphable(device: torch.device) -> bool:
    """Whether a call on ``device`` may capture or replay a graph now: on CUDA, not after a failed capture,
    and not under autocast (its low-precision weight copies live for one autocast block, as in a Lightning
    validation step, so a graph captured there would later read freed memory, and one captured without it
    would replay other kernels)."""
    return on_cuda(device) and _disabled is None and not torch.is_autocast_enabled(device.type)


def _disable(why: str) -> None:
    global _disabled
    if _disabled is None:
        _disabled = why
        log.error("CUDA graphs are off for the rest of this process, the policy runs eagerly (slower): %s", why)


def _device_of(args) -> torch.device | None:
    """The one device of the tensors in ``args`` (None: no tensor, or several devices)."""
    devices = {a.device for a in args if a is not None}
    return devices.pop() if len(devices) == 1 else None


def capture(fn: Callable[[], object], device: torch.device, warmups: int = 2):
    """One call of ``fn`` captured as a CUDA graph on ``device`` -> (graph, the call's outputs). ``warmups``
    calls run first on the capture's own side stream (lazy initialisation, allocations, the stream's cuBLAS
    workspace happen there, not inside the capture); ``fn``'s side effects happen warmups + 1 times."""
    with torch.cuda.device(device):
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmups):
                fn()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the policy node captures in its inference thread while other threads run; their
            # CUDA calls must not break the capture ("global" would), and cannot enter it
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                out = fn()
        except BaseException as e:
            # torch.cuda.graph ends the capture before it leaves the side stream: when ending fails (an op the
            # capture refused), the thread stays on that stream and the allocator may still route allocations
            # into the dead graph's pool, so later captures cannot start. Back to the stream; no more graphs.
            torch.cuda.set_stream(current)
            _disable(f"a capture failed ({type(e).__name__}: {e})")
            raise
    return graph, out


def replay(graph, device: torch.device, times: int = 1) -> None:
    """Replay ``graph`` ``times`` times on the current stream of ``device``, the one it was captured on."""
    with torch.cuda.device(device):
        for _ in range(times):
            graph.replay()


def _outputs(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _close(graph_out, eager_out) -> bool:
    """Equal up to the rounding the graph's kernels may order differently (relative to the output's scale)."""
    for g, e in zip(_outputs(graph_out), _outputs(eager_out)):
        if g.shape != e.shape or g.dtype != e.dtype:
            return False
        if g.is_floating_point():
            rel = 1e-4 if e.dtype == torch.float32 else 2e-2
            scale = e.float().abs().max().item() if e.numel() else 0.0
            if not torch.allclose(g.float(), e.float(), rtol=0.0, atol=rel * max(scale, 1e-6)):
                return False
        elif not torch.equal(g, e):
            return False
    return True


@dataclass
class _Entry:
    """One input signature's graph (None: it runs eagerly, ``refused`` says why)."""
    graph: "torch.cuda.CUDAGraph | None" = None
    inputs: tuple = ()
    out: object = None
    refused: str | None = None


class CapturedFunction:
    """``fn(*tensors) -> tensor or tuple of tensors``, replayed as a CUDA graph on CUDA inputs (an argument
    may be None: part of the signature, like a shape).

    The first call with a new input signature (shapes, dtypes, device) runs ``fn`` eagerly under the
    host-sync scan; if it is clean, the function is captured and verified (module docstring) and later calls
    copy their inputs into the graph's and replay it. Outputs are fresh tensors (clones). ``fn`` may write
    into state of its own (a KV cache) as long as every call overwrites what it reads. Up to ``max_graphs``
    signatures keep their graphs (the least recently used is freed); a change of ``guard()`` (the weights
    moved) frees them all. ``enabled()`` False: always eager (read at every call).
    """

    def __init__(self, fn: Callable, name: str, guard: Callable[[], tuple] = tuple,
                 enabled: Callable[[], bool] = lambda: True, max_graphs: int = 1):
        self.fn, self.name, self.guard, self.enabled, self.max_graphs = fn, name, guard, enabled, max_graphs
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._guarded: tuple | None = None
        self._last: _Entry | None = None
        self.replays = 0  # calls served by a graph (tests, bench)
        self.captures = 0  # signatures captured (or tried)

    @property
    def refused(self) -> str | None:
        """Why the signature called last runs eagerly (None: it replays a graph, or nothing ran on CUDA)."""
        return None if self._last is None else self._last.refused

    def __call__(self, *args: torch.Tensor | None):
        device = _device_of(args)
        if device is None or not graphable(device) or not self.enabled():
            return self.fn(*args)
        guarded = self.guard()
        if guarded != self._guarded:  # graphs over the old weights must never replay
            self._entries.clear()
            self._guarded = guarded
        key = tuple(None if a is None else (a.shape, a.dtype, a.device) for a in args)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_graphs:
                self._entries.popitem(last=False)
            entry = self._entries[key] = _Entry()
            self._last = entry
            return self._capture(entry, args, device)
        self._entries.move_to_end(key)
        self._last = entry
        if entry.graph is None:
            return self.fn(*args)
        for static, a in zip(entry.inputs, args):
            if a is not None:
                static.copy_(a)
        replay(entry.graph, device)
        self.replays += 1
        return tuple(o.clone() for o in entry.out) if isinstance(entry.out, tuple) else entry.out.clone()

    def _refuse(self, entry: _Entry, why: str):
        entry.refused = why
        log.warning("%s runs without a CUDA graph: %s", self.name, why)

    def _capture(self, entry: _Entry, args: Sequence[torch.Tensor], device: torch.device):
        """Scan, capture, verify on redrawn inputs; returns fn(*args) (the graph's if it is kept)."""
        self.captures += 1
        self.fn(*args)  # one-off work (lazy buffers, a position table grown) happens here, not in the scan
        eager, found = host_syncs(self.fn, *args)
        if found:
            self._refuse(entry, "it syncs with the host (" + "; ".join(found[:3]) + ")")
            return eager
        try:
            static = tuple(None if a is None else a.clone() for a in args)
            graph, out = capture(lambda: self.fn(*static), device)
            same = self._verify(graph, static, out, device)
        except Exception as e:  # noqa: BLE001 - the eager function still works; say why it is slower
            self._refuse(entry, f"capture failed ({type(e).__name__}: {e})")
            return self.fn(*args)
        if not same:
            self._refuse(entry, "its graph computed something else than the function on new inputs")
            return self.fn(*args)
        entry.graph, entry.inputs, entry.out = graph, static, out
        return self(*args)  # the real inputs through the graph (also rewrites any state the check touched)

    def _verify(self, graph, static, out, device: torch.device) -> bool:
        """The graph replayed on inputs unlike the capture's (every floating-point input redrawn within its own
        range) equals the eager function on them."""
        for s in static:
            if s is not None and s.is_floating_point():
                draw = torch.Generator(device=s.device).manual_seed(0)  # leaves the user's random streams alone
                scale = s.float().abs().max().clamp(min=1e-3)
                s.copy_((torch.rand(s.shape, generator=draw, device=s.device) * 2 - 1) * scale)
        redrawn = tuple(None if s is None else s.clone() for s in static)
        replay(graph, device)
        replayed = tuple(o.clone() for o in _outputs(out))
        return _close(replayed, self.fn(*redrawn))
