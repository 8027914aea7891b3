"""Face detection and tracking: video frames -> one tracked face per clip as square crops plus a per-frame face mask.

Two detectors are registered in :data:`FACE_DETECTORS`:

* ``mtcnn``: facenet-pytorch's MTCNN (weights ship inside the package), run on a whole chunk of
  equally sized frames per call, followed by :func:`track_main_face` which keeps the clip's main
  face (large and consistent over time), smooths its box and adds a margin.
* ``none``: the frames already are face crops (e.g. a corpus of cropped faces, or the synthetic
  corpus). Each frame is centre-cropped to a square and resized; a frame is marked as missing
  only when it is blank (see :class:`NoDetector`).

Every detector maps ``frames (N, H, W, 3) uint8 RGB`` to :class:`FaceCrops`:
``crops (N, 3, S, S) float32 in [0, 1]``, ``mask (N,) bool`` (False: no face found; the crop is
then zeros and must not be used), ``boxes (N, 4)`` and ``scores (N,)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_emo.errors import ConfigError, UserError
from lightning_emo.extractors.face_boxes import Track, crop_boxes, smooth_boxes, square_boxes, track_main_face
from lightning_emo.extractors.face_track import TrackingPolicy, detect_and_track
from lightning_emo.registry import Registry

__all__ = ["FACE_DETECTORS", "FaceCrops", "FaceDetector", "MTCNNDetector", "NoDetector", "build_face_detector",
           "Track", "crop_boxes", "smooth_boxes", "square_boxes", "track_main_face"]

FACE_DETECTORS: Registry = Registry("face detector")


@dataclass
class FaceCrops:
    """Face crops of one clip (shapes below) or of a padded batch (one more leading ``B`` dim).

    Attributes:
        crops: ``(N, 3, S, S)`` float32 in [0, 1]; zeros where ``mask`` is False.
        mask: ``(N,)`` bool, True where a face was found. Downstream code must mask the other frames.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` of the square crop in frame pixels; zeros where
            ``mask`` is False.
        scores: ``(N,)`` float32 detection probability of the kept face; 0 where ``mask`` is False.
    """

    crops: torch.Tensor
    mask: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return self.mask.shape[-1]


def _as_frames(frames) -> torch.Tensor:
    """Check and convert frames to a uint8 tensor ``(N, H, W, 3)``."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        desc = (f"{type(frames).__name__} {tuple(frames.shape)} {frames.dtype}" if hasattr(frames, "shape")
                else type(frames).__name__)
        raise ValueError(f"face detection expects RGB frames as a uint8 tensor (N, H, W, 3), got {desc}")
    return frames


# ----------------------------------------------------------------------------------------------
# geometry


class FaceDetector(nn.Module):
    """Base class: frames -> :class:`FaceCrops` of the clip's main face.

    Subclasses implement :meth:`detect`; :meth:`forward` runs detection, tracking and cropping.

    Args:
        crop_size: default output side ``S`` (the extractor's ``spec.crop_size`` is passed per call).
        margin: relative margin around the face box (side ``max(w, h) * (1 + margin)``).
        batch_size: frames per detector call and per cropping step.
        tracking: keyword arguments of :func:`track_main_face`.
    """

    def __init__(self, crop_size: int = 160, margin: float = 0.2, batch_size: int = 32, **tracking):
        super().__init__()
        if crop_size <= 0 or batch_size <= 0 or margin < 0:
            raise ValueError(f"face detector expects crop_size > 0, batch_size > 0, margin >= 0, got "
                             f"{crop_size}, {batch_size}, {margin}")
        known = [k for k in inspect.signature(track_main_face).parameters if k != "detections"]
        unknown = sorted(set(tracking) - set(known))
        if unknown:
            own = [k for k in inspect.signature(type(self).__init__).parameters if k not in ("self", "tracking")]
            raise ValueError(f"{type(self).__name__}: unknown option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(own + known)}")
        self.crop_size = int(crop_size)
        self.margin = float(margin)
        self.batch_size = int(batch_size)
        self.tracking = dict(tracking)
        # when the detector runs (lightning_emo.extractors.face_track); None: on every frame, without
        # shot cuts (detectors whose frames are already crops)
        self.policy = None

    def cache_options(self) -> dict[str, Any]:
        """The settings that change the crops beyond the options a user gave (recorded in feature stores' keys)."""
        return {}

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def detect(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """All faces per frame: ``frames (N, H, W, 3) uint8`` -> N tensors ``(K_i, 5)`` ``x1, y1, x2, y2, score``."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, crop_size: int | None = None) -> FaceCrops:
        """One clip: ``frames (N, H, W, 3) uint8`` -> :class:`FaceCrops` with crops ``(N, 3, S, S)``."""
        frames = _as_frames(frames)
        if self.policy is not None:
            return self._from_track(frames, self._tracks([frames])[0], crop_size or self.crop_size)
        return self._from_detections(frames, self.detect(frames), crop_size or self.crop_size)

    def _tracks(self, clips: list[torch.Tensor]) -> list[Track]:
        return detect_and_track(self.detect, clips, self.policy, self.tracking)

    def _from_detections(self, frames: torch.Tensor, detections: list[torch.Tensor], size: int) -> FaceCrops:
        return self._from_track(frames, track_main_face(detections, **self.tracking), size)

    def _from_track(self, frames: torch.Tensor, track: Track, size: int) -> FaceCrops:
        n, h, w = frames.shape[:3]
        crops = torch.zeros(n, 3, size, size, device=frames.device)
        squares = torch.zeros(n, 4)
        idx = torch.nonzero(track.found).flatten()
        if len(idx):
            squares[idx] = square_boxes(track.boxes[idx], self.margin, h, w)
            for start in range(0, len(idx), self.batch_size):
                sel = idx[start:start + self.batch_size]
                crops[sel.to(frames.device)] = crop_boxes(frames, squares[sel], size, index=sel.tolist())
        return FaceCrops(crops, track.found.to(frames.device), squares.to(frames.device),
                         track.scores.to(frames.device))

    @torch.no_grad()
    def crop_batch(self, frames, lengths: torch.Tensor | Sequence[int] | None = None,
                   crop_size: int | None = None) -> FaceCrops:
        """A batch of clips -> padded :class:`FaceCrops` (``crops (B, N, 3, S, S)``, ``mask (B, N)``).

        Args:
            frames: a padded ``(B, N, H, W, 3)`` uint8 tensor or a list of ``(N_i, H_i, W_i, 3)``.
            lengths: ``(B,)`` valid frames per clip (default: all ``N`` / ``N_i``).

        Frames of all clips that share a frame size go through the detector together, in chunks
        of ``batch_size``; tracking runs per clip. Padding frames get ``mask`` False.
        """
        if isinstance(frames, torch.Tensor):
            if frames.dim() != 5:
                raise ValueError(f"crop_batch expects frames (B, N, H, W, 3) or a list of (N, H, W, 3), "
                                 f"got shape {tuple(frames.shape)}")
            clips = list(frames.unbind(0))
        else:
            clips = list(frames)
        if lengths is None:
            lengths = [len(c) for c in clips]
        lengths = [int(v) for v in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
        if len(lengths) != len(clips):
            raise ValueError(f"crop_batch: {len(clips)} clips but {len(lengths)} lengths")
        clips = [_as_frames(c)[:n] for c, n in zip(clips, lengths)]
        size = crop_size or self.crop_size
        if self.policy is not None:
            results = [self._from_track(c, t, size) for c, t in zip(clips, self._tracks(clips))]
        else:
            per_clip = self._detect_clips(clips)
            results = [self._from_detections(c, d, size) for c, d in zip(clips, per_clip)]
        b, n_max = len(clips), max(lengths, default=0)
        device = clips[0].device if clips else torch.device("cpu")
        out = FaceCrops(torch.zeros(b, n_max, 3, size, size, device=device),
                        torch.zeros(b, n_max, dtype=torch.bool, device=device),
                        torch.zeros(b, n_max, 4, device=device), torch.zeros(b, n_max, device=device))
        for i, r in enumerate(results):
            k = len(r)
            out.crops[i, :k], out.mask[i, :k], out.boxes[i, :k], out.scores[i, :k] = r.crops, r.mask, r.boxes, r.scores
        return out

    def _detect_clips(self, clips: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Detect over several clips at once where their frames share a size."""
        out: list[list[torch.Tensor] | None] = [None] * len(clips)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(clips):
            by_size.setdefault(tuple(c.shape[1:3]), []).append(i)
        for ids in by_size.values():
            dets = self.detect(torch.cat([clips[i] for i in ids]))
            start = 0
            for i in ids:
                out[i] = dets[start:start + len(clips[i])]
                start += len(clips[i])
        return out  # type: ignore[return-value]


def _downscale(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, h, w, 3)`` uint8, anti-aliased bilinear.

    On the CPU PyTorch resizes uint8 channels-last images directly (about 20x faster than
    through float32 and no float copy of the frames: 0.8 vs 17 ms per 720p frame on one core;
    values within 1 grey level). Elsewhere a few frames at a time go through float32 (a float
    copy of 32 frames of 720p would be 350 MB).
    """
    if frames.device.type == "cpu":
        return F.interpolate(frames.permute(0, 3, 1, 2), size=size, mode="bilinear", antialias=True,
                             align_corners=False).permute(0, 2, 3, 1).contiguous()
    return torch.cat([
        F.interpolate(part.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", antialias=True,
                      align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
        for part in frames.split(4)]).permute(0, 2, 3, 1).contiguous()


@FACE_DETECTORS.register("mtcnn")
class MTCNNDetector(FaceDetector):
    """facenet-pytorch's MTCNN on batches of frames, then :func:`track_main_face`.

    All faces are returned per frame (as facenet-pytorch's ``keep_all=True``), the tracker picks
    the main one, so ``select_largest`` has no role here.

    Args:
        min_face_size: smallest face side searched for, in pixels of the detection image.
        thresholds: P-, R- and O-net thresholds (facenet-pytorch's defaults).
        factor: scale step of the image pyramid.
        min_score: detections whose final probability is below it are dropped (the O-net
            threshold lets through some non-faces; 0.9 keeps nearly all real ones).
        detect_size: frames whose longer side exceeds it are scaled down to it for detection
            (boxes are mapped back; crops come from the full-resolution frames). ``None``: never.
        detect_every, cut_threshold, redetect_score, redetect_iou, redetect_similarity: when the
            detector runs (:class:`~lightning_emo.extractors.face_track.TrackingPolicy`; ``None``:
            its default). ``detect_every=1`` detects on every frame.
        crop_size, margin, batch_size, tracking: see :class:`FaceDetector`.
    """

    def __init__(self, crop_size: int = 160, margin: float = 0.2, batch_size: int = 32,
                 min_face_size: int = 40, thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 min_score: float = 0.9, detect_size: int | None = 640, detect_every: int | None = None,
                 cut_threshold: float | None = None, redetect_score: float | None = None,
                 redetect_iou: float | None = None, redetect_similarity: float | None = None, **tracking):
        super().__init__(crop_size=crop_size, margin=margin, batch_size=batch_size, **tracking)
        from facenet_pytorch import MTCNN

        given = {"detect_every": detect_every, "cut_threshold": cut_threshold, "redetect_score": redetect_score,
                 "redetect_iou": redetect_iou, "redetect_similarity": redetect_similarity}
        self.policy = TrackingPolicy(**{k: v for k, v in given.items() if v is not None})
        if detect_size is not None and (not isinstance(detect_size, int) or isinstance(detect_size, bool)
                                        or detect_size < 32):
            raise ValueError(f"MTCNN detect_size must be an integer >= 32 (pixels of the longer side) or None "
                             f"(detect at full resolution), got {detect_size!r}")

        if len(thresholds) != 3:
            raise ValueError(f"MTCNN expects three thresholds (P-, R-, O-net), got {list(thresholds)}")
        if not int(min_face_size) >= 12 or not 0 < float(factor) < 1:  # MTCNN's P-net sees 12-pixel windows
            raise ValueError(f"MTCNN expects min_face_size >= 12 pixels and 0 < factor < 1, got {min_face_size}, "
                             f"{factor}")
        self.min_face_size = int(min_face_size)
        self.thresholds = [float(t) for t in thresholds]
        self.factor = float(factor)
        self.min_score = float(min_score)
        self.detect_size = detect_size
        # the P/R/O-net weights are files inside the facenet-pytorch package (no download)
        self.mtcnn = MTCNN(keep_all=True, select_largest=False, min_face_size=self.min_face_size,
                           thresholds=self.thresholds, factor=self.factor).eval().requires_grad_(False)

    def cache_options(self) -> dict[str, Any]:
        return {"detect_size": self.detect_size, **self.policy.to_dict()}

    @torch.no_grad()
    def detect(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """``frames (N, H, W, 3) uint8`` -> N tensors ``(K_i, 5)`` in frame pixels, best score first."""
        from facenet_pytorch.models.utils.detect_face import detect_face

        frames = _as_frames(frames)
        n, h, w = frames.shape[:3]
        device = self.device
        scale = 1.0
        if self.detect_size and max(h, w) > self.detect_size:
            scale = self.detect_size / max(h, w)
        out: list[torch.Tensor] = []
        if min(h, w) * scale < self.min_face_size:
            # smaller than the smallest face searched for: MTCNN's scale pyramid would be empty (and its
            # torch.cat of no scales fails); no face of that size fits, so none is found
            return [torch.zeros((0, 5), dtype=torch.float32) for _ in range(n)]
        for start in range(0, n, self.batch_size):
            chunk = frames[start:start + self.batch_size].to(device)
            if scale != 1.0:
                chunk = _downscale(chunk, (max(1, round(h * scale)), max(1, round(w * scale))))
            # one call for the whole chunk: MTCNN batches equally sized frames through its cascade
            batch_boxes, _ = detect_face(chunk, self.min_face_size, self.mtcnn.pnet, self.mtcnn.rnet,
                                         self.mtcnn.onet, self.thresholds, self.factor, device)
            for b in batch_boxes:
                b = torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(-1, 5))
                b = b[b[:, 4] >= self.min_score]
                b[:, :4] /= scale
                out.append(b[torch.argsort(b[:, 4], descending=True, stable=True)])
        return out


@FACE_DETECTORS.register("none")
class NoDetector(FaceDetector):
    """The frames already are face crops: centre-crop each frame to a square and resize it.

    Rule for missing faces: a frame is blank, so ``mask`` False, when the standard deviation of its
    grey levels (0..255, luma ``0.299 R + 0.587 G + 0.114 B``) is below ``blank_std`` (default 2.0,
    i.e. near-uniform: an all-black or all-grey frame, as video padding or a lost signal gives,
    survives video compression with a deviation well under 1). Every other frame counts as a face
    with score 1.

    Args:
        blank_std: threshold on the grey-level standard deviation.
        crop_size, batch_size: see :class:`FaceDetector` (no margin: the frame is the crop).
    """

    def __init__(self, crop_size: int = 160, batch_size: int = 32, blank_std: float = 2.0, margin: float = 0.0):
        super().__init__(crop_size=crop_size, margin=margin, batch_size=batch_size)
        self.blank_std = float(blank_std)

    def is_blank(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames (N, H, W, 3) uint8`` -> ``(N,)`` bool, True for near-uniform frames."""
        weights = torch.tensor([0.299, 0.587, 0.114], device=frames.device)
        gray = (frames.float() * weights).sum(-1)
        return gray.flatten(1).std(dim=1, correction=0) < self.blank_std

    def detect(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """The centred square of every non-blank frame as its one detection (score 1)."""
        frames = _as_frames(frames)
        n, h, w = frames.shape[:3]
        side = min(h, w)
        box = torch.tensor([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2, 1.0])
        blank = torch.cat([self.is_blank(frames[s:s + self.batch_size]) for s in range(0, n, self.batch_size)]
                          ) if n else torch.zeros(0, dtype=torch.bool)
        return [box[None].clone() if not b else torch.zeros(0, 5) for b in blank.cpu().tolist()]

    def _from_detections(self, frames: torch.Tensor, detections: list[torch.Tensor], size: int) -> FaceCrops:
        # no tracking: each frame is its own crop
        n = frames.shape[0]
        found = torch.tensor([len(d) > 0 for d in detections], dtype=torch.bool)
        boxes = torch.stack([d[0, :4] if len(d) else torch.zeros(4) for d in detections]) if n else torch.zeros(0, 4)
        crops = torch.zeros(n, 3, size, size, device=frames.device)
        idx = torch.nonzero(found).flatten()
        for start in range(0, len(idx), self.batch_size):
            sel = idx[start:start + self.batch_size]
            crops[sel.to(frames.device)] = crop_boxes(frames, boxes[sel], size, index=sel.tolist())
        return FaceCrops(crops, found.to(frames.device), boxes.to(frames.device), found.float().to(frames.device))


def build_face_detector(name: str = "mtcnn", **options) -> FaceDetector:
    """Build a registered face detector (``mtcnn`` or ``none``) in eval mode.

    An option it does not take, or a value it refuses, is a :class:`~lightning_emo.errors.ConfigError`
    naming the detector and the options given.
    """
    builder = FACE_DETECTORS.get(name)
    try:
        return builder(**options).eval()
    except (ValueError, TypeError) as e:
        if isinstance(e, UserError) or (isinstance(e, TypeError) and "keyword argument" not in str(e)):
            raise  # a TypeError other than an unknown option is a bug: keep its traceback
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ConfigError(f"face detector {name!r} ({given}): {e}") from e
