"""Wrong results are refused, never written silently: class lists matched by name across files,
manifest validation (duplicate columns, paths leaving the root, duplicate classes), corpora that
cannot serve a use, feature-store checksums and NaN/Inf, NaN losses, Hub folder binding and
config ranges, DDP evaluation counting every clip once."""

from __future__ import annotations

import json
import re
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
    ("train:a:s1 train:a:s2 val:a:s3 val:b:s3 test:a:s4", "train", "'b' have no training clips"),
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


def _rewrite_splits(src: Path, dst: Path, change) -> Path:
    """A copy of a manifest (same root) whose rows pass through ``change(fields) -> fields | None``."""
    dst.mkdir(parents=True, exist_ok=True)
    lines = src.read_text().splitlines()
    rows = [lines[0]] + [",".join(f) for f in (change(line.split(",")) for line in lines[1:]) if f]
    (dst / "manifest.csv").write_text("\n".join(rows) + "\n")
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["root"] = str(src.parent)
    (dst / "manifest.json").write_text(json.dumps(meta))
    return dst / "manifest.csv"


@pytest.mark.parametrize("change,text", [
    (lambda f: None if f[3] == "val" else f, "no clips in split 'val'"),
    (lambda f: f[:3] + ["test"] + f[4:] if f[3] == "train" else f, "no clips in split 'train'"),
])
def test_fit_refuses_corpora_that_cannot_train_before_any_work(tmp_path, change, text, capsys):
    from lightning_emo.cli import main

    make_toy_corpus(tmp_path, dims=(("audio", 6),))
    bad = _rewrite_splits(tmp_path / "manifest.csv", tmp_path / "bad", change)
    assert main(["fit", "--config", str(AUDIO), "--data.init_args.manifest", str(bad), "--data.init_args.features",
                 str(tmp_path / "audio"), "--trainer.max_epochs", "1", "--trainer.logger.init_args.name", "bad",
                 *QUIET]) == 2  # one paragraph on stderr (lightning_emo.errors)
    assert re.search(text, capsys.readouterr().err)
    assert not list(Path("runs").rglob("*.ckpt"))


def test_fuse_refuses_lr_on_one_class_validation_and_warns_for_the_prior(tmp_path, caplog):
    from lightning_emo.data.predictions import write_predictions
    from lightning_emo.fusion.report import fuse_report

    ids = [f"c{i}" for i in range(8)]
    splits = ["val"] * 4 + ["test"] * 4
    labels = ["a"] * 4 + ["a", "b", "a", "b"]
    p = np.tile([[0.7, 0.3]], (8, 1))
    a = write_predictions(tmp_path / "a.csv", ids, splits, labels, p, ["a", "b"])
    v = write_predictions(tmp_path / "v.csv", ids, splits, labels, p[:, ::-1], ["a", "b"])
    with pytest.raises(CorpusError, match="at least two classes"):
        fuse_report({"a": a, "v": v}, modalities={"a": "audio", "v": "video"}, rules=["lr"])
    fuse_report({"a": a, "v": v}, modalities={"a": "audio", "v": "video"}, rules=["prior"])
    assert "only 1 class" in caplog.text


# --------------------------------------------------------------------- NaN losses


def _nan_run(tmp_path, dm, **model_kw):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lightning_emo.models.module import EmotionModule

    model = EmotionModule(input_dim=dm.input_dim, classes=dm.classes, modality=dm.modality,
                          extractor_spec=dm.extractor_spec, head="mean_mlp", **model_kw)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_last=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, max_epochs=4, callbacks=[ckpt],
                         default_root_dir=str(tmp_path))
    return model, trainer


def test_diverging_loss_stops_training_with_a_clear_error_and_no_checkpoint(tmp_path):
    from lightning_emo.data.datamodule import FeatureDataModule
    from lightning_emo.models.module import NonFiniteError

    make_toy_corpus(tmp_path, dims=(("audio", 6),))
    dm = FeatureDataModule(str(tmp_path / "manifest.csv"), str(tmp_path / "audio"), batch_size=8)
    model, trainer = _nan_run(tmp_path, dm, optimizer="sgd", lr=1e36, input_norm=False)
    with pytest.raises(NonFiniteError, match=r"training loss is (nan|inf).*training diverged: lower") as e:
        trainer.fit(model, datamodule=dm)
    assert "manifest.csv" in str(e.value) and "Nothing of this epoch was saved" in str(e.value)
    saved = list((tmp_path / "ckpt").glob("*.ckpt")) if (tmp_path / "ckpt").exists() else []
    import torch

    for f in saved:  # an epoch completed before the divergence may be saved, never a non-finite model
        state = torch.load(f, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), f


def test_nan_features_stop_training_naming_the_clip(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from lightning_emo.models.module import EmotionModule, NonFiniteError

    x = torch.randn(6, 5, 3)
    x[4, 2, 1] = float("nan")
    batch = {"clip_id": [f"clip{i}" for i in range(6)], "split": ["train"] * 6, "label": torch.tensor([0, 1] * 3),
             "x": x, "lengths": torch.full((6,), 5), "mask": torch.ones(6, 5, dtype=torch.bool)}
    model = EmotionModule(input_dim=3, classes=["a", "b"], head="mean_mlp", input_norm=False)
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         max_epochs=1, default_root_dir=str(tmp_path))
    with pytest.raises(NonFiniteError, match=r"clip 'clip4'.*input features of 1 clip\(s\) are not finite \(clip4\)"):
        trainer.fit(model, DataLoader([batch], batch_size=None))
    assert not list(tmp_path.rglob("*.ckpt"))
    with pytest.raises(NonFiniteError, match="posteriors"):
        trainer.predict(model, DataLoader([batch], batch_size=None))


# ---------------------------------------------------------------- DDP: each clip once


@pytest.mark.parametrize("n,world", [(7, 2), (7, 3), (1, 2), (2, 4), (8, 2)])
def test_eval_sampler_gives_each_clip_to_exactly_one_rank(n, world):
    from lightning_emo.data.samplers import EvalDistributedSampler, padding_item

    class Items(list):
        def __getitem__(self, i):
            return padding_item(self, i) or {"clip_id": f"c{list.__getitem__(self, i)}", "label": 1}

    data = Items(range(n))
    seen = []
    for rank in range(world):
        indices = list(EvalDistributedSampler(data, num_replicas=world, rank=rank))
        assert indices, "every rank runs at least one batch"
        items = [data[i] for i in indices]
        seen += [it["clip_id"] for it in items if it["label"] >= 0]
    assert sorted(seen) == sorted(f"c{i}" for i in range(n))


@pytest.mark.slow  # two DDP launches (~40 s on 2 busy cores); the sampler test above is the fast variant
def test_ddp_validate_and_test_count_each_clip_once(tmp_path):
    """7 validation clips on 2 processes: val/acc is k/7 and equals one process's (the padded sampler gave k/8)."""
    import csv
    import os
    import subprocess

    from lightning_emo.cli import main

    make_toy_corpus(tmp_path, dims=(("audio", 6),))
    data = ["--data.init_args.manifest", str(tmp_path / "manifest.csv"), "--data.init_args.features",
            str(tmp_path / "audio"), "--data.init_args.batch_size", "3"]
    fit(["--config", str(AUDIO), *data, "--model.init_args.head_options", "{}", "--trainer.max_epochs", "1",
         "--trainer.logger.init_args.name", "one", *QUIET])
    run = sorted(Path("runs/one").glob("version_*"))[-1]
    best = str(next((run / "checkpoints").glob("best-*.ckpt")))

    def metrics(folder):  # evaluation from a run's checkpoint logs into RUN/<stage>[-n]/
        rows = list(csv.DictReader(open(run / folder / "metrics.csv")))
        return {k: float(v) for r in rows for k, v in r.items() if v and k.endswith("/acc")}

    for stage in ("validate", "test"):
        assert main([stage, "--config", str(run / "config.yaml"), "--ckpt_path", best, *data, *QUIET]) == 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    script = tmp_path / "eval_twice.py"  # DDP relaunches this file on the second rank: one launch, two stages
    script.write_text("import sys\nfrom lightning_emo.cli import main\n"
                      "for s in ('validate', 'test'):\n"
                      "    main([s, *sys.argv[1:]])\n")
    proc = subprocess.run([sys.executable, str(script), "--config", str(run / "config.yaml"), "--ckpt_path", best,
                           *data, *QUIET, "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                          cwd=Path.cwd(), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage, key in (("validate", "val/acc"), ("test", "test/acc")):
        one, two = metrics(stage)[key], metrics(f"{stage}-1")[key]
        assert two == pytest.approx(one, abs=1e-6), (stage, one, two)
        assert round(two * 7, 4) == round(two * 7), f"{key} = {two} is not k/7"


# ------------------------------------------------------------ Hub folders: binding and ranges

ZOO_DEMO = Path(__file__).resolve().parents[1] / "zoo" / "models" / "synthetic-demo"


def _demo(tmp_path, name="demo") -> Path:
    import shutil

    return Path(shutil.copytree(ZOO_DEMO, tmp_path / name))


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _rebind(folder: Path) -> None:
    import hashlib

    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    _edit_config(folder, lambda c: c["weights"].update(sha256=digest))


def test_zoo_demo_is_bound_to_its_weights():
    from lightning_emo.hub.config import check_weights_digest, parse_config

    config = parse_config((ZOO_DEMO / "config.json").read_bytes())
    assert check_weights_digest(config, ZOO_DEMO / "model.safetensors")


def test_hub_weights_with_flipped_bytes_or_from_another_export_are_refused(tmp_path):
    from lightning_emo.hub import Recognizer, RecognizerError

    folder = _demo(tmp_path)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0x10  # a float's mantissa: still a finite, loadable tensor
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RecognizerError, match="SHA-256 .* is not the one .*config.json records"):
        Recognizer.from_pretrained(folder)
    other = _demo(tmp_path, "other")  # weights of one export beside the config of another
    _edit_config(other, lambda c: c["weights"].update(sha256="0" * 64))
    with pytest.raises(RecognizerError, match="not the ones this config was saved with"):
        Recognizer.from_pretrained(other)


def test_hub_permuted_class_list_is_refused(tmp_path):
    from lightning_emo.hub import Recognizer, RecognizerError

    folder = _demo(tmp_path)
    _edit_config(folder, lambda c: c.update(classes=c["classes"][1:] + c["classes"][:1]))
    with pytest.raises(RecognizerError, match="class list in another order") as e:
        Recognizer.from_pretrained(folder)
    assert "model.safetensors" in str(e.value) and "config.json" in str(e.value)


def test_hub_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lightning_emo.hub import Recognizer, RecognizerError

    folder = _demo(tmp_path)
    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["heads.audio.output.bias"] = tensors["heads.audio.output.bias"].clone()
    tensors["heads.audio.output.bias"][2] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    _rebind(folder)  # a consistent folder: only the NaN is wrong
    with pytest.raises(RecognizerError, match=r"'heads.audio.output.bias' holds 1 NaN/infinite"):
        Recognizer.from_pretrained(folder)
    del torch


@pytest.mark.parametrize("edit,text", [
    (lambda c: c["modalities"]["video"]["input"].update(fps=1e9), r"modalities.video.input.fps = 1000000000.0 is out"),
    (lambda c: c["modalities"]["video"]["input"].update(fps=0), r"input.fps = 0 is out of range"),
    (lambda c: c["modalities"]["audio"]["head"].update(hidden_dim="128"), r"hidden_dim must be integer, got string "
                                                                          r"'128' \(a number written as a string"),
    (lambda c: c["modalities"]["audio"]["head"].update(input_dim=True), r"input_dim must be integer, got boolean"),
    (lambda c: c["modalities"]["video"]["extractor"].update(crop_size=10 ** 6), r"extractor.crop_size = 1000000"),
    (lambda c: c["modalities"]["audio"]["input"].update(sample_rate=16000.5), r"sample_rate must be integer"),
    (lambda c: c["modalities"]["audio"]["head"].update(dropout=1.0), r"dropout = 1.0 is out of range"),
    (lambda c: c["modalities"]["video"]["extractor"]["options"].update(batch_size=10 ** 8), r"batch_size"),
    (lambda c: c["modalities"]["video"]["selector"]["params"].update(n_estimators=1e12), r"n_estimators"),
    (lambda c: c.update(classes="angry"), r"classes must be list"),
])
def test_hub_config_fields_have_types_and_ranges(tmp_path, edit, text):
    from lightning_emo.hub import Recognizer, RecognizerError

    folder = _demo(tmp_path)
    _edit_config(folder, edit)
    with pytest.raises(RecognizerError, match=text):
        Recognizer.from_pretrained(folder)


@pytest.mark.parametrize("text,message", [
    ("[" * 100_000 + "]" * 100_000, "nested more than 32 levels"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested more than 32 levels"),
    ('{"format": NaN}', "NaN is not a number JSON allows"),
    ('{"x": -Infinity}', "-Infinity is not a number JSON allows"),
    ("[1, 2]", "expected a JSON object"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_hub_config_json_parsing_refuses_deep_and_non_finite_json(tmp_path, text, message):
    from lightning_emo.hub import Recognizer, RecognizerError

    folder = _demo(tmp_path)
    if isinstance(text, bytes):
        (folder / "config.json").write_bytes(text)
    else:
        (folder / "config.json").write_text(text)
    with pytest.raises(RecognizerError, match=message):
        Recognizer.from_pretrained(folder)


def test_hub_nan_fusion_state_is_refused(tmp_path):
    from lightning_emo.hub import Recognizer, RecognizerError

    folder = _demo(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["fusion"]["state"]["fitted"]["intercept"][0] = float("nan")
    (folder / "config.json").write_text(json.dumps(config))  # Python writes NaN: JSON does not allow it
    with pytest.raises(RecognizerError, match="NaN is not a number JSON allows"):
        Recognizer.from_pretrained(folder)
    from lightning_emo.hub.config import validate_config

    with pytest.raises(RecognizerError, match=r"fusion.state.fitted.intercept\[0\] is nan"):
        validate_config(config)  # the in-memory config (Recognizer(config)) is checked too


def test_hub_folder_without_digest_loads_with_a_warning(tmp_path, caplog):
    from lightning_emo.hub import Recognizer

    folder = _demo(tmp_path)
    _edit_config(folder, lambda c: c.pop("weights"))
    model = Recognizer.from_pretrained(folder)
    assert "records no digest" in caplog.text and "save_pretrained" in caplog.text
    model.save_pretrained(tmp_path / "rebound")
    assert json.loads((tmp_path / "rebound" / "config.json").read_text())["weights"]["sha256"]


def test_export_matches_checkpoint_classes_by_name(tmp_path):
    import torch

    from lightning_emo.extractors.audio import build_mfcc
    from lightning_emo.extractors.face import HOGExtractor
    from lightning_emo.hub import Recognizer, RecognizerError
    from lightning_emo.hub._testing import train_head_checkpoint, write_feature_store

    classes = ["angry", "happy", "sad", "neutral"]
    other = ["sad", "angry", "neutral", "happy"]
    mfcc, hog = build_mfcc().spec, HOGExtractor(crop_size=32, fps=5.0).spec
    audio = train_head_checkpoint(tmp_path / "a.ckpt", mfcc.to_dict(), classes, steps=1)
    video = train_head_checkpoint(tmp_path / "v.ckpt", hog.to_dict(), other, steps=1, seed=3)
    rng = np.random.default_rng(0)
    store = write_feature_store(tmp_path / "hog", hog, {"c0": (rng.random((4, hog.dim), dtype=np.float32), None)},
                               detector="none", fps=5.0).path
    model = Recognizer.from_checkpoints({"audio": audio, "video": video}, features={"video": store})
    assert model.classes == classes
    saved = torch.load(video, map_location="cpu", weights_only=True)["state_dict"]["head.output.bias"]
    by_name = dict(zip(other, saved.tolist()))
    assert model.tensors()["heads.video.output.bias"].tolist() == pytest.approx([by_name[c] for c in classes])
    renamed = train_head_checkpoint(tmp_path / "x.ckpt", hog.to_dict(), ["sad", "angry", "neutral", "calm"], steps=1)
    with pytest.raises(RecognizerError, match=r"only in .*x\.ckpt: calm"):
        Recognizer.from_checkpoints({"audio": audio, "video": renamed}, features={"video": store})


# ------------------------------------------------------------------ feature stores


def _small_store(tmp_path, dim=6, clips=4, frames=5):
    from lightning_emo.data.store import FeatureStore, cache_key
    from lightning_emo.specs import ExtractorSpec

    spec = ExtractorSpec("toy", "audio", dim, sample_rate=16000, frame_rate=10.0)
    store = FeatureStore.create(tmp_path / "store", spec, cache_key(spec))
    rng = np.random.default_rng(0)
    with store.writer() as w:
        for i in range(clips):
            w.add(f"c{i}", rng.normal(size=(frames, dim)).astype(np.float32))
    store.merge()
    return FeatureStore.open(store.path)


def _segment(store):
    return sorted((store.path / "segments").glob("*.json"))[0]


def test_store_refuses_flipped_bytes_naming_the_clip(tmp_path):
    from lightning_emo.data.store import FeatureStore, FeatureStoreError

    store = _small_store(tmp_path)
    data = _segment(store).with_suffix(".f16")
    raw = bytearray(data.read_bytes())
    raw[6 * 2 * 5 * 2 + 3] ^= 0x01  # clip c2's first row (5 frames x 6 dims x 2 bytes per clip)
    data.write_bytes(bytes(raw))
    store = FeatureStore.open(store.path)
    assert store.get("c1")[0].shape == (5, 6)  # the other clips still read
    with pytest.raises(FeatureStoreError, match=r"clip 'c2' .* does not match the checksum"):
        store.get("c2")
    mask = _segment(store).with_suffix(".mask")
    raw = bytearray(mask.read_bytes())
    raw[17] = 0  # c3's mask: a frame flipped to "no face"
    mask.write_bytes(bytes(raw))
    with pytest.raises(FeatureStoreError, match=r"clip 'c3'"):
        FeatureStore.open(store.path).get("c3")


@pytest.mark.parametrize("field,value", [("dim", 3), ("dim", 12), ("dtype", "float32")])
def test_store_refuses_an_edited_store_json(tmp_path, field, value):
    from lightning_emo.data.store import FeatureStore, FeatureStoreError

    store = _small_store(tmp_path)
    meta = json.loads((store.path / "store.json").read_text())
    meta[field] = value
    (store.path / "store.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match=r"was written with dim 6, dtype float16.*was edited"):
        FeatureStore.open(store.path)


def test_store_refuses_a_truncated_segment_when_opened(tmp_path):
    from lightning_emo.data.store import FeatureStore, FeatureStoreError

    store = _small_store(tmp_path)
    data = _segment(store).with_suffix(".f16")
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(FeatureStoreError, match="truncated"):
        FeatureStore.open(store.path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_store_refuses_non_finite_features_naming_the_clip(tmp_path, bad):
    store = _small_store(tmp_path)
    x = np.zeros((4, 6), np.float32)
    x[2, 5] = bad
    with store.writer() as w:
        with pytest.raises(ValueError, match=r"clip 'odd'.*1 NaN/infinite value\(s\) \(first at frame 2, column 5\)"):
            w.add("odd", x)
    store.refresh()
    assert "odd" not in store


def test_store_without_checksums_gets_them_recorded_once(tmp_path, caplog):
    import logging

    from lightning_emo.data.store import FeatureStore, FeatureStoreError, _StoreLock

    caplog.set_level(logging.INFO)
    store = _small_store(tmp_path)
    seg = _segment(store)
    meta = json.loads(seg.read_text())
    del meta["checksums"], meta["dim"], meta["dtype"]  # as written before checksums existed
    seg.write_text(json.dumps(meta))
    (store.path / "index.json").unlink()
    writer_lock = _StoreLock(store.path, exclusive=False)  # a writer is active: nothing is recorded yet
    FeatureStore.open(store.path).get("c0")
    assert "read unverified" in caplog.text and "checksums" not in json.loads(seg.read_text())
    writer_lock.release()
    FeatureStore.open(store.path)
    assert "recorded checksums of 4 clip(s)" in caplog.text
    assert set(json.loads(seg.read_text())["checksums"]) == {"c0", "c1", "c2", "c3"}
    data = seg.with_suffix(".f16")
    raw = bytearray(data.read_bytes())
    raw[1] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(FeatureStoreError, match="clip 'c0'"):
        FeatureStore.open(store.path).get("c0")


def test_training_on_a_damaged_store_stops_before_any_checkpoint(tmp_path, capsys):
    """The reported bug: flipped bytes trained to a NaN loss and saved a "best" checkpoint."""
    from lightning_emo.cli import main

    make_toy_corpus(tmp_path, dims=(("audio", 6),))
    seg = sorted((tmp_path / "audio" / "segments").glob("*.f16"))[0]
    raw = bytearray(seg.read_bytes())
    for i in range(1, len(raw), 97):
        raw[i] = 0x7E  # high bytes of float16 -> NaN / huge values
    seg.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["fit", "--config", str(AUDIO), "--data.init_args.manifest", str(tmp_path / "manifest.csv"),
                 "--data.init_args.features", str(tmp_path / "audio"), "--trainer.max_epochs", "2", *QUIET]) == 2
    assert "does not match the checksum" in capsys.readouterr().err
    assert not list(Path("runs").rglob("*.ckpt"))


def test_zoo_entry_listing_other_classes_than_its_model_is_refused(tmp_path):
    import shutil

    import yaml

    from lightning_emo.hub import Recognizer, RecognizerError

    zoo = tmp_path / "zoo"
    (zoo / "models").mkdir(parents=True)
    shutil.copytree(ZOO_DEMO, zoo / "models" / "synthetic-demo")
    entry = yaml.safe_load((ZOO_DEMO.parents[1] / "synthetic-demo.yaml").read_text())
    entry["classes"] = list(reversed(entry["classes"]))  # another order: the listing still names the same classes
    (zoo / "synthetic-demo.yaml").write_text(yaml.safe_dump(entry))
    assert Recognizer.from_pretrained("synthetic-demo", zoo=zoo).classes[0] == "angry"
    entry["classes"][0] = "calm"
    (zoo / "synthetic-demo.yaml").write_text(yaml.safe_dump(entry))
    with pytest.raises(RecognizerError, match=r"zoo entry 'synthetic-demo' vs its model.*only in .*yaml: calm"):
        Recognizer.from_pretrained("synthetic-demo", zoo=zoo)


def test_fit_through_the_cli_stops_on_divergence_without_checkpointing_it(tmp_path, capsys):
    import torch

    from lightning_emo.cli import main

    make_toy_corpus(tmp_path, dims=(("audio", 6),))
    assert main(["fit", "--config", str(AUDIO), "--data.init_args.manifest", str(tmp_path / "manifest.csv"),
                 "--data.init_args.features", str(tmp_path / "audio"), "--data.init_args.batch_size", "4",
                 "--model.init_args.optimizer", "sgd", "--model.init_args.lr", "1e36",
                 "--model.init_args.input_norm", "false", "--trainer.max_epochs", "3", *QUIET]) == 2
    assert "diverged" in capsys.readouterr().err
    for f in Path("runs").rglob("*.ckpt"):  # last.ckpt / best: never a model with non-finite weights
        state = torch.load(f, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), f


@pytest.mark.parametrize("stage,change,text", [
    ("test", lambda f: None if f[3] == "test" else f, "no clips in split 'test': nothing to score on"),
    ("validate", lambda f: None if f[3] == "val" else f, "no clips in split 'val': there is nothing to validate"),
])
def test_validate_and_test_refuse_an_empty_split(toy_run, stage, change, text, capsys):
    from lightning_emo.cli import main

    root, run, best, _ = toy_run
    bad = _rewrite_splits(root / "manifest.csv", root / f"no_{stage}", change)
    assert main([stage, "--config", str(run / "config.yaml"), "--ckpt_path", str(best), "--data.init_args.manifest",
                 str(bad), *QUIET]) == 2  # one paragraph (lightning_emo.errors)
    assert text in capsys.readouterr().err
