"""Turning predicted action chunks into one action per control step.

* ``ActionQueue``: execute the first ``execute_steps`` actions of a chunk, then replan (RoboVLMs /
  LeRobot ``select_action``).
* ``TemporalEnsembler``: replan every step and average all chunks' predictions for the current
  step, weight exp(-k * i) with i = 0 for the oldest prediction (ACT's temporal ensembling).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from ..robot.messages import gripper_sign


class ActionQueue:
    def __init__(self, execute_steps: int):
        if execute_steps < 1:
            raise ValueError("execute_steps must be >= 1")
        self.execute_steps = execute_steps
        self._queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        self._queue.clear()

    def needs_chunk(self) -> bool:
        return not self._queue

    def add_chunk(self, chunk: np.ndarray) -> None:
        """chunk [n, 7]: queue its first execute_steps actions."""
        self._queue.extend(chunk[: self.execute_steps])

    def pop(self) -> np.ndarray:
        return self._queue.popleft()


class TemporalEnsembler:
    def __init__(self, decay: float = 0.1):
        self.decay = decay
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (step the chunk starts at, [n, 7])
        self._t = 0

    def reset(self) -> None:
        self._chunks.clear()
        self._t = 0

    def needs_chunk(self) -> bool:
        return True

    def add_chunk(self, chunk: np.ndarray) -> None:
        self._chunks.append((self._t, chunk))

    def pop(self) -> np.ndarray:
        t = self._t
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= t:
            self._chunks.popleft()  # chunks that no longer cover step t
        preds = np.stack([c[t - s] for s, c in self._chunks])  # oldest first
        w = np.exp(-self.decay * np.arange(len(preds)))
        out = (preds * w[:, None]).sum(0) / w.sum()
        out[-1] = gripper_sign(out[-1])
        self._t += 1
        return out
