"""Detect-and-track: the face detector on keyframes (every k-th sampled frame, both sides of each shot cut, and where
the track is unsure), the main face's box interpolated between them.

How a clip's frames are processed (:func:`detect_and_track`):

1. **Shot cuts** (:func:`shot_cuts`): a frame starts a new shot when the colour histograms of
   most of its blocks (3 x 3) differ from the previous frame's by more than ``cut_threshold``
   (total variation distance, 0..1). The main face is chosen per shot and a box is never
   carried across a cut.
2. **Keyframes**: the detector runs on every ``detect_every``-th frame, the first and last
   frame of each shot.
3. **Tracking**: :func:`~lightning_emo.extractors.face_detect.track_main_face` links the
   keyframes' detections within each shot (the main face: large, consistent over time).
4. **Re-detection** (batched over all clips of a batch): between two consecutive keyframes the
   detector also runs on every frame in between when the face is found at one end only
   (it left, appeared or was occluded), when the two boxes overlap less than
   ``redetect_iou`` (fast motion), when either score is below ``redetect_score`` (a weak
   detection), or when the image inside an interpolated box no longer looks like the face at
   either end (intersection of the boxes' colour histograms below ``redetect_similarity``: an
   occlusion or a cut the shot detector missed). Tracking is re-run
   and this repeats (usually once) until every gap left is safe.
5. **Interpolation**: a frame between two keyframes of the same track gets the linearly
   interpolated box and the lower of the two scores; between keyframes without the face the
   frames stay masked (never zero-filled, never carried across a cut or an occlusion). Then the
   boxes are smoothed (``track_main_face``'s ``smooth``) within each track segment.

``detect_every=1`` is per-frame detection (the detector on every frame, nothing to
interpolate; shots still separate the tracks): the reference the benchmark and the tests
compare against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torchvision.ops import box_iou

from lightning_emo.extractors.face_boxes import Track, crop_boxes, smooth_boxes, track_main_face

__all__ = ["TrackingPolicy", "colour_histograms", "detect_and_track", "histogram_similarity", "interpolate_track",
           "shot_cuts"]


@dataclass(frozen=True)
class TrackingPolicy:
    """When the detector runs (see the module docstring); chosen by measurement (``scripts/bench/faces.py``).

    Args:
        detect_every: the detector runs on every ``detect_every``-th sampled frame (1: every frame,
            per-frame detection without cuts or interpolation).
        cut_threshold: block histogram distance (0..1) above which a block counts as changed; a
            frame with 3/4 of its blocks changed starts a new shot.
        redetect_score: re-detect between keyframes when either detection's probability is below it.
        redetect_iou: re-detect between keyframes whose boxes overlap less than this (IoU).
        redetect_similarity: re-detect when the colours inside an interpolated box match the face at
            both ends less than this (histogram intersection, 0..1; 0 disables the check).
    """

    detect_every: int = 5
    cut_threshold: float = 0.4
    redetect_score: float = 0.95
    redetect_iou: float = 0.3
    redetect_similarity: float = 0.75

    def __post_init__(self):
        problems = []
        if not isinstance(self.detect_every, int) or isinstance(self.detect_every, bool) or self.detect_every < 1:
            problems.append(f"detect_every must be an integer >= 1 (1: detect on every frame), got "
                            f"{self.detect_every!r}")
        for name, lo, hi in (("cut_threshold", 0.0, 1.0), ("redetect_score", 0.0, 1.0), ("redetect_iou", 0.0, 1.0),
                             ("redetect_similarity", 0.0, 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= float(v) <= hi:
                problems.append(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
        if problems:
            raise ValueError("face tracking: " + "; ".join(problems))

    @property
    def per_frame(self) -> bool:
        return self.detect_every == 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shot_cuts(frames: torch.Tensor, threshold: float, bins: int = 16, grid: int = 3, share: float = 0.75) -> list[int]:
    """Frames that start a new shot: ``frames (N, H, W, 3) uint8`` -> sorted indices ``t`` (``0 < t < N``) where
    most of the picture changed from frame ``t - 1`` to ``t``.

    Each frame is cut into ``grid x grid`` blocks; a block changed when the total variation
    distance (half the L1 distance, 0..1) between its ``bins``-bin colour histograms (per
    channel, averaged) in the two frames exceeds ``threshold``; a cut needs at least ``share``
    of the blocks changed. An occlusion or a face leaving changes a few blocks, a cut nearly all
    of them. Frames are subsampled to about 90 pixels on the short side first.
    """
    n = frames.shape[0]
    if n < 2:
        return []
    step = max(1, min(frames.shape[1], frames.shape[2]) // 90)
    small = frames[:, ::step, ::step]
    h, w = small.shape[1] // grid * grid, small.shape[2] // grid * grid
    # (N, grid, grid, pixels per block, 3) bin indices
    blocks = small[:, :h, :w].reshape(n, grid, h // grid, grid, w // grid, 3).permute(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, grid * grid, -1, 3).long() * bins // 256
    g = grid * grid
    offsets = ((torch.arange(n, device=small.device)[:, None, None, None] * g
                + torch.arange(g, device=small.device)[None, :, None, None]) * 3
               + torch.arange(3, device=small.device)) * bins
    hist = torch.bincount((blocks + offsets).flatten(), minlength=n * g * 3 * bins).view(n, g, 3, bins).float()
    hist /= blocks.shape[2]
    dist = 0.5 * (hist[1:] - hist[:-1]).abs().sum(-1).mean(-1)  # (N - 1, blocks)
    changed = (dist > threshold).float().mean(-1)
    return (torch.nonzero(changed >= share).flatten() + 1).tolist()


def colour_histograms(frames: torch.Tensor, boxes: torch.Tensor, index: Sequence[int], bins: int = 8,
                      size: int = 24) -> torch.Tensor:
    """Colour histograms of boxes: box ``i`` of ``boxes (K, 4)`` in ``frames[index[i]]``, resampled to
    ``size x size`` -> ``(K, 3, bins)``, each channel's summing to 1.

    The histogram intersection of two (:func:`histogram_similarity`) stays above 0.9 for one face
    over a second (expressions, small shifts: measured on real and drawn faces) and falls to
    about 0.25 when something else covers the box; grey-level correlation could not tell a
    changing expression (0.3) from an occluder (0.3).
    """
    patches = crop_boxes(frames, boxes.cpu(), size, index=index)  # (K, 3, s, s) in [0, 1]
    k = patches.shape[0]
    idx = (patches * (bins - 1e-6)).long().clamp_(0, bins - 1).cpu()
    offsets = (torch.arange(k)[:, None, None, None] * 3 + torch.arange(3)[None, :, None, None]) * bins
    return torch.bincount((idx + offsets).flatten(), minlength=k * 3 * bins).view(k, 3, bins).float() / (size * size)


def histogram_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Histogram intersection (0..1) of ``(K, 3, bins)`` histograms, averaged over the channels -> ``(K,)``."""
    return torch.minimum(a, b).sum(-1).mean(-1)


def _lerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    return a + (b - a) * w


@dataclass
class _Clip:
    """Tracking state of one clip: its frames, shots, the detections made so far (``None``: not looked at)."""

    frames: torch.Tensor
    shots: list[tuple[int, int]]
    dets: list[torch.Tensor | None]
    track: Track | None = None

    def looked(self) -> list[int]:
        return [t for t, d in enumerate(self.dets) if d is not None]


def _track_shots(clip: _Clip, tracking: dict[str, Any]) -> Track:
    """:func:`track_main_face` per shot over the frames looked at (others count as frames without a face),
    unsmoothed (boxes are smoothed once the gaps are filled)."""
    tracking = {**tracking, "smooth": 0}
    n = len(clip.dets)
    boxes, scores = torch.zeros(n, 4), torch.zeros(n)
    found, segment = torch.zeros(n, dtype=torch.bool), torch.full((n,), -1, dtype=torch.long)
    offset = 0
    for s, e in clip.shots:
        sub = [d if d is not None else torch.zeros(0, 5) for d in clip.dets[s:e]]
        tr = track_main_face(sub, **tracking)
        boxes[s:e], scores[s:e], found[s:e] = tr.boxes, tr.scores, tr.found
        seg = tr.segment if tr.segment is not None else torch.zeros(e - s, dtype=torch.long)
        segment[s:e] = torch.where(tr.found, seg + offset, torch.full_like(seg, -1))
        offset += int(seg.max()) + 1 if len(seg) else 1
    return Track(boxes, scores, found, segment)


def _gaps(clip: _Clip) -> list[tuple[int, int]]:
    """Consecutive looked-at frames ``(a, b)`` of the same shot with frames between them."""
    out = []
    for s, e in clip.shots:
        looked = [t for t in range(s, e) if clip.dets[t] is not None]
        out += [(a, b) for a, b in zip(looked, looked[1:]) if b - a > 1]
    return out


def _unsure(clip: _Clip, policy: TrackingPolicy) -> list[int]:
    """Every frame of the gaps that need the detector (see the module docstring, step 4).

    A whole gap at once rather than bisecting it: a gap holds at most ``detect_every - 1`` frames,
    and each detector call has a fixed cost (MTCNN's image pyramid), so one more round over all
    unsure gaps of a batch costs less than several rounds of middle frames."""
    tr = clip.track
    need, check = [], []
    for a, b in _gaps(clip):
        fa, fb = bool(tr.found[a]), bool(tr.found[b])
        if not fa and not fb:
            continue  # no face at either end: the frames between stay masked
        if fa != fb or tr.segment[a] != tr.segment[b] or min(float(tr.scores[a]), float(tr.scores[b])) < \
                policy.redetect_score or box_iou(tr.boxes[a:a + 1], tr.boxes[b:b + 1]).item() < policy.redetect_iou:
            need += range(a + 1, b)
        elif policy.redetect_similarity > 0:
            check.append((a, b))
    if check:
        # the image inside each interpolated box against the face at both ends of its gap
        mids, ends_a, ends_b, boxes = [], [], [], []
        for a, b in check:
            for t in range(a + 1, b):
                mids.append(t)
                ends_a.append(a)
                ends_b.append(b)
                boxes.append(_lerp(tr.boxes[a], tr.boxes[b], (t - a) / (b - a)))
        keys = sorted({a for a, _ in check} | {b for _, b in check})
        at_key = dict(zip(keys, colour_histograms(clip.frames, tr.boxes[keys], keys)))
        mid = colour_histograms(clip.frames, torch.stack(boxes), mids)
        sim_a = histogram_similarity(mid, torch.stack([at_key[a] for a in ends_a]))
        sim_b = histogram_similarity(mid, torch.stack([at_key[b] for b in ends_b]))
        bad = torch.maximum(sim_a, sim_b) < policy.redetect_similarity
        for a, b in sorted({(a, b) for a, b, x in zip(ends_a, ends_b, bad.tolist()) if x}):
            need += range(a + 1, b)
    return sorted(set(need))


def interpolate_track(track: Track, looked: Sequence[int], shots: Sequence[tuple[int, int]]) -> Track:
    """Fill the frames between looked-at frames of the same track segment (linear boxes, the lower score)."""
    boxes, scores, found = track.boxes.clone(), track.scores.clone(), track.found.clone()
    segment = track.segment.clone() if track.segment is not None else None
    looked_set = set(looked)
    for s, e in shots:
        keys = [t for t in range(s, e) if t in looked_set]
        for a, b in zip(keys, keys[1:]):
            if b - a < 2 or not (track.found[a] and track.found[b]):
                continue
            if segment is not None and track.segment[a] != track.segment[b]:
                continue
            for t in range(a + 1, b):
                w = (t - a) / (b - a)
                boxes[t] = _lerp(track.boxes[a], track.boxes[b], w)
                scores[t] = torch.minimum(track.scores[a], track.scores[b])
                found[t] = True
                if segment is not None:
                    segment[t] = track.segment[a]
    # frames not looked at and not interpolated: no face
    for t in range(len(found)):
        if t not in looked_set and not found[t]:
            boxes[t], scores[t] = 0.0, 0.0
    return Track(boxes, scores, found, segment)


def detect_and_track(
    detect: Callable[[torch.Tensor], list[torch.Tensor]],
    clips: Sequence[torch.Tensor],
    policy: TrackingPolicy,
    tracking: dict[str, Any] | None = None,
    max_rounds: int = 8,
) -> list[Track]:
    """The main face of each clip (see the module docstring).

    Args:
        detect: frames ``(M, H, W, 3) uint8`` -> M tensors ``(K_i, 5)`` (``FaceDetector.detect``).
        clips: ``(N_i, H_i, W_i, 3)`` uint8 frames per clip; the frames of all clips that share a
            size go through ``detect`` together in each round.
        policy: when to detect.
        tracking: keyword arguments of :func:`track_main_face`.

    Returns:
        One :class:`~lightning_emo.extractors.face_detect.Track` per clip, ``N_i`` frames long.
    """
    tracking = dict(tracking or {})
    states: list[_Clip] = []
    requests: list[list[int]] = []
    for frames in clips:
        n = len(frames)
        cuts = shot_cuts(frames, policy.cut_threshold) if n > 1 else []
        bounds = [0] + cuts + [n]
        shots = [(s, e) for s, e in zip(bounds, bounds[1:]) if e > s]
        keys = set(range(0, n, policy.detect_every))
        for s, e in shots:
            keys |= {s, e - 1}
        states.append(_Clip(frames, shots, [None] * n))
        requests.append(sorted(keys))
    for _ in range(max_rounds):
        _detect_requested(detect, states, requests)
        requests = []
        for st in states:
            st.track = _track_shots(st, tracking)
            requests.append(_unsure(st, policy))
        if not any(requests):
            break
    smooth = int(tracking.get("smooth", 2))
    out = []
    for st in states:
        tr = interpolate_track(st.track, st.looked(), st.shots)
        out.append(Track(smooth_boxes(tr.boxes, tr.found, tr.segment, smooth), tr.scores, tr.found, tr.segment))
    return out


def _detect_requested(detect, states: list[_Clip], requests: list[list[int]]) -> None:
    """Run ``detect`` on the requested frames, clips of one frame size together, and record the detections."""
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, (st, req) in enumerate(zip(states, requests)):
        for t in req:
            if st.dets[t] is None:
                by_size.setdefault(tuple(st.frames.shape[1:3]), []).append((i, t))
    for items in by_size.values():
        frames = torch.stack([states[i].frames[t] for i, t in items])
        for (i, t), d in zip(items, detect(frames)):
            states[i].dets[t] = d
