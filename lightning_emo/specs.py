"""The extractor spec and weight source: the JSON-able description of a frozen extractor that crosses layers.

Feature stores (``data/``) record it, extractors (``extractors/``) are built from it, Hub configs
carry it. It lives at the bottom of the package so that the data layer can read it without
importing the extractors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WEIGHT_KINDS", "ExtractorSpec", "WeightsSource"]

WEIGHT_KINDS = ("none", "file", "hf-hub", "torchaudio", "facenet", "timm")


@dataclass(frozen=True)
class WeightsSource:
    """Where an extractor's weights come from.

    Attributes:
        kind: ``none`` (no weights: handcrafted), ``file`` (a local file given by the user),
            ``hf-hub`` (``uri`` = ``org/name``, ``filename``, pinned ``revision``),
            ``torchaudio`` (``uri`` = bundle name, e.g. ``HUBERT_BASE``), ``facenet``
            (``uri`` = ``vggface2`` or ``casia-webface``), ``timm`` (``uri`` = model name,
            ``revision`` = the Hub revision of its weights).
        uri: the source's identifier (see ``kind``).
        filename: the file inside a Hub repo or the cache file name.
        revision: a pinned Hub revision (commit hash or tag) where applicable.
        sha256: the expected digest of the weight file, checked when given.
        license: the weights' license, shown in model cards.
    """

    kind: str = "none"
    uri: str = ""
    filename: str = ""
    revision: str | None = None
    sha256: str | None = None
    license: str = ""

    def __post_init__(self):
        if self.kind not in WEIGHT_KINDS:
            raise ValueError(f"weights kind must be one of {WEIGHT_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything downstream needs to know about an extractor, JSON-able.

    Attributes:
        name: the registry name.
        modality: ``audio`` or ``face``.
        dim: output feature dimension.
        sample_rate: input sample rate (audio extractors).
        frame_rate: output frames per second (audio: 1 / hop; face: the sampling rate of video frames).
        crop_size: input face crop side in pixels (face extractors).
        weights: where the weights come from.
        options: the builder's keyword arguments (layer choice, etc.), so the spec rebuilds it.
        description: one line for model cards and ``--help``.
    """

    name: str
    modality: str
    dim: int
    sample_rate: int | None = None
    frame_rate: float | None = None
    crop_size: int | None = None
    weights: WeightsSource = field(default_factory=WeightsSource)
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if self.modality not in ("audio", "face"):
            raise ValueError(f"modality must be 'audio' or 'face', got {self.modality!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractorSpec":
        d = dict(d)
        d["weights"] = WeightsSource(**d.get("weights", {}))
        return cls(**d)
