"""The synthetic audio-visual corpus: files, manifest, determinism, the command, and per-modality learnability."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lightning_emo.cli import main as cli_main
from lightning_emo.data import synthetic
from lightning_emo.data.corpora.cheavd import CLASSES
from lightning_emo.data.manifest import check_speaker_independent, read_manifest
from lightning_emo.data.media import load_audio, load_frames, probe
from lightning_emo.data.synthetic import SynthConfig, make_clip, make_speaker, synthesize

# ------------------------------------------------------------------------ crude per-clip features


def audio_summary(wave: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Crude prosody of a mono waveform ``(S,)``: pitch level/spread/contour, energy, spectrum, rate.

    Pitch is the autocorrelation peak (70-400 Hz) of 40 ms frames every 10 ms.
    Returns a ``(13,)`` vector.
    """
    x = np.asarray(wave, dtype=np.float64)
    hop, win = sr // 100, sr // 25
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * np.hanning(win)
    n = len(frames)
    db = 20 * np.log10(np.sqrt((frames ** 2).mean(1)) + 1e-8)
    active = db > db.max() - 25
    spec = np.abs(np.fft.rfft(frames, 2 * win)) ** 2
    ac = np.fft.irfft(spec)[:, :win]
    lo, hi = sr // 400, sr // 70
    lag = lo + ac[:, lo:hi].argmax(1)
    clarity = ac[np.arange(n), lag] / (ac[:, 0] + 1e-12)
    voiced = active & (clarity > 0.4)
    semis = 12 * np.log2(sr / lag[voiced] / 100) if voiced.sum() > 2 else np.zeros(3)
    freqs = np.fft.rfftfreq(2 * win, 1 / sr)
    ps = spec[active]
    centroid = (ps * freqs).sum(1) / (ps.sum(1) + 1e-12)
    high = ps[:, freqs > 3000].sum(1) / (ps.sum(1) + 1e-12)
    onsets = np.sum(np.diff(active.astype(int)) > 0)
    d = np.diff(db[active])
    return np.array([np.median(semis), np.std(semis), np.percentile(semis, 90) - np.percentile(semis, 10),
                     semis[-max(1, len(semis) // 4):].mean() - semis.mean(), db[active].mean(), db[active].std(),
                     voiced.sum() / max(1, active.sum()), centroid.mean(), np.log(high.mean() + 1e-9),
                     clarity[voiced].mean() if voiced.any() else 0.0, np.abs(d).mean() if len(d) else 0.0,
                     onsets / max(0.1, active.sum() / 100), active.sum() / 100])


def face_summary(frames: np.ndarray) -> np.ndarray:
    """Crude face geometry of RGB frames ``(N, H, W, 3)`` uint8, median over frames with a face.

    Per frame: mouth height and width and curvature (reddish pixels in the lower half: row of the
    corners minus row of the centre), dark mouth-interior area, eye-white area and height, and the
    distance from the eyes up to the darkest row above them (the brows), inner and outer halves.
    Returns a ``(10,)`` vector (NaN where no frame shows a face).
    """
    f = np.asarray(frames, dtype=np.float32)
    n, h, w, _ = f.shape
    r, g = f[..., 0], f[..., 1]
    lower = (np.arange(h) > h * 0.5)[None, :, None]
    mouth = (r > 1.8 * g) & (r > 40) & lower
    interior = mouth & (r < 110) & (g < 60)
    white = (f.min(-1) > 215) & (f.max(-1) - f.min(-1) < 25) & ~lower
    rows = []
    for i in range(n):
        m, s = mouth[i], white[i]
        if m.sum() < 10 or s.sum() < 4:
            continue  # no face (or an occluded one) in this frame
        mr, mc = np.nonzero(m)
        c0, c1 = mc.min(), mc.max()
        width = c1 - c0 + 1
        off = np.abs(mc - (c0 + c1) / 2)
        centre, edge = off < width * 0.15, off > width * 0.35
        curvature = mr[edge].mean() - mr[centre].mean() if edge.any() and centre.any() else 0.0
        sr_, sc = np.nonzero(s)
        eye_row = sr_.mean()
        lum = f[i].mean(-1)
        mid = (sc.min() + sc.max()) / 2
        dists = []
        for cols in (sc[sc < mid], sc[sc >= mid]):
            if len(cols) == 0:
                dists += [np.nan, np.nan]
                continue
            a, z = cols.min(), cols.max() + 1
            for c_lo, c_hi in ((a, (a + z) // 2), ((a + z) // 2, z)):
                top = max(0, int(eye_row) - 30)
                profile = lum[top:int(eye_row) - 3, c_lo:max(c_lo + 1, c_hi)].mean(1)
                dists.append(eye_row - (top + profile.argmin()) if len(profile) else np.nan)
        inner, outer = np.nanmean([dists[1], dists[2]]), np.nanmean([dists[0], dists[3]])
        rows.append([m.sum() / width, width, curvature, interior[i].sum() / width, s.sum(),
                     len(np.unique(sr_)), inner, outer, inner - outer])
    if not rows:
        return np.full(10, np.nan)
    return np.concatenate([np.nanmedian(np.array(rows, dtype=np.float64), 0), [len(rows) / n]])


def cv_accuracy(X: np.ndarray, y: np.ndarray, groups) -> tuple[float, np.ndarray]:
    """Speaker-grouped 5-fold accuracy of a logistic regression; also the out-of-fold posteriors."""
    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    p = cross_val_predict(model, X, y, cv=GroupKFold(5), groups=groups, method="predict_proba")
    return float((np.unique(y)[p.argmax(1)] == y).mean()), p


def modality_accuracies(A, V, y, groups) -> dict[str, float]:
    acc_a, pa = cv_accuracy(A, y, groups)
    acc_v, pv = cv_accuracy(V, y, groups)
    acc_c, _ = cv_accuracy(np.hstack([A, V]), y, groups)
    late = float(((np.log(pa + 1e-9) + np.log(pv + 1e-9)).argmax(1) == y).mean())
    return {"audio": acc_a, "face": acc_v, "concat": acc_c, "product": late}


# ------------------------------------------------------------------------------------ the corpus


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    started = time.perf_counter()
    path = synthesize(out, clips_per_class=4, seed=3)
    return out, path, time.perf_counter() - started


def test_small_corpus_files_and_manifest(small):
    out, path, _ = small
    m = read_manifest(path)
    assert m.classes == CLASSES and m.corpus == "synthetic" and len(m) == 28
    assert all(c.speaker and c.split in ("train", "val", "test") for c in m.clips)
    assert {c.split for c in m.clips} == {"train", "val", "test"}
    assert check_speaker_independent(m.clips) == {}
    assert sorted(p.name for p in (out / "clips").iterdir()) == sorted(f"{c.clip_id}.mp4" for c in m.clips)
    for c in m.clips[::4]:
        info = probe(m.media_path(c))
        assert info.has_audio and info.has_video and info.container.startswith("mov,mp4")
        assert (info.width, info.height, info.fps, info.sample_rate) == (112, 112, 15.0, 16000)
        assert info.video_codec == "h264" and info.audio_codec == "aac"
        assert 1.0 <= info.duration <= 6.0
    meta = json.loads((out / "synth.json").read_text())
    assert meta["parameters"]["seed"] == 3 and meta["parameters"]["clips_per_class"] == 4
    assert meta["parameters"]["version"] == synthetic.SYNTH_VERSION and meta["clips"] == 28


def test_files_hold_the_generated_media(small):
    """What make_clip generated is what the MP4 decodes to (up to H.264/AAC loss)."""
    out, path, _ = small
    m = read_manifest(path)
    clip = m.clips[5]
    index = int(clip.clip_id.rsplit("_", 1)[1])
    speaker = make_speaker(3, int(clip.speaker[3:]))
    frames, audio, info = make_clip(SynthConfig(clips_per_class=4, seed=3), clip.label, index, speaker)
    got_audio = load_audio(m.media_path(clip)).numpy()
    got_frames, _ = load_frames(m.media_path(clip))
    assert got_frames.shape == frames.shape
    assert abs(len(got_audio) - len(audio)) <= 16  # MP4 keeps the track length in milliseconds
    n = min(len(got_audio), len(audio))
    assert np.corrcoef(got_audio[:n], audio[:n])[0, 1] > 0.95
    mse = ((got_frames.numpy().astype(np.float64) - frames) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / mse) > 28
    # some silence at both ends
    sr = 16000
    assert np.abs(audio[: int(0.1 * sr)]).max() < 0.2 * np.abs(audio).max()
    assert np.abs(audio[-int(0.1 * sr):]).max() < 0.2 * np.abs(audio).max()


def test_same_seed_same_media_other_seed_other_media(small, tmp_path):
    out, path, _ = small
    again = synthesize(tmp_path / "again", clips_per_class=1, seed=3)
    first = read_manifest(path).by_id()
    m = read_manifest(again)
    for c in m.clips[:3]:
        a, b = m.media_path(c), read_manifest(path).media_path(first[c.clip_id])
        assert a.read_bytes() == b.read_bytes()
        torch.testing.assert_close(load_audio(a), load_audio(b), rtol=0, atol=0)
        torch.testing.assert_close(load_frames(a, fps=5)[0], load_frames(b, fps=5)[0], rtol=0, atol=0)
    other = synthesize(tmp_path / "other", clips_per_class=1, seed=4)
    c = read_manifest(other).clips[0]
    assert read_manifest(other).media_path(c).read_bytes() != m.media_path(m.by_id()[c.clip_id]).read_bytes()


def test_rerun_is_a_no_op_unless_overwrite(tmp_path):
    path = synthesize(tmp_path, clips_per_class=1, seed=0)
    clip = tmp_path / "clips" / "synth_angry_000.mp4"
    stamp = clip.stat().st_mtime_ns
    assert synthesize(tmp_path, clips_per_class=1, seed=0) == path
    assert clip.stat().st_mtime_ns == stamp
    synthesize(tmp_path, clips_per_class=1, seed=0, overwrite=True)
    assert clip.stat().st_mtime_ns != stamp


def test_bad_arguments():
    with pytest.raises(ValueError, match="clips_per_class"):
        synthesize("unused", clips_per_class=0)
    with pytest.raises(ValueError, match="even number of pixels"):
        synthesize("unused", size=111)


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert cli_main(["synth", "--out", str(out), "--clips-per-class", "1", "--seed", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "7 clips, 7 classes" in printed and "speakers:" in printed and "wrote" in printed
    m = read_manifest(out / "manifest.csv")
    assert len(m) == 7 and m.classes == CLASSES and all(m.media_path(c).is_file() for c in m.clips)
    assert cli_main(["synth", "--out", str(out), "--size", "33"]) == 2
    assert "size=33 (--size): expected an even number of pixels" in capsys.readouterr().err


# ------------------------------------------------------------------------ informativeness


def _in_memory(clips_per_class: int, seed: int, max_speech: float = 3.0, frame_step: int = 4):
    """Features straight from make_clip (no encoding): audio and face summaries, labels, speakers."""
    config = SynthConfig(clips_per_class=clips_per_class, seed=seed, max_speech=max_speech)
    speakers = [make_speaker(seed, i) for i in range(config.num_speakers)]
    A, V, y, groups, infos = [], [], [], [], []
    for c, label in enumerate(CLASSES):
        for j in range(clips_per_class):
            spk = speakers[synthetic.speaker_index(c, j, config.num_speakers)]
            frames, audio, info = make_clip(config, label, j, spk)
            A.append(audio_summary(audio))
            V.append(face_summary(frames[::frame_step]))
            y.append(c)
            groups.append(spk.name)
            infos.append(info)
    return np.array(A), np.array(V), np.array(y), groups, infos


def test_class_design_makes_the_modalities_complementary():
    """On the cue values themselves (no media): each modality separates the pairs the other confuses."""
    config = SynthConfig(clips_per_class=40)
    speakers = [make_speaker(0, i) for i in range(config.num_speakers)]
    A, V, y, groups = [], [], [], []
    for c, label in enumerate(CLASSES):
        for j in range(config.clips_per_class):
            spk = speakers[synthetic.speaker_index(c, j, config.num_speakers)]
            voice, face = synthetic.observed_cues(synthetic.clip_cues(config, label, j)[1], spk)
            A.append(voice)
            V.append(face)
            y.append(c)
            groups.append(spk.name)
    A, V, y, groups = np.array(A), np.array(V), np.array(y), np.array(groups)

    def acc(X, labels=None) -> float:
        keep = np.ones(len(y), bool) if labels is None else np.isin(y, [CLASSES.index(k) for k in labels])
        return cv_accuracy(X[keep], y[keep], groups[keep])[0]

    voice, face, both = acc(A), acc(V), acc(np.hstack([A, V]))
    assert 0.5 < voice < 0.85 and 0.5 < face < 0.85 and both > max(voice, face) + 0.1, (voice, face, both)
    for pair in (("angry", "happy"), ("neutral", "disgust")):  # same arousal, different faces
        assert acc(V, pair) > acc(A, pair) + 0.15, pair
    for pair in (("angry", "disgust"), ("sad", "neutral")):  # similar faces, different voices
        assert acc(A, pair) > acc(V, pair) + 0.15, pair


def test_each_modality_is_partly_informative_and_fusion_helps():
    """Crude per-clip statistics of generated media + logistic regression, speaker-independent CV."""
    A, V, y, groups, infos = _in_memory(12, seed=0)
    acc = modality_accuracies(A, V, y, groups)
    chance = 1 / len(CLASSES)
    assert 2 * chance < acc["audio"] < 0.9, acc
    assert 2 * chance < acc["face"] < 0.9, acc
    assert max(acc["concat"], acc["product"]) > max(acc["audio"], acc["face"]) + 0.05, acc

    def mean(feature: np.ndarray, labels) -> float:
        return float(np.nanmean(feature[np.isin(y, [CLASSES.index(k) for k in labels])]))

    # voice: high-arousal classes are higher pitched; sad is the quietest
    pitch, loud = A[:, 0], A[:, 4]
    assert mean(pitch, ["angry", "happy", "fear", "surprise"]) > mean(pitch, ["sad", "neutral", "disgust"]) + 2
    assert mean(loud, ["sad"]) < min(mean(loud, [k]) for k in CLASSES if k != "sad")
    # face: happy mouths curve up (corners above the centre); fear/surprise show the most eye white
    curvature, eye_white = V[:, 2], V[:, 4]
    assert mean(curvature, ["happy"]) < min(mean(curvature, [k]) for k in CLASSES if k != "happy")
    assert mean(eye_white, ["fear", "surprise"]) > mean(eye_white, ["angry", "disgust", "sad", "neutral", "happy"])
    # some faces are missing or occluded
    assert any(i["face_missing"] > 0 for i in infos) and any(i["face_occluded"] > 0 for i in infos)


def test_durations_span_one_to_six_seconds():
    config = SynthConfig()
    durations = []
    for c, label in enumerate(CLASSES):
        for j in range(30):
            cues = synthetic.clip_cues(config, label, j)[1]
            durations.append(cues["lead"] + cues["speech"] + cues["tail"])
    assert 1.0 <= min(durations) < 1.6 and 5.2 < max(durations) <= 6.0


@pytest.mark.slow
def test_default_corpus_through_media(tmp_path):
    """The default corpus (7 x 30 clips), written and decoded: timing and per-modality accuracy."""
    started = time.perf_counter()
    path = synthesize(tmp_path, seed=0)
    seconds = time.perf_counter() - started
    m = read_manifest(path)
    assert len(m) == 210
    A, V, y, groups = [], [], [], []
    for c in m.clips:
        A.append(audio_summary(load_audio(m.media_path(c)).numpy()))
        V.append(face_summary(load_frames(m.media_path(c), fps=5)[0].numpy()))
        y.append(m.label_index(c.label))
        groups.append(c.speaker)
    acc = modality_accuracies(np.array(A), np.array(V), np.array(y), groups)
    print(f"default synth: {seconds:.1f} s; accuracies {acc}")
    assert 0.3 < acc["audio"] < 0.9 and 0.3 < acc["face"] < 0.9, acc
    assert max(acc["concat"], acc["product"]) > max(acc["audio"], acc["face"]) + 0.05, acc
