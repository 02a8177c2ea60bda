"""Which CPU kernels compute the policy, and pinning them so a result repeats on any x86 machine.

torch picks its vectorised kernels (ATen), oneDNN's and MKL's at run time from the CPU's instruction
set (AVX-512, AVX2, ...). They sum in different orders, so the same policy gives actions that differ
by ~1e-7 between two machines, and a closed-loop episode amplifies that (README, "What varies").
The number of threads changes the order of parallel sums as well. ``pin_cpu_kernels`` selects the
generic paths of all three and one thread, which every x86-64 CPU computes alike; it must run before
torch's first operation (the libraries read these settings once, at first use).
"""
from __future__ import annotations

import os
import platform

# ATen's generic (non-vectorised-ISA) kernels, oneDNN limited to SSE4.1, MKL's conditional numerical
# reproducibility in its compatible (SSE2-level) branch, one OpenMP / MKL thread
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
              "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def pin_cpu_kernels() -> None:
    """Select the generic CPU kernels for this process (before torch computes anything) and check
    that torch took them."""
    os.environ.update(PINNED_ENV)
    import torch

    torch.set_num_threads(1)
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        raise RuntimeError("pin_cpu_kernels() came after torch's first operation: the CPU kernels are chosen "
                           f"already ({torch.backends.cpu.get_cpu_capability()}); set "
                           + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items()) + " in the environment instead")


def kernels_pinned() -> bool:
    import torch

    return all(os.environ.get(k) == v for k, v in PINNED_ENV.items()) and torch.get_num_threads() == 1


def cpu_numerics() -> dict:
    """What decides the policy's arithmetic here, for a report: CPU, kernel path, library versions."""
    import torch

    config = torch.__config__.show()
    version = lambda prefix: next((line.split(prefix, 1)[1].split("(")[0].strip()  # noqa: E731
                                   for line in config.splitlines() if prefix in line), "")
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "machine": platform.machine(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "pinned": kernels_pinned(),
            "onednn": version("MKL-DNN "), "mkl": version("Math Kernel Library Version ").split("-")[0],
            "threads": torch.get_num_threads(),
            **{k.lower(): os.environ.get(k, "") for k in PINNED_ENV}}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
