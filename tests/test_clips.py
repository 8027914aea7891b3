"""Raw-clip datasets, batches and DataModules (lightning_emo.data.clips) over real media files."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser

from lightning_emo.data.clips import CHEAVDDataModule, ClipDataModule, ClipDataset, collate_clips
from lightning_emo.data.corpora.cheavd import CLASSES as CHEAVD
from lightning_emo.data.manifest import Clip, Manifest, ManifestError, read_manifest
from lightning_emo.data.media import MediaError, MissingStreamError, write_audio, write_video

FPS = 10


def _tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    base = np.random.default_rng(seed).integers(40, 200, (1, h, w, 3)).astype(np.uint8)
    return np.repeat(base, n, axis=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five clips: two with both tracks (64x64 and 48x80), a mute video, a WAV, and a cut of the first."""
    root = tmp_path_factory.mktemp("clips")
    write_video(root / "a.mp4", _frames(20, 64, 64), FPS, _tone(2.0), threads=1)
    write_video(root / "b.mp4", _frames(30, 48, 80, 1), FPS, _tone(3.0), threads=1)
    write_video(root / "mute.mp4", _frames(10, 64, 64, 2), FPS, threads=1)
    write_audio(root / "voice.wav", _tone(1.5))
    clips = [
        Clip("a", "a.mp4", "pos", "train", "s1"),
        Clip("b", "b.mp4", "neg", "train", "s2"),
        Clip("mute", "mute.mp4", "neg", "train", "s3"),
        Clip("voice", "voice.wav", "pos", "val", "s4"),
        Clip("cut", "a.mp4", "neg", "test", "s5", start=0.5, end=1.5),
    ]
    path = Manifest(clips, ["neg", "pos"], root, corpus="toy").write(root / "manifest.csv")
    return root, path


def _by_id(ds: ClipDataset) -> dict:
    return {ds.clips[i].clip_id: ds[i] for i in range(len(ds))}


def test_items_decode_each_clip_and_window(corpus):
    _, path = corpus
    ds = ClipDataset(read_manifest(path), sample_rate=8000, fps=5)
    items = _by_id(ds)
    a = items["a"]
    assert a["label"] == 1 and a["split"] == "train" and a["speaker"] == "s1"
    assert a["waveform"].dtype == torch.float32 and a["waveform"].shape == (16000,) and a["has_audio"]
    assert a["frames"].dtype == torch.uint8 and a["frames"].shape == (10, 64, 64, 3) and a["has_video"]
    np.testing.assert_allclose(a["frame_times"].numpy(), np.arange(10) / 5, atol=1e-3)
    cut = items["cut"]  # start 0.5, end 1.5
    assert cut["waveform"].shape == (8000,) and cut["frames"].shape == (5, 64, 64, 3)
    np.testing.assert_allclose(cut["frame_times"].numpy(), 0.5 + np.arange(5) / 5, atol=1e-3)
    torch.testing.assert_close(cut["waveform"], a["waveform"][4000:12000], rtol=0, atol=0)
    assert not items["mute"]["has_audio"] and items["mute"]["waveform"].shape == (0,)
    assert not items["voice"]["has_video"] and items["voice"]["frames"].shape[0] == 0


def test_collate_native_size_gives_lists(corpus):
    _, path = corpus
    ds = ClipDataset(read_manifest(path), splits=["train", "val"], sample_rate=8000, fps=5)
    batch = collate_clips([ds[i] for i in range(len(ds))])
    assert batch["clip_id"] == ["a", "b", "mute", "voice"] and batch["split"] == ["train"] * 3 + ["val"]
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [1, 0, 0, 1]
    assert batch["waveform"].shape == (4, 24000) and batch["waveform_lengths"].tolist() == [16000, 24000, 0, 12000]
    assert batch["has_audio"].tolist() == [True, True, False, True]
    assert float(batch["waveform"][0, 16000:].abs().max()) == 0.0  # zero padding
    assert batch["has_video"].tolist() == [True, True, True, False]
    assert batch["frame_lengths"].tolist() == [10, 15, 5, 0]
    assert isinstance(batch["frames"], list) and [tuple(f.shape) for f in batch["frames"][:2]] == [
        (10, 64, 64, 3), (15, 48, 80, 3)]
    assert [len(t) for t in batch["frame_times"]] == [10, 15, 5, 0]


def test_collate_pads_frames_to_a_frame_size(corpus):
    _, path = corpus
    m = read_manifest(path)
    ds = ClipDataset(m, splits="train", fps=5, frame_size=(32, 32), modalities=["video"])
    batch = collate_clips([ds[i] for i in range(len(ds))])
    assert "waveform" not in batch
    assert batch["frames"].shape == (3, 15, 32, 32, 3) and batch["frames"].dtype == torch.uint8
    assert batch["frame_lengths"].tolist() == [10, 15, 5]
    assert int(batch["frames"][0, 10:].max()) == 0 and int(batch["frames"][0, :10].min()) > 0
    assert batch["frame_times"].shape == (3, 15) and batch["frame_times"].dtype == torch.float64
    assert batch["frame_sizes"].tolist() == [[32, 32]] * 3
    # an int size keeps each clip's aspect: the 48x80 clip becomes 32x53, the others pad to it
    ds = ClipDataset(m, splits="train", fps=5, frame_size=32, modalities=["video"])
    batch = collate_clips([ds[i] for i in range(len(ds))])
    assert batch["frames"].shape == (3, 15, 32, 53, 3)
    assert batch["frame_sizes"].tolist() == [[32, 32], [32, 53], [32, 32]]
    assert int(batch["frames"][0, :10, :, 32:].max()) == 0


def test_audio_only_batches_and_missing_video_with_frame_size(corpus):
    _, path = corpus
    m = read_manifest(path)
    ds = ClipDataset(m, splits=["train", "val"], modalities=("audio",))
    batch = collate_clips([ds[i] for i in range(len(ds))])
    assert "frames" not in batch and "has_video" not in batch and batch["waveform"].shape[0] == 4
    ds = ClipDataset(m, splits="val", fps=5, frame_size=(32, 32))
    batch = collate_clips([ds[0]])
    assert batch["frames"].shape == (1, 0, 32, 32, 3) and batch["has_video"].tolist() == [False]


def test_max_seconds_cuts_from_the_clip_start(corpus):
    _, path = corpus
    ds = ClipDataset(read_manifest(path), sample_rate=8000, max_seconds=0.5)
    items = _by_id(ds)
    assert items["a"]["waveform"].shape == (4000,) and items["a"]["frames"].shape[0] == 5
    assert items["cut"]["waveform"].shape == (4000,)
    np.testing.assert_allclose(items["cut"]["frame_times"].numpy(), [0.5, 0.6, 0.7, 0.8, 0.9], atol=1e-3)


def test_missing_tracks_can_be_required(corpus):
    _, path = corpus
    ds = ClipDataset(read_manifest(path), splits="train", missing_ok=False)
    with pytest.raises(MissingStreamError, match=r"has no audio track .*clip 'mute' of manifest"):
        _ = [ds[i] for i in range(len(ds))]


def test_broken_media_raises_naming_the_clip_or_warns(corpus, tmp_path, caplog):
    root, _ = corpus
    data = (root / "a.mp4").read_bytes()
    (tmp_path / "broken.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "ok.wav").write_bytes((root / "voice.wav").read_bytes())
    m = Manifest([Clip("bad", "broken.mp4", "pos", "train", "x"), Clip("ok", "ok.wav", "neg", "train", "y")],
                 ["neg", "pos"], tmp_path)
    with pytest.raises(MediaError, match=r"broken\.mp4: .*corrupt/truncated .*clip 'bad'"):
        ClipDataset(m, modalities=["audio"])[0]
    ds = ClipDataset(m, modalities=["audio"], on_error="warn")
    with caplog.at_level(logging.WARNING, logger="lightning_emo"):
        batch = collate_clips([ds[0], ds[1]])
    assert "audio of 'bad' left empty" in caplog.text
    assert batch["waveform_lengths"].tolist() == [0, 24000] and batch["has_audio"].tolist() == [True, True]


def test_bad_arguments(corpus):
    _, path = corpus
    m = read_manifest(path)
    with pytest.raises(ValueError, match="modalities"):
        ClipDataset(m, modalities=["audio", "text"])
    with pytest.raises(ValueError, match="frame_size"):
        ClipDataset(m, frame_size=(32, 0))
    with pytest.raises(ValueError, match="on_error"):
        ClipDataModule(str(path), on_error="ignore")
    with pytest.raises(ValueError, match="predict_splits"):
        ClipDataModule(str(path), predict_splits=["dev"])


# ------------------------------------------------------------------------------------ DataModules


def test_datamodule_loaders_over_the_splits(corpus):
    _, path = corpus
    dm = ClipDataModule(str(path), fps=5, frame_size=32, batch_size=2, sample_rate=8000)
    assert dm.classes == ["neg", "pos"] and dm.num_classes == 2  # read lazily, before setup
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert sorted(cid for b in train for cid in b["clip_id"]) == ["a", "b", "mute"] and len(train) == 2
    assert [b["clip_id"] for b in dm.val_dataloader()] == [["voice"]]
    assert [b["clip_id"] for b in dm.test_dataloader()] == [["cut"]]
    assert sorted(c for b in dm.predict_dataloader() for c in b["clip_id"]) == ["a", "b", "cut", "mute", "voice"]
    only_test = ClipDataModule(str(path), predict_splits=["test"], modalities=["audio"])
    assert [b["clip_id"] for b in only_test.predict_dataloader()] == [["cut"]]


def test_empty_split_is_an_error(corpus, tmp_path):
    root, _ = corpus
    m = Manifest([Clip("a", "a.mp4", "pos", "train", "s1")], ["neg", "pos"], root)
    path = m.write(tmp_path / "m.csv")
    dm = ClipDataModule(str(path))
    with pytest.raises(ManifestError, match=r"m\.csv: no clips in split 'val' \(clips per split: train=1, val=0"):
        dm.val_dataloader()


def test_worker_processes_decode(corpus):
    _, path = corpus
    dm = ClipDataModule(str(path), fps=5, frame_size=(32, 32), batch_size=5, num_workers=1, decode_threads=1)
    (batch,) = list(dm.predict_dataloader())
    assert batch["frames"].shape == (5, 15, 32, 32, 3) and int(batch["has_audio"].sum()) == 4


def test_datamodule_from_a_config(corpus):
    """Typed __init__ arguments: jsonargparse (LightningCLI's parser) builds the DataModule."""
    _, path = corpus
    parser = ArgumentParser()
    parser.add_class_arguments(ClipDataModule, "data")
    cfg = parser.parse_args(["--data.manifest", str(path), "--data.frame_size", "[32, 32]",
                             "--data.modalities", "[video]", "--data.fps", "5", "--data.batch_size", "4"])
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, ClipDataModule) and dm.batch_size == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape[2:] == (32, 32, 3) and "waveform" not in batch
    assert tuple(dm.hparams["frame_size"]) == (32, 32) and list(dm.hparams["modalities"]) == ["video"]


def test_cheavd_datamodule_checks_the_classes(corpus, tmp_path):
    root, path = corpus
    with pytest.raises(ManifestError, match=r"CHEAVDDataModule expects CHEAVD's seven classes"):
        CHEAVDDataModule(str(path)).classes
    clips = [Clip("a", "a.mp4", "sad", "train", "s1"), Clip("v", "voice.wav", "happy", "test", "s2")]
    good = Manifest(clips, list(CHEAVD), root, corpus="cheavd").write(tmp_path / "cheavd.csv")
    dm = CHEAVDDataModule(str(good), modalities=["audio"])
    assert dm.classes == CHEAVD and dm.num_classes == 7
    assert next(iter(dm.train_dataloader()))["label"].tolist() == [CHEAVD.index("sad")]
    # no class list in the sidecar: CHEAVD's order is used (not the sorted labels)
    meta = json.loads((tmp_path / "cheavd.json").read_text())
    del meta["classes"]
    (tmp_path / "cheavd.json").write_text(json.dumps(meta))
    assert CHEAVDDataModule(str(good)).classes == CHEAVD
    # the same classes in another order are refused
    Manifest(clips, sorted(CHEAVD), root).write(tmp_path / "sorted.csv")
    with pytest.raises(ManifestError, match="paper's order"):
        CHEAVDDataModule(str(tmp_path / "sorted.csv")).classes
