"""Emotion models: sequence heads, the LightningModule, the predictions writer and the training CLI.

``lightning-emo fit|validate|test|predict`` is :func:`lightning_emo.models.cli.main`. The heads
are plain PyTorch; the Lightning parts load on first use, so that inference (which needs the
heads only) does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_emo.models.heads import HEADS, Head, build_head

_LAZY = {"EmotionModule": "module", "ExtractorFinetuning": "module", "PredictionsWriter": "writer"}

__all__ = ["HEADS", "Head", "build_head", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"lightning_emo.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lightning_emo.models' has no attribute {name!r}")
