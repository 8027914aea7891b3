"""Media decoding and writing with PyAV: mono float waveforms, streamed RGB frames, probing, MP4/WAV writers.

Times are seconds from the start of the file (the container's start time, as ``ffmpeg -ss``
counts them). Every failure is a :class:`MediaError` whose message names the file and what was
expected; a file that is readable but lacks the track asked for raises the subclass
:class:`MissingStreamError`, so callers can tell "no audio here" from "broken file".
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import av
import av.error
import numpy as np
from av.audio.resampler import AudioResampler

if TYPE_CHECKING:
    import torch
# torch is imported where tensors are made, so that writing media (``lightning-emo synth``)
# does not pay for importing it.

from lightning_emo.errors import UserError
from lightning_emo.utils import atomic_path

# Suffix -> container format for the writers (the temporary file of an atomic write has no
# useful suffix, so the format is always given explicitly).
VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".flv": "flv"}
AUDIO_FORMATS = {
    ".wav": ("wav", "pcm_s16le"),
    ".flac": ("flac", "flac"),
    ".mp3": ("mp3", "libmp3lame"),
    ".m4a": ("mp4", "aac"),
    ".ogg": ("ogg", "libopus"),
}
_EPS = 1e-6
AUDIO_PREROLL = 0.5  # seconds decoded before an audio seek target and dropped


class MediaError(UserError, ValueError):
    """A media file that cannot be used as asked; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.problem = str(path), message


class DecodeSettingError(UserError, ValueError):
    """A decoding setting that cannot work (``fps``, ``size``, ``sample_rate``): the value given to the command, the
    config or the model is wrong, not the media file, so the message names the setting and not the file."""

    def __init__(self, setting: str, message: str):
        super().__init__(f"decoding setting {setting}: {message}")
        self.setting = setting


class MissingStreamError(MediaError):
    """A readable media file without the track asked for (``kind`` is ``"audio"`` or ``"video"``)."""

    def __init__(self, path: str | os.PathLike, kind: str, message: str):
        super().__init__(path, message)
        self.kind = kind


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` finds in a file. Durations in seconds; ``None`` where the file does not say.

    ``width``/``height`` are the coded size, before any display rotation (:func:`iter_frames`
    applies it); ``num_frames`` is the container's count, which some formats only estimate.
    """

    path: str
    container: str
    duration: float | None
    has_audio: bool
    has_video: bool
    sample_rate: int | None = None
    channels: int | None = None
    audio_codec: str | None = None
    audio_duration: float | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    video_codec: str | None = None
    video_duration: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Opening and probing


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    """Open ``path`` for reading, turning every way it can fail into a :class:`MediaError`."""
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "file not found (expected an audio or video file)")
    if not p.is_file():
        raise MediaError(p, "not a regular file (expected an audio or video file)")
    if p.stat().st_size == 0:
        raise MediaError(p, "empty file (0 bytes; expected an audio or video file)")
    try:
        container = av.open(str(p), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(p, f"not a readable audio/video file, or corrupt/truncated ({_reason(e)})") from None
    if not container.streams.audio and not container.streams.video:
        container.close()
        raise MediaError(p, "no audio or video track found (expected an audio or video file)")
    return container


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return f"{type(e).__name__}: {text}".strip()


def _origin(container: av.container.InputContainer) -> float:
    """The container's start time in seconds: times in this module are relative to it."""
    start = container.start_time
    return 0.0 if start is None else start / av.time_base


def _stream_duration(stream: av.stream.Stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _container_duration(container: av.container.InputContainer) -> float | None:
    return None if container.duration is None else container.duration / av.time_base


def _track_end(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """Where ``stream`` ends, in seconds relative to the container's start (``None``: unknown)."""
    length = _stream_duration(stream)
    if length is None:
        return _container_duration(container)
    if stream.start_time is None or stream.time_base is None:
        return length
    return float(stream.start_time * stream.time_base) - _origin(container) + length


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read a file's header: duration, which tracks it has, sample rate, frame rate and size.

    Raises:
        MediaError: missing, empty or unreadable file.
    """
    container = _open(path)
    try:
        audio = container.streams.audio[0] if container.streams.audio else None
        video = container.streams.video[0] if container.streams.video else None
        info: dict = dict(path=str(path), container=container.format.name,
                          duration=_container_duration(container),
                          has_audio=audio is not None, has_video=video is not None)
        if audio is not None:
            ctx = audio.codec_context
            info.update(sample_rate=ctx.sample_rate or None, channels=ctx.channels or None,
                        audio_codec=ctx.name, audio_duration=_stream_duration(audio))
        if video is not None:
            rate = video.average_rate or video.guessed_rate or video.base_rate
            info.update(fps=float(rate) if rate else None, width=video.codec_context.width or None,
                        height=video.codec_context.height or None, num_frames=video.frames or None,
                        video_codec=video.codec_context.name, video_duration=_stream_duration(video))
        if info["duration"] is None:
            known = [d for d in (info.get("audio_duration"), info.get("video_duration")) if d is not None]
            info["duration"] = max(known) if known else None
        return MediaInfo(**info)
    finally:
        container.close()


def _check_window(path, start: float | None, end: float | None) -> tuple[float, float | None]:
    start = 0.0 if start is None else float(start)
    if not math.isfinite(start) or start < 0:
        raise MediaError(path, f"start must be a finite, non-negative number of seconds, got {start}")
    if end is not None:
        end = float(end)
        if not math.isfinite(end) or end <= start:
            raise MediaError(path, f"end ({end:g} s) must be a finite number of seconds after start ({start:g} s)")
    return start, end


def _empty_error(path, what: str, start: float, end: float | None, track_end: float | None) -> MediaError:
    if track_end is not None and start >= track_end - _EPS:
        return MediaError(path, f"start {start:.3f} s is at or beyond the end of the {what} "
                          f"(it ends at {track_end:.3f} s)")
    window = f"between {start:.3f} s and {end:.3f} s" if end is not None else f"from {start:.3f} s on"
    length = f" (the file says it ends at {track_end:.3f} s)" if track_end is not None else ""
    return MediaError(path, f"zero-length {what}: nothing decoded {window}{length}")


def _decode(container, stream, path, what: str):
    """Demux ``stream`` and decode it, with errors raised as :class:`MediaError`.

    Yields ``(frame, first_dts)``: ``first_dts`` is the decode time (s, absolute) of the first
    packet read, i.e. where decoding started (``None`` if the packets carry no times).
    """
    packets = container.demux(stream)
    first_dts = None
    while True:
        try:
            packet = next(packets)
            if first_dts is None and packet.dts is not None:
                first_dts = float(packet.dts * packet.time_base)
            frames = packet.decode()
        except StopIteration:
            return
        except (av.error.FFmpegError, OSError) as e:
            raise MediaError(path, f"corrupt or truncated {what} track: decoding failed ({_reason(e)})") from None
        for frame in frames:
            yield frame, first_dts


def _seek(container, stream, path, seconds: float) -> None:
    """Seek to the keyframe at or before ``seconds`` (relative); decoding then runs up to the target."""
    if seconds <= 0:
        return
    if stream.type == "audio":
        # Audio codecs (AAC, MP3) need the previous frame to decode the first one right after a
        # seek (MDCT overlap, bit reservoir): start early and let the trimming drop the pre-roll.
        seconds = max(0.0, seconds - AUDIO_PREROLL)
        if seconds == 0:
            return
    target = int((seconds + _origin(container)) / stream.time_base)
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    except (av.error.FFmpegError, OSError):
        # Some files (raw streams, damaged indexes) cannot seek: decode from the start instead.
        container.close()
        raise _Reopen() from None


def _exact_index(container) -> bool:
    """MP4/MOV files carry an index with each track's exact length (others may only estimate it)."""
    return "mp4" in container.format.name


TRUNCATION_TOLERANCE = 0.25  # seconds an indexed track may fall short before it counts as truncated


def _check_complete(path, what: str, reached: float, expected: float | None) -> None:
    """Raise when decoding hit the end of the data well before the end the file's index promises."""
    if expected is not None and reached < expected - TRUNCATION_TOLERANCE:
        raise MediaError(path, f"truncated {what} track: the data ends at {reached:.3f} s but the file's "
                         f"index says {expected:.3f} s (expected a complete file)")


class _Reopen(Exception):
    """Internal: the container could not seek; reopen and decode from the start."""


# --------------------------------------------------------------------------------------------
# Audio


def _audio_stream(container, path):
    if not container.streams.audio:
        kinds = "a video-only file" if container.streams.video else "a file"
        raise MissingStreamError(path, "audio", f"has no audio track ({kinds}; expected audio to decode)")
    return container.streams.audio[0]


def _audio_blocks(path, sample_rate: int, start: float | None, end: float | None) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks at ``sample_rate`` covering exactly ``[start, end)``."""
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise DecodeSettingError("sample_rate", f"must be a positive integer number of Hz, got {sample_rate}")
    sample_rate = int(sample_rate)
    start, end = _check_window(path, start, end)
    container = _open(path)
    try:
        stream = _audio_stream(container, path)
        track_end = _track_end(container, stream)
        try:
            _seek(container, stream, path, start)
        except _Reopen:
            container = _open(path)
            stream = _audio_stream(container, path)
        origin = _origin(container)
        # MP4/MOV index the exact track length: trim the encoder's padding of the last AAC frame.
        exact = _exact_index(container) and track_end is not None
        if exact:
            end = track_end if end is None else min(end, track_end)
        # Resample but keep the channels, then average them: FFmpeg's stereo -> mono matrix sums
        # at -3 dB, so identical channels would come out 1.41x louder (and past 1.0).
        resampler = AudioResampler(format="fltp", rate=sample_rate)
        first = None  # (relative) time of global sample 0 of the resampled stream
        done = 0  # resampled samples seen so far
        i0 = i1 = None
        produced = 0

        def emit(out) -> Iterator[np.ndarray]:
            nonlocal first, done, i0, i1, produced
            planes = out.to_ndarray()  # (C, n) planar float32
            data = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
            if first is None:
                first = (out.time - origin) if out.time is not None else start
                i0 = max(0, round((start - first) * sample_rate))
                i1 = None if end is None else round((end - first) * sample_rate)
                gap = round((first - start) * sample_rate)
                if gap > 0:  # the track starts after ``start``: keep sample 0 at ``start``
                    gap = gap if i1 is None else min(gap, round((end - start) * sample_rate))
                    produced += gap
                    yield np.zeros(gap, np.float32)
            lo, hi = done, done + len(data)
            done = hi
            a, b = max(lo, i0), hi if i1 is None else min(hi, i1)
            if b > a:
                produced += b - a
                yield np.ascontiguousarray(data[a - lo:b - lo])

        for frame, _ in _decode(container, stream, path, "audio"):
            try:
                outs = resampler.resample(frame)
            except ValueError:  # the input format changed mid-stream: start a new resampler
                outs = resampler.resample(None)
                resampler = AudioResampler(format="fltp", rate=sample_rate)
                outs += resampler.resample(frame)
            for out in outs:
                yield from emit(out)
            if i1 is not None and done >= i1:
                break
        else:
            for out in resampler.resample(None):
                yield from emit(out)
            if exact and first is not None:
                _check_complete(path, "audio", first + done / sample_rate, end)
        if produced == 0:
            raise _empty_error(path, "audio", start, end, track_end)
    finally:
        container.close()


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    start: float | None = None,
    end: float | None = None,
) -> torch.Tensor:
    """Decode the first audio track of any container (mp4, mkv, avi, flv, wav, mp3, ...).

    Resampled with FFmpeg's resampler (PyAV ``AudioResampler``, planar float) and mixed down
    to mono as the mean of the channels. ``start``/``end`` cut the result to ``[start, end)``
    seconds; sample 0 is at ``start`` (zeros lead in when the track starts later, e.g. after
    the video).

    Returns:
        float32 tensor ``(S,)`` with ``S ~= (end - start) * sample_rate``, values in [-1, 1].

    Raises:
        MissingStreamError: the file has no audio track.
        MediaError: missing, empty, corrupt or truncated file; nothing in the window.
    """
    import torch

    blocks = list(_audio_blocks(path, sample_rate, start, end))
    return torch.from_numpy(np.concatenate(blocks) if len(blocks) > 1 else blocks[0])


def iter_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    chunk_seconds: float = 30.0,
    start: float | None = None,
    end: float | None = None,
) -> Iterator[torch.Tensor]:
    """Stream the audio of a (long) file as mono float32 chunks of ``chunk_seconds``.

    Chunk ``i`` starts at ``start + i * chunk_seconds``; every chunk has
    ``round(chunk_seconds * sample_rate)`` samples except a shorter last one.
    Concatenated, the chunks equal :func:`load_audio` with the same arguments.

    Yields:
        float32 tensors ``(C,)``.
    """
    import torch

    size = round(chunk_seconds * sample_rate)
    if size <= 0:
        raise DecodeSettingError("chunk_seconds", f"must give at least one sample, got {chunk_seconds}")
    pending: list[np.ndarray] = []
    have = 0
    for block in _audio_blocks(path, sample_rate, start, end):
        pending.append(block)
        have += len(block)
        if have >= size:
            buf = np.concatenate(pending)
            n_full = len(buf) // size
            for k in range(n_full):
                yield torch.from_numpy(buf[k * size:(k + 1) * size].copy())
            rest = buf[n_full * size:]
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        yield torch.from_numpy(np.concatenate(pending))


# --------------------------------------------------------------------------------------------
# Video


def _video_stream(container, path):
    if not container.streams.video:
        raise MissingStreamError(path, "video", "has no video track (an audio-only file; expected video frames)")
    return container.streams.video[0]


def _target_size(size: int | Sequence[int] | None, width: int, height: int, path) -> tuple[int, int] | None:
    """(H, W) to resize to: ``int`` = shorter side (aspect kept), ``(H, W)`` = exact."""
    if size is None:
        return None
    if isinstance(size, int):
        if size <= 0:
            raise DecodeSettingError("size", f"must be positive, got {size}")
        if height <= width:
            return size, max(1, round(width * size / height))
        return max(1, round(height * size / width)), size
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise DecodeSettingError("size", f"must be (H, W) with positive values, got {tuple(size)}")
    return h, w


def iter_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | Sequence[int] | None = None,
    start: float | None = None,
    end: float | None = None,
    *,
    threads: int = 0,
    interpolation: str | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Stream RGB frames of the first video track (at most two decoded frames held at a time).

    Frames come upright: a display rotation in the file (phone videos) is applied.

    Args:
        fps: sample at this rate: for each target time ``start + k / fps`` the decoded frame whose
            timestamp is nearest is returned (a frame may repeat when ``fps`` exceeds the native
            rate). ``None``: every frame at its native rate.
        size: ``int`` = resize the shorter side to this (aspect kept); ``(H, W)`` = exact size.
        start, end: seconds; the decoder seeks to the keyframe before ``start`` then decodes up to
            it. Native rate: frames on screen during ``[start, end)``; sampled: targets in it.
        threads: decoder threads (0 = FFmpeg's choice); threading type is ``AUTO``.
        interpolation: swscale algorithm for resizing (default bilinear), e.g. ``"AREA"``.

    Yields:
        ``(t_seconds, frame)``: the frame's presentation time and an ``(H, W, 3)`` uint8 RGB array.

    Raises:
        MissingStreamError: no video track (e.g. an audio-only file).
        MediaError: missing, empty, corrupt or truncated file; no frame in the window.
    """
    if fps is not None and (not math.isfinite(fps) or fps <= 0):
        raise DecodeSettingError("fps", f"must be a positive number, got {fps}")
    start, end = _check_window(path, start, end)
    container = _open(path)  # fail early (before the first next()) on a missing or broken file
    try:
        _video_stream(container, path)
    except MediaError:
        container.close()
        raise
    return _frames(container, path, fps, size, start, end, threads, interpolation)


def _frames(container, path, fps, size, start, end, threads, interpolation):
    try:
        stream = _video_stream(container, path)

        def configure(s):
            s.thread_type = "AUTO"
            s.thread_count = threads

        configure(stream)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        native_dt = float(1 / rate) if rate else None
        track_end = _track_end(container, stream)
        try:
            _seek(container, stream, path, start)
        except _Reopen:
            container = _open(path)
            stream = _video_stream(container, path)
            configure(stream)
        origin = _origin(container)
        shape = None
        n_out = 0
        cache: dict[int, np.ndarray] = {}

        def to_array(item) -> np.ndarray:
            nonlocal shape
            key = id(item[1])
            if key not in cache:
                frame = item[1]
                # Phone videos carry a display rotation (counter-clockwise degrees): apply it.
                turns = round((frame.rotation or 0) / 90) % 4
                h, w = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
                if shape is None:
                    shape = _target_size(size, w, h, path)
                kwargs = {"format": "rgb24"}
                if shape is not None and (shape[0] != h or shape[1] != w):
                    th, tw = (shape[1], shape[0]) if turns % 2 else shape
                    kwargs.update(height=th, width=tw, interpolation=interpolation)
                array = frame.to_ndarray(**kwargs)
                cache.clear()
                cache[key] = np.ascontiguousarray(np.rot90(array, turns) if turns else array)
            return cache[key]

        count = 0
        last_dt = native_dt
        prev = None  # (t, frame)
        reached = None  # end of the last decoded frame, when decoding ran to the end of the data
        # AVI stores no presentation times: with B-frames the frames' pts are wrong. Its frames
        # are at a constant rate, so count them from the (key)frame decoding started at.
        counted = container.format.name == "avi" and native_dt is not None
        base = None

        def clock(frame, first_dts) -> float:
            nonlocal base, count
            if counted:
                if base is None:
                    base = (first_dts - origin) if first_dts is not None else 0.0
                t = base + count * native_dt
            elif frame.time is not None:
                t = frame.time - origin
            else:
                t = count * (native_dt or (1.0 / fps if fps else 0.0))
            count += 1
            return t

        if fps is None:
            for frame, first_dts in _decode(container, stream, path, "video"):
                t = clock(frame, first_dts)
                dt = native_dt or 0.0
                if end is not None and t >= end - _EPS:
                    break
                reached = t + dt
                if t + dt <= start + _EPS and not (dt == 0 and t >= start - _EPS):
                    continue
                n_out += 1
                yield t, to_array((t, frame))
            else:
                if reached is not None and _exact_index(container) and track_end is not None:
                    _check_complete(path, "video", reached, track_end if end is None else min(end, track_end))
        else:
            step = 1.0 / fps
            k = 0

            def target() -> float:
                return start + k * step

            stop = False
            for frame, first_dts in _decode(container, stream, path, "video"):
                t = clock(frame, first_dts)
                if prev is not None:
                    if t > prev[0]:
                        last_dt = t - prev[0] if native_dt is None else native_dt
                    while target() <= t + _EPS:
                        if end is not None and target() >= end - _EPS:
                            stop = True
                            break
                        chosen = prev if (target() - prev[0]) <= (t - target()) else (t, frame)
                        n_out += 1
                        yield chosen[0], to_array(chosen)
                        k += 1
                    if stop:
                        break
                prev = (t, frame)
            if prev is not None and not stop:
                # The last frame stays on screen for one frame duration.
                hold = prev[0] + (last_dt or step)
                if _exact_index(container) and track_end is not None:
                    _check_complete(path, "video", hold, track_end if end is None else min(end, track_end))
                while target() < hold - _EPS and (end is None or target() < end - _EPS):
                    n_out += 1
                    yield prev[0], to_array(prev)
                    k += 1
        if n_out == 0:
            raise _empty_error(path, "video", start, end, track_end)
    finally:
        container.close()


def load_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | Sequence[int] | None = None,
    start: float | None = None,
    end: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames of :func:`iter_frames` at once.

    Returns:
        ``frames``: uint8 ``(N, H, W, 3)`` RGB; ``times``: float64 ``(N,)`` seconds.
    """
    import torch

    times, frames = [], []
    for t, frame in iter_frames(path, fps=fps, size=size, start=start, end=end, **kwargs):
        times.append(t)
        frames.append(frame)
    return torch.from_numpy(np.stack(frames)), torch.tensor(times, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Writing


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _audio_array(path, audio) -> np.ndarray:
    """(S,) or (C, S) float -> (C, S) float32 in [-1, 1]."""
    a = _as_numpy(audio)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] not in (1, 2) or a.shape[1] == 0:
        raise MediaError(path, f"audio must be (S,) mono or (C, S) with C in (1, 2) and S > 0, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise MediaError(path, f"audio must be floating point in [-1, 1], got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise MediaError(path, "audio contains NaN or infinite values")
    return np.ascontiguousarray(np.clip(a, -1.0, 1.0), dtype=np.float32)


def _audio_frames(a: np.ndarray, sample_rate: int, begin: int, stop: int) -> av.AudioFrame:
    layout = "mono" if a.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(a[:, begin:stop]), format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = begin
    frame.time_base = Fraction(1, sample_rate)
    return frame


def _add_audio_stream(container, codec: str, sample_rate: int, channels: int, bit_rate: int | None):
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    if bit_rate and codec not in ("pcm_s16le", "flac"):
        stream.bit_rate = bit_rate
    return stream


def write_video(
    path: str | os.PathLike,
    frames,
    fps: float,
    audio=None,
    sample_rate: int = 16000,
    *,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    crf: int = 23,
    preset: str = "veryfast",
    audio_bit_rate: int = 96000,
    threads: int = 0,
    audio_options: dict[str, str] | None = None,
    faststart: bool = False,
) -> Path:
    """Write frames (and optionally audio) as a video file, atomically.

    Args:
        frames: uint8 ``(N, H, W, 3)`` RGB (numpy or torch); H and W must be even for yuv420p.
        fps: frame rate.
        audio: optional float ``(S,)`` mono or ``(C, S)`` waveform in [-1, 1] at ``sample_rate``.
        video_codec, audio_codec: default H.264 (libx264, yuv420p) and AAC; the container comes
            from the suffix (.mp4, .mov, .mkv, .avi, .flv). With libx264 and ``threads=1`` the
            same input gives the same bytes.
        threads: encoder threads (0 = FFmpeg's choice; 1 gives the same bytes on any machine).
        audio_options: encoder options, e.g. ``{"aac_coder": "fast"}``.
        faststart: MP4/MOV only: put the index before the data (streamable; one more pass).

    Returns:
        ``path``.
    """
    path = Path(path)
    fmt = VIDEO_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MediaError(path, f"unknown video suffix {path.suffix!r} (expected one of {', '.join(VIDEO_FORMATS)})")
    v = _as_numpy(frames)
    if v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8 or v.shape[0] == 0:
        raise MediaError(path, f"frames must be a non-empty uint8 (N, H, W, 3) RGB array, got {v.dtype} {v.shape}")
    n, h, w, _ = v.shape
    if h % 2 or w % 2:
        raise MediaError(path, f"frame height and width must be even for yuv420p, got {h}x{w}")
    if not fps or fps <= 0:
        raise MediaError(path, f"fps must be positive, got {fps}")
    a = None if audio is None else _audio_array(path, audio)
    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "+faststart"} if faststart and fmt in ("mp4", "mov") else {}
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format=fmt, options=options) as out:
            vs = out.add_stream(video_codec, rate=rate)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.thread_count = threads
            if video_codec.startswith("libx264"):
                # mbtree off: with it this libx264 build gives different bytes for the same frames
                # now and then (an uninitialised read in its SIMD code); without it, never seen.
                vs.options = {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
            as_ = None
            if a is not None:
                as_ = _add_audio_stream(out, audio_codec, sample_rate, a.shape[0], audio_bit_rate)
                if audio_options:
                    as_.options = dict(audio_options)
            done = 0
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(v[i]), format="rgb24")
                frame = frame.reformat(format="yuv420p", threads=1)
                frame.pts = i
                frame.time_base = 1 / rate
                out.mux(vs.encode(frame))
                if as_ is not None:  # interleave: the audio up to the end of this frame
                    upto = a.shape[1] if i == n - 1 else min(a.shape[1], round((i + 1) / rate * sample_rate))
                    if upto > done:
                        out.mux(as_.encode(_audio_frames(a, sample_rate, done, upto)))
                        done = upto
            out.mux(vs.encode(None))
            if as_ is not None:
                out.mux(as_.encode(None))
    return path


def write_audio(path: str | os.PathLike, audio, sample_rate: int = 16000, *, bit_rate: int = 96000) -> Path:
    """Write a float ``(S,)`` mono or ``(C, S)`` waveform, atomically.

    The suffix picks the format: .wav (16-bit PCM), .flac, .mp3, .m4a (AAC) or .ogg (Opus).
    """
    path = Path(path)
    if path.suffix.lower() not in AUDIO_FORMATS:
        raise MediaError(path, f"unknown audio suffix {path.suffix!r} (expected one of {', '.join(AUDIO_FORMATS)})")
    fmt, codec = AUDIO_FORMATS[path.suffix.lower()]
    a = _audio_array(path, audio)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format=fmt) as out:
            stream = _add_audio_stream(out, codec, sample_rate, a.shape[0], bit_rate)
            block = 1 << 16
            for begin in range(0, a.shape[1], block):
                out.mux(stream.encode(_audio_frames(a, sample_rate, begin, min(a.shape[1], begin + block))))
            out.mux(stream.encode(None))
    return path
