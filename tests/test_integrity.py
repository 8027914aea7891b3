"""Wrong results are refused, never written silently: class lists matched by name across files,
manifest validation (duplicate columns, paths leaving the root, duplicate classes), corpora that
cannot serve a use, feature-store checksums and NaN/Inf, NaN losses, Hub folder binding and
config ranges, DDP evaluation counting every clip once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_emo.data.checks import ClassListError, CorpusError, check_splits, match_classes
from lightning_emo.data.manifest import ManifestError, read_manifest

CLASSES = ["angry", "happy", "sad"]


def _manifest(tmp, rows, header="clip_id,path,label,split,speaker", classes=CLASSES, media=True):
    tmp.mkdir(parents=True, exist_ok=True)
    if media:
        for r in rows:
            p = r.split(",")[1]
            if p and not p.startswith("/") and ".." not in p:
                (tmp / p).parent.mkdir(parents=True, exist_ok=True)
                (tmp / p).write_bytes(b"x")
    csv = tmp / "manifest.csv"
    csv.write_text("\n".join([header] + rows) + "\n")
    if classes is not None:
        (tmp / "manifest.json").write_text(json.dumps({"classes": classes, "root": "."}))
    return csv


# --------------------------------------------------------------------- class lists


@pytest.mark.parametrize("have,want,expect", [
    (["a", "b", "c"], ["a", "b", "c"], None),
    (["b", "c", "a"], ["a", "b", "c"], [2, 0, 1]),
    (["c", "b", "a"], ["a", "b", "c"], [2, 1, 0]),
])
def test_match_classes_reorders_by_name(have, want, expect):
    idx = match_classes(have, want, "x.ckpt", "m.json")
    assert idx == expect
    if idx is not None:
        assert [have[i] for i in idx] == want


@pytest.mark.parametrize("have,want,text", [
    (["a", "b"], ["a", "b", "c"], "only in m.json: c"),
    (["a", "b", "x"], ["a", "b", "c"], "only in x.ckpt: x"),
    (["a", "a", "b"], ["a", "b", "b"], "duplicate class name"),
])
def test_match_classes_refuses_other_sets(have, want, text):
    with pytest.raises(ClassListError, match=text) as e:
        match_classes(have, want, "x.ckpt", "m.json")
    assert "x.ckpt" in str(e.value)


def test_match_classes_refuses_order_when_consumer_cannot_reorder():
    with pytest.raises(ClassListError, match=r"another order.*x\.ckpt has \[b, a\], m\.json has \[a, b\]"):
        match_classes(["b", "a"], ["a", "b"], "x.ckpt", "m.json", reorder=False)


# ----------------------------------------------------------------------- manifests


@pytest.mark.parametrize("header,rows,line,field", [
    ("clip_id,path,label,split,speaker,label", ["c1,a.wav,angry,train,s1,happy"], 1, "label"),
    ("clip_id,path,path,label,split,speaker", ["c1,a.wav,b.wav,angry,train,s1"], 1, "path"),
    ("clip_id,path,label,split,speaker,speaker", ["c1,a.wav,angry,train,s1,s2"], 1, "speaker"),
])
def test_manifest_duplicate_header_column_refused(tmp_path, header, rows, line, field):
    csv = _manifest(tmp_path, rows, header=header)
    with pytest.raises(ManifestError, match="named twice") as e:
        read_manifest(csv)
    assert (e.value.line, e.value.field) == (line, field)
    assert str(csv) in str(e.value)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "a/../../outside.wav", "./../x.wav",
                                 "C:/media/x.wav"])
def test_manifest_paths_leaving_the_root_refused(tmp_path, bad):
    csv = _manifest(tmp_path / "corpus", ["c1,ok.wav,angry,train,s1", f"c2,{bad},happy,train,s1"])
    for check_files in (True, False):
        with pytest.raises(ManifestError, match="corpus root") as e:
            read_manifest(csv, check_files=check_files)
        assert (e.value.line, e.value.field) == (3, "path")


def test_manifest_paths_inside_the_root_and_symlinks_accepted(tmp_path):
    outside = tmp_path / "disk2"
    outside.mkdir()
    (outside / "x.wav").write_bytes(b"x")
    csv = _manifest(tmp_path / "corpus", ["c1,sub/../ok.wav,angry,train,s1", "c2,linked/x.wav,happy,train,s1"],
                    media=False)
    (tmp_path / "corpus" / "sub").mkdir()
    (tmp_path / "corpus" / "ok.wav").write_bytes(b"x")
    (tmp_path / "corpus" / "linked").symlink_to(outside)
    assert len(read_manifest(csv)) == 2


@pytest.mark.parametrize("classes", [["angry", "happy", "angry"], ["angry", "happy", "happy", "sad"],
                                     ["angry", " angry", "sad"]])
def test_manifest_duplicate_classes_refused(tmp_path, classes):
    csv = _manifest(tmp_path, ["c1,a.wav,angry,train,s1"], classes=classes)
    with pytest.raises(ManifestError, match="duplicate class") as e:
        read_manifest(csv)
    assert e.value.field == "classes" and "manifest.json" in str(e.value)
    csv2 = _manifest(tmp_path / "b", ["c1,a.wav,angry,train,s1"], classes=None)
    with pytest.raises(ManifestError, match="duplicate class"):
        read_manifest(csv2, classes=classes)


# ------------------------------------------------------------------ corpus checks


def _clips(spec):
    """``"train:angry:s1 ..."`` -> (split, label, speaker) tuples."""
    return [tuple(item.split(":")) for item in spec.split()]


GOOD = "train:a:s1 train:b:s2 train:a:s3 train:b:s3 val:a:s4 val:b:s4 test:a:s5 test:b:s5"


def test_check_splits_accepts_a_good_corpus():
    for use in ("train", "evaluate", "prior", "lr_fusion", "reproduce"):
        assert check_splits(_clips(GOOD), ["a", "b"], use, "m.csv") == []


@pytest.mark.parametrize("spec,use,split,text", [
    ("val:a:s1 val:b:s1 test:a:s2", "train", "train", "no clips in split 'train'"),
    ("train:a:s1 train:a:s2 val:a:s3 val:b:s3", "train", "train", "'b' have no training clips"),
    ("train:a:s1 train:b:s2 test:a:s3", "train", "val", "no clips in split 'val'"),
    ("train:a:s1 train:b:s2 test:a:s3", "prior", "val", "fusion prior"),
    ("train:a:s1 train:b:s2 val:a:s3 test:a:s4", "lr_fusion", "val", "at least two classes"),
    ("train:a:s1 train:b:s2 val:a:s3 val:b:s3", "evaluate", "test", "nothing to score on"),
    ("train:a:s1 train:b:s2 val:a:s3 val:b:s3", "reproduce", "test", "nothing to score on"),
])
def test_check_splits_refuses_what_cannot_be_evaluated(spec, use, split, text):
    with pytest.raises(CorpusError, match=text) as e:
        check_splits(_clips(spec), ["a", "b"], use, "m.csv")
    assert e.value.where == split and "m.csv" in str(e.value)
    assert "prepare" in str(e.value) or "class list" in str(e.value)


@pytest.mark.parametrize("spec,use,text", [
    ("train:a:s1 train:b:s1 val:a:s1 val:b:s1 test:a:s1 test:b:s1", "train", "same speaker"),
    ("train:a: train:b: val:a: val:b: test:a: test:b:", "train", "no clip names a speaker"),
    ("train:a:s1 train:b:s2 val:a:s1 val:b:s2 test:a:s3 test:b:s3", "train", "several splits"),
    ("train:a:s1 train:b:s2 val:a:s3 val:b:s3", "train", "not tested"),
    ("train:a:s1 train:b:s2 val:a:s3 test:a:s4", "prior", "only 1 class"),
])
def test_check_splits_warns_about_weak_corpora(spec, use, text, caplog):
    warnings = check_splits(_clips(spec), ["a", "b"], use, "m.csv")
    assert any(text in w for w in warnings), warnings
    assert text in caplog.text


def test_prepare_warns_about_a_corpus_with_one_speaker(tmp_path):
    rows = [f"c{i},c{i}.wav,{lab},{split},s1" for i, (lab, split) in enumerate(
        [("angry", "train"), ("happy", "train"), ("sad", "train"), ("angry", "val"), ("happy", "test")])]
    csv = _manifest(tmp_path, rows)
    out = tmp_path / "out" / "m.csv"
    r = subprocess.run([sys.executable, "-m", "lightning_emo.cli", "prepare", "--corpus", "manifest", "--manifest",
                        str(csv), "--root", str(tmp_path), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "same speaker" in r.stderr and "no clips of" not in r.stderr
    assert "warning:" in r.stderr


# ------------------------------------------------- class order across checkpoint and manifest

try:  # tests/ on sys.path (pytest's default) or the repository root
    from test_configs import CONFIGS, _restore_global_torch_state, fit  # noqa: F401
    from test_module import make_toy_corpus
except ImportError:
    from tests.test_configs import CONFIGS, _restore_global_torch_state, fit  # noqa: F401
    from tests.test_module import make_toy_corpus

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator", "cpu"]
AUDIO = CONFIGS / "experiment" / "synthetic_audio.yaml"


def _reordered_manifest(src: Path, dst: Path, classes) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "manifest.csv").write_text(src.read_text())
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["classes"] = list(classes)
    meta["root"] = str(src.parent)
    (dst / "manifest.json").write_text(json.dumps(meta))
    return dst / "manifest.csv"


@pytest.fixture
def toy_run(tmp_path):
    from lightning_emo.data.manifest import read_manifest

    make_toy_corpus(tmp_path)
    fit(["--config", str(AUDIO), "--data.init_args.manifest", str(tmp_path / "manifest.csv"),
         "--data.init_args.features", str(tmp_path / "audio"), "--model.init_args.head_options", "{}",
         "--trainer.max_epochs", "2", "--trainer.logger.init_args.name", "toy", *QUIET])
    run = sorted(Path("runs/toy").glob("version_*"))[-1]
    return tmp_path, run, next((run / "checkpoints").glob("best-*.ckpt")), read_manifest(tmp_path / "manifest.csv", check_files=False)


def test_predict_with_manifest_classes_in_another_order_matches_by_name(toy_run):
    """The bug: same classes, another order in the manifest -> probabilities under the wrong names, exit 0."""
    from lightning_emo.cli import main
    from lightning_emo.data.predictions import read_predictions

    root, run, best, manifest = toy_run
    base = ["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(best), *QUIET]
    assert main([*base, "--predictions.output", str(root / "a.csv")]) == 0
    a = read_predictions(root / "a.csv")
    for k, order in enumerate([list(reversed(manifest.classes)), manifest.classes[1:] + manifest.classes[:1]]):
        other = _reordered_manifest(root / "manifest.csv", root / f"m{k}", order)
        assert main([*base, "--data.init_args.manifest", str(other), "--predictions.output",
                     str(root / f"b{k}.csv")]) == 0
        b = read_predictions(root / f"b{k}.csv")
        assert b.classes == order
        assert b.labels == a.labels  # label names, not indices of the other order
        b = read_predictions(root / f"b{k}.csv", classes=a.classes)  # columns by name
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-6)


def test_test_metrics_with_reordered_manifest_are_unchanged_and_other_classes_refused(toy_run):
    import torch

    from lightning_emo.data.datamodule import FeatureDataModule
    from lightning_emo.models.module import EmotionModule

    root, run, best, manifest = toy_run
    from helpers import quiet_trainer

    def test_acc(path):
        model = EmotionModule.load_from_checkpoint(best, map_location="cpu")
        dm = FeatureDataModule(str(path), str(root / "audio"), batch_size=4)
        out = quiet_trainer(root).test(model, datamodule=dm, verbose=False)[0]
        return out["test/acc"], model

    acc, _ = test_acc(root / "manifest.csv")
    order = list(reversed(manifest.classes))
    acc2, model = test_acc(_reordered_manifest(root / "manifest.csv", root / "m", order))
    assert acc2 == pytest.approx(acc) and model.classes == order and model.hparams["classes"] == order
    # another class set: refused naming both lists and both files
    (root / "x").mkdir()
    renamed = [c if c != manifest.classes[0] else "furious" for c in manifest.classes]
    csv = (root / "manifest.csv").read_text().replace(f",{manifest.classes[0]},", ",furious,")
    (root / "x" / "manifest.csv").write_text(csv)
    (root / "x" / "manifest.json").write_text(json.dumps({"classes": renamed, "root": str(root)}))
    model = EmotionModule.load_from_checkpoint(best, map_location="cpu")
    dm = FeatureDataModule(str(root / "x" / "manifest.csv"), str(root / "audio"), batch_size=4)
    with pytest.raises(ClassListError, match=r"only in .*furious") as e:
        quiet_trainer(root).test(model, datamodule=dm, verbose=False)
    assert str(root / "x" / "manifest.csv") in str(e.value)
    del torch


def test_fuse_matches_prediction_columns_by_name(tmp_path):
    from lightning_emo.data.predictions import write_predictions
    from lightning_emo.fusion.report import fuse_report

    rng = np.random.default_rng(0)
    classes = ["angry", "happy", "neutral", "sad"]
    n = 40
    ids = [f"c{i}" for i in range(n)]
    splits = ["val" if i < 20 else "test" for i in range(n)]
    y = rng.integers(0, 4, n)
    labels = [classes[k] for k in y]

    def probs(noise):
        logits = np.eye(4)[y] * 2 + rng.normal(scale=noise, size=(n, 4))
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    pa, pv = probs(1.5), probs(2.0)
    a = write_predictions(tmp_path / "a.csv", ids, splits, labels, pa, classes)
    v = write_predictions(tmp_path / "v.csv", ids, splits, labels, pv, classes)
    order = [2, 0, 3, 1]
    v2 = write_predictions(tmp_path / "v2.csv", ids, splits, labels, pv[:, order], [classes[i] for i in order])
    kw = dict(modalities={"a": "audio", "v": "video"}, rules=["prior", "lr"])
    same = fuse_report({"a": a, "v": v}, **kw)
    permuted = fuse_report({"a": a, "v": v2}, **kw)
    assert [r.test_accuracy for r in permuted.results] == [r.test_accuracy for r in same.results]
    other = write_predictions(tmp_path / "o.csv", ids, splits, [""] * n, pv, ["angry", "happy", "neutral", "calm"])
    with pytest.raises(ValueError, match=r"only in .*o\.csv: calm"):
        fuse_report({"a": a, "v": other}, **kw)
