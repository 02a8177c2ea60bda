"""Time alignment of one episode's streams onto the control rate (no future leakage).

Reference stream: the arm commands the robot received when they were recorded (each command is the
action for the observations that preceded it), else the static camera. Reference messages are
thinned to at most ``rate_hz``. For every reference time t, each other stream contributes its latest
message with log time <= t, and at most ``max_age_s`` old; a reference time where some stream has
none is dropped and counted under the stream's name. All times are the bag's log (receive) times:
one clock for every stream, whatever the senders' header stamps say.
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Aligned:
    times_ns: list[int] = field(default_factory=list)  # reference time of every kept frame
    picks: dict[str, list] = field(default_factory=dict)  # stream -> message per kept frame
    dropped: Counter = field(default_factory=Counter)  # reason -> frames
    candidates: int = 0  # reference times considered


def thin(times_ns: list[int], rate_hz: float) -> list[int]:
    """Indices of messages kept so consecutive kept ones are at least ~one period apart."""
    min_gap = 0.75e9 / rate_hz  # tolerate jitter of a quarter period
    kept, last = [], None
    for i, t in enumerate(times_ns):
        if last is None or t - last >= min_gap:
            kept.append(i)
            last = t
    return kept


def align(reference: list[tuple[int, object]], others: dict[str, list[tuple[int, object]]], rate_hz: float,
          max_age_s: float, thin_reference: bool = True) -> Aligned:
    """``thin_reference=False`` keeps every reference message (a lockstep recording, where each
    command answers its own observation however close in time two commands are)."""
    out = Aligned(picks={"reference": [], **{k: [] for k in others}})
    times = {k: [t for t, _ in msgs] for k, msgs in others.items()}
    max_age = int(max_age_s * 1e9)
    ref_times = [t for t, _ in reference]
    for i in (thin(ref_times, rate_hz) if thin_reference else range(len(reference))):
        t, ref_msg = reference[i]
        out.candidates += 1
        chosen = {}
        for name, msgs in others.items():
            j = bisect.bisect_right(times[name], t) - 1  # latest message at or before t
            if j < 0 or t - times[name][j] > max_age:
                out.dropped[f"{name} missing or older than {max_age_s}s"] += 1
                break
            chosen[name] = msgs[j][1]
        else:
            out.times_ns.append(t)
            out.picks["reference"].append(ref_msg)
            for name, msg in chosen.items():
                out.picks[name].append(msg)
    return out
