"""Recognizer export/load: Hub layout, round trip, HF cache offline by repo id and pinned revision, strictness, push."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_cache import make_hf_cache
from safetensors.torch import load_file, save_file

from lightning_emo.hub import Recognizer, RecognizerError, StrictLoadError
from lightning_emo.hub._testing import (
    CLASSES,
    random_clip,
    tiny_model,
    train_head_checkpoint,
    write_feature_store,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    paths = tiny_model(root)
    paths["clip"] = random_clip(root / "clip.mp4", seconds=2.0)
    return paths


@pytest.fixture(scope="module")
def model(tiny):
    return Recognizer.from_pretrained(tiny["export"])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def offline(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE at import: set its constant (and the variable, for subprocesses)."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


# ---------------------------------------------------------------------------------------------- layout


def test_export_writes_the_hub_layout(tiny):
    out = tiny["export"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "lightning_emo.recognizer" and config["classes"] == CLASSES
    video, audio = config["modalities"]["video"], config["modalities"]["audio"]
    assert video["input"] == {"fps": 5.0, "detector": {"name": "none", "options": {}}}
    assert video["feature_dtype"] == "float16" and audio["input"] == {"sample_rate": 16000}
    assert audio["extractor"]["name"] == "mfcc" and video["extractor"]["name"] == "hog"
    assert audio["head"]["num_classes"] == len(CLASSES) and audio["checkpoint"]["file"] == "audio.ckpt"
    assert config["fusion"]["inputs"] == ["video", "audio"] and config["fusion"]["rule"] == "prior"
    assert config["fusion"]["source"] == "mfcc+hog/prior/rule.json"
    # metrics come from the fuse run's results.csv: val and test, per modality and fused
    assert set(config["metrics"]["test"]) == {"audio", "video", "fused"}
    assert 0 <= config["metrics"]["test"]["fused"]["accuracy"] <= 1
    assert 0 <= config["metrics"]["test"]["fused"]["ua"] <= 1 and 0 <= config["metrics"]["test"]["audio"]["macro_f1"] <= 1
    assert str(tiny["export"].parent) not in (out / "config.json").read_text()  # no local paths
    tensors = load_file(str(out / "model.safetensors"))
    # handcrafted extractors: no extractor weights; each head's input standardisation beside it
    assert tensors and all(k.startswith(("heads.audio.", "heads.video.", "standardize.")) for k in tensors)
    for m in ("audio", "video"):
        ckpt = torch.load(tiny[m], map_location="cpu", weights_only=True)["state_dict"]
        assert config["modalities"][m]["standardize"] == {"frames": int(ckpt["input_norm_frames"]),
                                                          "dim": config["modalities"][m]["head"]["input_dim"]}
        torch.testing.assert_close(tensors[f"standardize.{m}.mean"], ckpt["input_mean"], rtol=0, atol=0)
        torch.testing.assert_close(tensors[f"standardize.{m}.std"], ckpt["input_std"], rtol=0, atol=0)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: lightning-emo" in card and "license: apache-2.0" in card
    for text in ("## Metrics", "| fused (prior) |", "test UA", "test macro-F1", "`mfcc`", "`hog`", "no weights (handcrafted)", "detector `none`",
                 "random features (a plumbing test)", "Recognizer.from_pretrained", *CLASSES):
        assert text in card, text


def test_round_trip_gives_identical_predictions(tiny, model):
    direct = Recognizer.from_checkpoints({"audio": tiny["audio"], "video": tiny["video"]}, fusion=tiny["rule"],
                                         features={"video": tiny["store"]})
    a, b = direct.predict(tiny["clip"]), model.predict(tiny["clip"])
    assert a.label == b.label and b.missing == {}
    np.testing.assert_array_equal(a.fused, b.fused)
    for m in ("audio", "video"):
        np.testing.assert_array_equal(a.probs[m], b.probs[m])
    assert np.isclose(b.fused.sum(), 1.0) and b.decided_by in ("audio", "video")


def test_inference_reuses_extraction_and_matches_the_trained_head(tiny, model):
    """Features come out as the store holds them (float16-rounded) and the head is the checkpoint's."""
    from lightning_emo.data.media import load_audio
    from lightning_emo.extractors.audio import build_mfcc
    from lightning_emo.models.module import EmotionModule

    wave = load_audio(tiny["clip"], 16000)
    feats, mask = model.extract("audio", wave)
    ref, n = build_mfcc()(wave[None], torch.tensor([len(wave)]))
    np.testing.assert_array_equal(feats, ref[0, : int(n[0])].numpy().astype(np.float16).astype(np.float32))
    module = EmotionModule.load_from_checkpoint(tiny["audio"], map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(feats)[None], torch.tensor([len(feats)])).softmax(-1)[0].double().numpy()
    np.testing.assert_allclose(model.predict(tiny["clip"]).probs["audio"], expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- Hub cache


def test_loads_offline_from_hf_cache_by_repo_id_and_pinned_revision(tiny, model, tmp_path, offline):
    cache = tmp_path / "hub"
    files = {n: tiny["export"] / n for n in ("config.json", "model.safetensors", "README.md")}
    old = make_hf_cache(cache, "org/tiny", files)
    # a newer commit on main: another head (different weights) under the same repo
    other = _copy(tiny["export"], tmp_path / "other")
    tensors = load_file(str(other / "model.safetensors"))
    tensors["heads.audio.output.bias"] = tensors["heads.audio.output.bias"] + 5.0 * torch.arange(len(CLASSES))
    save_file(tensors, str(other / "model.safetensors"))
    config = json.loads((other / "config.json").read_text())  # a new export binds its config to its weights
    config["weights"]["sha256"] = hashlib.sha256((other / "model.safetensors").read_bytes()).hexdigest()
    (other / "config.json").write_text(json.dumps(config))
    new = make_hf_cache(cache, "org/tiny", {n: other / n for n in files})
    assert old != new

    latest = Recognizer.from_pretrained("hf-hub:org/tiny", cache_dir=cache)
    assert latest.source == {"repo_id": "org/tiny", "revision": new}
    pinned = Recognizer.from_pretrained(f"hf-hub:org/tiny@{old}", cache_dir=cache)
    assert pinned.source["revision"] == old
    by_arg = Recognizer.from_pretrained("org/tiny", revision=old, cache_dir=cache, local_files_only=True)
    ref = model.predict(tiny["clip"])
    np.testing.assert_array_equal(pinned.predict(tiny["clip"]).fused, ref.fused)
    np.testing.assert_array_equal(by_arg.predict(tiny["clip"]).probs["audio"], ref.probs["audio"])
    assert not np.allclose(latest.predict(tiny["clip"]).probs["audio"], ref.probs["audio"])

    with pytest.raises(RecognizerError, match="not in the Hugging Face cache"):
        Recognizer.from_pretrained("hf-hub:org/absent", cache_dir=cache)
    with pytest.raises(RecognizerError, match="pins revision"):
        Recognizer.from_pretrained(f"hf-hub:org/tiny@{old}", revision=new, cache_dir=cache)


def test_hub_loading_never_unpickles(tiny, tmp_path, offline, monkeypatch):
    cache = tmp_path / "hub"
    torch.save({"heads.audio.output.bias": torch.zeros(4)}, tmp_path / "pytorch_model.bin")
    make_hf_cache(cache, "org/pickled", {"config.json": tiny["export"] / "config.json",
                                         "pytorch_model.bin": tmp_path / "pytorch_model.bin"})

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load called on a Hub file")

    monkeypatch.setattr(torch, "load", no_pickles)
    with pytest.raises(RecognizerError, match="model.safetensors"):
        Recognizer.from_pretrained("hf-hub:org/pickled", cache_dir=cache)
    folder = _copy(tiny["export"], tmp_path / "pickled_dir")
    (folder / "model.safetensors").unlink()
    shutil.copy(tmp_path / "pytorch_model.bin", folder / "pytorch_model.bin")
    with pytest.raises(RecognizerError, match="no model.safetensors"):
        Recognizer.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------- strictness


def test_strict_loading_lists_missing_and_unexpected_keys(tiny, tmp_path):
    folder = _copy(tiny["export"], tmp_path / "broken")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["heads.audio.output.bias"]
    tensors["heads.video.extra.weight"] = torch.zeros(2)
    tensors["heads.video.output.weight"] = tensors["heads.video.output.weight"][:, :3].contiguous()
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(StrictLoadError) as err:
        Recognizer.from_pretrained(folder)
    e = err.value
    assert e.missing == ["heads.audio.output.bias"] and e.unexpected == ["heads.video.extra.weight"]
    assert list(e.mismatched) == ["heads.video.output.weight"]
    for text in ("missing keys: heads.audio.output.bias", "unexpected keys: heads.video.extra.weight",
                 "heads.video.output.weight"):
        assert text in str(e)


def test_class_list_that_does_not_fit_the_head_is_refused(tiny, tmp_path):
    folder = _copy(tiny["export"], tmp_path / "classes")
    config = json.loads((folder / "config.json").read_text())
    config["classes"] = CLASSES + ["surprise"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RecognizerError, match="outputs 4 classes but the class list has 5"):
        Recognizer.from_pretrained(folder)
    # edited consistently (heads and fusion say 5 too), the weights still have 4 outputs
    for mc in config["modalities"].values():
        mc["head"]["num_classes"] = 5
    config["fusion"]["state"]["n_classes"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StrictLoadError, match=r"heads.audio.output.weight \(4, 16\) \(expected \(5, 16\)\)"):
        Recognizer.from_pretrained(folder)


def test_export_refuses_inconsistent_parts(tiny, tmp_path):
    from lightning_emo.extractors.audio import build_mfcc

    other = train_head_checkpoint(tmp_path / "other.ckpt", build_mfcc().spec.to_dict(), ["x", "y"])
    with pytest.raises(RecognizerError, match="classes"):
        Recognizer.from_checkpoints({"audio": other, "video": tiny["video"]}, features={"video": tiny["store"]})
    with pytest.raises(RecognizerError, match="face detector"):
        Recognizer.from_checkpoints({"audio": tiny["audio"], "video": tiny["video"]}, fusion=tiny["rule"])
    with pytest.raises(RecognizerError, match="a face model given as the audio checkpoint"):
        Recognizer.from_checkpoints({"audio": tiny["video"]}, detector="none")
    with pytest.raises(RecognizerError, match="holds face features, not audio"):
        Recognizer.from_checkpoints({"audio": tiny["audio"]}, features={"audio": tiny["store"]})
    # a list of checkpoints: modalities from their hyper-parameters; no rule = equal-weight average
    avg = Recognizer.from_checkpoints([tiny["video"], tiny["audio"]], detector="none", fps=5.0)
    assert avg.config["fusion"]["rule"] == "weighted"
    assert avg.config["fusion"]["state"]["fitted"]["weights"] == [0.5, 0.5]


def test_selected_store_ships_its_selector(tiny, tmp_path):
    """A head trained on random-forest-selected features: the selector's columns travel in model.safetensors."""
    from lightning_emo.data.manifest import Clip, Manifest
    from lightning_emo.data.media import load_frames
    from lightning_emo.extractors.face import HOGExtractor
    from lightning_emo.extractors.selection import FeatureSelector, select_features

    hog = HOGExtractor(crop_size=32, fps=5.0)
    rng = np.random.default_rng(0)
    clips = {f"s{i}": (rng.random((5, hog.spec.dim), dtype=np.float32) + (i % 2), None) for i in range(8)}
    parent = write_feature_store(tmp_path / "features" / "hog", hog.spec, clips, detector="none", fps=5.0)
    manifest = Manifest([Clip(c, f"{c}.mp4", CLASSES[i % 2], "train", f"spk{i}") for i, c in enumerate(clips)],
                        CLASSES, tmp_path, corpus="random").write(tmp_path / "manifest.csv")
    derived = select_features(parent, manifest, 20, n_estimators=10)
    ckpt = train_head_checkpoint(tmp_path / "sel.ckpt", hog.spec.to_dict(), CLASSES, input_dim=20)
    model = Recognizer.from_checkpoints({"video": ckpt}, features={"video": derived.path})
    model.save_pretrained(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["modalities"]["video"]["selector"]["k"] == 20
    assert config["modalities"]["video"]["selector"]["dim"] == hog.spec.dim
    loaded = Recognizer.from_pretrained(tmp_path / "export")
    selector = FeatureSelector.from_store(derived)
    np.testing.assert_array_equal(loaded.selectors["video"].indices.numpy(), selector.indices)
    frames, _ = load_frames(tiny["clip"], fps=5.0)
    feats, mask = loaded.extract("video", frames)
    full = hog(_hog_crops(frames, 32), torch.tensor([len(frames)]))[0][0].numpy()
    np.testing.assert_allclose(feats, selector.transform(full).astype(np.float16).astype(np.float32))
    assert loaded.predict(tiny["clip"]).probs["video"] is not None
    with pytest.raises(RecognizerError, match="features were selected"):
        Recognizer.from_checkpoints({"video": ckpt}, detector="none")


def _hog_crops(frames: torch.Tensor, size: int) -> torch.Tensor:
    from lightning_emo.extractors.face_detect import build_face_detector

    return build_face_detector("none", crop_size=size).crop_batch([frames]).crops


def test_file_sourced_extractor_weights_are_embedded(tmp_path):
    """The paper's DNN has no public weights: they go into model.safetensors and load without the original file."""
    from lightning_emo.extractors.base import build_extractor
    from lightning_emo.extractors.speech_dnn import SpeechDNN, save_speech_dnn

    torch.manual_seed(0)
    weights = save_speech_dnn(SpeechDNN(num_outputs=5, context=1, hidden_dim=12, num_hidden=2),
                              tmp_path / "private" / "dnn.safetensors", license="internal")
    spec = build_extractor("speech_dnn", weights=str(weights)).spec
    assert spec.weights.kind == "file"
    ckpt = train_head_checkpoint(tmp_path / "a.ckpt", spec.to_dict(), CLASSES)
    clip = random_clip(tmp_path / "clip.mp4", seconds=1.5)
    model = Recognizer.from_checkpoints({"audio": ckpt})
    before = model.predict(clip)
    model.save_pretrained(tmp_path / "export")
    shutil.rmtree(tmp_path / "private")
    config_text = (tmp_path / "export" / "config.json").read_text()
    assert "private" not in config_text and str(tmp_path) not in config_text
    emb = json.loads(config_text)["modalities"]["audio"]["embedded"]
    assert emb["kind"] == "file" and emb["metadata"]["format"] == "lightning_emo.speech_dnn"
    keys = set(load_file(str(tmp_path / "export" / "model.safetensors")))
    assert {f"extractors.audio.{k}" for k in emb["keys"]} <= keys
    loaded = Recognizer.from_pretrained(tmp_path / "export")
    np.testing.assert_array_equal(loaded.predict(clip).probs["audio"], before.probs["audio"])
    # an embedded tensor missing is a strict-load error too
    tensors = load_file(str(tmp_path / "export" / "model.safetensors"))
    del tensors["extractors.audio.output.weight"]
    save_file(tensors, str(tmp_path / "export" / "model.safetensors"))
    with pytest.raises(StrictLoadError, match="missing keys: extractors.audio.output.weight"):
        Recognizer.from_pretrained(tmp_path / "export")

# push, pull and the fit callback run against a Hub stand-in over HTTP: tests/test_hub_http.py
