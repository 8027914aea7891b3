"""What every frozen feature extractor shares: its spec, where its weights come from, the registry.

An extractor is an ``nn.Module`` with a :class:`ExtractorSpec`; its ``forward`` maps a padded
batch to a padded batch of feature sequences:

* audio (``spec.modality == "audio"``): ``(waveform (B, S) float32 at spec.sample_rate,
  lengths (B,) samples) -> (features (B, T, D), lengths (B,) frames)``
* face (``spec.modality == "face"``): ``(crops (B, N, 3, H, W) float32 in [0, 1] with
  H = W = spec.crop_size, lengths (B,) frames) -> (features (B, N, D), lengths (B,))``

Extractors are frozen (``eval()``, ``requires_grad_(False)``) by :func:`build_extractor`
unless fine-tuning asks otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_emo.registry import Registry

EXTRACTORS: Registry = Registry("extractor")
# Which module registers which extractors: a recognizer that uses MFCC never imports the face stack
# (torchvision, facenet-pytorch). tests/test_extractors_audio.py checks this table against the modules.
for _module, _names in {
    "audio": ("mfcc", "compare"),
    "ssl": ("wav2vec2_base", "wav2vec2_large", "wav2vec2_asr_base", "hubert_base", "hubert_large", "wavlm_base",
            "wavlm_base_plus", "wavlm_large"),
    "speech_dnn": ("speech_dnn", "speech_bottleneck"),
    "face": ("hog", "facenet_vggface2", "facenet_casia", "timm"),
    "face_cnn": ("face_cnn",),
}.items():
    EXTRACTORS.add_lazy(f"lightning_emo.extractors.{_module}", _names)

WEIGHT_KINDS = ("none", "file", "hf-hub", "torchaudio", "facenet", "timm")


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine; the message says where to put them."""


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


class Extractor(nn.Module):
    """Base class: holds the spec and checks inputs against it."""

    spec: ExtractorSpec

    def __init__(self, spec: ExtractorSpec):
        super().__init__()
        self.spec = spec

    def check_input(self, x: torch.Tensor, lengths: torch.Tensor, sample_rate: int | None = None) -> None:
        """Fail loudly on a batch that does not fit the spec (shape, sample rate, crop size)."""
        name = self.spec.name
        if self.spec.modality == "audio":
            if x.dim() != 2:
                raise ValueError(f"extractor {name!r} expects waveforms (B, S), got shape {tuple(x.shape)}")
            if sample_rate is not None and sample_rate != self.spec.sample_rate:
                raise ValueError(f"extractor {name!r} expects audio at {self.spec.sample_rate} Hz, got {sample_rate} Hz")
        else:
            size = self.spec.crop_size
            if x.dim() != 5 or x.shape[2] != 3 or (size and tuple(x.shape[-2:]) != (size, size)):
                raise ValueError(f"extractor {name!r} expects face crops (B, N, 3, {size}, {size}), "
                                 f"got shape {tuple(x.shape)}")
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"extractor {name!r}: lengths must have shape ({x.shape[0]},), got {tuple(lengths.shape)}")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def build_extractor(name: str, frozen: bool = True, **options) -> Extractor:
    """Build a registered extractor by name; frozen (eval mode, no gradients) by default."""
    extractor = EXTRACTORS.build(name, **options)
    if frozen:
        extractor.eval().requires_grad_(False)
    return extractor


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_hub_checkpoint(filename: str) -> Path:
    """Where torch.hub (and so torchaudio and facenet-pytorch) caches a downloaded checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weights(
    source: WeightsSource,
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Find the weight file for ``source`` on this machine.

    Order: an explicit ``path``; for ``hf-hub``/``timm`` sources, huggingface_hub's cache
    (downloading unless offline or ``local_files_only``); for ``torchaudio``/``facenet``
    sources, torch.hub's checkpoint cache. A missing file raises
    :class:`WeightsNotFoundError` saying where to put it.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"weights file {p} not found")
        _check_digest(p, source)
        return p
    if source.kind == "none":
        raise ValueError("this extractor has no weights")
    if source.kind == "file":
        raise WeightsNotFoundError(f"{source.uri or 'this extractor'} loads weights from a local file: pass its path "
                                   f"(weights=PATH / --weights PATH)")
    if source.kind in ("hf-hub", "timm"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            p = Path(hf_hub_download(source.uri, source.filename, revision=source.revision, cache_dir=cache_dir,
                                     local_files_only=bool(local_files_only)))
        except (LocalEntryNotFoundError, OSError) as e:
            raise WeightsNotFoundError(
                f"weights {source.uri}/{source.filename}@{source.revision or 'main'} are not in the Hugging Face cache "
                f"and cannot be downloaded ({type(e).__name__}). Download them where there is a network "
                f"(huggingface-cli download {source.uri} {source.filename} --revision {source.revision or 'main'}) "
                f"and copy the cache, or pass a local file with weights=PATH.") from None
        _check_digest(p, source)
        return p
    # torchaudio / facenet: torch.hub's checkpoint cache, where their own loaders put files.
    p = torch_hub_checkpoint(source.filename)
    if not p.is_file():
        raise WeightsNotFoundError(
            f"weights {source.filename} ({source.kind} {source.uri}) not found at {p}. Copy the file there "
            f"(or set TORCH_HOME), or pass a local file with weights=PATH.")
    _check_digest(p, source)
    return p


def _check_digest(p: Path, source: WeightsSource) -> None:
    if source.sha256 and sha256_file(p) != source.sha256:
        raise ValueError(f"weights file {p} does not match the expected sha256 {source.sha256}")
