"""Turning predicted action chunks into one action per control step, synchronously or while the next
chunk is being computed.

``ChunkSchedule`` keeps the queue of actions still to execute and decides when the next chunk is
wanted. A chunk is predicted for the observation the arm was at when it was requested (``request``
returns a mark); when it arrives (``add_chunk``), the actions the arm executed in the meantime are
dropped from its start, so its first kept action is the one meant for where the arm is now (delay
compensation: time counts in executed actions, a control step that found the queue empty moved
nothing). Modes:

* ``sync`` (RoboVLMs / LeRobot ``select_action``): the next chunk is wanted once the queue is empty;
  its first ``execute_steps`` actions are queued. While it is computed the arm waits (``pop`` gives
  None: the caller holds the arm).
* ``async``: the next chunk is wanted once ``execute_steps`` actions of the queue have been executed
  (at most ``chunk - execute_steps`` remain, LeRobot's ``chunk_size_threshold``), so it is computed
  while the queue still runs; where the new chunk overlaps the queue the two are combined by
  ``combine``: ``newest`` (the new chunk), ``average``, ``weighted`` (2/3 newest) or ``rtc`` (after
  real-time chunking: the queued actions the arm executes while the next chunk is computed, as many
  as this chunk's delay, are committed and kept; the rest eases linearly into the new chunk). With no
  delay, ``async`` + ``newest`` executes exactly what ``sync`` does.
* ``ensemble`` (ACT's temporal ensembling): a chunk every step; each action is the average of every
  chunk's prediction for it, weight exp(-decay * i), i = 0 for the oldest.

The gripper of a combined action is the sign of the combined value (+1 open at >= 0).
"""
from __future__ import annotations

import numpy as np

from ..robot.messages import gripper_sign

EXECUTIONS = ("sync", "async")
COMBINE_RULES = ("newest", "average", "weighted", "rtc")
WEIGHT_NEWEST = 2.0 / 3.0  # "weighted": the newest chunk counts double


class ChunkSchedule:
    def __init__(self, chunk_len: int, execute_steps: int | None = None, execution: str = "sync",
                 combine: str = "newest", ensemble_decay: float | None = None):
        execute_steps = execute_steps or chunk_len
        if not 1 <= execute_steps <= chunk_len:
            raise ValueError(f"execute_steps must be in 1..{chunk_len} (the checkpoint's chunk length)")
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {list(EXECUTIONS)}, not {execution!r}")
        if combine not in COMBINE_RULES:
            raise ValueError(f"chunk_combine must be one of {list(COMBINE_RULES)}, not {combine!r}")
        self.chunk_len, self.execution, self.combine = chunk_len, execution, combine
        self.ensemble_decay = ensemble_decay
        self.execute_steps = 1 if ensemble_decay is not None else execute_steps
        self.reset()

    def reset(self) -> None:
        """Forget queued actions and any chunk in flight (a new episode, instruction or a stop)."""
        self._queue: list = []  # actions still to execute, next first ([7]; ensemble: [sum w*a, sum w, n])
        self.executed = 0       # actions handed out since the reset
        self.in_flight = False
        self.last_delay = 0     # actions executed while the newest chunk was computed

    def __len__(self) -> int:
        return len(self._queue)

    def wants_chunk(self) -> bool:
        if self.in_flight:
            return False
        if self.ensemble_decay is not None:
            return True
        if self.execution == "sync":
            return not self._queue
        return len(self._queue) <= self.chunk_len - self.execute_steps

    def request(self) -> int:
        """A chunk is being computed from the current observation; returns its mark for ``add_chunk``."""
        self.in_flight = True
        return self.executed

    def cancel(self) -> None:
        """The requested chunk will not come (its inference failed or belongs to an old instruction)."""
        self.in_flight = False

    def add_chunk(self, chunk: np.ndarray, mark: int) -> None:
        """chunk [n, 7], predicted for the observation at ``mark`` (from ``request``)."""
        self.in_flight = False
        delay = self.executed - mark
        self.last_delay = delay
        new = list(np.asarray(chunk, dtype=np.float64)[delay:])  # what the arm executed meanwhile is past
        if self.ensemble_decay is not None:
            self._ensemble(new)
        elif self.execution == "sync":
            self._queue = new[: self.execute_steps]
        else:
            self._queue = self._combined(new, committed=delay)

    def _combined(self, new: list, committed: int) -> list:
        old = self._queue
        overlap = min(len(old), len(new))
        out = []
        for j in range(overlap):
            if self.combine == "newest":
                w = 1.0
            elif self.combine == "average":
                w = 0.5
            elif self.combine == "weighted":
                w = WEIGHT_NEWEST
            else:  # rtc: keep what is committed, then ease from the queue into the new chunk
                w = 0.0 if j < committed else (j - committed + 1) / (overlap - committed + 1)
            a = (1 - w) * old[j] + w * new[j]
            a[-1] = gripper_sign(a[-1])
            out.append(a)
        return out + new[overlap:] if len(new) > overlap else out + old[overlap:]

    def _ensemble(self, new: list) -> None:
        for j, a in enumerate(new):
            if j == len(self._queue):
                self._queue.append([np.zeros(7), 0.0, 0])
            entry = self._queue[j]
            w = float(np.exp(-self.ensemble_decay * entry[2]))
            entry[0] = entry[0] + w * a
            entry[1] += w
            entry[2] += 1

    def pop(self) -> np.ndarray | None:
        """The action for this control step, or None when the queue is empty (the arm must hold)."""
        if not self._queue:
            return None
        entry = self._queue.pop(0)
        self.executed += 1
        if self.ensemble_decay is None:
            return entry
        out = entry[0] / entry[1]
        out[-1] = gripper_sign(out[-1])
        return out
