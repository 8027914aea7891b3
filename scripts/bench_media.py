"""Test media for ``scripts/benchmark.py``: a talking-face clip at any frame size, and long videos made by looping it.

The face and the voice come from the synthetic corpus (:mod:`lightning_emo.data.synthetic`);
the face is drawn at ``face`` pixels and placed on a larger frame (e.g. 1280x720), so the face
detector sees a realistic frame. Frames are encoded as they are drawn (H.264 + AAC, PyAV), so
a 720p clip never sits in memory whole. Long videos repeat a short clip by copying its
packets with shifted timestamps (no re-encoding: a 10-minute file takes a second).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def talking_face_clip(path: str | Path, seconds: float = 10.0, fps: float = 25.0, height: int = 720,
                      width: int = 1280, face: int = 320, sample_rate: int = 16000, seed: int = 0,
                      label: str = "happy") -> Path:
    """Write an MP4 of ``seconds`` with a drawn talking face (side ``face``) centred on a ``height x width`` frame."""
    from lightning_emo.data.synthetic import SynthConfig, draw_faces, make_speaker, synth_voice, clip_cues

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = SynthConfig(clips_per_class=1, seed=seed, fps=fps, size=face, sample_rate=sample_rate)
    speaker = make_speaker(seed, 0)
    rng, cues = clip_cues(config, label, 0)
    audio, env = synth_voice(rng, speaker, cues["voice"], max(seconds - 0.4, 0.2), sample_rate, 0.2, 0.2)
    n_samples = int(round(seconds * sample_rate))
    audio = np.pad(audio, (0, max(0, n_samples - len(audio))))[:n_samples]
    env = np.pad(env, (0, max(0, n_samples - len(env))))[:n_samples]
    n_frames = int(round(seconds * fps))
    times = np.arange(n_frames) / fps
    mouth = env[np.minimum((times * sample_rate).astype(np.int64), n_samples - 1)]
    background = _background(height, width, seed)
    y0, x0 = (height - face) // 2, (width - face) // 2
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"crf": "23", "preset": "veryfast"}
        as_ = out.add_stream("aac", rate=sample_rate, layout="mono")
        pcm = np.clip(audio * 32767.0, -32768, 32767).astype(np.int16)
        done = 0
        chunk = 25
        for start in range(0, n_frames, chunk):
            stop = min(n_frames, start + chunk)
            faces = draw_faces(rng, speaker, cues["face"], times[start:stop], mouth[start:stop], face,
                               np.ones(stop - start, bool), np.zeros(stop - start, bool))
            for i, img in enumerate(faces):
                canvas = background.copy()
                canvas[y0:y0 + face, x0:x0 + face] = img
                frame = av.VideoFrame.from_ndarray(canvas, format="rgb24").reformat(format="yuv420p")
                frame.pts = start + i
                frame.time_base = 1 / rate
                out.mux(vs.encode(frame))
                upto = min(n_samples, round((start + i + 1) / fps * sample_rate))
                if upto > done:
                    af = av.AudioFrame.from_ndarray(pcm[None, done:upto], format="s16", layout="mono")
                    af.sample_rate = sample_rate
                    af.pts = done
                    af.time_base = Fraction(1, sample_rate)
                    out.mux(as_.encode(af))
                    done = upto
        out.mux(vs.encode(None))
        out.mux(as_.encode(None))
    return path


def _background(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 99])
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    base = rng.uniform(40, 200, 3).astype(np.float32)
    img = base + 40 * ys * rng.normal(0, 1, 3).astype(np.float32) + 30 * xs * rng.normal(0, 1, 3).astype(np.float32)
    img += rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def loop_video(src: str | Path, dst: str | Path, seconds: float) -> Path:
    """Write ``dst``: ``src`` repeated (packets copied, timestamps shifted) until it lasts ``seconds``."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as probe:
        length = float(probe.duration / av.time_base)
    repeats = max(1, math.ceil(seconds / length - 1e-6))
    tmp = dst.with_name(f".{dst.name}.tmp")
    with av.open(str(src)) as inp:
        # One period for every stream, so audio and video stay in step: the longest stream's span
        # from its first to its last timestamp plus one full packet (AAC's priming packet starts
        # before 0 and its last packet is trimmed, so its end time would make packets overlap).
        span: dict[int, list] = {}
        for packet in inp.demux():
            if packet.pts is not None and packet.stream.type in ("audio", "video"):
                lo, hi, dur = span.setdefault(packet.stream.index, [packet.pts, packet.pts, 0])
                span[packet.stream.index] = [min(lo, packet.pts, packet.dts), max(hi, packet.pts),
                                             max(dur, packet.duration or 0)]
        period = max(float((hi - lo + dur) * inp.streams[i].time_base) for i, (lo, hi, dur) in span.items())
    with av.open(str(tmp), mode="w", format="mp4") as out:
        streams = {}
        with av.open(str(src)) as inp:
            for s in inp.streams:
                if s.type in ("audio", "video"):
                    streams[s.index] = out.add_stream_from_template(s)
        for r in range(repeats):
            with av.open(str(src)) as inp:
                for packet in inp.demux():
                    if packet.dts is None or packet.stream.index not in streams:
                        continue
                    shift = int(round(r * period / packet.stream.time_base))
                    packet.dts += shift
                    if packet.pts is not None:
                        packet.pts += shift
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
    tmp.replace(dst)
    return dst
