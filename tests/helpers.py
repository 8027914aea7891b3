"""Small helpers shared by test files (imported as ``from helpers import ...``)."""

from __future__ import annotations

import pytorch_lightning as pl


def quiet_trainer(tmp_path, **overrides) -> pl.Trainer:
    """A one-CPU Trainer with no logger, progress bar, model summary, checkpoints or sanity check."""
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    args.update(overrides)
    return pl.Trainer(**args)
