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
from lightning_emo.extractors.weights import WeightsDownloadError
from lightning_emo.extractors import audio, speech_dnn, ssl  # noqa: F401,E402  (register the audio extractors)
from lightning_emo.extractors import face, face_cnn  # noqa: F401,E402  (register the face extractors)

__all__ = ["EXTRACTORS", "Extractor", "ExtractorSpec", "WeightsDownloadError", "WeightsNotFoundError", "WeightsSource",
           "build_extractor", "resolve_weights"]
