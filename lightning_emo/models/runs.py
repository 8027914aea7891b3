"""Where a LightningCLI run writes, and what it prints: one folder per run, short progress lines in logs.

* **One folder per run.** Every logger of a ``fit`` writes into the first logger's
  ``SAVE_DIR/NAME/version_N`` (TensorBoard and CSV side by side no longer split one run over
  ``version_0`` and ``version_1``); the checkpoints and ``config.yaml`` land there too.
  ``validate``/``test``/``predict`` from a checkpoint of a run (``RUN/checkpoints/x.ckpt``) write
  inside that run, in ``RUN/<stage>/`` (``RUN/<stage>-1/``, ... when it exists: nothing is
  overwritten), instead of leaving a new ``version_N`` beside it; ``predictions.csv`` goes to
  ``RUN/`` as before (:mod:`lightning_emo.models.writer`).
* **Where it ended.** :class:`RunSummary` says, when ``fit`` ends, where the run folder, the best
  checkpoint and ``last.ckpt`` are.
* **Progress in logs.** On a terminal Lightning's live bar stays. When stderr is a file or a
  pipe, :class:`LogProgressBar` replaces it: an epoch line (metrics, time, ETA) every ``interval``
  seconds, the first and the last always, instead of thousands of carriage-return redraws.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.trainer.states import TrainerFn

from lightning_emo.console import format_seconds
from lightning_emo.utils import log

__all__ = ["LogProgressBar", "RunSummary", "place_loggers", "run_dir_of_checkpoint"]


def run_dir_of_checkpoint(ckpt_path: str | None) -> Path | None:
    """``RUN`` for a checkpoint saved as ``RUN/checkpoints/x.ckpt`` by a run of this CLI, else ``None``."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
        return None
    path = Path(ckpt_path)
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent
    return None


def _movable(logger: Any) -> bool:
    """Loggers that keep their files under ``root_dir/name/version`` (CSV, TensorBoard)."""
    return all(hasattr(logger, a) for a in ("_root_dir", "_name", "_version"))


def _put(logger: Any, save_dir: Path, name: str, version: str | int) -> None:
    logger._root_dir = str(save_dir)
    if hasattr(logger, "_save_dir"):  # pytorch_lightning's CSVLogger keeps both
        logger._save_dir = str(save_dir)
    logger._name = name
    logger._version = version


def place_loggers(loggers: Any, stage: str, ckpt_path: str | None) -> Path | None:
    """Point every file-based logger of one run at one folder; returns that folder (or ``None``).

    Args:
        loggers: the trainer's ``logger`` argument (one logger, a list, ``True``/``False``/``None``).
        stage: the LightningCLI subcommand (``fit``, ``validate``, ``test``, ``predict``).
        ckpt_path: the subcommand's ``--ckpt_path``.
    """
    if not isinstance(loggers, Sequence) or isinstance(loggers, str):
        loggers = [loggers]
    movable = [lg for lg in loggers if _movable(lg)]
    if not movable:
        return None
    run = run_dir_of_checkpoint(ckpt_path)
    if stage != "fit" and run is not None:
        folder = run / stage
        n = 0
        while folder.exists():
            n += 1
            folder = run / f"{stage}-{n}"
        for lg in movable:
            _put(lg, run, "", folder.name)
        # evaluation has no checkpoints of its own to reload from its folder
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    else:
        first = movable[0]
        save_dir, name, version = Path(first._root_dir), first._name, first.version  # version: the next free one
        for lg in movable[1:]:
            _put(lg, save_dir, name, version)
        folder = save_dir / name / (version if isinstance(version, str) else f"version_{version}")
        if folder.exists():  # a version the user named: Lightning's warning about replacing its logs is real
            return folder
    # A fresh folder: Lightning's "exists and is not empty, previous log files will be deleted" can only
    # see this run's own config.yaml or another of its loggers' files.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    return folder


class LogProgressBar(ProgressBar):
    """Lightning's progress as short log lines: an epoch line every ``interval`` seconds (the first and the last
    always), a batch line inside epochs longer than that.

    ``epoch 3/50 (0:00:12 elapsed, ETA 0:02:40): train/loss 1.2345, val/acc 0.4286, val/loss 1.3012``
    """

    def __init__(self, interval: float = 10.0):
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._start = self._last = time.monotonic()
        self._first_epoch = 0
        self._pending: str | None = None  # the last epoch's line, when it was not printed yet

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _say(self, trainer: pl.Trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            log.info(text)
        self._last = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._last = -float("inf")  # the first epoch's line always shows
        self._first_epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._last >= self.interval and self._last > -float("inf"):
            total = self.total_train_batches
            of = f"/{total}" if isinstance(total, int) else ""
            self._say(trainer, f"epoch {trainer.current_epoch + 1}: batch {batch_idx + 1}{of}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.monotonic() - self._start
        done = trainer.current_epoch + 1 - self._first_epoch
        limited = bool(trainer.max_epochs and trainer.max_epochs > 0)
        remaining = trainer.max_epochs - trainer.current_epoch - 1 if limited else None
        eta = format_seconds(elapsed / done * remaining) if remaining is not None and done > 0 else "?"
        line = (f"epoch {trainer.current_epoch + 1}{f'/{trainer.max_epochs}' if limited else ''} "
                f"({format_seconds(elapsed)} elapsed, ETA {eta}): {_metrics(trainer.callback_metrics)}")
        if time.monotonic() - self._last >= self.interval or remaining == 0:
            self._say(trainer, line)
            self._pending = None
        else:
            self._pending = line

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:  # stopped early: the last epoch's metrics still show
            self._say(trainer, self._pending)
            self._pending = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._say(trainer, f"validate: {_metrics(trainer.callback_metrics)}")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._say(trainer, f"predict: done in {format_seconds(time.monotonic() - self._start)}")


class RunSummary(pl.Callback):
    """After ``fit``, one line saying where the run is: its folder, the best checkpoint (and score), ``last.ckpt``."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        parts = [f"run folder {log_dir}"] if log_dir else []
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            score = ckpt.best_model_score
            parts.append(f"best checkpoint {ckpt.best_model_path}"
                         + (f" ({ckpt.monitor} {float(score):.4f})" if score is not None and ckpt.monitor else ""))
        if ckpt is not None and getattr(ckpt, "last_model_path", ""):
            parts.append(f"last.ckpt {ckpt.last_model_path} (epoch {trainer.current_epoch})")
        if parts:
            log.info("fit done after %d epoch(s): %s", trainer.current_epoch, "; ".join(parts))


# The epoch metrics a line shows when the module logs them (EmotionModule does); others: all scalars.
_HEADLINE = re.compile(r"(train|val)/(loss|acc|uar|f1_macro)(_epoch)?")


def _metrics(metrics: dict[str, Any]) -> str:
    scalars = {}
    for key, value in metrics.items():
        try:
            scalars[key] = float(value)
        except (TypeError, ValueError):
            continue
    shown = [k for k in scalars if _HEADLINE.fullmatch(k)] or [k for k in scalars if not k.endswith("_step")]
    return ", ".join(f"{k.removesuffix('_epoch')} {scalars[k]:.4f}" for k in sorted(shown)) or "(no metrics yet)"
