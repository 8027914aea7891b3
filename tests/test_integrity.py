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
