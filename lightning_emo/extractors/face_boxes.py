"""Face boxes over time: squaring and cropping boxes, choosing and smoothing a clip's main-face track.

The geometry shared by per-frame detection (:mod:`lightning_emo.extractors.face_detect`) and
detect-and-track (:mod:`lightning_emo.extractors.face_track`); it knows no detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torchvision.ops import box_iou, roi_align

__all__ = ["Track", "crop_boxes", "smooth_boxes", "square_boxes", "track_main_face"]


def square_boxes(boxes: torch.Tensor, margin: float, height: int, width: int) -> torch.Tensor:
    """Turn face boxes into square crop boxes with a margin, moved inside the frame where they fit.

    Args:
        boxes: ``(K, 4)`` ``x1, y1, x2, y2``.
        margin: relative margin: the square's side is ``max(w, h) * (1 + margin)``.
        height, width: the frame size.

    Returns:
        ``(K, 4)`` square boxes. A square larger than the frame stays centred on the face (the
        part outside the frame is cropped as zeros).
    """
    boxes = boxes.float()
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clamp_min(1.0) * (1.0 + margin)
    x1 = cx - side / 2
    y1 = cy - side / 2
    # shift (not shrink) a square that sticks out of the frame back inside, when it fits
    fits_x = side <= width
    fits_y = side <= height
    x1 = torch.where(fits_x, x1.clamp(min=0.0).minimum(width - side), x1)
    y1 = torch.where(fits_y, y1.clamp(min=0.0).minimum(height - side), y1)
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def crop_boxes(frames: torch.Tensor, boxes: torch.Tensor, size: int,
               index: Sequence[int] | None = None) -> torch.Tensor:
    """Crop and resize one box per frame with area-averaging bilinear sampling (``roi_align``).

    Args:
        frames: ``(N, H, W, 3)`` uint8.
        boxes: ``(K, 4)`` ``x1, y1, x2, y2`` in pixel coordinates (pixel ``i`` covers ``[i, i+1)``).
        size: output side ``S``.
        index: box ``i`` is cut from ``frames[index[i]]`` (default: from ``frames[i]``, ``K = N``);
            selecting frames this way copies no whole frame.

    Returns:
        ``(K, 3, S, S)`` float32 in [0, 1]; parts of a box outside the frame are zeros.

    Only the pixels a box's samples can touch (the box and 2 pixels around it, within the frame)
    are converted to float, box by box: converting whole 720p frames first would cost ~11 MB of
    float32 per frame (the peak memory of a timeline), for the same values.
    """
    h, w = frames.shape[1:3]
    index = list(range(len(boxes))) if index is None else [int(i) for i in index]
    out = torch.zeros((len(boxes), 3, size, size), dtype=torch.float32, device=frames.device)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        c0, r0 = min(max(math.floor(x1) - 2, 0), w), min(max(math.floor(y1) - 2, 0), h)
        c1, r1 = max(min(math.ceil(x2) + 2, w), c0), max(min(math.ceil(y2) + 2, h), r0)
        if c1 == c0 or r1 == r0:
            continue  # the box lies outside the frame
        region = frames[index[i], r0:r1, c0:c1].permute(2, 0, 1)[None].float().div_(255.0)
        roi = torch.tensor([[0.0, x1 - c0, y1 - r0, x2 - c0, y2 - r0]], dtype=torch.float32, device=frames.device)
        # sampling_ratio=-1: ceil(box/size) samples per output pixel, averaged (anti-aliased down-scaling)
        out[i] = roi_align(region, roi, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                           aligned=True)[0]
    return out.clamp_(0.0, 1.0)


def _center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``(K, 4)`` corners -> ``(K, 4)`` ``cx, cy, w, h``."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                        boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1)


def _corners(cs: torch.Tensor) -> torch.Tensor:
    return torch.stack([cs[:, 0] - cs[:, 2] / 2, cs[:, 1] - cs[:, 3] / 2,
                        cs[:, 0] + cs[:, 2] / 2, cs[:, 1] + cs[:, 3] / 2], dim=1)


# ----------------------------------------------------------------------------------------------
# tracking


@dataclass
class Track:
    """The main face of a clip: ``boxes (N, 4)`` (tight, smoothed), ``scores (N,)``, ``found (N,) bool`` and
    ``segment (N,)`` (which continuous stretch of the track a frame belongs to; -1 without a face)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    found: torch.Tensor
    segment: torch.Tensor | None = None


def track_main_face(
    detections: Sequence[torch.Tensor],
    min_iou: float = 0.2,
    max_shift: float = 0.5,
    max_scale: float = 1.6,
    max_gap: int = 10,
    smooth: int = 2,
) -> Track:
    """Keep one face over a clip: the large face that is consistent over time.

    1. Seed: every detection gets ``area * (1 + support)``, ``support`` being the number of other
       frames holding a detection with IoU >= ``min_iou`` with it; the best one seeds the track.
       A big face seen throughout beats a bigger one-frame false positive and a smaller face.
    2. Walk forward and backward from the seed frame. In each frame a detection continues the
       track when it overlaps the last kept box (IoU >= ``min_iou``) or its centre moved at most
       ``max_shift`` x the box side per elapsed frame (up to 3 frames), and its side changed by at
       most a factor ``max_scale``; among those the one with the highest
       ``IoU - shift + size similarity`` is kept. When none qualifies the frame has no face (it is
       never given to another person's face); after more than ``max_gap`` such frames in a row the
       track is lost and restarts at that frame's largest face (a new segment, e.g. after a cut).
    3. Centres and sizes are averaged over the kept frames within ``smooth`` frames on each side,
       inside one segment. Frames without a kept face are not interpolated.

    Args:
        detections: per frame a ``(K_i, 5)`` tensor ``x1, y1, x2, y2, score`` (``K_i`` may be 0).

    Returns:
        :class:`Track` with ``N = len(detections)``; ``boxes``/``scores`` are zeros where ``found``
        is False.
    """
    n = len(detections)
    dets = [d.detach().float().cpu().reshape(-1, 5) for d in detections]
    boxes = torch.zeros(n, 4)
    scores = torch.zeros(n)
    found = torch.zeros(n, dtype=torch.bool)
    segment = torch.full((n,), -1, dtype=torch.long)
    counts = [len(d) for d in dets]
    if sum(counts) == 0:
        return Track(boxes, scores, found, segment)

    # 1. seed
    all_d = torch.cat(dets)
    frame_of = torch.repeat_interleave(torch.arange(n), torch.tensor(counts))
    match = box_iou(all_d[:, :4], all_d[:, :4]) >= min_iou
    support = torch.zeros(len(all_d))
    for f in range(n):
        if counts[f]:
            support += (match[:, frame_of == f].any(dim=1) & (frame_of != f)).float()
    area = ((all_d[:, 2] - all_d[:, 0]) * (all_d[:, 3] - all_d[:, 1])).clamp_min(0)
    seed = int(torch.argmax(area * (1 + support)))
    t0 = int(frame_of[seed])
    seed_box = all_d[seed]

    def pick(ref: torch.Tensor, gap: int, cand: torch.Tensor) -> int | None:
        if len(cand) == 0:
            return None
        b = cand[:, :4]
        iou = box_iou(b, ref[None, :4])[:, 0]
        cs, rcs = _center_size(b), _center_size(ref[None, :4])[0]
        side_ref = torch.sqrt(rcs[2].clamp_min(1) * rcs[3].clamp_min(1))
        shift = torch.linalg.vector_norm(cs[:, :2] - rcs[:2], dim=1) / side_ref
        ratio = torch.sqrt(cs[:, 2].clamp_min(1) * cs[:, 3].clamp_min(1)) / side_ref
        ok = ((iou >= min_iou) | (shift <= max_shift * min(gap + 1, 3))) & (ratio <= max_scale) & (ratio >= 1 / max_scale)
        if not ok.any():
            return None
        value = iou - shift + torch.minimum(ratio, 1 / ratio)
        value[~ok] = -math.inf
        return int(torch.argmax(value))

    def accept(t: int, det: torch.Tensor, seg: int) -> None:
        boxes[t], scores[t], found[t], segment[t] = det[:4], det[4], True, seg

    accept(t0, seed_box, 0)
    next_segment = 1
    for direction in (1, -1):
        ref, gap, seg = seed_box, 0, 0
        t = t0 + direction
        while 0 <= t < n:
            j = pick(ref, gap, dets[t])
            if j is not None:
                ref, gap = dets[t][j], 0
                accept(t, ref, seg)
            else:
                gap += 1
                if gap > max_gap and counts[t]:
                    # the main face is gone for good: restart on this frame's largest face
                    d = dets[t]
                    j = int(torch.argmax((d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])))
                    ref, gap, seg = d[j], 0, next_segment
                    next_segment += 1
                    accept(t, ref, seg)
            t += direction

    # 3. smooth centre and size within each segment
    boxes = smooth_boxes(boxes, found, segment, smooth)
    return Track(boxes, scores, found, segment)


def smooth_boxes(boxes: torch.Tensor, found: torch.Tensor, segment: torch.Tensor, smooth: int) -> torch.Tensor:
    """Average centres and sizes over the found frames within ``smooth`` frames on each side, inside one segment.

    Args:
        boxes: ``(N, 4)``; found: ``(N,)`` bool; segment: ``(N,)`` segment of each found frame.

    Returns:
        ``(N, 4)`` smoothed boxes, zeros where ``found`` is False.
    """
    if smooth <= 0 or not found.any():
        return torch.where(found[:, None], boxes, torch.zeros_like(boxes))
    n = len(found)
    cs = _center_size(boxes)
    out = cs.clone()
    for t in torch.nonzero(found).flatten().tolist():
        lo, hi = max(0, t - smooth), min(n, t + smooth + 1)
        sel = found[lo:hi] & (segment[lo:hi] == segment[t])
        out[t] = cs[lo:hi][sel].mean(dim=0)
    return torch.where(found[:, None], _corners(out), torch.zeros_like(boxes))


# ----------------------------------------------------------------------------------------------
# detectors
