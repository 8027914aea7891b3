"""``lightning-emo extract``: the predict-loop extraction, resume after a kill, DDP, selection, end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_emo.data.datamodule import FeatureDataModule
from lightning_emo.data.manifest import Clip, Manifest, read_manifest
from lightning_emo.data.store import (
    FeatureStore,
    StaleStoreError,
    cache_key,
    key_differences,
)
from lightning_emo.extractors.base import ExtractorSpec, WeightsSource
from lightning_emo.extractors.extract import (
    ExtractionModule,
    build_for_extraction,
    extract,
    main,
    resolve_precision,
    run_extraction,
)
from lightning_emo.extractors.selection import FeatureSelector, select_features

REPO = Path(__file__).resolve().parents[1]


def _clips_available() -> bool:
    try:
        import lightning_emo.data.clips  # noqa: F401
    except ImportError:
        return False
    return True


needs_clips = pytest.mark.skipif(not _clips_available(), reason="lightning_emo.data.clips is not there yet")


# ------------------------------------------------------------------------------ predict_step alone


def test_predict_step_audio_and_missing_track():
    module = ExtractionModule(build_for_extraction("mfcc"))
    wave = torch.randn(3, 16000) * 0.1
    batch = {"clip_id": ["a", "b", "silent"], "waveform": wave, "waveform_lengths": torch.tensor([16000, 8000, 0]),
             "has_audio": torch.tensor([True, True, False])}
    out = module.predict_step(batch, 0)
    assert [r.clip_id for r in out] == ["a", "b", "silent"]
    assert out[0].features.shape == (98, 39) and out[1].features.shape == (48, 39) and out[0].mask.all()
    assert out[2].missing == "no_audio" and out[2].features is None
    # the shorter clip's features do not depend on the padding
    alone = module.predict_step({"clip_id": ["b"], "waveform": wave[1:2, :8000],
                                 "waveform_lengths": torch.tensor([8000])}, 0)[0]
    np.testing.assert_allclose(alone.features, out[1].features, atol=1e-4)


def test_predict_step_face_masks_and_blank_clip():
    from lightning_emo.extractors.face_detect import build_face_detector

    model = build_for_extraction("hog", fps=5)
    module = ExtractionModule(model, build_face_detector("none", crop_size=model.spec.crop_size))
    g = torch.Generator().manual_seed(0)
    face = torch.randint(0, 255, (4, 48, 64, 3), generator=g, dtype=torch.uint8)
    face[1] = 128  # one blank frame: no face there
    blank = torch.full((3, 48, 64, 3), 90, dtype=torch.uint8)
    batch = {"clip_id": ["face", "blank", "empty", "audio_only"], "frames": [face, blank, face[:0], face[:0]],
             "frame_lengths": torch.tensor([4, 3, 0, 0]), "has_video": torch.tensor([True, True, True, False])}
    out = module.predict_step(batch, 0)
    assert out[0].features.shape == (4, model.spec.dim) and out[0].mask.tolist() == [True, False, True, True]
    assert np.abs(out[0].features[1]).sum() == 0 and np.abs(out[0].features[0]).sum() > 0
    assert out[1].mask.shape == (3,) and not out[1].mask.any() and out[1].missing is None
    assert out[2].missing == "no_frames" and out[3].missing == "no_video"


def test_precision_and_weights_key(tmp_path, monkeypatch):
    net = ExtractorSpec("hubert_base", "audio", 768, 16000, 50.0, weights=WeightsSource("torchaudio", "HUBERT_BASE"))
    mfcc = build_for_extraction("mfcc").spec
    assert resolve_precision("auto", "cpu", net) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "auto", net) == "bf16-mixed"
    assert resolve_precision("auto", "gpu", mfcc) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cuda", net) == "16-mixed"
    assert resolve_precision("32-true", "cuda", net) == "32-true"
    # a local weights file enters the key by its digest, not its path; batch size is not in the key
    (tmp_path / "a.pt").write_bytes(b"weights A")
    (tmp_path / "b.pt").write_bytes(b"weights B")
    def spec(p, bs):
        return ExtractorSpec("x", "audio", 4, 16000, options={"weights": str(p), "batch_size": bs})

    ka, kb = cache_key(spec(tmp_path / "a.pt", 8)), cache_key(spec(tmp_path / "b.pt", 64))
    assert "weights" not in ka["options"] and "batch_size" not in ka["options"]
    assert set(key_differences(ka, kb)) == {"weights.sha256"}


# ------------------------------------------------------------------------------ selection


def test_select_features_derived_store(tmp_path):
    spec = ExtractorSpec("toy_face", "face", dim=40, frame_rate=5.0, crop_size=32)
    classes = ["a", "b"]
    clips = [Clip(f"c{i:02d}", "x.mp4", classes[i % 2], "train" if i < 16 else "test") for i in range(20)]
    manifest = Manifest(clips, classes, tmp_path)
    manifest_path = manifest.write(tmp_path / "m.csv")
    store = FeatureStore.create(tmp_path / "feats" / "toy", spec, cache_key(spec))
    rng = np.random.default_rng(0)
    with store.writer() as w:
        for i, c in enumerate(clips):
            x = rng.normal(size=(6, 40)).astype(np.float32)
            x[:, 7] += 4 * (i % 2)  # column 7 carries the label
            w.add(c.clip_id, x, np.arange(6) != 2)
    store.merge()
    derived = select_features(store, manifest_path, 4, n_estimators=20)
    assert derived.path == tmp_path / "feats" / "toy-sel4" and derived.dim == 4
    sel = derived.selection
    assert sel["k"] == 4 and sel["parent_dim"] == 40 and derived.key["selection"]["k"] == 4
    selector = FeatureSelector.from_store(derived)
    assert int(selector.indices[0]) == 7
    for c in clips:
        parent, mask = store.get(c.clip_id)
        feats, mask2 = derived.get(c.clip_id)
        np.testing.assert_array_equal(feats, parent[:, selector.indices]) and np.testing.assert_array_equal(mask, mask2)
    # the same request reuses the derived store; another one is refused, naming the field
    assert select_features(store, manifest_path, 4, n_estimators=20).key == derived.key
    with pytest.raises(StaleStoreError, match="selection.params.n_estimators"):
        select_features(store, manifest_path, 4, n_estimators=30)
    dm = FeatureDataModule(str(manifest_path), str(derived.path))
    assert dm.input_dim == 4 and dm.selection["k"] == 4 and dm.extractor_spec["name"] == "toy_face"


# ------------------------------------------------------------------------------ on the synthetic corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny synthetic corpus (2 clips per class) plus a clip without an audio track and one with blank frames."""
    from lightning_emo.data.media import write_video
    from lightning_emo.data.synthetic import synthesize

    out = tmp_path_factory.mktemp("synth")
    path = synthesize(out, clips_per_class=2, seed=0)
    m = read_manifest(path)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (10, 64, 64, 3), dtype=np.uint8)
    write_video(out / "clips" / "mute.mp4", frames, 5.0, threads=1)
    write_video(out / "clips" / "blank.mp4", np.full((10, 64, 64, 3), 100, np.uint8), 5.0,
                audio=rng.normal(size=32000).astype(np.float32) * 0.1, threads=1)
    extra = [Clip("mute", "clips/mute.mp4", "angry", "train", "x1"),
             Clip("blank", "clips/blank.mp4", "happy", "train", "x2")]
    return m.with_clips(m.clips + extra).write(out / "manifest.csv")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """One uninterrupted single-process extraction of mfcc and hog."""
    out = tmp_path_factory.mktemp("features")
    results = {name: run_extraction(corpus, name, out, detector="none", fps=5, num_workers=0, batch_size=4)
               for name in ("mfcc", "hog")}
    return out, results


def _same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert sorted(a.clip_ids) == sorted(b.clip_ids) and a.missing == b.missing
    for cid in a.clip_ids:
        fa, ma = a.get(cid)
        fb, mb = b.get(cid)
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_array_equal(ma, mb)


def _segment_ids(store: FeatureStore) -> list[str]:
    ids = []
    for p in (store.path / "segments").glob("*.json"):
        seg = json.loads(p.read_text())
        ids += list(seg["clips"]) + list(seg["missing"])
    return ids


@needs_clips
def test_extract_synthetic_end_to_end(corpus, reference):
    out, results = reference
    n = len(read_manifest(corpus).clips)
    mfcc, hog = results["mfcc"], results["hog"]
    assert mfcc.written == n and mfcc.skipped == 0 and mfcc.missing == {"no_audio": 1}
    assert hog.written == n and hog.no_face == 1 and hog.missing == {}
    assert "1 with no audio track" in mfcc.summary() and "1 with no face (detector none)" in hog.summary()
    audio, face = FeatureStore.open(out / "mfcc"), FeatureStore.open(out / "hog")
    assert audio.dim == 39 and face.dim == 1764 and audio.key["sample_rate"] == 16000
    assert face.key["detector"] == "none" and face.key["fps"] == 5 and face.spec.frame_rate == 5
    # sequence lengths follow the media: 100 audio frames/s, 5 video frames/s
    f, m = face.get("blank")
    assert f.shape == (10, 1764) and not m.any()
    assert audio.get("blank")[0].shape[0] == pytest.approx(198, abs=2)
    assert (out / "mfcc" / "index.json").is_file() and sorted(_segment_ids(audio)) == sorted(audio.clip_ids + ["mute"])

    # a second run skips everything; the Python API returns the store (or the selected one)
    again = run_extraction(corpus, "mfcc", out, num_workers=0)
    assert again.written == 0 and again.skipped == n
    assert len(extract(corpus, "mfcc", out, num_workers=0)) == n
    selected = extract(corpus, "hog", out, detector="none", fps=5, select=8, select_options={"n_estimators": 5})
    assert selected.path == out / "hog-sel8" and selected.dim == 8 and len(selected) == n
    # another configuration is refused, naming the field
    with pytest.raises(StaleStoreError, match=r"options\.cmvn: 'none' \(store\) vs 'mean' \(requested\)"):
        run_extraction(corpus, "mfcc", out, options={"cmvn": "mean"}, num_workers=0)

    # the FeatureDataModule reads both stores
    dm = FeatureDataModule(str(corpus), {"audio": str(out / "mfcc"), "face": str(out / "hog")}, batch_size=4)
    assert dm.missing_clip_ids() == []  # each left-out clip has the other modality
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"]["x"].shape[-1] == 39 and batch["face"]["x"].shape[-1] == 1764
    single = FeatureDataModule(str(corpus), str(out / "hog"))
    assert single.missing_clip_ids() == ["blank"] and single.modality == "face" and single.input_dim == 1764


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "lightning_emo.cli", "extract", *args], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@needs_clips
def test_resume_after_kill(corpus, reference, tmp_path):
    ref_out, _ = reference
    args = ["--manifest", str(corpus), "--extractor", "mfcc", "--out", str(tmp_path), "--num-workers", "0",
            "--batch-size", "2", "--commit-every", "2"]
    proc = _cli(*args, env={"LIGHTNING_EMO_EXTRACT_DELAY": "0.7"})
    seg_dir = tmp_path / "mfcc" / "segments"
    deadline = time.monotonic() + 120
    while not list(seg_dir.glob("*.json")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no commit within 120 s"
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = FeatureStore.open(tmp_path / "mfcc")
    n = len(read_manifest(corpus).clips)
    assert 0 < len(partial) < n
    for cid in partial.clip_ids:  # every visible entry is whole
        f, m = partial.get(cid)
        np.testing.assert_array_equal(f, FeatureStore.open(ref_out / "mfcc").get(cid)[0])

    again = run_extraction(corpus, "mfcc", tmp_path, num_workers=0, batch_size=2)
    assert again.skipped == len(partial) and again.written == n - len(partial)
    resumed = FeatureStore.open(tmp_path / "mfcc")
    assert resumed.duplicates == 0 and len(_segment_ids(resumed)) == len(set(_segment_ids(resumed))) == n
    _same_store(resumed, FeatureStore.open(ref_out / "mfcc"))


def _ddp(corpus, out, *extra: str) -> str:
    proc = _cli("--manifest", str(corpus), "--out", str(out), "--batch-size", "2", "--trainer.accelerator", "cpu",
                "--trainer.devices", "2", "--trainer.strategy", "ddp", *extra)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert "2 processes" in output
    return output


def _check_two_ranks(store: FeatureStore, reference: FeatureStore) -> None:
    assert {p.name.split("-")[0] for p in (store.path / "segments").glob("*.json")} == {"r0", "r1"}
    _same_store(store, reference)


@needs_clips
def test_two_processes_match_one(corpus, reference, tmp_path):
    """DDP on CPU (gloo, 2 processes launched by the CLI) writes the same features as one process."""
    ref_out, _ = reference
    _ddp(corpus, tmp_path, "--extractor", "mfcc", "--num-workers", "0")
    _check_two_ranks(FeatureStore.open(tmp_path / "mfcc"), FeatureStore.open(ref_out / "mfcc"))


@needs_clips
@pytest.mark.slow
def test_two_processes_two_extractors_resume_with_workers(corpus, reference, tmp_path):
    """Two extractors in one DDP run, decoding in workers; hog resumes with one clip left (rank 1 gets none)."""
    ref_out, _ = reference
    full = read_manifest(corpus)
    sub = full.with_clips(full.clips[:-1]).write(tmp_path / "sub.csv")
    run_extraction(sub, "hog", tmp_path, detector="none", fps=5, num_workers=0)
    output = _ddp(corpus, tmp_path, "--extractor", "mfcc", "--extractor", "hog", "--detector", "none", "--fps", "5",
                  "--num-workers", "1")
    assert f"{len(full.clips) - 1} skipped (already present)" in output
    _check_two_ranks(FeatureStore.open(tmp_path / "mfcc"), FeatureStore.open(ref_out / "mfcc"))
    _same_store(FeatureStore.open(tmp_path / "hog"), FeatureStore.open(ref_out / "hog"))


@needs_clips
def test_cli_select_and_errors(corpus, reference, tmp_path, capsys):
    ref_out, _ = reference
    shutil.copytree(ref_out / "hog", tmp_path / "hog")
    code = main(["--manifest", str(corpus), "--extractor", "hog", "--detector", "none", "--fps", "5",
                 "--out", str(tmp_path), "--select", "16", "--select-option", "n_estimators=10"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "0 clips written" in output and "kept 16 of 1764 features" in output
    derived = FeatureStore.open(tmp_path / "hog-sel16")
    assert derived.dim == 16 and (derived.path / "selector.safetensors").is_file()
    code = main(["--manifest", str(corpus), "--extractor", "hog", "--detector", "none", "--fps", "10",
                 "--out", str(tmp_path)])
    assert code == 2 and "fps: 5.0 (store) vs 10.0 (requested)" in capsys.readouterr().err


def test_default_decoding_workers_leave_the_cores_to_the_model(monkeypatch):
    """On the CPU workers get only the cores torch's threads leave free; a GPU gets up to 4 per rank."""
    from lightning_emo.extractors.extract import default_decoding_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_decoding_workers(on_cpu=True) == 0
    assert default_decoding_workers(on_cpu=False) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 12)
    assert default_decoding_workers(on_cpu=True) == 2 and default_decoding_workers(on_cpu=False) == 4
    assert default_decoding_workers(on_cpu=False, processes=8) == 1
