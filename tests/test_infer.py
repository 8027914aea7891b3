"""``lightning-emo infer``: clips (synthetic, no audio track, no face), in-memory arrays, and the streamed timeline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lightning_emo.cli import main as cli_main
from lightning_emo.hub import Recognizer
from lightning_emo.hub._testing import CLASSES, random_clip, tiny_model




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    paths = tiny_model(root)
    paths["noaudio"] = random_clip(root / "noaudio.mp4", seconds=2.0, audio=False)
    paths["noface"] = random_clip(root / "noface.mp4", seconds=2.0, blank=True)
    return paths


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory):
    """One clip of the built-in synthetic corpus (a drawn talking face with speech-like audio)."""
    from lightning_emo.data.media import write_video
    from lightning_emo.data.synthetic import SynthConfig, make_clip, make_speaker

    config = SynthConfig(clips_per_class=1, size=64, fps=10.0)
    frames, audio, _ = make_clip(config, "happy", 0, make_speaker(0, 0))
    return write_video(tmp_path_factory.mktemp("synth") / "synth_happy_000.mp4", frames, config.fps, audio,
                       config.sample_rate, threads=1)


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = cli_main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_infer_synthetic_clip_prints_a_table_and_writes_json_and_csv(tiny, synthetic_clip, tmp_path, capsys):
    rc, out, err = _run(["infer", synthetic_clip, "--model", tiny["export"], "--json", tmp_path / "p.json",
                         "--csv", tmp_path / "p.csv"], capsys)
    assert rc == 0, err
    header, rule, row = out.strip().splitlines()
    assert header.split()[:3] == ["file", "label", "confidence"] and "audio" in header and "video" in header
    assert row.startswith("synth_happy_000.mp4") and row.split()[1] in CLASSES
    doc = json.loads((tmp_path / "p.json").read_text())
    (pred,) = doc["predictions"]
    assert doc["classes"] == CLASSES and pred["missing"] == {} and pred["label"] in CLASSES
    assert abs(sum(pred["fused"].values()) - 1) < 1e-6
    assert pred["frames"]["video"] > 0 and pred["frames"]["audio"] > 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 1 and rows[0]["label"] == pred["label"]
    assert {f"fused_{c}" for c in CLASSES} | {f"audio_{c}" for c in CLASSES} <= set(rows[0])


def test_infer_video_without_audio_track_says_audio_missing(tiny, tmp_path, capsys):
    rc, out, err = _run(["infer", tiny["noaudio"], "--model", tiny["export"], "--json", tmp_path / "p.json"], capsys)
    assert rc == 0, err
    assert "audio (no_audio)" in out
    (pred,) = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert pred["missing"] == {"audio": "no_audio"} and pred["probs"]["audio"] is None
    assert pred["label"] == max(pred["probs"]["video"], key=pred["probs"]["video"].get)  # video alone decides
    assert pred["decided_by"] == "video"


def test_infer_video_without_face_predicts_from_audio(tiny, capsys):
    model = Recognizer.from_pretrained(tiny["export"])
    pred = model.predict(tiny["noface"])
    assert pred.missing == {"video": "no_face"} and pred.probs["video"] is None
    np.testing.assert_array_equal(pred.fused, pred.probs["audio"])
    rc, out, _ = _run(["infer", tiny["noface"], "--model", tiny["export"]], capsys)
    assert rc == 0 and "video (no_face)" in out


def test_infer_reports_bad_inputs(tiny, tmp_path, capsys):
    rc, _, err = _run(["infer", tmp_path / "absent.mp4", "--model", tiny["export"]], capsys)
    assert rc == 2 and "file not found" in err
    rc, _, err = _run(["infer", tiny["noaudio"], "--model", "no-such-model"], capsys)
    assert rc == 2 and "not a directory, a 'hf-hub:org/name[@revision]' reference or a zoo model" in err


def test_predict_arrays_matches_predict_and_resamples(tiny):
    from lightning_emo.data.media import load_audio, load_frames

    model = Recognizer.from_pretrained(tiny["export"])
    clip = random_clip(tiny["export"].parent / "arrays.mp4", seconds=2.0, fps=10.0)
    ref = model.predict(clip)
    wave = load_audio(clip, 16000)
    frames, _ = load_frames(clip, fps=5.0)
    same = model.predict_arrays(waveform=wave, sample_rate=16000, frames=frames.numpy(), fps=5.0)
    np.testing.assert_array_equal(same.fused, ref.fused)
    # native-rate frames are resampled to the model's 5 fps as iter_frames samples them
    native, _ = load_frames(clip)
    resampled = model.predict_arrays(frames=native, fps=10.0)
    np.testing.assert_array_equal(resampled.probs["video"], ref.probs["video"])
    assert resampled.missing == {"audio": "not_given"}
    at_8k = model.predict_arrays(waveform=load_audio(clip, 8000).numpy(), sample_rate=8000)
    assert at_8k.probs["audio"] is not None and at_8k.missing == {"video": "not_given"}
    nothing = model.predict_arrays()
    assert nothing.label is None and nothing.fused is None


def test_timeline_windows_cover_the_media(tiny, tmp_path):
    from lightning_emo.hub.timeline import iter_windows

    clip = random_clip(tmp_path / "seven.mp4", seconds=7.0, fps=10.0)
    windows = list(iter_windows(clip, window=4.0, hop=2.0, sample_rate=16000, fps=5.0))
    assert [(s, e) for s, e, _, _ in windows] == [(0.0, 4.0), (2.0, 6.0), (4.0, pytest.approx(7.0, abs=0.05))]
    assert [len(w) for _, _, w, _ in windows][:2] == [64000, 64000]
    assert [len(f) for *_, f in windows] == [20, 20, 15]
    noaudio = list(iter_windows(tiny["noaudio"], window=1.0, hop=1.0, sample_rate=16000, fps=5.0))
    assert len(noaudio) == 2 and all(w == "no_audio" for _, _, w, _ in noaudio)


def test_timeline_cli_writes_csv_json_png(tiny, tmp_path, capsys):
    clip = random_clip(tmp_path / "ten.mp4", seconds=10.0, fps=10.0)
    rc, out, err = _run(["infer", clip, "--model", tiny["export"], "--timeline", "--window", "3", "--hop", "1.5",
                         "--out", tmp_path / "tl"], capsys)
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / "tl" / "ten.timeline.csv")))
    assert [float(r["start"]) for r in rows] == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]
    assert all(r["label"] in CLASSES for r in rows)
    doc = json.loads((tmp_path / "tl" / "ten.timeline.json").read_text())
    assert doc["window"] == 3.0 and len(doc["windows"]) == 6
    assert (tmp_path / "tl" / "ten.timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "6 windows of 3 s every 1.5 s" in out


def test_infer_imports_neither_lightning_nor_scikit_learn(tiny, synthetic_clip):
    """A cold `lightning-emo infer` with a prior-fusion model loads only what inference needs (fast start)."""
    probe = ("import sys; from lightning_emo.cli import main; "
             f"rc = main(['infer', {str(synthetic_clip)!r}, '--model', {str(tiny['export'])!r}, '--quiet']); "
             "print(rc, sorted(m for m in ('pytorch_lightning', 'lightning_fabric', 'sklearn', 'torchmetrics') "
             "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "0 []"


# Warm up on the first file (imports, model loading, first-call allocations), then measure each file:
# tracemalloc's peak (numpy buffers: decoded audio and frames) and the process's peak RSS after it.
MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc
    from lightning_emo.cli import main
    model, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    args = ["--model", model, "--timeline", "--window", "4", "--hop", "2", "--out", out, "--quiet", "--threads", "1",
            "--overwrite"]  # the warm-up wrote the first file's timeline
    assert main(["infer", files[0], *args, "--no-plot"]) == 0
    result = {}
    for f in files:
        tracemalloc.start()
        t0 = time.perf_counter()
        rc = main(["infer", f, *args])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result[f] = {"rc": rc, "traced_peak_mb": round(peak / 2**20, 2), "seconds": round(time.perf_counter() - t0, 1),
                     "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps(result))
""")


def _long_video(path: Path, seconds: float, fps: float = 10.0, size: int = 128) -> Path:
    """Moving texture, blank (faceless) from 40 % to 55 % of the time, a tone throughout."""
    from lightning_emo.data.media import write_video

    rng = np.random.default_rng(0)
    n = int(seconds * fps)
    base = rng.integers(0, 256, (size * 2, size * 2, 3), dtype=np.uint8)
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        blank = 0.40 * n <= i < 0.55 * n
        frames[i] = 0 if blank else np.roll(base, (i % size, (3 * i) % size), axis=(0, 1))[:size, :size]
    t = np.arange(int(seconds * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (150 + 50 * np.sin(2 * np.pi * t / 30)) * t)).astype(np.float32)
    return write_video(path, frames, fps, wave, 16000, threads=1, preset="ultrafast")


def test_timeline_over_two_minutes_runs_in_bounded_memory(tiny, tmp_path):
    """Peak memory over a 2-minute video is that of a 20-second one: nothing grows with the length."""
    short = _long_video(tmp_path / "short.mp4", 20.0)
    long = _long_video(tmp_path / "long.mp4", 120.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tiny["export"]), str(tmp_path / "tl"),
                           str(short), str(long)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    s, lg = result[str(short)], result[str(long)]
    print(f"timeline memory: 20 s video {s}, 2 min video {lg}")
    assert s["rc"] == 0 and lg["rc"] == 0
    # the whole 2-min video decoded at 5 fps would be ~28 MB of frames + 7.3 MB of audio
    assert lg["traced_peak_mb"] < 12.0
    assert lg["traced_peak_mb"] < s["traced_peak_mb"] * 1.25 + 1.0
    assert lg["maxrss_mb"] - s["maxrss_mb"] < 25.0
    rows = list(csv.DictReader(open(tmp_path / "tl" / "long.timeline.csv")))
    assert len(rows) == 59 and float(rows[-1]["end"]) == pytest.approx(120.0, abs=0.1)
    faceless = [r for r in rows if "video:no_face" in r["missing"]]
    assert faceless and all(48.0 <= float(r["start"]) and float(r["end"]) <= 66.0 for r in faceless)
    assert all(r["label"] in CLASSES for r in rows)  # audio carries the faceless windows
    assert (tmp_path / "tl" / "long.timeline.png").is_file()


def test_an_audio_only_recognizer_does_not_import_the_face_stack(tiny, synthetic_clip, tmp_path):
    """Extractors register lazily: a cold `infer` with an MFCC-only model imports neither torchvision nor facenet."""
    audio_only = tmp_path / "audio_only"
    Recognizer.from_checkpoints({"audio": tiny["audio"]}, name="a", license="apache-2.0", corpus="random",
                                split_protocol="random features").save_pretrained(audio_only)
    probe = ("import sys; from lightning_emo.cli import main; "
             f"rc = main(['infer', {str(synthetic_clip)!r}, '--model', {str(audio_only)!r}, '--quiet']); "
             "print(rc, sorted(m for m in ('torchvision', 'facenet_pytorch', 'timm', 'skimage', 'pytorch_lightning') "
             "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "0 []"


def test_the_lazy_extractor_table_matches_what_each_module_registers():
    probe = textwrap.dedent("""
        import importlib, json
        from lightning_emo.extractors.base import EXTRACTORS
        out = {}
        for module in EXTRACTORS._modules:
            before = set(EXTRACTORS._builders)
            importlib.import_module(module)
            out[module] = sorted(set(EXTRACTORS._builders) - before)
        declared = {}
        for name, module in EXTRACTORS._lazy.items():
            declared.setdefault(module, []).append(name)
        print(json.dumps([out, {m: sorted(v) for m, v in declared.items()}]))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    registered, declared = json.loads(proc.stdout.strip().splitlines()[-1])
    assert registered == declared
