"""What is wrong with a recording: the dataset quality report ``convert`` writes and ``inspect`` prints.

Per episode and stream: the real message rate against the frame rate, gaps, header-stamp vs receive
time skew; per episode: frames dropped at alignment, stale frames (the camera message of the frame
before, reused because none newer arrived), frozen frames (a new camera message with the same
pixels), idle stretches (neither the arm nor the gripper moves), actions and states against the
robot's limits; and the episodes it advises dropping, with the reasons.
"""
from __future__ import annotations

import numpy as np

# thresholds of the advice; each reason in the report names the number it crossed
GAP_PERIODS = 3.0        # an interval longer than this many median intervals is a gap
MAX_GAP_S = 1.0          # a gap this long in a stream the frames need: advise dropping
MAX_STALE = 0.3          # share of frames whose camera image is the previous frame's
MAX_FROZEN = 0.1         # share of frames whose new camera image has the previous one's pixels
FROZEN_MEAN_ABS = 0.5    # grey levels: mean absolute difference below this is "the same pixels"
IDLE_MOTION = 1e-3       # per-frame joint change (rad or m) and arm action below this: not moving
IDLE_MIN_S = 1.0         # idle stretches shorter than this are not reported
MAX_IDLE = 0.5           # share of the episode idle
MAX_OUT_OF_LIMITS = 0.01  # share of frames whose action the policy node would clip
MAX_SKEW_SPREAD_S = 0.1  # header stamp - receive time varying more than this (p95 - p5)
MIN_FRAMES = 10


def _stamp_ns(msg) -> int | None:
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stream_quality(messages: list[tuple[int, object]], frame_rate_hz: float) -> dict:
    """Rate, gaps and stamp skew of one stream [(receive ns, msg)]."""
    t = np.array([m[0] for m in messages], np.int64)
    out = {"messages": len(t)}
    if len(t) < 2:
        return out
    dt = np.diff(t) * 1e-9
    median = float(np.median(dt))
    gaps = dt > max(GAP_PERIODS * median, 1e-9)
    out.update({"rate_hz": round((len(t) - 1) / max((t[-1] - t[0]) * 1e-9, 1e-9), 3),
                "median_rate_hz": round(1.0 / median, 3) if median > 0 else None,
                "frame_rate_hz": frame_rate_hz, "gaps": int(gaps.sum()), "longest_gap_s": round(float(dt.max()), 4),
                "longest_gap_at_s": round(float((t[int(dt.argmax())] - t[0]) * 1e-9), 3)})
    stamps = [_stamp_ns(m) for _, m in messages]
    if all(s is not None for s in stamps):
        skew = (t - np.array(stamps, np.int64)) * 1e-9  # receive - header stamp, seconds
        out["stamp_skew_s"] = {"median": round(float(np.median(skew)), 4),
                               "spread_p5_p95": round(float(np.percentile(skew, 95) - np.percentile(skew, 5)), 4),
                               "max_abs": round(float(np.abs(skew).max()), 4)}
    return out


def frozen_and_stale(images: np.ndarray, camera_times_ns: np.ndarray) -> tuple[int, int]:
    """(stale, frozen) frame counts: stale reuses the previous frame's camera message, frozen is a newer
    message whose pixels equal the previous frame's."""
    if len(images) < 2:
        return 0, 0
    stale = camera_times_ns[1:] == camera_times_ns[:-1]
    diff = np.abs(images[1:].astype(np.int16) - images[:-1].astype(np.int16)).mean(axis=(1, 2, 3))
    frozen = ~stale & (diff < FROZEN_MEAN_ABS)
    return int(stale.sum()), int(frozen.sum())


def idle_stretches(state: np.ndarray, action: np.ndarray, rate_hz: float) -> list[dict]:
    """Stretches of at least IDLE_MIN_S where no joint moves, the arm is commanded no motion and the
    gripper keeps its state: [{"start_s", "seconds"}]."""
    moving = np.zeros(len(state), bool)
    moving[1:] = (np.abs(np.diff(state[:, :6], axis=0)).max(1) > IDLE_MOTION) | (np.diff(state[:, 6]) != 0)
    moving |= np.abs(action[:, :6]).max(1) > IDLE_MOTION
    out, start = [], None
    for i, m in enumerate(np.r_[moving, True]):
        if not m and start is None:
            start = i
        elif m and start is not None:
            if (i - start) / rate_hz >= IDLE_MIN_S:
                out.append({"start_s": round(start / rate_hz, 3), "seconds": round((i - start) / rate_hz, 3)})
            start = None
    return out


def limits_quality(state: np.ndarray, action: np.ndarray, limits: dict) -> dict:
    lin, ang = np.linalg.norm(action[:, :3], axis=1), np.linalg.norm(action[:, 3:6], axis=1)
    out_of = (lin > limits["max_linear_velocity"]) | (ang > limits["max_angular_velocity"])
    return {"action_min": np.round(action.min(0), 4).tolist(), "action_max": np.round(action.max(0), 4).tolist(),
            "max_linear_norm": round(float(lin.max()), 4), "max_angular_norm": round(float(ang.max()), 4),
            "frames_beyond_velocity_limits": int(out_of.sum()),
            "states_beyond_position_limit": int((np.abs(state[:, :6]) > limits["max_joint_position"]).any(1).sum()),
            "gripper_actions_not_pm1": int((~np.isin(action[:, 6], (-1.0, 1.0))).sum()), "limits": limits}


def episode_quality(streams: dict[str, list], needed: list[str], frames: dict, dropped: dict, candidates: int,
                    rate_hz: float, limits: dict) -> dict:
    """``streams``: name -> [(receive ns, msg)]; ``needed``: the streams every frame needs (their gaps
    cost frames); ``frames``: the converted episode ("rgb", "state", "action", "camera_times_ns")."""
    n = len(frames["state"])
    stale, frozen = frozen_and_stale(frames["rgb"], frames["camera_times_ns"]) if n else (0, 0)
    q = {"frames": n, "candidates": candidates, "seconds": round(n / rate_hz, 3), "dropped": dict(dropped),
         "streams": {name: stream_quality(msgs, rate_hz) for name, msgs in streams.items()},
         "stale_frames": stale, "frozen_frames": frozen}
    if n:
        q["idle"] = idle_stretches(frames["state"], frames["action"], rate_hz)
        q["limits"] = limits_quality(frames["state"], frames["action"], limits)
    q["advise_drop"] = advice(q, needed)
    return q


def advice(q: dict, needed: list[str]) -> list[str]:
    """Reasons to drop the episode from training (empty: keep it)."""
    n, reasons = q["frames"], []
    if n < MIN_FRAMES:
        return [f"only {n} frames (< {MIN_FRAMES})"]
    for name in needed:
        s = q["streams"].get(name, {})
        if s.get("longest_gap_s", 0) > MAX_GAP_S:
            reasons.append(f"{name}: {s['longest_gap_s']:.2f} s without a message at {s['longest_gap_at_s']:.1f} s "
                           f"(> {MAX_GAP_S} s)")
        skew = s.get("stamp_skew_s")
        if skew and skew["spread_p5_p95"] > MAX_SKEW_SPREAD_S:
            reasons.append(f"{name}: header stamps drift {skew['spread_p5_p95']:.2f} s against receive times "
                           f"(> {MAX_SKEW_SPREAD_S} s)")
    for key, limit, what in (("stale_frames", MAX_STALE, "reuse the previous camera image"),
                             ("frozen_frames", MAX_FROZEN, "show a frozen camera (new message, same pixels)")):
        if q[key] > limit * n:
            reasons.append(f"{q[key]}/{n} frames {what} (> {limit:.0%})")
    idle = sum(s["seconds"] for s in q["idle"])
    if idle > MAX_IDLE * q["seconds"]:
        reasons.append(f"idle {idle:.1f} of {q['seconds']:.1f} s (> {MAX_IDLE:.0%})")
    beyond = q["limits"]["frames_beyond_velocity_limits"]
    if beyond > MAX_OUT_OF_LIMITS * n:
        reasons.append(f"{beyond}/{n} actions beyond the policy node's velocity limits, which would clip them "
                       f"(> {MAX_OUT_OF_LIMITS:.0%})")
    if q["limits"]["states_beyond_position_limit"]:
        reasons.append(f"{q['limits']['states_beyond_position_limit']} joint states beyond max_joint_position")
    return reasons


def summary_lines(report: dict) -> list[str]:
    """The report in a few lines: totals, then every episode with findings (advised drops first)."""
    eps = report["episodes"]
    drop = [e for e in eps if e["advise_drop"]]
    lines = [f"quality: {len(eps)} episodes, {sum(e['frames'] for e in eps)} frames at {report['rate_hz']} Hz; "
             f"{len(drop)} advised to drop"]
    for e in sorted(eps, key=lambda e: (not e["advise_drop"], e["episode_index"])):
        notes = [f"{k.replace('_', ' ')} {e[k]}" for k in ("stale_frames", "frozen_frames") if e[k]]
        notes += [f"idle {sum(s['seconds'] for s in e['idle']):.1f} s"] if e.get("idle") else []
        notes += [f"{name} {s['gaps']} gaps" for name, s in e["streams"].items() if s.get("gaps")]
        if e["advise_drop"]:
            lines.append(f"  episode {e['episode_index']} ({e['source']}): DROP: " + "; ".join(e["advise_drop"]))
        elif notes:
            lines.append(f"  episode {e['episode_index']} ({e['source']}): " + ", ".join(notes))
    return lines
