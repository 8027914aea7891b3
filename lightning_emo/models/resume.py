"""Training that survives interruption: ``last.ckpt`` every epoch, RNG state in checkpoints, resumable stops.

A run resumed with ``--ckpt_path last`` (or a path) continues from the last completed epoch in
the run's own directory and reaches the same weights and metrics as a run never stopped:

* :class:`EpochCheckpoint` is Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is written at
  the end of every training epoch (Lightning 2.6 writes it only when a top-k checkpoint is
  written, i.e. when the monitored metric improves); the best-k checkpoints are unchanged.
* :class:`RngState` puts the torch / numpy / Python RNG states in the checkpoint and restores
  them on resume (dropout, random crops, shuffles without a generator of their own).
* The optimizer, schedulers, loops, callbacks (early stopping, fine-tuning with its unfrozen
  parameter groups) and the datamodule's own state are Lightning's checkpoint contents; the
  length-bucket sampler draws its order from ``(seed, epoch)``, set by Lightning each epoch.
* :func:`resume_in_run_dir` points the logger of a resumed ``fit`` at the checkpoint's run
  directory (otherwise a new ``version_N`` starts, where ``last`` finds nothing and the best-k
  bookkeeping is dropped) and :class:`KeepMetrics` keeps that directory's ``metrics.csv`` rows up
  to the checkpoint (Lightning's CSV logger deletes the file when it reopens a directory).
* :class:`Preemption`: on SIGTERM (a scheduler's preemption) Lightning's signal connector stops
  training after the current batch; this callback says what was kept and how to resume, and the
  command exits with status 143. The partial epoch is dropped on purpose: resuming mid-epoch
  cannot replay the epoch's data order, so it would not reach the same result.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_emo.utils import OutputExistsError, disk_full, log

SIGTERM_EXIT = 143  # 128 + SIGTERM: what shells and schedulers report for a terminated job


class EpochCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is always the last completed training epoch.

    Top-k selection on ``monitor`` is Lightning's own. ``last.ckpt`` is written only at the end
    of each training epoch (after its validation) and when training ends, never mid-epoch, so
    that a resume from it replays whole epochs exactly.
    """

    _writing_last = False

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key: checkpoints written before this subclass existed resume its state too
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if self._writing_last:
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as e:  # Lightning writes through a temporary file: the file being replaced is intact
            there = sorted(p.name for p in Path(filepath).parent.glob("*.ckpt"))
            kept = (f"the checkpoints already in {Path(filepath).parent} are intact ({', '.join(there)}; last.ckpt "
                    "is the last completed epoch)" if there else "no checkpoint had been written yet")
            full = disk_full(e, filepath, kept=kept,
                             then="resume with the same fit command plus --ckpt_path last" if there
                             else "run the same command again")
            if full is None:
                raise
            raise full from e

    def _write_last(self, trainer: pl.Trainer) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if trainer.state.fn != TrainerFn.FITTING:
            return
        # save_last="link" links to the newest checkpoint file: only right when one was written at this step
        mode = self.save_last
        if mode == "link" and self._last_global_step_saved != trainer.global_step:
            self.save_last = True
        self._writing_last = True
        try:
            super()._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._writing_last, self.save_last = False, mode

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._write_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a run stopped by max_steps mid-epoch: its final weights are the last ones
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready not in (0, trainer.num_training_batches):
            self._write_last(trainer)


def _to_plain(state: Any) -> Any:
    """numpy arrays -> lists, so the checkpoint stays loadable with ``torch.load(weights_only=True)``."""
    if isinstance(state, np.ndarray):
        return {"__ndarray__": state.tolist(), "dtype": str(state.dtype)}
    if isinstance(state, tuple):
        return tuple(_to_plain(s) for s in state)
    return state


def _from_plain(state: Any) -> Any:
    if isinstance(state, dict) and "__ndarray__" in state:
        return np.asarray(state["__ndarray__"], dtype=state["dtype"])
    if isinstance(state, (tuple, list)) and not isinstance(state, str):
        return type(state)(_from_plain(s) for s in state)
    return state


class RngState(Callback):
    """Saves the RNG states with each checkpoint (at the end of an epoch) and restores them on resume.

    Lightning restores callbacks before it builds the training DataLoader iterator (which draws
    its base seed, and a shuffling sampler its order, from the global generator when it has none
    of its own); its sanity check runs under ``isolate_rng``. So the resumed epoch draws exactly
    what the uninterrupted one did. Under DDP the checkpoint holds rank 0's states, which every
    rank restores.
    """

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        return {key: _to_plain(value) for key, value in states.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = {key: _from_plain(value) for key, value in state_dict.items()}
        if not torch.cuda.is_available():
            states.pop("torch.cuda", None)
        _set_rng_states(states)


# --------------------------------------------------------------------------- run directories

_VERSION = re.compile(r"^version_(\d+)$")


def _logger_dir(init: Any) -> tuple[Path, Any] | None:
    """``(save_dir/name, version)`` of a CSV / TensorBoard logger's init args, else None."""
    get = init.get if hasattr(init, "get") else lambda k, d=None: getattr(init, k, d)
    save_dir = get("save_dir")
    if save_dir is None:
        return None
    name = get("name")
    return (Path(save_dir) / name if name else Path(save_dir)), get("version")


def _last_in(checkpoints: Path) -> Path | None:
    found = sorted(checkpoints.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resume_in_run_dir(config: Any) -> Path | None:
    """For ``fit --ckpt_path``: resume in the checkpoint's run directory; returns the checkpoint path.

    ``config`` is the ``fit`` subcommand's namespace (LightningCLI's ``before_instantiate_classes``).
    ``ckpt_path: last`` resolves to the newest ``last*.ckpt`` of the logger's newest version that
    has one; a checkpoint inside ``<save_dir>/<name>/version_N/checkpoints/`` sets the logger's
    version to ``N``; one inside the run of a logger's explicit version is that run's. Checkpoints
    elsewhere are left alone (a new run directory, Lightning's behaviour).
    """
    ckpt = config.get("ckpt_path")
    logger = config.get("trainer", {}).get("logger") if ckpt else None
    loggers = logger if isinstance(logger, list) else [logger]
    targets = []
    for lg in loggers:
        init = getattr(lg, "init_args", None) if lg is not None and not isinstance(lg, bool) else None
        where = _logger_dir(init) if init is not None else None
        if where is not None:
            targets.append((init, *where))
    if not targets:
        return None
    if ckpt == "last":
        _, base, version = targets[0]
        if version is not None:
            return None  # Lightning looks in that version's checkpoints/ itself
        versions = sorted((int(m.group(1)), p) for p in (base.iterdir() if base.is_dir() else [])
                          if (m := _VERSION.match(p.name)))
        found = [(v, last) for v, p in versions if (last := _last_in(p / "checkpoints")) is not None]
        if not found:
            return None  # Lightning warns that there is nothing to resume and starts afresh
        version, path = found[-1]
        config["ckpt_path"] = str(path)
    else:
        path = Path(ckpt)
        if path.parent.name != "checkpoints":
            return None
        run = path.parent.parent.resolve()
        for _, base, v in targets:  # an explicit version: the checkpoint is that run's (e.g. reproduce's "fit")
            if v is not None and (base / (v if isinstance(v, str) else f"version_{v}")).resolve() == run:
                return path
        if not (m := _VERSION.match(run.name)) or not any(base.resolve() == run.parent and v is None
                                                          for _, base, v in targets):
            return None
        version = int(m.group(1))
    for init, base, v in targets:
        if v is None:
            init["version"] = version
    return Path(config["ckpt_path"])


def refuse_finished_run_dir(config: Any) -> None:
    """For ``fit`` without ``--ckpt_path``: refuse a logger's explicitly named version folder that holds a run.

    Lightning would delete its ``metrics.csv`` and mix two trainings' checkpoints in one folder.
    """
    logger = config.get("trainer", {}).get("logger")
    for lg in logger if isinstance(logger, list) else [logger]:
        init = getattr(lg, "init_args", None) if lg is not None and not isinstance(lg, bool) else None
        where = _logger_dir(init) if init is not None else None
        if where is None or where[1] is None:
            continue
        base, version = where
        folder = base / (version if isinstance(version, str) else f"version_{version}")
        if (folder / "metrics.csv").is_file() or list((folder / "checkpoints").glob("*.ckpt")):
            raise OutputExistsError([folder], what="the run folder", hint=(
                "Resume that training with --ckpt_path last, or name another version "
                "(--trainer.logger.init_args.version), or leave the version out for a new folder."))


class KeepMetrics(Callback):
    """Keeps a resumed run's ``metrics.csv`` rows up to the checkpoint's step.

    Lightning's CSV logger deletes ``metrics.csv`` when it opens a directory that has one; the
    rows logged before the checkpoint are put back in front of the new ones (rows after it, from
    the epoch that was interrupted, are dropped: that epoch runs again).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        path = self.run_dir / "metrics.csv"
        self.rows: list[dict[str, str]] = []
        if path.is_file():
            with open(path, newline="") as f:
                self.rows = list(csv.DictReader(f))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the loops are restored by now: current_epoch is the first epoch this run trains
        for lg in trainer.loggers:
            if isinstance(lg, pl.loggers.CSVLogger) and Path(lg.log_dir).resolve() == self.run_dir.resolve():
                rows = [r for r in self.rows
                        if r.get("epoch", "") != "" and int(float(r["epoch"])) < trainer.current_epoch]
                writer = lg.experiment  # opening it deletes the old file: the rows are in memory
                writer.metrics[:0] = [{k: v for k, v in r.items() if v != ""} for r in rows]
                if rows:
                    lg.save()


SIGINT_EXIT = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def interrupted(exc: SystemExit) -> bool:
    """Whether ``exc`` is Lightning's ``exit(1)`` after a Ctrl-C (raised while handling the KeyboardInterrupt)."""
    return isinstance(exc.__context__, KeyboardInterrupt)


class Preemption(Callback):
    """On SIGTERM (stopped by Lightning after the current batch): log what was kept and how to resume.

    Lightning's training and evaluation loops stop on SIGTERM; its predict loop only records it,
    so this callback stops ``predict`` after the current batch too (nothing is written then).
    """

    def __init__(self) -> None:
        self.message: str | None = None

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any,
                             **kwargs: Any) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Ctrl-C: Lightning stops at once and exits with status 1 (the command turns that into 130)
        if isinstance(exception, KeyboardInterrupt):
            how = "Ctrl-C"
        elif isinstance(exception, SIGTERMException):
            how = "SIGTERM"
            exception.code = SIGTERM_EXIT
        else:
            return
        fn = trainer.state.fn.value if trainer.state.fn is not None else "run"
        if trainer.state.fn != TrainerFn.FITTING:
            self.message = f"{fn} stopped by {how}; nothing was written. Run the same command again."
        else:
            last = next((cb.last_model_path for cb in trainer.checkpoint_callbacks
                         if isinstance(cb, ModelCheckpoint) and cb.last_model_path
                         and os.path.isfile(cb.last_model_path)), None)
            epoch = trainer.current_epoch  # completed epochs: the one running has this index
            if last is None:
                kept = "no epoch had completed, so there is no checkpoint yet; run the same command again."
            else:
                done = epoch - 1  # EpochCheckpoint writes last.ckpt at the end of every epoch
                config = Path(trainer.log_dir or ".") / "config.yaml"
                kept = (f"{last} holds the last completed epoch ({done}). Resume with: lightning-emo fit "
                        f"--config {config} --ckpt_path {last}  (or --ckpt_path last)")
            self.message = f"fit stopped by {how} during epoch {epoch}; the partial epoch is dropped. {kept}"
        log.error(self.message)
        if how == "SIGTERM":
            exception.resume_hint = self.message


__all__ = ["EpochCheckpoint", "RngState", "KeepMetrics", "Preemption", "resume_in_run_dir", "refuse_finished_run_dir",
           "SIGTERM_EXIT", "SIGINT_EXIT", "interrupted"]
