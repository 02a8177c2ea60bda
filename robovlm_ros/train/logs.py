"""What a training run reports: a CSV log that survives ``train --resume``, progress lines for log files.

Lightning's CSV writer deletes ``logs/metrics.csv`` when it starts, so a resumed run would keep
only the steps it trained itself: the loss curve of everything before the interruption lost.
Here a resumed run keeps the rows logged before the checkpoint it continues from and appends
after them; rows past that checkpoint are dropped, because the resumed run trains (and logs)
those steps again. (TensorBoard needs nothing: it writes a new event file beside the old ones.)
"""
from __future__ import annotations

import csv
import io
import os
import time
from datetime import timedelta

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..atomic_io import write_text


def checkpoint_step(path: str) -> int:
    """The optimiser step a Lightning checkpoint was saved at (memory-mapped: tensors are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"])


def keep_rows_before(metrics_csv: str, step: int) -> list[str]:
    """Drop the rows of ``metrics_csv`` logged at ``step`` or later (atomically); returns its header."""
    if not os.path.isfile(metrics_csv):
        return []
    with open(metrics_csv, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("step") and int(r["step"]) < step]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    write_text(metrics_csv, text.getvalue())
    return header


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # called by __init__ where the base class deletes the file
        # the base class appends under metrics_keys and rewrites the file when new keys appear
        self.metrics_keys = sorted(keep_rows_before(self.metrics_file_path, self._resume_step))


class ResumableCSVLogger(L.pytorch.loggers.CSVLogger):
    """CSVLogger that continues ``metrics.csv`` from ``resume_step`` (None: a fresh file)."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self._resume_step is not None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self._resume_step)
        return super().experiment


class ProgressLines(L.Callback):
    """One line every ``every`` optimiser steps, for output that is not a terminal (a log file, a
    service's journal), where the progress bar would write thousands of carriage-return updates:
    ``step 1200/15000  loss 0.2493  0.52 s/step  eta 1:59:36``."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)
        self._last: tuple[int, float] | None = None  # (step, time) of the previous line

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = (trainer.global_step, time.monotonic())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every or self._last is None or step == self._last[0]:
            return
        now = time.monotonic()
        per_step = (now - self._last[1]) / (step - self._last[0])
        self._last = (step, now)
        loss = trainer.callback_metrics.get("train/loss")
        loss = "" if loss is None else f"  loss {float(loss):.4f}"
        eta = timedelta(seconds=round(per_step * max(0, trainer.max_steps - step)))
        print(f"step {step}/{trainer.max_steps}{loss}  {per_step:.2f} s/step  eta {eta}", flush=True)
