"""One picture per episode for the quality report: message intervals per stream, joint states and
actions with idle stretches shaded, and how much each camera frame differs from the one before."""
from __future__ import annotations

import numpy as np


def plot_episode(path: str, title: str, streams: dict[str, list], frames: dict, quality: dict, rate_hz: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    t0 = min((msgs[0][0] for msgs in streams.values() if msgs), default=0)
    ax = axes[0]
    for name, msgs in streams.items():
        t = (np.array([m[0] for m in msgs], np.int64) - t0) * 1e-9
        if len(t) > 1:
            ax.plot(t[1:], np.diff(t) * 1e3, ".", ms=3, label=name)
    ax.axhline(1e3 / rate_hz, color="k", lw=0.8, ls="--", label="frame period")
    ax.set_yscale("log")
    ax.set_ylabel("interval (ms)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=10)

    ts = (np.asarray(frames["frame_times_ns"], np.int64) - t0) * 1e-9
    ax = axes[1]
    if len(ts):
        ax.plot(ts, frames["state"][:, :6], lw=1)
        ax.plot(ts, frames["action"][:, 6], "k--", lw=1, label="gripper action")
        for s in quality.get("idle", []):
            ax.axvspan(ts[0] + s["start_s"], ts[0] + s["start_s"] + s["seconds"], color="orange", alpha=0.2)
    ax.set_ylabel("joint states (idle shaded)")

    ax = axes[2]
    if len(ts) > 1:
        diff = np.abs(np.diff(frames["rgb"].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
        stale = np.asarray(frames["camera_times_ns"])[1:] == np.asarray(frames["camera_times_ns"])[:-1]
        ax.plot(ts[1:], diff, lw=1, label="mean |change| (grey levels)")
        ax.plot(ts[1:][stale], diff[stale], "rx", ms=4, label="stale (same message)")
    ax.set_ylabel("camera frame change")
    ax.set_xlabel("seconds from the first message")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
