"""Fold schemes over manifests: speaker-independent k-fold, leave-one-speaker/group-out, fold files, EmoBox folds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from lightning_emo.data.folds import Fold, FoldError, FoldOptions, fold_manifest, make_folds, read_fold_file
from lightning_emo.data.manifest import Clip, Manifest


def _manifest(n_speakers=6, per_class=2, classes=("a", "b", "c"), groups=None, split=True) -> Manifest:
    clips = []
    for s in range(n_speakers):
        for k in classes:
            for i in range(per_class):
                cid = f"s{s}_{k}{i}"
                sp = ("train", "val", "test")[0 if s < n_speakers - 2 else (1 if s == n_speakers - 2 else 2)]
                clip = Clip(cid, f"spk{s}/{cid}.wav", k, sp if split else "", f"spk{s}")
                if groups:
                    clip = Clip(*[getattr(clip, f) for f in ("clip_id", "path", "label", "split", "speaker",
                                                                "start", "end")], group=f"ses{s // groups}")
                clips.append(clip)
    return Manifest(clips, list(classes), Path("/corpus"), source="m.csv")


def _speaker_sets(m: Manifest, fold: Fold) -> dict[str, set[str]]:
    by_id = m.by_id()
    return {part: {by_id[c].speaker for c in getattr(fold, part)} for part in ("train", "val", "test")}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kfold_is_speaker_independent_and_covers_every_clip_once(k):
    m = _manifest(n_speakers=10)
    folds = make_folds(m, FoldOptions(scheme="kfold", k=k, seed=1))
    assert len(folds) == k
    tested = Counter(c for f in folds for c in f.test)
    assert set(tested) == {c.clip_id for c in m.clips} and set(tested.values()) == {1}
    for f in folds:
        sets = _speaker_sets(m, f)
        assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
        assert len(f.train) + len(f.val) + len(f.test) == len(m)
    assert make_folds(m, FoldOptions(scheme="kfold", k=k, seed=1))[0].test == folds[0].test  # deterministic


def test_kfold_with_too_few_speakers_says_so():
    with pytest.raises(FoldError, match="3 speakers cannot fill 5"):
        make_folds(_manifest(n_speakers=3), FoldOptions(scheme="kfold", k=5))


def test_loso():
    m = _manifest(n_speakers=6)
    loso = make_folds(m, FoldOptions(scheme="loso"))
    assert [f.name for f in loso] == [f"spk{i}" for i in range(6)]
    assert all(_speaker_sets(m, f)["test"] == {f.name} for f in loso)


@pytest.mark.skipif("group" not in Clip.__dataclass_fields__, reason="the manifest's group column is not merged yet")
def test_logo():
    m = _manifest(n_speakers=6, groups=2)
    logo = make_folds(m, FoldOptions(scheme="logo"))
    assert [f.name for f in logo] == ["ses0", "ses1", "ses2"]
    by_id = m.by_id()
    for f in logo:
        assert {by_id[c].group for c in f.test} == {f.name}
        assert f.name not in {by_id[c].group for c in f.train + f.val}
    with pytest.raises(FoldError, match="'group' \\(or 'session'\\) column"):
        make_folds(_manifest(), FoldOptions(scheme="logo"))


def test_split_scheme_is_the_manifest_split_and_fold_manifest_rewrites_splits():
    m = _manifest()
    (fold,) = make_folds(m, FoldOptions(scheme="split"))
    assert fold.name == "split" and len(fold.test) == 6 and len(fold.val) == 6
    k = make_folds(m, FoldOptions(scheme="kfold", k=3))[0]
    fm = fold_manifest(m, k)
    assert {c.clip_id for c in fm.split("test")} == set(k.test) and fm.root == m.root and fm.classes == m.classes
    with pytest.raises(FoldError, match="needs every clip's split"):
        make_folds(_manifest(split=False), FoldOptions(scheme="split"))


def test_fold_csv(tmp_path):
    m = _manifest(n_speakers=6)
    path = tmp_path / "folds.csv"
    rows = ["clip_id,fold"] + [f"{c.clip_id},{int(c.speaker[3:]) % 3}" for c in m.clips] + ["ghost,1"]
    path.write_text("\n".join(rows) + "\n")
    folds = make_folds(m, FoldOptions(scheme="files", fold_file=str(path)))
    assert [f.name for f in folds] == ["0", "1", "2"]
    assert any("1 clip id(s) of folds.csv are not in the manifest" in n for n in folds[0].notes)
    path.write_text("clip_id,part\nx,1\n")
    with pytest.raises(Exception, match="field 'fold'"):
        read_fold_file(path, m)


def _emobox(tmp_path, m: Manifest, dataset="mini", with_json=False) -> Path:
    root = tmp_path / "EmoBox" / "data" / dataset
    speakers = sorted({c.speaker for c in m.clips})
    for k, test_spk in enumerate(speakers[:3], start=1):
        d = root / f"fold_{k}"
        d.mkdir(parents=True)
        for part in ("train", "test"):
            chosen = [c for c in m.clips if (c.speaker == test_spk) == (part == "test")]
            lines = [json.dumps({"key": f"{dataset}-{Path(c.path).stem}", "dataset": dataset,
                                 "wav": f"downloads/{dataset}/{c.path}", "length": 1.0, "emo": c.label[:3],
                                 "channel": 1}) for c in chosen]
            if part == "test":
                lines.append(json.dumps({"key": f"{dataset}-missing", "dataset": dataset, "wav": "x/missing.wav",
                                         "emo": "a", "channel": 1}))
            if with_json:
                (d / f"{dataset}_{part}_fold_{k}.json").write_text(json.dumps(
                    {json.loads(x)["key"]: json.loads(x) for x in lines}))
            else:
                (d / f"{dataset}_{part}_fold_{k}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("with_json", [False, True])
def test_emobox_fold_folder(tmp_path, with_json):
    m = _manifest(n_speakers=6)
    root = _emobox(tmp_path, m, with_json=with_json)
    folds = make_folds(m, FoldOptions(scheme="files", fold_file=str(root)))
    assert [f.name for f in folds] == ["fold1", "fold2", "fold3"]
    for f in folds:
        sets = _speaker_sets(m, f)
        assert len(sets["test"]) == 1 and not (sets["val"] & sets["train"]) and f.val
        assert any("1 test key(s) of fold_" in n for n in f.notes)
    other = _manifest(n_speakers=6, classes=("x",))
    other = Manifest([Clip("z" + c.clip_id, "q/" + c.clip_id + "q.wav", c.label, c.split, c.speaker)
                      for c in other.clips], other.classes, other.root)
    with pytest.raises(FoldError, match="matches a manifest clip"):
        make_folds(other, FoldOptions(scheme="files", fold_file=str(root)))
