"""Timing callback for ``scripts/benchmark.py``: per-epoch training and validation seconds, written as JSON.

Importable by the ``lightning-emo fit`` CLI when ``scripts/`` is on ``PYTHONPATH``
(``--trainer.callbacks+=bench_callbacks.EpochTimer``), so the benchmark can time the CLI,
including DDP runs, where only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl


class EpochTimer(pl.Callback):
    """Per training epoch: ``train`` seconds (epoch start to the last training batch's end),
    ``val`` seconds (the validation loop), ``batches`` and ``clips`` seen by this rank.

    Args:
        path: where rank 0 writes ``{"epochs": [...], "world_size": W}`` after every epoch (None: keep in memory).
    """

    def __init__(self, path: str | None = None):
        self.path = path
        self.epochs: list[dict] = []
        self._start = self._last = self._val_start = None
        self._val = 0.0
        self._batches = self._clips = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.perf_counter()
        self._val, self._batches, self._clips = 0.0, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last = time.perf_counter()
        self._batches += 1
        ids = batch.get("clip_id") if isinstance(batch, dict) else None
        self._clips += len(ids) if ids is not None else 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._val_start is not None:
            self._val += time.perf_counter() - self._val_start
            self._val_start = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is None:
            return
        self.epochs.append({"epoch": trainer.current_epoch, "train": self._last - self._start, "val": self._val,
                            "batches": self._batches, "clips": self._clips})
        if self.path and trainer.is_global_zero:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"epochs": self.epochs, "world_size": trainer.world_size}, f)
            os.replace(tmp, self.path)
