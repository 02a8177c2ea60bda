"""Does the policy keep up with the control rate? Per control step: how old the inputs were, how long
a chunk took to compute, how long the step took to send its command, over a sliding window.

The inference budget is what a chunk may take before the arm waits for it: one control period in
``sync`` execution (the step that asks for a chunk sends its action once it is computed), and
``chunk - execute_steps`` periods in ``async`` (the queue still runs that long). ``keeps_up``: the
p99 inference time fits the budget.
"""
from __future__ import annotations

from collections import deque

import numpy as np


class Cadence:
    def __init__(self, period_s: float, budget_s: float, window: int = 200):
        self.period_s, self.budget_s = period_s, budget_s
        self.input_age = deque(maxlen=window)  # seconds: age of the oldest input a step used
        self.infer = deque(maxlen=window)      # seconds per computed chunk
        self.send = deque(maxlen=window)       # seconds from the step's start (or the chunk's arrival) to its command

    @staticmethod
    def _stats(seconds) -> dict:
        if not seconds:
            return {"p99_ms": None, "max_ms": None}
        a = np.asarray(seconds) * 1000
        return {"p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3)}

    def report(self) -> dict:
        infer, send = self._stats(self.infer), self._stats(self.send)
        period_ms = 1000 * self.period_s
        return {"period_ms": period_ms, "inference_budget_ms": 1000 * self.budget_s,
                "input_age_ms": self._stats(self.input_age), "infer_ms": infer, "send_ms": send,
                "headroom_ms": None if send["p99_ms"] is None else round(period_ms - send["p99_ms"], 3),
                "keeps_up": None if infer["p99_ms"] is None else infer["p99_ms"] <= 1000 * self.budget_s}

    def flat(self) -> dict[str, str]:
        """The report as /diagnostics key-value strings."""
        out = {}
        for key, value in self.report().items():
            if isinstance(value, dict):
                out.update({f"cadence_{key[:-3]}_{k}": "" if v is None else str(v) for k, v in value.items()})
            else:
                out[f"cadence_{key}"] = "" if value is None else str(value)
        return out


def inference_budget_s(execution: str, chunk: int, execute_steps: int, period_s: float) -> float:
    return period_s if execution == "sync" else max(1, chunk - execute_steps) * period_s
