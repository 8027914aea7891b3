"""``python -m lightning_emo.pretrain fit|validate|test --config configs/pretrain/*.yaml``: the pretraining LightningCLI.

The emotion CLI (:mod:`lightning_emo.models.cli`) with any ``LightningModule`` as the model
(subclass mode: ``model.class_path`` names :class:`SpeechDNNPretraining` or
:class:`FaceCNNPretraining`), so the trainer defaults, the ``checkpoint`` and
``early_stopping`` options, the CSV logger, seeding and multi-GPU (``--trainer.devices N
--trainer.strategy ddp``) are exactly those of ``lightning-emo fit``. Only the callbacks that
read emotion posteriors are left out (the fusion prior, ``predictions.csv``): the source tasks
do not produce them. ``predict`` returns transcripts (speech) or identity posteriors (faces)
without writing a file.
"""

from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl

from lightning_emo.models.cli import TRAINER_DEFAULTS, EmotionCLI
from lightning_emo.models.writer import PredictionsWriter


class PretrainCLI(EmotionCLI):
    """:class:`~lightning_emo.models.cli.EmotionCLI` for the source-task modules (without its emotion-only callbacks)."""

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[pl.Callback]) -> pl.Trainer:
        callbacks = [c for c in callbacks if not isinstance(c, _emotion_only_callbacks())]
        return super()._instantiate_trainer(config, callbacks)


def _emotion_only_callbacks() -> tuple[type, ...]:
    """Callbacks of the emotion CLI that read emotion posteriors (``probs``, ``label``, class names)."""
    kinds: list[type] = [PredictionsWriter]
    try:
        from lightning_emo.fusion.callback import FusionPriorCallback
    except ImportError:  # an optional part that is not installed
        pass
    else:
        kinds.append(FusionPriorCallback)
    return tuple(kinds)


def cli(argv: list[str] | None = None, run: bool = True, **kwargs: Any) -> PretrainCLI:
    """Build (and by default run) the pretraining CLI on ``argv`` (``["fit", "--config", ...]``); returns it.

    The defaults are those of :func:`lightning_emo.models.cli.cli` (trainer defaults, seed 0,
    ``config.yaml`` saved in the run directory, the modules' own ``configure_optimizers``) with
    ``LightningModule`` as the model base class.
    """
    # imported so that configs may name the classes without their module (class_path: ASRDataModule)
    from lightning_emo.pretrain import asr_data, face_data, faces, speech  # noqa: F401

    defaults: dict[str, Any] = dict(
        model_class=pl.LightningModule,
        subclass_mode_model=True,
        datamodule_class=pl.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        auto_configure_optimizers=False,
    )
    defaults.update(kwargs)
    return PretrainCLI(args=argv, run=run, **defaults)


def main(argv: list[str] | None = None) -> int:
    """``python -m lightning_emo.pretrain fit|validate|test ...``: ``argv`` starts with the subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # as in lightning_emo.models.cli.main: DDP re-launches this module with the same sys.argv
    cli(None if argv == sys.argv[1:] else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
