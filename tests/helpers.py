"""Small helpers shared by test files (imported as ``from helpers import ...``)."""

from __future__ import annotations

import pytorch_lightning as pl


def quiet_trainer(tmp_path, **overrides) -> pl.Trainer:
    """A one-CPU Trainer with no logger, progress bar, model summary, checkpoints or sanity check."""
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    args.update(overrides)
    return pl.Trainer(**args)


class KillAt(pl.Callback):
    """Sends ``signal`` to this process at a training batch's start (a real kill, for resume tests)."""

    def __init__(self, epoch: int, batch: int = 0, signal: str = "SIGKILL", stage: str = "train"):
        self.epoch, self.batch, self.signal, self.stage = epoch, batch, signal, stage

    def _kill(self) -> None:
        import os
        import signal as signals

        os.kill(os.getpid(), getattr(signals, self.signal))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.stage == "train" and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self._kill()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "predict" and batch_idx == self.batch:
            self._kill()
