"""Emotion models: sequence heads, the LightningModule, the predictions writer and the training CLI.

``lightning-emo fit|validate|test|predict`` is :func:`lightning_emo.models.cli.main`.
"""

from lightning_emo.models.heads import HEADS, Head, build_head
from lightning_emo.models.module import EmotionModule, ExtractorFinetuning
from lightning_emo.models.writer import PredictionsWriter

__all__ = ["HEADS", "Head", "build_head", "EmotionModule", "ExtractorFinetuning", "PredictionsWriter"]
