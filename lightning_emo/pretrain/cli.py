"""``python -m lightning_emo.pretrain fit ...``: the source-task recipes through the package's one LightningCLI.

``lightning-emo fit --config configs/pretrain/speech_dnn.yaml`` is the same command: the emotion
CLI (:mod:`lightning_emo.models.cli`) takes any LightningModule in subclass mode, so the trainer
defaults, the ``checkpoint`` and ``early_stopping`` options, the CSV logger, seeding and
multi-GPU (``--trainer.devices N --trainer.strategy ddp``) are exactly those of every other
``fit``. The callbacks that read emotion posteriors (the fusion prior, ``predictions.csv``) are
left out for these modules; ``predict`` returns transcripts (speech) or identity posteriors
(faces) without writing a file.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning_emo.errors import command
from lightning_emo.models.cli import EmotionCLI
from lightning_emo.models.cli import cli as emotion_cli


def cli(argv: list[str] | None = None, run: bool = True, **kwargs: Any) -> EmotionCLI:
    """Build (and by default run) the CLI on ``argv`` (``["fit", "--config", ...]``); returns it."""
    return emotion_cli(argv, run=run, **kwargs)


@command()
def main(argv: list[str] | None = None) -> int:
    """``python -m lightning_emo.pretrain fit|validate|test ...``: ``argv`` starts with the subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # as in lightning_emo.models.cli.main: DDP re-launches this module with the same sys.argv
    cli(None if argv == sys.argv[1:] else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
