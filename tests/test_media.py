"""Media decoding and writing (lightning_emo.data.media) on real files written by the package's writers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize

from lightning_emo.data.media import (
    MediaError,
    MissingStreamError,
    iter_audio,
    iter_frames,
    load_audio,
    load_frames,
    probe,
    write_audio,
    write_video,
)

SR = 16000
FPS = 10
N_FRAMES = 20  # 2 s


def _tone(seconds: float, freq: float = 440.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _counter_frames(n: int = N_FRAMES, h: int = 64, w: int = 96) -> np.ndarray:
    """Frame i is a flat grey of level 10 + 10 i: the index survives H.264 as the mean level."""
    return np.stack([np.full((h, w, 3), 10 + 10 * i, np.uint8) for i in range(n)])


def _index(frame) -> int:
    return int(round((float(np.asarray(frame, dtype=np.float64).mean()) - 10) / 10))


def _peak_hz(x: torch.Tensor, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x.numpy() * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    files = {
        "av": write_video(d / "av.mp4", _counter_frames(), FPS, _tone(2.0), SR, threads=1),
        "mute": write_video(d / "mute.mp4", _counter_frames(), FPS, threads=1),
        "wav": write_audio(d / "tone.wav", _tone(2.0), SR),
    }
    return d, files


# ------------------------------------------------------------------------------------------ probe


def test_probe_reports_tracks_and_geometry(media):
    _, f = media
    info = probe(f["av"])
    assert info.has_audio and info.has_video
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert (info.width, info.height, info.fps, info.sample_rate, info.channels) == (96, 64, 10.0, SR, 1)
    assert info.video_codec == "h264" and info.audio_codec == "aac" and info.num_frames == N_FRAMES
    wav = probe(f["wav"])
    assert wav.has_audio and not wav.has_video and wav.sample_rate == SR and wav.duration == pytest.approx(2.0)
    assert not probe(f["mute"]).has_audio


# ------------------------------------------------------------------------------------------ audio


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_load_audio_resamples(media, rate):
    _, f = media
    for path in (f["av"], f["wav"]):
        x = load_audio(path, sample_rate=rate)
        assert x.dtype == torch.float32 and x.ndim == 1
        assert len(x) == round(2.0 * rate)  # MP4's index trims the AAC padding exactly
        assert _peak_hz(x, rate) == pytest.approx(440, abs=3)
        assert 0.4 < float(x.abs().max()) < 0.6


def test_stereo_is_mixed_down_as_the_channel_mean(tmp_path):
    tone = _tone(1.0, sr=44100)
    path = write_audio(tmp_path / "stereo.wav", np.stack([tone, np.zeros_like(tone)]), 44100)
    x = load_audio(path, 16000)
    assert probe(path).channels == 2 and len(x) == 16000
    assert float(x.abs().max()) == pytest.approx(0.25, abs=0.01)  # (0.5 + 0) / 2


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".m4a"])
def test_audio_only_containers(tmp_path, suffix):
    path = write_audio(tmp_path / f"a{suffix}", _tone(1.5, 330.0), SR)
    x = load_audio(path, SR)
    assert len(x) == pytest.approx(1.5 * SR, abs=0.06 * SR)
    assert _peak_hz(x, SR) == pytest.approx(330, abs=3)


@pytest.mark.parametrize("suffix", [".mkv", ".avi", ".flv", ".mov"])
def test_video_containers(tmp_path, suffix):
    path = write_video(tmp_path / f"v{suffix}", _counter_frames(), FPS, _tone(2.0), SR, threads=1)
    x = load_audio(path, SR)
    assert len(x) == pytest.approx(2 * SR, abs=0.12 * SR) and _peak_hz(x, SR) == pytest.approx(440, abs=3)
    frames, times = load_frames(path)
    assert frames.shape == (N_FRAMES, 64, 96, 3)
    assert [_index(fr) for fr in frames] == list(range(N_FRAMES))
    assert torch.all(torch.diff(times) > 0)


def test_audio_window_equals_the_slice_of_the_whole(media):
    _, f = media
    for path in (f["av"], f["wav"]):
        whole = load_audio(path, SR)
        for start, end in [(0.7, 1.3), (1.234, None), (None, 0.5)]:
            part = load_audio(path, SR, start=start, end=end)
            a = round((start or 0) * SR)
            b = len(whole) if end is None else round(end * SR)
            # seeking decodes a pre-roll first, so the cut matches the continuous decode exactly
            torch.testing.assert_close(part, whole[a:b], rtol=0, atol=0)


def test_iter_audio_chunks_concatenate_to_load_audio(media):
    _, f = media
    chunks = list(iter_audio(f["av"], SR, chunk_seconds=0.3, start=0.25))
    assert [len(c) for c in chunks[:-1]] == [4800] * (len(chunks) - 1) and 0 < len(chunks[-1]) <= 4800
    torch.testing.assert_close(torch.cat(chunks), load_audio(f["av"], SR, start=0.25), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ frames


def test_native_frames_and_times(media):
    _, f = media
    frames, times = load_frames(f["av"])
    assert frames.dtype == torch.uint8 and frames.shape == (N_FRAMES, 64, 96, 3)
    assert times.dtype == torch.float64
    np.testing.assert_allclose(times.numpy(), np.arange(N_FRAMES) / FPS, atol=1e-3)
    assert [_index(fr) for fr in frames] == list(range(N_FRAMES))


@pytest.mark.parametrize("fps, expected", [
    (5, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]),  # every other frame
    (3, [0, 3, 7, 10, 13, 17]),  # nearest frame to k/3 s
    (10, list(range(20))),
])
def test_frames_sampled_at_a_target_rate(media, fps, expected):
    _, f = media
    got = [(t, _index(fr)) for t, fr in iter_frames(f["av"], fps=fps)]
    assert [i for _, i in got] == expected
    np.testing.assert_allclose([t for t, _ in got], np.array(expected) / FPS, atol=1e-3)  # the frames' own times


def test_upsampling_repeats_frames(media):
    _, f = media
    frames, times = load_frames(f["av"], fps=25)
    assert len(frames) == 50  # 2 s at 25 fps
    idx = [_index(fr) for fr in frames]
    assert idx[0] == 0 and idx[-1] == N_FRAMES - 1 and sorted(idx) == idx and set(idx) == set(range(N_FRAMES))
    assert torch.all(torch.diff(times) >= 0)


def test_frames_cut_to_start_end(media):
    _, f = media
    frames, times = load_frames(f["av"], start=0.5, end=1.5)
    assert [_index(fr) for fr in frames] == list(range(5, 15))
    frames, times = load_frames(f["av"], fps=5, start=0.5, end=1.5)
    assert [_index(fr) for fr in frames] == [5, 7, 9, 11, 13]
    np.testing.assert_allclose(times.numpy(), [0.5, 0.7, 0.9, 1.1, 1.3], atol=1e-3)
    # a seek lands on the keyframe before the start and decodes up to it: same pixels as decoding on
    whole, _ = load_frames(f["av"])
    torch.testing.assert_close(load_frames(f["av"], start=1.2)[0], whole[12:], rtol=0, atol=0)


def test_resize_shorter_side_and_exact(media):
    _, f = media
    assert load_frames(f["av"], size=32)[0].shape == (N_FRAMES, 32, 48, 3)  # aspect 64x96 kept
    assert load_frames(f["av"], size=(40, 30), end=0.3)[0].shape == (3, 40, 30, 3)


def test_real_photo_survives_the_round_trip(tmp_path):
    """skimage's astronaut photo as a panning shot: decoded frames match what was written."""
    photo = (resize(skdata.astronaut(), (160, 160), anti_aliasing=True) * 255).astype(np.uint8)
    camera = (resize(skdata.camera(), (160, 160), anti_aliasing=True) * 255).astype(np.uint8)
    shots = [photo[i:i + 128, i:i + 128] for i in range(0, 24, 2)]
    shots += [np.repeat(camera[i:i + 128, 16:144, None], 3, axis=2) for i in range(0, 24, 2)]
    frames = np.stack(shots)
    path = write_video(tmp_path / "photo.mp4", frames, 12, threads=1, crf=18)
    got, _ = load_frames(path)
    assert got.shape == frames.shape
    mse = ((got.numpy().astype(np.float64) - frames) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / mse) > 30  # PSNR in dB
    small, _ = load_frames(path, size=64, interpolation="AREA")
    ref = resize(frames[0], (64, 64), anti_aliasing=True, preserve_range=True)
    assert np.abs(small[0].numpy().astype(np.float64) - ref).mean() < 6


def test_display_rotation_is_applied(tmp_path):
    """A phone-style file (display matrix: 90 degrees counter-clockwise) comes out upright."""
    import av

    frames = np.zeros((4, 32, 64, 3), np.uint8)
    frames[:, :, :32] = 255  # left half white
    with av.open(str(tmp_path / "rot.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    got, _ = load_frames(tmp_path / "rot.mp4")
    assert got.shape == (4, 64, 32, 3)
    assert float(got[0, :28].float().mean()) < 10 and float(got[0, 36:].float().mean()) > 245  # left -> bottom
    assert load_frames(tmp_path / "rot.mp4", size=16)[0].shape == (4, 32, 16, 3)
    assert load_frames(tmp_path / "rot.mp4", size=(20, 10))[0].shape == (4, 20, 10, 3)


def test_iter_frames_streams_one_frame_at_a_time(media):
    _, f = media
    it = iter_frames(f["av"], fps=5)
    t, first = next(it)
    assert t == 0.0 and isinstance(first, np.ndarray) and first.shape == (64, 96, 3) and first.dtype == np.uint8
    it.close()  # closing early releases the file


# ------------------------------------------------------------------------------------------ errors


def test_missing_empty_and_non_media_files(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 50)
    with pytest.raises(MediaError, match=r"nope\.mp4: file not found"):
        load_audio(tmp_path / "nope.mp4")
    with pytest.raises(MediaError, match=r"empty\.mp4: empty file"):
        load_frames(empty)
    for fn in (load_audio, load_frames, probe):
        with pytest.raises(MediaError, match=r"notes\.mp4: not a readable audio/video file"):
            fn(text)


def test_truncated_files(media, tmp_path):
    _, f = media
    data = f["av"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: it is lost
    with pytest.raises(MediaError, match=r"cut\.mp4: not a readable audio/video file, or corrupt/truncated"):
        load_audio(cut)
    # index first (faststart), data cut: the track ends before the index says it does
    longer = np.concatenate([_counter_frames()] * 3)
    fast = write_video(tmp_path / "fast.mp4", longer, FPS, _tone(6.0), SR, threads=1, faststart=True)
    data = fast.read_bytes()
    cut2 = tmp_path / "cut2.mp4"
    cut2.write_bytes(data[: len(data) * 2 // 3])
    assert probe(cut2).duration == pytest.approx(6.0, abs=0.05)  # the header still promises 6 s
    with pytest.raises(MediaError, match=r"cut2\.mp4: (corrupt or truncated|truncated) video track"):
        load_frames(cut2)
    with pytest.raises(MediaError, match=r"cut2\.mp4: (corrupt or truncated|truncated) audio track"):
        load_audio(cut2)
    assert len(load_frames(cut2, end=1.0)[0]) == 10  # the intact start is still usable


def test_missing_tracks(media):
    _, f = media
    with pytest.raises(MissingStreamError, match=r"mute\.mp4: has no audio track") as e:
        load_audio(f["mute"])
    assert e.value.kind == "audio"
    with pytest.raises(MissingStreamError, match=r"tone\.wav: has no video track") as e:
        load_frames(f["wav"])
    assert e.value.kind == "video"
    with pytest.raises(MissingStreamError):
        iter_frames(f["wav"])  # raised on the call, before iterating


def test_empty_windows(media):
    _, f = media
    with pytest.raises(MediaError, match=r"start 5\.000 s is at or beyond the end of the audio \(it ends at 2\.000 s"):
        load_audio(f["av"], start=5.0)
    with pytest.raises(MediaError, match=r"beyond the end of the video"):
        load_frames(f["av"], start=2.5, fps=5)
    with pytest.raises(MediaError, match=r"beyond the end of the audio"):
        load_audio(f["wav"], start=2.0, end=3.0)
    with pytest.raises(MediaError, match=r"end \(1 s\) must be .* after start \(1 s\)"):
        load_audio(f["av"], start=1.0, end=1.0)
    with pytest.raises(MediaError, match="start must be a finite, non-negative"):
        load_frames(f["av"], start=-1)


def test_writer_rejects_bad_input_and_writes_atomically(tmp_path):
    frames = _counter_frames(4)
    with pytest.raises(MediaError, match=r"odd\.mp4: frame height and width must be even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 33, 32, 3), np.uint8), 5)
    with pytest.raises(MediaError, match=r"uint8 \(N, H, W, 3\)"):
        write_video(tmp_path / "f.mp4", frames.astype(np.float32), 5)
    with pytest.raises(MediaError, match=r"unknown video suffix '\.xyz'"):
        write_video(tmp_path / "v.xyz", frames, 5)
    with pytest.raises(MediaError, match="NaN"):
        write_audio(tmp_path / "nan.wav", np.array([0.0, np.nan], np.float32))
    with pytest.raises(Exception):
        write_video(tmp_path / "bad.mp4", frames, 5, video_codec="no_such_codec")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left behind
