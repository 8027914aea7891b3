"""Frozen pretrained (and handcrafted) feature extractors for speech and faces.

:data:`EXTRACTORS` knows every extractor's name; the module that builds one is imported when that
name is first used (``EXTRACTORS.get``/``in``), so importing this package costs no torchvision.
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
from lightning_emo.extractors.weights import WeightsDownloadError

__all__ = ["EXTRACTORS", "Extractor", "ExtractorSpec", "WeightsDownloadError", "WeightsNotFoundError", "WeightsSource",
           "build_extractor", "resolve_weights"]
