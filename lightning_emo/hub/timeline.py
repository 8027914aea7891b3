"""Emotions over time in long videos: sliding windows streamed through decoding, detection and extraction.

:func:`iter_windows` decodes the audio (``iter_audio``, in chunks) and the frames (``iter_frames``
at the face model's rate) of one file in parallel and keeps only the current window of each:
at most ``window + hop`` seconds of samples and ``window * fps + 1`` frames are held at any
time, whatever the file's length. Each window ``[k * hop, k * hop + window)`` is predicted like
a clip (:meth:`Recognizer.predict_arrays`); the last window may be shorter, and windows stop
once the end of the media is covered. A window with no audio track, no frame or no face is
predicted from what it has, as clips are.

:func:`write_timeline` writes ``<stem>.timeline.csv``, ``.json`` and a ``.png`` plot
(matplotlib, Agg: no display needed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from lightning_emo.utils import atomic_path, atomic_write_text, check_outputs

__all__ = ["WindowPrediction", "iter_timeline", "iter_windows", "plot_timeline", "timeline_csv", "write_timeline"]

_EPS = 1e-6


@dataclass
class WindowPrediction:
    """One window's result: ``start``/``end`` seconds and its :class:`~lightning_emo.hub.recognizer.Prediction`."""

    start: float
    end: float
    prediction: "object"

    def to_dict(self) -> dict:
        return {"start": round(self.start, 6), "end": round(self.end, 6), **self.prediction.to_dict()}


def iter_windows(path: str | os.PathLike, window: float, hop: float, sample_rate: int | None = None,
                 fps: float | None = None) -> Iterator[tuple[float, float, torch.Tensor | str | None,
                                                             torch.Tensor | str | None]]:
    """Stream ``(start, end, waveform (S,) | reason | None, frames (N, H, W, 3) uint8 | reason | None)`` windows.

    Args:
        window, hop: window length and step in seconds (``0 < hop``; ``hop <= window`` keeps
            every moment in some window).
        sample_rate: decode audio at this rate (``None``: no audio wanted).
        fps: sample frames at this rate (``None``: no video wanted).

    A reason (``no_audio`` / ``no_video``) replaces a track the file lacks; ``None`` a track not wanted.
    """
    from lightning_emo.data.media import iter_audio, iter_frames, probe

    if not (window > 0 and hop > 0) or not math.isfinite(window) or not math.isfinite(hop):
        raise ValueError(f"window and hop must be positive seconds, got window={window}, hop={hop}")
    info = probe(path)
    want_audio, want_video = sample_rate is not None, fps is not None
    audio_it = iter_audio(path, sample_rate, chunk_seconds=max(min(hop, window), 0.5)) \
        if want_audio and info.has_audio else None
    frame_it = iter_frames(path, fps=fps) if want_video and info.has_video else None
    audio_reason = None if not want_audio else (None if info.has_audio else "no_audio")
    video_reason = None if not want_video else (None if info.has_video else "no_video")

    a_buf = np.zeros(0, dtype=np.float32)
    a_off = 0  # sample index of a_buf[0]
    a_done = audio_it is None
    f_buf: deque[tuple[float, np.ndarray]] = deque()
    f_count = 0  # frames read so far; frame n is the sample at n / fps
    f_done = frame_it is None
    k = 0
    while True:
        start, end = k * hop, k * hop + window
        if audio_it is not None:
            stop = int(round(end * sample_rate))
            while not a_done and a_off + len(a_buf) < stop:
                try:
                    a_buf = np.concatenate([a_buf, next(audio_it).numpy()])
                except StopIteration:
                    a_done = True
        if frame_it is not None:
            while not f_done and (not f_buf or f_buf[-1][0] < end - _EPS):
                try:
                    _, frame = next(frame_it)
                except StopIteration:
                    f_done = True
                    break
                f_buf.append((f_count / fps, frame))
                f_count += 1
        # the end of the media decoded so far (exact once every stream is done)
        media_end = max((a_off + len(a_buf)) / sample_rate if audio_it is not None else 0.0,
                        f_count / fps if frame_it is not None else 0.0)
        if a_done and f_done:
            if start >= media_end - _EPS or (k > 0 and start - hop + window >= media_end - _EPS):
                break
        if audio_it is not None:
            lo, hi = int(round(start * sample_rate)) - a_off, int(round(end * sample_rate)) - a_off
            wave = torch.from_numpy(a_buf[max(lo, 0):max(hi, 0)].copy())
        else:
            wave = audio_reason
        if frame_it is not None:
            inside = [f for t, f in f_buf if start - _EPS <= t < end - _EPS]
            frames = torch.from_numpy(np.stack(inside)) if inside else "no_frames"
        else:
            frames = video_reason
        yield start, min(end, media_end) if (a_done and f_done) else end, wave, frames
        k += 1
        nxt = k * hop
        if audio_it is not None:
            drop = min(int(round(nxt * sample_rate)) - a_off, len(a_buf))
            if drop > 0:
                a_buf, a_off = a_buf[drop:], a_off + drop
        while f_buf and f_buf[0][0] < nxt - _EPS:
            f_buf.popleft()
    if not (a_done and f_done):  # a consumer stopped early: close the decoders
        for it in (audio_it, frame_it):
            if it is not None and hasattr(it, "close"):
                it.close()


def iter_timeline(recognizer, path: str | os.PathLike, window: float = 4.0,
                  hop: float = 2.0) -> Iterator[WindowPrediction]:
    """Predict every window of ``path`` (see :func:`iter_windows`), streaming."""
    rate = recognizer.sample_rate()
    fps = recognizer.fps()
    for start, end, wave, frames in iter_windows(path, window, hop, sample_rate=rate, fps=fps):
        inputs = {}
        if "audio" in recognizer.modalities:
            if isinstance(wave, torch.Tensor):
                inputs["audio"] = recognizer.extract("audio", wave) if len(wave) else "no_frames"
            else:
                inputs["audio"] = wave
        if "video" in recognizer.modalities:
            inputs["video"] = recognizer.extract("video", frames) if isinstance(frames, torch.Tensor) else frames
        pred = recognizer.predict_features(inputs, source=f"{path}@{start:.3f}")
        yield WindowPrediction(start, end, pred)


def timeline_csv(rows: Sequence[WindowPrediction], classes: Sequence[str], modalities: Sequence[str]) -> str:
    """``start,end,label,confidence,decided_by,missing,fused_<c>...,<modality>_<c>...``; empty cells where missing."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["start", "end", "label", "confidence", "decided_by", "missing"]
               + [f"fused_{c}" for c in classes] + [f"{m}_{c}" for m in modalities for c in classes])

    def cells(p):
        return [""] * len(classes) if p is None else [f"{float(v):.6f}" for v in p]

    for r in rows:
        p = r.prediction
        missing = ";".join(f"{m}:{why}" for m, why in p.missing.items())
        conf = "" if p.confidence is None else f"{p.confidence:.6f}"
        row = [f"{r.start:.3f}", f"{r.end:.3f}", p.label or "", conf, p.decided_by or "", missing, *cells(p.fused)]
        for m in modalities:
            row += cells(p.probs.get(m))
        w.writerow(row)
    return buf.getvalue()


def plot_timeline(rows: Sequence[WindowPrediction], classes: Sequence[str], modalities: Sequence[str],
                  path: str | os.PathLike, title: str = "") -> Path:
    """PNG of the posteriors over time (window centres): fused on top, then one panel per modality."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = ["fused", *modalities]
    fig = Figure(figsize=(10, 1.9 * len(panels) + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    t = np.array([(r.start + r.end) / 2 for r in rows])
    for ax, panel in zip(axes, panels, strict=True):
        series = [r.prediction.fused if panel == "fused" else r.prediction.probs.get(panel) for r in rows]
        P = np.array([np.full(len(classes), np.nan) if p is None else p for p in series]).reshape(len(rows), -1)
        for c, name in enumerate(classes):
            ax.plot(t, P[:, c] if len(rows) else [], marker=".", markersize=3, linewidth=1.2, label=name)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    axes[-1].set_xlabel("time (s, window centre)")
    axes[0].set_title(title or "emotion posteriors over time")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png")
    return path


def timeline_paths(out_stem: str | os.PathLike, png: bool = True) -> list[Path]:
    """The files :func:`write_timeline` writes for ``out_stem``: ``.timeline.csv``, ``.json`` (and ``.png``)."""
    stem = Path(out_stem)
    return [stem.parent / f"{stem.name}.timeline.{ext}" for ext in ("csv", "json", "png")[:3 if png else 2]]


def write_timeline(rows: Sequence[WindowPrediction], classes: Sequence[str], modalities: Sequence[str],
                   out_stem: str | os.PathLike, png: bool = True, meta: dict | None = None,
                   overwrite: bool = True) -> list[Path]:
    """Write ``<stem>.timeline.csv``, ``<stem>.timeline.json`` (and ``.png``); returns the paths.

    With ``overwrite=False`` existing files are refused (:class:`~lightning_emo.utils.OutputExistsError`).
    """
    stem = Path(out_stem)
    check_outputs(timeline_paths(stem, png), overwrite)
    csv_path, json_path, png_path = timeline_paths(stem, png=True)
    atomic_write_text(csv_path, timeline_csv(rows, classes, modalities))
    doc = {**(meta or {}), "classes": list(classes), "windows": [r.to_dict() for r in rows]}
    atomic_write_text(json_path, json.dumps(doc, indent=1) + "\n")
    written = [csv_path, json_path]
    if png:
        written.append(plot_timeline(rows, classes, modalities, png_path,
                                     title=f"{stem.name}: emotion posteriors over time"))
    return written
