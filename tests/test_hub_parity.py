"""An exported recognizer gives the trained heads' posteriors: same features, standardisation, selection, fusion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_emo.hub import Recognizer, RecognizerError
from lightning_emo.hub._testing import CLASSES, random_clip, tiny_model, train_head_checkpoint

# float32 heads on identical float32 inputs: only summation order may differ (batch vs one clip)
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    paths = tiny_model(root)
    clips = [random_clip(root / "media" / f"c{i}.mp4", seconds=1.0 + 0.5 * i, seed=i) for i in range(3)]
    paths["clips"] = clips
    return paths


def _module_posteriors(ckpt: Path, store) -> dict[str, np.ndarray]:
    """What ``EmotionModule`` gives on a store's features, clip by clip (``forward`` = standardise + head)."""
    from lightning_emo.models.module import EmotionModule

    module = EmotionModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    assert int(module.input_norm_frames) > 0 and not torch.allclose(module.input_std, torch.ones_like(module.input_std))
    out = {}
    with torch.no_grad():
        for cid in store.clip_ids:
            x, mask = store.get(cid)
            x = torch.from_numpy(np.asarray(x, dtype=np.float32))[None]
            logits = module(x, torch.tensor([x.shape[1]]), torch.from_numpy(np.asarray(mask, bool))[None])
            out[cid] = logits.softmax(-1)[0].double().numpy()
    return out


def test_recognizer_on_media_equals_the_heads_on_their_store_features(tiny, tmp_path):
    """Real clips -> real stores (``extract``) -> module posteriors == ``Recognizer.predict`` on the same files."""
    from lightning_emo.data.manifest import Clip, Manifest
    from lightning_emo.extractors.extract import extract
    from lightning_emo.fusion.rules import rule_from_state_dict

    root = tiny["clips"][0].parent.parent
    clips = [Clip(p.stem, f"media/{p.name}", CLASSES[i], "test", f"s{i}") for i, p in enumerate(tiny["clips"])]
    manifest = Manifest(clips, CLASSES, root, corpus="random").write(tmp_path / "manifest.csv")
    stores = {"audio": extract(manifest, "mfcc", tmp_path / "features", batch_size=2, num_workers=0),
              "video": extract(manifest, "hog", tmp_path / "features", options={"crop_size": 32}, detector="none",
                               fps=5.0, batch_size=2, num_workers=0)}
    expected = {m: _module_posteriors(tiny[m], stores[m]) for m in ("audio", "video")}
    model = Recognizer.from_pretrained(tiny["export"])
    rule = rule_from_state_dict(json.loads(Path(tiny["rule"]).read_text())["state"])
    for clip in clips:
        pred = model.predict(root / clip.path)
        for m in ("audio", "video"):
            feats, mask = model.extract(m, *_media(model, m, root / clip.path))
            stored, smask = stores[m].get(clip.clip_id)
            np.testing.assert_array_equal(feats, np.asarray(stored, np.float32))  # rounded as the store rounded
            np.testing.assert_array_equal(mask, smask)
            assert model.config["modalities"][m]["temperature"] is None
            np.testing.assert_allclose(pred.probs[m], expected[m][clip.clip_id], **TOL)
        fused = rule.predict_proba([expected["video"][clip.clip_id][None], expected["audio"][clip.clip_id][None]])[0]
        np.testing.assert_allclose(pred.fused, fused, **TOL)


def _media(model: Recognizer, m: str, path: str) -> tuple:
    from lightning_emo.data.media import load_audio, load_frames

    return (load_audio(path, sample_rate=model.sample_rate()),) if m == "audio" else (load_frames(path, fps=model.fps())[0],)


def test_stacked_layer_heads_export_their_layer_weights(tmp_path):
    """``layers="all"`` features: EmotionModule adds ``layers`` to its head; the export must build the same head."""
    from lightning_emo.extractors.audio import build_mfcc
    from lightning_emo.models.module import EmotionModule

    spec = build_mfcc().spec.to_dict()
    spec.update(dim=3 * spec["dim"], options={**spec["options"], "layers": "all", "num_layers": 3})
    ckpt = train_head_checkpoint(tmp_path / "stacked.ckpt", spec, CLASSES)
    model = Recognizer.from_checkpoints({"audio": ckpt})
    assert model.config["modalities"]["audio"]["head"]["options"]["layers"] == 3
    module = EmotionModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    x = np.random.default_rng(0).normal(3.0, 2.0, (9, spec["dim"])).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)[None], torch.tensor([9])).softmax(-1)[0].double().numpy()
    np.testing.assert_allclose(model.head_posteriors("audio", x), ref, **TOL)


def test_head_without_standardisation_exports_none(tmp_path):
    from lightning_emo.extractors.audio import build_mfcc
    from lightning_emo.models.module import EmotionModule

    ckpt = train_head_checkpoint(tmp_path / "plain.ckpt", build_mfcc().spec.to_dict(), CLASSES, input_norm=False)
    model = Recognizer.from_checkpoints({"audio": ckpt})
    assert model.config["modalities"]["audio"]["standardize"] is None and "audio" not in model.standardize
    model.save_pretrained(tmp_path / "export")
    loaded = Recognizer.from_pretrained(tmp_path / "export")
    module = EmotionModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    x = np.random.default_rng(1).normal(size=(7, 39)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)[None], torch.tensor([7])).softmax(-1)[0].double().numpy()
    np.testing.assert_allclose(loaded.head_posteriors("audio", x), ref, **TOL)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(format_version=1), r"format_version 1: exported before .*standardisation.*lightning-emo export"),
    (lambda c: c["modalities"]["audio"].pop("standardize"), r"modalities.audio lacks 'standardize'.*re-export"),
    (lambda c: c["modalities"]["video"]["standardize"].update(dim=3), r"standardize has 3 features, the head takes"),
    (lambda c: c["modalities"]["video"]["standardize"].update(frames="12"), r"standardize.frames must be integer"),
    (lambda c: c["modalities"]["video"].update(standardize=None), r"unexpected keys: standardize.video.mean"),
])
def test_folders_without_their_standardisation_are_refused(tiny, tmp_path, edit, message):
    """A folder exported before the standardisation travelled (or edited apart from its weights) is refused."""
    folder = tmp_path / "old"
    shutil.copytree(tiny["export"], folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RecognizerError, match=message):
        Recognizer.from_pretrained(folder)


def test_dropped_standardisation_tensors_are_missing_keys(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from lightning_emo.hub.config import file_sha256

    folder = tmp_path / "dropped"
    shutil.copytree(tiny["export"], folder)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["standardize.audio.std"]
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["sha256"] = file_sha256(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RecognizerError, match="missing keys: standardize.audio.std"):
        Recognizer.from_pretrained(folder)


def test_features_beyond_the_store_dtype_are_refused_not_predicted():
    from lightning_emo.hub.recognizer import _as_stored

    x = np.array([[1.0, 7e4]], np.float32)
    np.testing.assert_array_equal(_as_stored(x, "float32", "audio"), x)
    with pytest.raises(RecognizerError, match="beyond the float16 range"):
        _as_stored(x, "float16", "audio")
    with pytest.raises(RecognizerError, match="NaN/infinite"):
        _as_stored(np.array([[np.nan]], np.float32), "float32", "video")
    y = np.array([[0.1, 1 / 3]], np.float32)
    np.testing.assert_array_equal(_as_stored(y, "float16", "audio"), y.astype(np.float16).astype(np.float32))


# ---------------------------------------------------------------------------------------------- real CLI

PROTOCOL = """\
synth: {clips_per_class: 4, num_speakers: 6, size: 64, max_speech: 2.0, seed: 0}
audio:
  mfcc: {extractor: mfcc, train_config: configs/experiment/synthetic_audio.yaml}
video:
  hog_sel64: {extractor: hog, detector: none, fps: 5, select: 64, train_config: configs/experiment/synthetic_face.yaml}
train_args: ["--trainer.max_epochs=3", "--trainer.enable_progress_bar=false"]
rules: [lr]
calibrate: true
"""


def _predictions(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    from lightning_emo.data.predictions import read_predictions

    preds = read_predictions(path)
    return {cid: (split, preds.probs[i]) for i, (cid, split) in enumerate(zip(preds.clip_ids, preds.splits))}


@pytest.mark.slow
def test_exported_demo_run_predicts_what_its_heads_and_rule_predicted(tmp_path):
    """``reproduce`` (real fit/predict/fuse CLI) -> ``export --run`` -> ``Recognizer.predict`` on the test media.

    Per modality: the head's ``predictions.csv`` row (temperature-scaled as the recognizer reports it);
    fused: the exported rule applied to those rows.
    """
    from lightning_emo.cli import main
    from lightning_emo.data.manifest import read_manifest
    from lightning_emo.fusion.calibration import temperature_scale
    from lightning_emo.fusion.rules import rule_from_state_dict

    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    out = tmp_path / "run"
    assert main(["reproduce", "--config", str(tmp_path / "protocol.yaml"), "--out", str(out),
                 "--num_workers", "0"]) == 0
    assert main(["export", "--run", str(out), "--audio", "mfcc", "--video", "hog_sel64", "--rule", "lr",
                 "--out", str(tmp_path / "exported")]) == 0
    protocol = json.loads((out / "protocol.json").read_text())
    heads = {"audio": _predictions(Path(protocol["predictions"]["mfcc"])),
             "video": _predictions(Path(protocol["predictions"]["hog_sel64"]))}
    model = Recognizer.from_pretrained(tmp_path / "exported")
    assert all(model.config["modalities"][m]["standardize"] for m in heads)
    assert all(model.config["modalities"][m]["temperature"] for m in heads)  # calibrate: true
    rule = rule_from_state_dict(model.config["fusion"]["state"])
    manifest = read_manifest(protocol["manifest"])
    tested = 0
    for clip in manifest.split("test"):
        pred = model.predict(manifest.media_path(clip))
        raw = {m: heads[m][clip.clip_id][1] for m in heads}
        for m in heads:
            t = model.config["modalities"][m]["temperature"]
            want = temperature_scale(raw[m][None], t)[0] if t else raw[m]
            np.testing.assert_allclose(pred.probs[m], want, rtol=1e-4, atol=1e-6)
        fused = rule.predict_proba([raw[m][None] for m in model.config["fusion"]["inputs"]])[0]
        np.testing.assert_allclose(pred.fused, fused, rtol=1e-4, atol=1e-6)
        tested += 1
    assert tested == len(manifest.split("test")) > 0
