"""Pretrained weights download on first use: upstream caches, a loopback mirror, faults, offline, the real CLI.

Every download goes through urllib to a :class:`hubserver.FileServer` on 127.0.0.1 named by
``LIGHTNING_EMO_WEIGHTS_URL``; the files are random weights of the real architectures saved under
the real file names, as the upstream libraries save them.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hubserver import FileServer

from lightning_emo.extractors import WeightsNotFoundError, build_extractor
from lightning_emo.extractors import ssl as ssl_mod
from lightning_emo.extractors.base import torch_hub_checkpoint
from lightning_emo.extractors.face import FACENET_WEIGHTS
from lightning_emo.extractors.weights import WeightsDownloadError, cache_path, download

# The real HuBERT Base structure with fewer, narrower layers (fast); the file keeps its real name.
TINY = {"encoder_num_layers": 2, "encoder_embed_dim": 32, "encoder_num_heads": 4, "encoder_ff_interm_features": 64,
        "encoder_pos_conv_groups": 4, "encoder_pos_conv_kernel": 16,
        "extractor_conv_layer_config": [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2}
HUBERT_FILE = ssl_mod.get_bundle("HUBERT_BASE")._path
FACENET_FILE = FACENET_WEIGHTS["vggface2"].filename


def _torch_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hubert_tiny() -> bytes:
    torch.manual_seed(0)
    return _torch_bytes(ssl_mod.build_architecture("HUBERT_BASE", TINY).state_dict())


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def mirror(monkeypatch):
    server = FileServer().start()
    monkeypatch.setenv("LIGHTNING_EMO_WEIGHTS_URL", server.url + "/weights")
    monkeypatch.setenv("LIGHTNING_EMO_DOWNLOAD_TIMEOUT", "1")
    yield server
    server.stop()


def test_download_once_into_torchaudios_cache_then_reuse_without_the_server(mirror, hubert_tiny, caplog):
    mirror.files[HUBERT_FILE] = hubert_tiny
    with caplog.at_level("INFO", logger="lightning_emo"):
        e = build_extractor("hubert_base", arch=TINY)
    # not a terminal: short log lines (size first, then where it went)
    assert f"download {HUBERT_FILE}: {len(hubert_tiny) / 1e6:.1f} MB" in caplog.text
    assert f"downloaded {mirror.url}/weights/{HUBERT_FILE}" in caplog.text
    cached = torch_hub_checkpoint(HUBERT_FILE)
    assert e.weights_path == cached and cached.read_bytes() == hubert_tiny
    assert mirror.requests == [("GET", f"/weights/{HUBERT_FILE}")]
    assert _no_leftovers(cached.parent) == [HUBERT_FILE]  # no temporary file stays
    # torchaudio's own loader reads the same file from the same place
    state = torch.hub.load_state_dict_from_url(f"https://download.pytorch.org/torchaudio/models/{HUBERT_FILE}",
                                               map_location="cpu")
    assert set(state) == set(torch.load(io.BytesIO(hubert_tiny), weights_only=True))
    mirror.stop()
    again = build_extractor("hubert_base", arch=TINY)
    assert again.weights_path == cached and len(mirror.requests) == 1


@pytest.mark.parametrize("fault,message", [
    ("truncate", r"incomplete: \d+ of \d+ bytes arrived"),
    ("truncate-unannounced", r"not a valid weights file \(damaged zip archive|not a valid weights file"),
    ("corrupt", r"not a valid weights file \(checksum error"),
    ("500", r"HTTP 500"),
    ("404", r"HTTP 404 .*mirror must hold the file under its own name"),
    ("hang", r"no answer within 1 s \(set LIGHTNING_EMO_DOWNLOAD_TIMEOUT"),
    ("stall", r"broke off after 0.0 MB: no answer within 1 s"),
])
def test_a_failed_download_leaves_nothing_and_says_what_to_do(mirror, hubert_tiny, fault, message):
    mirror.files[HUBERT_FILE] = hubert_tiny
    mirror.faults[HUBERT_FILE] = fault
    cached = torch_hub_checkpoint(HUBERT_FILE)
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match=message) as err:
        build_extractor("hubert_base", arch=TINY)
    assert time.monotonic() - start < 5  # the 1 s timeout, not a hang
    text = str(err.value)
    assert f"{mirror.url}/weights/{HUBERT_FILE}" in text and f"Nothing was written to {cached}" in text
    assert "Run again to retry" in text
    assert _no_leftovers(cached.parent) == []
    # the next run (fixed server) downloads it
    mirror.faults.clear()
    assert build_extractor("hubert_base", arch=TINY).weights_path == cached


def test_refused_connection_is_reported_as_refused_not_offline(monkeypatch):
    server = FileServer().start()
    url = server.url
    server.stop()  # nothing listens there any more
    monkeypatch.setenv("LIGHTNING_EMO_WEIGHTS_URL", url)
    with pytest.raises(WeightsDownloadError, match=rf"{re.escape(url)}/{FACENET_FILE} failed: connection refused"):
        build_extractor("facenet_vggface2")


def test_offline_names_the_file_the_cache_path_and_the_url(mirror, hubert_tiny, monkeypatch):
    mirror.files[HUBERT_FILE] = hubert_tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = torch_hub_checkpoint(HUBERT_FILE)
    with pytest.raises(WeightsNotFoundError) as err:
        build_extractor("hubert_base", arch=TINY)
    text = str(err.value)
    for part in (HUBERT_FILE, str(cached), f"{mirror.url}/weights/{HUBERT_FILE}", "offline"):
        assert part in text
    assert mirror.requests == []
    # a cached file is used offline
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(hubert_tiny)
    assert build_extractor("hubert_base", arch=TINY).weights_path == cached


def test_known_sha256_is_checked(mirror, hubert_tiny, tmp_path):
    import hashlib

    mirror.files["x.pth"] = hubert_tiny
    good = hashlib.sha256(hubert_tiny).hexdigest()
    assert download(f"{mirror.url}/x.pth", tmp_path / "x.pth", sha256=good).read_bytes() == hubert_tiny
    with pytest.raises(WeightsDownloadError, match=f"corrupt: sha256 {good}, expected {'0' * 64}"):
        download(f"{mirror.url}/x.pth", tmp_path / "y.pth", sha256="0" * 64)
    assert not (tmp_path / "y.pth").exists()


def test_a_broken_file_already_in_the_cache_says_how_to_fix_it(hubert_tiny):
    cached = torch_hub_checkpoint(HUBERT_FILE)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(hubert_tiny[: len(hubert_tiny) // 2])  # e.g. left by another tool's cut download
    with pytest.raises(ValueError, match=rf"{re.escape(str(cached))} is not a torch state dict.*delete it and run "
                                         "again"):
        build_extractor("hubert_base", arch=TINY)


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    """A 1 s MP4 of the astronaut's face (scikit-image) with a tone, and its one-clip manifest."""
    from skimage import data as skdata

    from lightning_emo.data.manifest import Clip, Manifest
    from lightning_emo.data.media import write_video

    root = tmp_path_factory.mktemp("corpus")
    face = torch.from_numpy(skdata.astronaut())[:256, 128:384].numpy()
    frames = np.stack([np.roll(face, i, axis=1) for i in range(5)])
    t = np.arange(16000) / 16000
    write_video(root / "a.mp4", frames, 5.0, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000, threads=1)
    clips = [Clip("a", "a.mp4", "happy", "test", "spk1")]
    return Manifest(clips, ["happy", "sad"], root, corpus="astronaut").write(root / "manifest.csv")


def _extract(capsys, manifest: Path, out: Path, *args: str) -> tuple[int, str, str]:
    from lightning_emo.cli import main

    rc = main(["extract", "--manifest", str(manifest), "--out", str(out), "--fps", "5", "--batch-size", "1",
               "--num-workers", "0", "--dtype", "float32", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_extract_downloads_reuses_refuses_and_works_offline(face_clip, mirror, hubert_tiny, tmp_path, capsys,
                                                                 monkeypatch):
    """The issue's check: hubert_base and facenet_vggface2 --detector mtcnn from a loopback mirror only."""
    from facenet_pytorch import InceptionResnetV1

    from lightning_emo.data.store import FeatureStore

    torch.manual_seed(0)
    facenet = _torch_bytes(InceptionResnetV1(classify=True, num_classes=8631).state_dict())
    mirror.files.update({HUBERT_FILE: hubert_tiny, FACENET_FILE: facenet})
    hubert = ["--extractor", "hubert_base", "--option", f"arch={json.dumps(TINY)}"]
    face = ["--extractor", "facenet_vggface2", "--detector", "mtcnn"]
    facenet_cache = cache_path(FACENET_WEIGHTS["vggface2"])
    base = mirror.url

    # --list says where weights come from and that they are not cached yet
    rc, out, _ = _extract(capsys, face_clip, tmp_path, "--list")
    assert rc == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("facenet_vggface2 "))
    assert f"{mirror.url}/weights/{FACENET_FILE}" in line and "not cached" in line

    # first run: each file downloaded once, into the upstream caches
    for args, name in ((hubert, "hubert_base"), (face, "facenet_vggface2")):
        rc, out, err = _extract(capsys, face_clip, tmp_path / "run1", *args)
        assert rc == 0, err
    assert sorted(p for _, p in mirror.requests) == sorted([f"/weights/{HUBERT_FILE}", f"/weights/{FACENET_FILE}"])
    assert torch_hub_checkpoint(HUBERT_FILE).read_bytes() == hubert_tiny and facenet_cache.read_bytes() == facenet
    store = FeatureStore.open(tmp_path / "run1" / "facenet_vggface2")
    feats, mask = store.get("a")
    assert mask.any() and feats.shape[1] == 512  # MTCNN found the astronaut; facenet embedded her
    rc, out, _ = _extract(capsys, face_clip, tmp_path, "--list")
    assert f"[cached: {facenet_cache}]" in next(ln for ln in out.splitlines() if ln.startswith("facenet_vggface2 "))

    # second run with the server stopped: the cache is used
    mirror.stop()
    for args in (hubert, face):
        rc, out, err = _extract(capsys, face_clip, tmp_path / "run2", *args)
        assert rc == 0, err
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "run2" / "facenet_vggface2").get("a")[0], feats)
    assert len(mirror.requests) == 2

    # offline with an empty cache: one clear message, no traceback, nothing downloaded
    torch_hub_checkpoint(HUBERT_FILE).unlink()
    facenet_cache.unlink()
    for args, file, cache, env in ((hubert + ["--offline"], HUBERT_FILE, torch_hub_checkpoint(HUBERT_FILE), None),
                                   (face, FACENET_FILE, facenet_cache, "1")):
        if env:
            monkeypatch.setenv("HF_HUB_OFFLINE", env)
        rc, out, err = _extract(capsys, face_clip, tmp_path / "run3", *args)
        assert rc == 2 and "Traceback" not in err
        assert file in err and str(cache) in err and f"{base}/weights/{file}" in err and "offline" in err
    monkeypatch.delenv("HF_HUB_OFFLINE")

    # a truncated file from the mirror is refused and not kept
    server = FileServer(files={HUBERT_FILE: hubert_tiny}, faults={HUBERT_FILE: "truncate"}).start()
    monkeypatch.setenv("LIGHTNING_EMO_WEIGHTS_URL", server.url)
    try:
        rc, out, err = _extract(capsys, face_clip, tmp_path / "run4", *hubert)
    finally:
        server.stop()
    assert rc == 2 and "incomplete" in err and "Traceback" not in err
    assert not torch_hub_checkpoint(HUBERT_FILE).exists() and _no_leftovers(torch_hub_checkpoint("x").parent) == []


@pytest.mark.slow
def test_cli_extract_full_size_hubert_base_from_the_mirror(face_clip, mirror, tmp_path, capsys):
    """The real HuBERT Base architecture (~360 MB of random weights) through the mirror, once, then from the cache."""
    torch.manual_seed(0)
    mirror.files[HUBERT_FILE] = _torch_bytes(ssl_mod.build_architecture("HUBERT_BASE").state_dict())
    for run in ("a", "b"):
        rc, out, err = _extract(capsys, face_clip, tmp_path / run, "--extractor", "hubert_base", "--option", "layer=2")
        assert rc == 0, err
        mirror.stop()
    assert [p for _, p in mirror.requests] == [f"/weights/{HUBERT_FILE}"]


def test_a_recognizer_downloads_its_backbone_on_first_use(mirror, hubert_tiny, tmp_path, monkeypatch):
    """An exported recognizer names its torchaudio backbone; `predict` fetches the weights from the mirror once."""
    from lightning_emo.hub import Recognizer, RecognizerError
    from lightning_emo.hub._testing import CLASSES, random_clip, train_head_checkpoint

    mirror.files[HUBERT_FILE] = hubert_tiny
    spec = build_extractor("hubert_base", arch=TINY).spec
    assert spec.weights.kind == "torchaudio" and "weights" not in spec.options
    ckpt = train_head_checkpoint(tmp_path / "a.ckpt", spec.to_dict(), CLASSES)
    Recognizer.from_checkpoints({"audio": ckpt}).save_pretrained(tmp_path / "export")
    torch_hub_checkpoint(HUBERT_FILE).unlink()  # a fresh machine
    clip = random_clip(tmp_path / "clip.mp4", seconds=1.0)
    model = Recognizer.from_pretrained(tmp_path / "export")
    url = mirror.url
    mirror.stop()
    with pytest.raises(RecognizerError, match=rf"'hubert_base' are not available: download of {re.escape(url)}"
                                              rf"/weights/{HUBERT_FILE} failed: connection refused"):
        model.predict(clip)
    with FileServer(files={HUBERT_FILE: hubert_tiny}) as server:
        monkeypatch.setenv("LIGHTNING_EMO_WEIGHTS_URL", server.url)
        pred = Recognizer.from_pretrained(tmp_path / "export").predict(clip)
    assert pred.label in CLASSES and server.requests == [("GET", f"/{HUBERT_FILE}")]
    assert torch_hub_checkpoint(HUBERT_FILE).read_bytes() == hubert_tiny
