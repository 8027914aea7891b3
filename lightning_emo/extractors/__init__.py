"""Frozen pretrained (and handcrafted) feature extractors for speech and faces.

Importing this package registers every extractor in :data:`EXTRACTORS`.
"""

from lightning_emo.extractors.base import (
    EXTRACTORS,
    Extractor,
    ExtractorSpec,
    WeightsNotFoundError,
    WeightsSource,
    build_extractor,
    resolve_weights,
)

__all__ = ["EXTRACTORS", "Extractor", "ExtractorSpec", "WeightsNotFoundError", "WeightsSource",
           "build_extractor", "resolve_weights"]
