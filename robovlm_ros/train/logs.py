"""Training loggers whose history survives ``train --resume``.

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
