"""Frozen extractors on raw-clip batches, without Lightning: what ``extract`` and inference share.

:class:`FeatureRunner` turns a raw-clip batch (:mod:`lightning_emo.data.clips`) into one
:class:`ClipFeatures` per clip: audio waveforms -> features; frames -> face detector crops and
mask -> features. ``lightning-emo extract`` runs it inside a Lightning predict loop
(:class:`~lightning_emo.extractors.extract.ExtractionModule`); :class:`~lightning_emo.hub.Recognizer`
calls it directly, so inference never imports Lightning.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from lightning_emo.data.store import MISSING_NO_AUDIO, MISSING_NO_FRAMES, MISSING_NO_VIDEO
from lightning_emo.extractors.base import EXTRACTORS, Extractor, ExtractorSpec, build_extractor

# Modules whose import registers extractors (imported on demand: see lightning_emo.extractors.base).
EXTRACTOR_MODULES = ("audio", "ssl", "speech_dnn", "face", "face_cnn")


def register_extractors() -> None:
    """Import every extractor module so that :data:`EXTRACTORS` has all builders (listing them does this too;
    building one by name imports only its module)."""
    EXTRACTORS.names()


def builder_accepts(builder, name: str) -> bool:
    """Whether an extractor builder takes keyword ``name`` (directly or through ``**kwargs``)."""
    params = inspect.signature(builder).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_for_extraction(
    extractor: str,
    options: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    fps: float | None = None,
) -> Extractor:
    """Build a registered extractor; ``weights`` and ``fps`` are passed when its builder takes them."""
    builder = EXTRACTORS.get(extractor)
    options = dict(options or {})
    if weights is not None:
        if not builder_accepts(builder, "weights"):
            raise ValueError(f"extractor {extractor!r} takes no weights file (--weights)")
        options["weights"] = str(weights)
    if fps is not None and "fps" not in options and builder_accepts(builder, "fps"):
        options["fps"] = float(fps)
    return build_extractor(extractor, **options)


@dataclass
class ClipFeatures:
    """One clip's extraction result: ``features (T, D)`` float32 and ``mask (T,)`` bool, or a ``missing`` reason."""

    clip_id: str
    features: np.ndarray | None = None
    mask: np.ndarray | None = None
    missing: str | None = None


class FeatureRunner(torch.nn.Module):
    """A frozen extractor (and, for faces, the face detector) applied to raw-clip batches.

    Args:
        extractor: a built, frozen extractor.
        detector: the face detector (face extractors only), e.g. ``build_face_detector("mtcnn")``.

    ``runner(batch)`` returns a list of :class:`ClipFeatures` on the CPU (audio: ``waveform
    (B, S)`` -> ``(T, D)`` at the extractor's frame rate, mask all True; face: ``frames`` -> crops
    ``(B, N, 3, S, S)`` + face mask ``(B, N)`` -> ``(N, D)`` with the face mask; frames without a
    face hold zeros). Face detection always runs in full precision: box regression under
    fp16/bf16 moves the crops.
    """

    def __init__(self, extractor: Extractor, detector: torch.nn.Module | None = None):
        super().__init__()
        self.extractor = extractor.eval().requires_grad_(False)
        self.spec: ExtractorSpec = extractor.spec
        if self.spec.modality == "face" and detector is None:
            raise ValueError(f"face extractor {self.spec.name!r} needs a face detector")
        self.detector = detector.eval() if detector is not None else None
        params = inspect.signature(extractor.forward).parameters
        self._takes_mask = "mask" in params
        self._takes_rate = "sample_rate" in params

    def forward(self, batch: dict[str, Any]) -> list[ClipFeatures]:
        if self.spec.modality == "audio":
            return self._audio(batch)
        return self._face(batch)

    def _audio(self, batch: dict[str, Any]) -> list[ClipFeatures]:
        ids = list(batch["clip_id"])
        wave, lengths = batch["waveform"], batch["waveform_lengths"].long()
        has_audio = _flag(batch, "has_audio", lengths > 0)
        out = [ClipFeatures(cid, missing=MISSING_NO_AUDIO) for cid in ids]
        keep = torch.nonzero(has_audio & (lengths > 0)).flatten()
        for i in torch.nonzero(has_audio & (lengths == 0)).flatten().tolist():
            out[i].missing = MISSING_NO_FRAMES  # an audio track with nothing in it
        if len(keep):
            sub = wave[keep, :int(lengths[keep].max())]
            kwargs = {"sample_rate": self.spec.sample_rate} if self._takes_rate else {}
            feats, flen = self.extractor(sub.float(), lengths[keep], **kwargs)
            feats, flen = feats.float().cpu().numpy(), flen.cpu().tolist()
            for j, i in enumerate(keep.tolist()):
                n = int(flen[j])
                out[i].missing = None if n > 0 else MISSING_NO_FRAMES
                out[i].features, out[i].mask = feats[j, :n], np.ones(n, bool)
        return out

    def _face(self, batch: dict[str, Any]) -> list[ClipFeatures]:
        ids = list(batch["clip_id"])
        frames, lengths = batch["frames"], batch["frame_lengths"].long()
        has_video = _flag(batch, "has_video", lengths > 0)
        out = [ClipFeatures(cid, missing=MISSING_NO_FRAMES if has else MISSING_NO_VIDEO)
               for cid, has in zip(ids, has_video.tolist())]
        keep = torch.nonzero(has_video & (lengths > 0)).flatten().tolist()
        if not keep:
            return out
        clips = [frames[i][:int(lengths[i])] for i in keep]
        sub_len = lengths[keep]
        with torch.autocast(clips[0].device.type, enabled=False):
            faces = self.detector.crop_batch(clips, sub_len, crop_size=self.spec.crop_size)
        kwargs = {"mask": faces.mask} if self._takes_mask else {}
        feats, flen = self.extractor(faces.crops, sub_len.to(faces.crops.device), **kwargs)
        mask = faces.mask.clone()
        feats = feats.float().masked_fill(~mask[..., None], 0.0)
        feats, mask, flen = feats.cpu().numpy(), mask.cpu().numpy(), flen.cpu().tolist()
        for j, i in enumerate(keep):
            n = int(flen[j])
            out[i] = ClipFeatures(ids[i], feats[j, :n], mask[j, :n], None if n > 0 else MISSING_NO_FRAMES)
        return out


def _flag(batch: Mapping[str, Any], key: str, default: torch.Tensor) -> torch.Tensor:
    value = batch.get(key)
    if value is None:
        return default
    return torch.as_tensor(value, dtype=torch.bool, device=default.device)


__all__ = ["ClipFeatures", "FeatureRunner", "MISSING_NO_AUDIO", "MISSING_NO_FRAMES", "MISSING_NO_VIDEO",
           "build_for_extraction", "register_extractors"]
