"""``PredictionsWriter``: the callback that turns a ``predict`` run into ``predictions.csv``.

It collects what :meth:`EmotionModule.predict_step` returns (clip ids, splits, labels,
posteriors), gathers it from every process under DDP, drops the duplicates a distributed
sampler pads with, adds an empty row for each clip of the predicted splits that the datamodule
left out (``missing_clip_ids(split)``: no face found, no audio track), and writes the file with
:func:`lightning_emo.data.predictions.write_predictions` from rank 0.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import BasePredictionWriter

from pytorch_lightning.utilities import rank_zero_info

from lightning_emo.utils import check_outputs

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


class PredictionsWriter(BasePredictionWriter):
    """Write ``predictions.csv`` (``clip_id,split,label,<class>...``) at the end of ``predict``.

    Args:
        output: the CSV path; default ``predictions.csv`` in the run directory: the training run's
            when predicting from one of its checkpoints (``RUN/checkpoints/*.ckpt``), else the
            trainer's ``log_dir`` (see :func:`default_predictions_path`).
        splits: keep only these splits (default: every split predicted; the datamodule's
            ``predict_splits`` decide which clips were predicted).
        include_missing: add empty rows for the clips the datamodule left out.
        overwrite: replace an existing file (otherwise ``predict`` refuses it before predicting).
    """

    def __init__(self, output: str | None = None, splits: list[str] | None = None, include_missing: bool = True,
                 overwrite: bool = False):
        super().__init__(write_interval="epoch")
        self.output, self.overwrite = output, overwrite
        self.splits = list(splits) if splits else None
        self.include_missing = include_missing
        self.last_path: Path | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = Path(self.output) if self.output else default_predictions_path(trainer.log_dir, trainer.ckpt_path)
        if trainer.is_global_zero:
            check_outputs([path], self.overwrite, flag="--predictions.overwrite true")

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        rows = _flatten(predictions)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        log_dir = trainer.log_dir  # a collective: every rank asks
        path = Path(self.output) if self.output else default_predictions_path(log_dir, trainer.ckpt_path)
        self.last_path = path
        error: Exception | None = None
        if trainer.is_global_zero:
            try:
                self.last_path = self._write(path, rows, trainer, pl_module)
            except Exception as e:  # release the other ranks before failing
                error = e
        trainer.strategy.barrier("predictions_writer")
        if error is not None:
            raise error

    def _write(self, path: Path, rows: list[tuple[str, str, int, np.ndarray]], trainer: pl.Trainer,
               pl_module: pl.LightningModule) -> Path:
        classes = list(getattr(pl_module, "classes", None) or [])
        if not classes:
            raise ValueError("PredictionsWriter needs the model's class names (module.classes)")
        by_id: dict[str, tuple[str, str, int, np.ndarray]] = {}
        for row in rows:  # a padded sampler repeats clips (label -1 for EvalDistributedSampler's stand-ins)
            if row[0] not in by_id or (by_id[row[0]][2] == -1 and row[2] != -1):
                by_id[row[0]] = row
        if self.splits is not None:
            by_id = {k: v for k, v in by_id.items() if v[1] in self.splits}
        splits_seen = sorted({r[1] for r in by_id.values()}, key=lambda s: (SPLIT_ORDER.get(s, 3), s))
        dm = trainer.datamodule
        if self.include_missing and dm is not None and hasattr(dm, "missing_clip_ids"):
            wanted = self.splits or list(getattr(dm, "predict_splits", None) or splits_seen)
            nan = np.full(len(classes), math.nan)
            labels = _missing_labels(dm)
            for split in wanted:
                for cid in dm.missing_clip_ids(split):
                    if cid not in by_id:
                        by_id[cid] = (cid, split, labels.get(cid, -1), nan)
        if not by_id:
            raise ValueError("predict produced no rows: nothing to write to predictions.csv")
        ordered = sorted(by_id.values(), key=lambda r: (SPLIT_ORDER.get(r[1], 3), r[1], r[0]))
        from lightning_emo.data.predictions import write_predictions

        def name(label: Any) -> str:
            if isinstance(label, str):
                return label
            return classes[label] if 0 <= int(label) < len(classes) else ""

        out = write_predictions(path, [r[0] for r in ordered], [r[1] for r in ordered],
                                [name(r[2]) for r in ordered], np.stack([r[3] for r in ordered]), classes)
        n_missing = sum(bool(np.isnan(r[3]).all()) for r in ordered)
        rank_zero_info(f"wrote {out}: {len(ordered)} clips ({n_missing} without input: empty rows)")
        return out


def _flatten(predictions: Sequence[Any]) -> list[tuple[str, str, int, np.ndarray]]:
    """predict_step outputs (one list per dataloader, or one flat list) -> rows ``(clip_id, split, label, probs)``."""
    batches: list[dict[str, Any]] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            batches.append(obj)
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                walk(o)
        elif obj is not None:
            raise TypeError(f"PredictionsWriter expects predict_step to return dicts, got {type(obj).__name__}")

    walk(predictions)
    rows = []
    for b in batches:
        for key in ("clip_id", "probs"):
            if key not in b:
                raise KeyError(f"PredictionsWriter: predict_step output lacks {key!r} (keys: {sorted(b)})")
        probs = b["probs"].detach().float().cpu().numpy() if torch.is_tensor(b["probs"]) else np.asarray(b["probs"])
        n = len(b["clip_id"])
        splits = list(b.get("split") or [""] * n)
        labels = b.get("label")
        labels = labels.tolist() if torch.is_tensor(labels) else list(labels) if labels is not None else [-1] * n
        for i in range(n):
            rows.append((str(b["clip_id"][i]), str(splits[i]), labels[i], probs[i].astype(np.float64)))
    return rows


def _missing_labels(dm: Any) -> dict[str, Any]:
    """clip_id -> label (name or index) for clips the datamodule left out, where it can tell."""
    for attr in ("labels_by_clip", "clip_labels"):
        value = getattr(dm, attr, None)
        if callable(value):
            value = value()
        if isinstance(value, dict):
            return value
    manifest = getattr(dm, "manifest", None)
    clips = getattr(manifest, "clips", None)
    if clips:
        return {c.clip_id: c.label for c in clips}
    return {}


def default_predictions_path(log_dir: str | os.PathLike | None, ckpt_path: str | os.PathLike | None = None) -> Path:
    """Where ``predict`` writes by default: the run directory's ``predictions.csv``.

    The run directory is the checkpoint's (``RUN/checkpoints/x.ckpt`` -> ``RUN``) when predicting
    from a checkpoint of a training run, else the trainer's ``log_dir``.
    """
    if ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return Path(ckpt_path).parent.parent / "predictions.csv"
    return Path(log_dir if isinstance(log_dir, (str, os.PathLike)) else ".") / "predictions.csv"
