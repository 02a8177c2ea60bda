"""A control loop around a PolicyRunner: one action per control step, chunks computed beside it.

``ChunkedControl`` owns the runner's ``ChunkSchedule`` (sync or async, runtime/chunking.py) and the
bookkeeping a threaded controller needs, without ROS:

* real time: ``control_step(obs)`` on the control thread returns the action for this step (None: the
  queue is dry, hold the arm) and, when the schedule wants a chunk, a ``ChunkJob`` that a worker
  thread runs (``compute``) and hands back (``deliver``), while the control thread keeps stepping;
* lockstep (a simulator that waits for each command): ``lockstep_step(obs)`` does a whole step inline,
  and ``simulated_delay_steps`` makes each chunk usable only that many steps after its inputs, so the
  cost of inference latency is measured deterministically.

``clear()`` (a new instruction, ``~/reset``, ``~/stop``, stale inputs) discards the queue at once and
every chunk still being computed: a chunk computed for the old instruction is never executed. The
runner itself is reset by the worker before its next chunk (it is not thread-safe).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .chunking import ChunkSchedule
from .runner import PolicyRunner


@dataclass
class ChunkJob:
    observations: list  # the observations since the last chunk, newest last (they join the window)
    mark: int           # the schedule's mark of the newest one
    generation: int     # discarded when the queue was cleared since
    step: int           # the control step that asked for it
    owed: bool          # that step found the queue dry: its command waits for this chunk


class ChunkedControl:
    def __init__(self, runner: PolicyRunner, execution: str = "sync", combine: str = "newest",
                 execute_steps: int | None = None, ensemble: bool = False, simulated_delay_steps: int = 0):
        self.runner = runner
        self.schedule = ChunkSchedule(runner.config.fwd_pred_next_n, execute_steps, execution, combine,
                                      ensemble_decay=runner.ensemble_decay if ensemble else None)
        if simulated_delay_steps < 0:
            raise ValueError("simulated_delay_steps must be >= 0")
        self.delay_steps = simulated_delay_steps
        self.lock = threading.Lock()
        self.generation = 0
        self.step = 0
        self._unobserved: deque = deque(maxlen=runner.config.window_size)
        self._pending: list[tuple[int, np.ndarray, int]] = []  # lockstep: (usable from step, chunk, mark)
        self._instruction: str | None = None  # for the runner, applied by the worker
        self._reset_runner = False
        self.starved = 0  # control steps that found the queue dry while the arm should move

    def clear(self, instruction: str | None = None) -> None:
        """Discard queued actions and chunks in flight; the runner restarts its history (with
        ``instruction`` when given) before its next chunk."""
        with self.lock:
            self.generation += 1
            self.schedule.reset()
            self._pending.clear()
            self._unobserved.clear()
            self._reset_runner = True
            if instruction is not None:
                self._instruction = instruction

    def _prepare_runner(self) -> None:
        """Worker thread: apply a pending instruction or reset before the runner's next work."""
        with self.lock:
            instruction, self._instruction = self._instruction, None
            reset, self._reset_runner = self._reset_runner, False
        if instruction is not None:
            self.runner.set_instruction(instruction)
        elif reset:
            self.runner.reset()

    # ------------------------------------------------------------------ real time
    def control_step(self, observation: dict) -> tuple[np.ndarray | None, ChunkJob | None]:
        """Control thread: the action for this step (None: hold) and a job when a chunk is wanted."""
        with self.lock:
            self.step += 1
            self._unobserved.append(observation)
            action = self.schedule.pop()
            job = None
            if self.schedule.wants_chunk():
                job = ChunkJob(list(self._unobserved), self.schedule.request(), self.generation, self.step,
                               owed=action is None)
                self._unobserved.clear()
            elif action is None:
                self.starved += 1
            return action, job

    def compute(self, job: ChunkJob) -> np.ndarray | None:
        """Worker thread: the job's observations join the window, the chunk of the newest (unnormalised). None
        when a new instruction made the runner warm up first (another token count: PolicyRunner.needs_warmup):
        the job's observations are then as old as the warm-up, so ``deliver(job, None)`` and the next control
        step asks again with fresh ones."""
        warmups = self.runner.warmups
        self._prepare_runner()
        if self.runner.warmups != warmups:
            return None
        for observation in job.observations[:-1]:
            self.runner.observe(observation)
        return self.runner.predict_chunk(job.observations[-1])

    def deliver(self, job: ChunkJob, chunk: np.ndarray | None) -> np.ndarray | None:
        """Worker thread: the chunk joins the queue (None: its inference failed); returns the action owed
        to the step that asked for it, if no later step has come since (that one held the arm)."""
        with self.lock:
            if job.generation != self.generation:
                self._reset_runner = True  # frames of the old episode went into the runner's window
                return None
            if chunk is None:
                self.schedule.cancel()
                return None
            self.schedule.add_chunk(chunk, job.mark)
            if job.owed and job.step == self.step:
                return self.schedule.pop()
            if job.owed:
                self.starved += 1
            return None

    # ------------------------------------------------------------------ lockstep
    def lockstep_step(self, observation: dict) -> np.ndarray | None:
        """Worker thread, one step of a lockstep simulation: chunks whose simulated delay has passed
        join the queue, a chunk is computed if wanted, the action for this step comes out."""
        self._prepare_runner()
        with self.lock:
            self.step += 1
            due = [p for p in self._pending if p[0] <= self.step]
            self._pending = [p for p in self._pending if p[0] > self.step]
            for _, chunk, mark in due:
                self.schedule.add_chunk(chunk, mark)
            mark = self.schedule.request() if self.schedule.wants_chunk() else None
            generation = self.generation
        try:
            if mark is not None:
                chunk = self.runner.predict_chunk(observation)
            else:
                self.runner.observe(observation)
        except Exception:
            with self.lock:  # no chunk is coming: the next step asks again
                if mark is not None and generation == self.generation:
                    self.schedule.cancel()
            raise
        with self.lock:
            if generation != self.generation:
                self._reset_runner = True
                return None
            if mark is not None:
                if self.delay_steps == 0:
                    self.schedule.add_chunk(chunk, mark)
                else:
                    self._pending.append((self.step + self.delay_steps, chunk, mark))
            action = self.schedule.pop()
            self.starved += action is None
            return action
