"""The feature store (atomic, resumable, memory-mapped) and FeatureDataModule batches."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from lightning_emo.data.datamodule import FeatureDataModule
from lightning_emo.data.manifest import Clip, Manifest
from lightning_emo.data.store import (
    FeatureStore,
    FeatureStoreError,
    StaleStoreError,
    cache_key,
    key_differences,
)
from lightning_emo.extractors.base import ExtractorSpec, WeightsSource

AUDIO = ExtractorSpec("toy_audio", "audio", dim=6, sample_rate=16000, frame_rate=100.0)
FACE = ExtractorSpec("toy_face", "face", dim=4, frame_rate=5.0, crop_size=32,
                     weights=WeightsSource("hf-hub", "org/face", "w.safetensors", revision="abc123"))


def _seq(rng, t, d):
    return rng.normal(size=(t, d)).astype(np.float32)


def _store(tmp_path, spec=AUDIO, name="s", **kw):
    return FeatureStore.create(tmp_path / name, spec, cache_key(spec, **kw))


def test_round_trip_memmap_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    store = _store(tmp_path)
    data = {f"c{i}": _seq(rng, 3 + i, 6) for i in range(5)}
    with store.writer(rank=0, commit_every=2) as w:
        for cid, x in data.items():
            assert w.add(cid, x)
        w.add_missing("silent", "no_audio")
        assert not w.add("c0", data["c0"])  # already written by this writer
    assert w.written == 5 and w.skipped == 1 and w.missing["no_audio"] == 1
    store.merge()

    again = FeatureStore.open(tmp_path / "s", expect_key=cache_key(AUDIO))
    assert sorted(again.clip_ids) == sorted(data) and "silent" in again and "nope" not in again
    assert again.missing == {"silent": "no_audio"} and len(again) == 6
    for cid, x in data.items():
        feats, mask = again.get(cid)
        assert isinstance(feats.base, np.memmap) or isinstance(feats, np.memmap)
        assert feats.dtype == np.float16 and feats.shape == x.shape and mask.all()
        np.testing.assert_allclose(feats.astype(np.float32), x, rtol=1e-3, atol=1e-3)
    f, m = again.get("silent")
    assert f.shape == (0, 6) and m.shape == (0,)
    with pytest.raises(KeyError, match="nope"):
        again.get("nope")
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    assert meta["spec"] == AUDIO.to_dict() and meta["dim"] == 6 and meta["dtype"] == "float16"
    assert meta["key"]["extractor"] == "toy_audio" and meta["key"]["sample_rate"] == 16000
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert len(index["clips"]) == 5 and index["missing"] == {"silent": "no_audio"}
    assert again.summary() == {"clips": 5, "frames": sum(len(x) for x in data.values()), "no_valid_frame": 0,
                               "missing": {"no_audio": 1}, "duplicates": 0}


def test_masks_and_float32(tmp_path):
    store = FeatureStore.create(tmp_path / "f", FACE, cache_key(FACE, dtype="float32"), dtype="float32")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with store.writer() as w:
        w.add("face", x, np.array([True, False, True]))
        w.add("noface", x, np.zeros(3, bool))
    store.refresh()
    feats, mask = store.get("face")
    assert feats.dtype == np.float32 and np.array_equal(feats, x) and mask.tolist() == [True, False, True]
    assert store.n_valid("face") == 2 and store.n_valid("noface") == 0 and store.length("noface") == 3
    assert store.summary()["no_valid_frame"] == 1


def test_writer_validates_input(tmp_path):
    store = _store(tmp_path)
    with store.writer() as w:
        with pytest.raises(ValueError, match=r"expected features \(T, 6\)"):
            w.add("a", np.zeros((3, 5)))
        with pytest.raises(ValueError, match="mask has 2 frames"):
            w.add("a", np.zeros((3, 6)), np.ones(2, bool))
        with pytest.raises(ValueError, match="NaN"):
            w.add("a", np.full((3, 6), np.nan))
        with pytest.raises(ValueError, match="float32"):
            w.add("a", np.full((3, 6), 1e6))
        w.add("empty", np.zeros((0, 6)))  # no frames at all: recorded as missing
    store.refresh()
    assert store.missing == {"empty": "no_frames"}


def test_key_mismatch_names_fields(tmp_path):
    _store(tmp_path, FACE, detector="mtcnn", fps=5)
    with pytest.raises(StaleStoreError) as e:
        FeatureStore.create(tmp_path / "s", FACE, cache_key(FACE, detector="none", fps=10))
    msg = str(e.value)
    assert "detector: 'mtcnn' (store) vs 'none' (requested)" in msg and "fps: 5 (store) vs 10 (requested)" in msg
    assert "crop_size" not in msg and set(e.value.differences) == {"detector", "fps"}
    newer = FACE.__class__.from_dict({**FACE.to_dict(), "weights": {**FACE.to_dict()["weights"], "revision": "def"}})
    diff = key_differences(cache_key(FACE), cache_key(newer))
    assert diff == {"weights.revision": ("abc123", "def")}
    # --overwrite replaces the stale store
    store = FeatureStore.create(tmp_path / "s", FACE, cache_key(FACE, detector="none", fps=10), overwrite=True)
    assert store.key["detector"] == "none" and len(store) == 0
    # the same key resumes
    assert FeatureStore.create(tmp_path / "s", FACE, cache_key(FACE, detector="none", fps=10)).key == store.key


def test_open_errors(tmp_path):
    with pytest.raises(FeatureStoreError, match="store.json not found.*lightning-emo extract"):
        FeatureStore.open(tmp_path / "nothing")
    _store(tmp_path / "feats", name="mfcc")
    with pytest.raises(FeatureStoreError, match="holds the stores: mfcc"):
        FeatureStore.open(tmp_path / "feats")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(FeatureStoreError, match="not empty"):
        _store(tmp_path, name="junk")


def test_uncommitted_rows_are_invisible(tmp_path):
    """A writer killed between commits: only committed clips are visible, the rest is garbage-collected."""
    rng = np.random.default_rng(1)
    store = _store(tmp_path)
    w = store.writer(commit_every=2)
    for i in range(3):  # two committed, the third pending
        w.add(f"c{i}", _seq(rng, 4, 6))
    seg = next((tmp_path / "s" / "segments").glob("*.json"))
    # Simulate the crash: bytes of a half-written clip past the committed rows, and an atomic-write temp file.
    with open(seg.with_suffix(".f16"), "ab") as f:
        f.write(b"\x00" * 17)
    (seg.parent / f".{seg.name}.dead.tmp").write_text("{garbage")
    (seg.parent / "r1-deadbeef.f16").write_bytes(b"\x01" * 48)  # a rank that died before its first commit
    reader = FeatureStore.open(tmp_path / "s")
    assert sorted(reader.clip_ids) == ["c0", "c1"] and "c2" not in reader
    reader.merge(cleanup=True)  # the writer is alive (holds the lock): nothing is removed
    assert (seg.parent / "r1-deadbeef.f16").exists()
    w._lock.release()  # what the OS does when the writing process dies
    reader.merge(cleanup=True)
    assert not (seg.parent / "r1-deadbeef.f16").exists() and not list(seg.parent.glob(".*"))
    assert seg.with_suffix(".f16").stat().st_size == 8 * 6 * 2
    # resuming writes the lost clip again, once
    with reader.writer() as w2:
        assert not w2.add("c0", _seq(rng, 4, 6))
        assert w2.add("c2", _seq(rng, 4, 6))
    reader.refresh()
    assert sorted(reader.clip_ids) == ["c0", "c1", "c2"] and reader.duplicates == 0


def test_merge_of_several_ranks(tmp_path):
    rng = np.random.default_rng(2)
    store = _store(tmp_path)
    data = {f"c{i:02d}": _seq(rng, 2 + i % 3, 6) for i in range(10)}
    writers = [store.writer(rank=r, commit_every=3) for r in range(2)]
    for i, (cid, x) in enumerate(data.items()):
        writers[i % 2].add(cid, x)
    for w in writers:
        w.close()
    assert len(list((tmp_path / "s" / "segments").glob("r0-*.json"))) == 1
    assert len(list((tmp_path / "s" / "segments").glob("r1-*.json"))) == 1
    lazy = FeatureStore.open(tmp_path / "s")  # merged lazily, no index.json yet
    assert not (tmp_path / "s" / "index.json").exists() and sorted(lazy.clip_ids) == sorted(data)
    lazy.merge()
    merged = FeatureStore.open(tmp_path / "s")
    for cid, x in data.items():
        np.testing.assert_allclose(merged.get(cid)[0].astype(np.float32), x, atol=2e-3)
    # a later commit makes index.json stale: it is rebuilt from the segments on open
    with merged.writer(rank=0) as w:
        w.add("late", _seq(rng, 2, 6))
    assert "late" in FeatureStore.open(tmp_path / "s")


def test_segments_rotate(tmp_path):
    store = _store(tmp_path)
    from lightning_emo.data.store import StoreWriter

    with StoreWriter(store, commit_every=2, segment_clips=4) as w:
        for i in range(10):
            w.add(f"c{i}", np.full((2, 6), i, np.float32))
    store.refresh()
    assert len(list((tmp_path / "s" / "segments").glob("*.json"))) == 3
    assert all(store.get(f"c{i}")[0][0, 0] == i for i in range(10))


# ------------------------------------------------------------------------------ FeatureDataModule

CLASSES = ["angry", "happy", "sad"]


def _manifest(tmp_path, n=12):
    clips = [Clip(f"c{i:02d}", f"c{i:02d}.mp4", CLASSES[i % 3 if i < 9 else 0],
                  ["train", "train", "val", "test"][i % 4] if i >= 2 else "train", f"s{i}") for i in range(n)]
    return Manifest(clips, CLASSES, tmp_path).write(tmp_path / "manifest.csv"), clips


def _fill(tmp_path, clips, spec, name, lengths, masks=None, missing=()):
    store = FeatureStore.create(tmp_path / name, spec, cache_key(spec))
    with store.writer() as w:
        for i, c in enumerate(clips):
            if c.clip_id in missing:
                w.add_missing(c.clip_id, "no_audio")
                continue
            t = lengths(i)
            x = np.full((t, spec.dim), i, np.float32) + np.arange(t, dtype=np.float32)[:, None] / 100
            w.add(c.clip_id, x, None if masks is None else masks(i, t))
    return tmp_path / name


def test_datamodule_batches(tmp_path, caplog):
    path, clips = _manifest(tmp_path)
    store = _fill(tmp_path, clips, AUDIO, "audio", lambda i: 3 + i, missing={"c05"})
    with caplog.at_level(logging.INFO, logger="lightning_emo"):
        dm = FeatureDataModule(str(path), str(store), batch_size=4)
    assert "leaving out 1 of 12 clips" in caplog.text and "no_audio: 1" in caplog.text
    assert dm.input_dim == 6 and dm.input_dims == {"audio": 6} and dm.num_classes == 3
    assert dm.classes == CLASSES and dm.modality == "audio" and dm.extractor_spec == AUDIO.to_dict()
    train = [c for c in clips if c.split == "train"]
    assert dm.class_counts == [sum(c.label == k for c in train if c.clip_id != "c05") for k in CLASSES]
    assert dm.missing_clip_ids() == ["c05"] and dm.missing_clip_ids(split="val") == []
    assert dm.missing_clip_ids(next(c.split for c in clips if c.clip_id == "c05")) == ["c05"]
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"clip_id", "split", "label", "x", "lengths", "mask"}
    b = len(batch["clip_id"])
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (b, int(batch["lengths"].max()), 6)
    assert batch["label"].dtype == torch.long and batch["mask"].dtype == torch.bool
    for i, cid in enumerate(batch["clip_id"]):
        n = 3 + int(cid[1:])
        assert batch["lengths"][i] == n and batch["mask"][i, :n].all() and not batch["mask"][i, n:].any()
        assert batch["x"][i, n:].abs().sum() == 0
        assert batch["x"][i, 0, 0] == pytest.approx(int(cid[1:]))
        label = next(c.label for c in clips if c.clip_id == cid)
        assert batch["split"][i] == "val" and CLASSES[batch["label"][i]] == label
    predicted = [cid for b in dm.predict_dataloader() for cid in b["clip_id"]]
    assert predicted == [c.clip_id for c in clips if c.clip_id != "c05"]
    seen = sorted(cid for b in dm.train_dataloader() for cid in b["clip_id"])
    assert seen == sorted(c.clip_id for c in train if c.clip_id != "c05")


def test_max_frames_crop_keeps_content(tmp_path):
    path, clips = _manifest(tmp_path)
    # long sequences whose content is only in their last 2 frames
    store = _fill(tmp_path, clips, FACE, "face", lambda i: 40,
                  masks=lambda i, t: np.arange(t) >= t - 2)
    dm = FeatureDataModule(str(path), str(store), batch_size=32, max_frames=5)
    torch.manual_seed(0)
    for _ in range(3):
        batch = next(iter(dm.train_dataloader()))
        assert batch["x"].shape[1] == 5 and (batch["lengths"] == 5).all()
        assert batch["mask"].any(dim=1).all()
    assert next(iter(dm.val_dataloader()))["x"].shape[1] == 40  # evaluation sees whole sequences


def test_balanced_sampler(tmp_path):
    classes = ["a", "b"]
    clips = [Clip(f"c{i:03d}", "x.mp4", "a" if i < 90 else "b", "train") for i in range(100)]
    path = Manifest(clips, classes, tmp_path).write(tmp_path / "m.csv")
    store = _fill(tmp_path, clips, AUDIO, "audio", lambda i: 2)
    labels = lambda dm: torch.cat([b["label"] for b in dm.train_dataloader()])  # noqa: E731
    balanced = labels(FeatureDataModule(str(path), str(store), batch_size=50, sampler="balanced", seed=3))
    plain = labels(FeatureDataModule(str(path), str(store), batch_size=50))
    assert len(balanced) == 100 and 30 < int((balanced == 1).sum()) < 70
    assert int((plain == 1).sum()) == 10
    with pytest.raises(ValueError, match="sampler"):
        FeatureDataModule(str(path), str(store), sampler="uniform")


def test_absent_clips_error(tmp_path):
    path, clips = _manifest(tmp_path)
    store = _fill(tmp_path, clips[:7], AUDIO, "audio", lambda i: 2)
    with pytest.raises(FeatureStoreError, match=r"lacks 5 of the manifest's 12 clips \(c07, c08, c09, c10, c11\)"
                                                r".*lightning-emo extract.*--extractor toy_audio"):
        FeatureDataModule(str(path), str(store))


def test_several_modalities(tmp_path):
    path, clips = _manifest(tmp_path)
    audio = _fill(tmp_path, clips, AUDIO, "audio", lambda i: 10 + i, missing={"c03"})
    # c03 has no audio but a face; c04 has neither: only c04 is left out
    face = _fill(tmp_path, clips, FACE, "face", lambda i: 2 + i % 3,
                 masks=lambda i, t: np.zeros(t, bool) if i == 4 else np.ones(t, bool))
    audio_missing = _fill(tmp_path, clips, AUDIO, "audio2", lambda i: 10 + i, missing={"c04"})
    dm = FeatureDataModule(str(path), {"audio": str(audio_missing), "face": str(face)}, batch_size=12,
                           predict_splits=["train", "val", "test"])
    assert dm.input_dims == {"audio": 6, "face": 4} and dm.modality == "audio+face"
    assert set(dm.extractor_spec) == {"audio", "face"} and dm.missing_clip_ids() == ["c04"]
    with pytest.raises(AttributeError, match="input_dims"):
        _ = dm.input_dim
    dm2 = FeatureDataModule(str(path), {"audio": str(audio), "face": str(face)}, batch_size=12)
    assert dm2.missing_clip_ids() == []
    batch = next(iter(dm2.predict_dataloader()))
    assert set(batch) == {"clip_id", "split", "label", "audio", "face"}
    assert batch["audio"]["x"].shape == (12, 21, 6) and batch["face"]["x"].shape == (12, 4, 4)
    i3, i4 = batch["clip_id"].index("c03"), batch["clip_id"].index("c04")
    assert batch["audio"]["lengths"][i3] == 0 and not batch["audio"]["mask"][i3].any()
    assert batch["face"]["lengths"][i4] == 3 and not batch["face"]["mask"][i4].any()


def test_workers_read_memmaps(tmp_path):
    path, clips = _manifest(tmp_path)
    store = _fill(tmp_path, clips, AUDIO, "audio", lambda i: 3)
    dm = FeatureDataModule(str(path), str(store), batch_size=4, num_workers=2)
    ids = [cid for b in dm.predict_dataloader() for cid in b["clip_id"]]
    assert ids == [c.clip_id for c in clips]
    import pickle

    state = pickle.dumps(dm.stores["audio"])  # what spawned workers receive: no array data
    assert len(state) < 10_000


def test_length_buckets_cut_padding_and_keep_every_clip(tmp_path):
    classes = ["a", "b"]
    clips = [Clip(f"c{i:03d}", "x.mp4", classes[i % 2], "train") for i in range(96)]
    path = Manifest(clips, classes, tmp_path).write(tmp_path / "m.csv")
    store = _fill(tmp_path, clips, AUDIO, "audio", lambda i: 5 + (i * 37) % 200)

    def epoch(dm):
        batches = list(dm.train_dataloader())
        return sorted(c for b in batches for c in b["clip_id"]), sum(b["x"].shape[0] * b["x"].shape[1] for b in batches)

    ids, bucketed = epoch(FeatureDataModule(str(path), str(store), batch_size=8))
    ids_random, padded = epoch(FeatureDataModule(str(path), str(store), batch_size=8, bucket_by_length=False))
    assert ids == ids_random == sorted(c.clip_id for c in clips)
    assert bucketed < 0.75 * padded
