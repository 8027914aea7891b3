"""Manifest reading, validation errors (file, line, field), writing and split assignment."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lightning_emo.data.manifest import (
    Clip,
    Manifest,
    ManifestError,
    assign_splits,
    check_speaker_independent,
    read_manifest,
)

CLASSES = ["angry", "happy", "sad"]


def _corpus(tmp_path, rows, header="clip_id,path,label,split,speaker", classes=CLASSES):
    for r in rows:
        path = r.split(",")[1]
        if path:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(b"x")
    csv = tmp_path / "manifest.csv"
    csv.write_text("\n".join([header] + rows) + "\n")
    if classes is not None:
        (tmp_path / "manifest.json").write_text(json.dumps({"classes": classes, "root": "."}))
    return csv


def test_read_valid_manifest(tmp_path):
    csv = _corpus(tmp_path, ["a,a.wav,angry,train,s1", "b,b.wav,sad,test,s2"])
    m = read_manifest(csv)
    assert [c.clip_id for c in m] == ["a", "b"]
    assert m.classes == CLASSES
    assert m.media_path(m.clips[0]) == tmp_path / "a.wav"
    assert "2 clips" in m.summary()


def test_start_end_columns(tmp_path):
    csv = _corpus(tmp_path, ["a,a.mp4,angry,,s1,0.5,2", "b,b.mp4,sad,,s2,,"],
                  header="clip_id,path,label,split,speaker,start,end")
    m = read_manifest(csv)
    assert (m.clips[0].start, m.clips[0].end) == (0.5, 2.0)
    assert (m.clips[1].start, m.clips[1].end) == (None, None)


@pytest.mark.parametrize(
    "rows, header, line, field, text",
    [
        (["a,a.wav,angry,train,s1", "a,b.wav,sad,train,s2"], None, 3, "clip_id", "duplicate clip_id 'a'"),
        (["a,a.wav,joy,train,s1"], None, 2, "label", "unknown label 'joy'"),
        (["a,a.wav,angry,training,s1"], None, 2, "split", "bad split name 'training'"),
        (["a,a.wav,angry,train,s1,3,2"], "clip_id,path,label,split,speaker,start,end", 2, "start", "before end"),
        (["a,a.wav,angry,train,s1,x,2"], "clip_id,path,label,split,speaker,start,end", 2, "start", "number"),
        (["a,a.wav,angry,s1"], "clip_id,path,label,speaker", 1, "split", "missing column"),
        (["a,,angry,train,s1"], None, 2, "path", "empty path"),
    ],
)
def test_validation_errors_name_file_line_field(tmp_path, rows, header, line, field, text):
    csv = _corpus(tmp_path, rows, header=header or "clip_id,path,label,split,speaker")
    with pytest.raises(ManifestError) as e:
        read_manifest(csv)
    assert (e.value.line, e.value.field) == (line, field)
    assert text in str(e.value) and str(csv) in str(e.value)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_manifest_separated_by_something_else_says_so(tmp_path, sep):
    csv = tmp_path / "m.csv"
    csv.write_text(sep.join(["clip_id", "path", "label", "split", "speaker"]) + "\n"
                   + sep.join(["a", "a.wav", "angry", "train", "s1"]) + "\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(csv)
    assert (e.value.line, e.value.field) == (1, "clip_id")
    assert "missing column" in str(e.value) and f"separated by {sep!r}: a manifest is comma-separated" in str(e.value)


def test_missing_media_file(tmp_path):
    csv = _corpus(tmp_path, ["a,a.wav,angry,train,s1"])
    (tmp_path / "a.wav").unlink()
    with pytest.raises(ManifestError, match=r"line 2, field 'path': media file not found"):
        read_manifest(csv)


def test_empty_manifests(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("")
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(csv)
    csv.write_text("clip_id,path,label,split,speaker\n")
    with pytest.raises(ManifestError, match="a header but no clips"):
        read_manifest(csv)


def test_wrong_field_count(tmp_path):
    csv = _corpus(tmp_path, ["a,a.wav,angry,train,s1", "b,b.wav,sad"])
    with pytest.raises(ManifestError, match="line 3: expected 5 fields, found 3"):
        read_manifest(csv)


def test_classes_default_to_sorted_labels_with_note(tmp_path):
    csv = _corpus(tmp_path, ["a,a.wav,sad,,s1", "b,b.wav,angry,,s2"], classes=None)
    m = read_manifest(csv)
    assert m.classes == ["angry", "sad"]
    assert any("no class list" in n for n in m.notes)


def test_write_read_round_trip(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("x.mp4", "y.mp4"):
        (root / name).write_bytes(b"x")
    m = Manifest([Clip("x", "x.mp4", "happy", "train", "s1", 0.0, 1.5), Clip("y", "y.mp4", "sad", "val", "s2")],
                 CLASSES, root, corpus="test")
    out = m.write(tmp_path / "elsewhere" / "manifest.csv")
    back = read_manifest(out)
    assert back.clips == m.clips and back.classes == CLASSES and back.corpus == "test"
    assert back.root.resolve() == root.resolve()


def _speaker_manifest(n_speakers=20, per_speaker=12, classes=("a", "b", "c", "d"), seed=0):
    import random

    rng = random.Random(seed)
    clips = []
    for s in range(n_speakers):
        for i in range(per_speaker + rng.randint(-4, 4)):
            clips.append(Clip(f"s{s}_{i}", f"s{s}_{i}.wav", rng.choice(classes), "", f"spk{s}"))
    return Manifest(clips, list(classes), root=__import__("pathlib").Path("."))


def test_speaker_independent_split_is_deterministic_and_proportional():
    m = _speaker_manifest()
    a, b = assign_splits(m, seed=3), assign_splits(m, seed=3)
    assert [c.split for c in a] == [c.split for c in b]
    assert check_speaker_independent(a.clips) == {}
    share = Counter(c.split for c in a)
    n = len(a)
    assert abs(share["train"] / n - 0.7) < 0.1 and abs(share["test"] / n - 0.2) < 0.1 and share["val"] > 0
    # every class appears in every split (stratified where possible)
    for split in ("train", "val", "test"):
        assert {c.label for c in a.split(split)} == set(m.classes)
    assert [c.split for c in assign_splits(m, seed=4)] != [c.split for c in a]


def test_given_splits_are_kept_unless_overwritten():
    m = _speaker_manifest(n_speakers=6)
    from dataclasses import replace

    m = m.with_clips([replace(c, split="test") if c.speaker == "spk0" else c for c in m.clips])
    out = assign_splits(m, seed=0)
    assert all(c.split == "test" for c in out if c.speaker == "spk0")
    assert all(c.split for c in out)


def test_unknown_speakers_fall_back_to_stratified_clip_split():
    m = _speaker_manifest()
    from dataclasses import replace

    m = m.with_clips([replace(c, speaker="") for c in m.clips])
    out = assign_splits(m, seed=0)
    assert any("NOT speaker-independent" in n for n in out.notes)
    for label in m.classes:
        clips = [c for c in out if c.label == label]
        assert abs(sum(c.split == "train" for c in clips) / len(clips) - 0.7) < 0.06


@pytest.mark.parametrize("n_speakers", [3, 4, 10])
def test_every_split_gets_a_speaker_even_on_tiny_corpora(n_speakers):
    m = _speaker_manifest(n_speakers=n_speakers, per_speaker=5)
    out = assign_splits(m, seed=0)
    assert {c.split for c in out} == {"train", "val", "test"}
    assert check_speaker_independent(out.clips) == {}
    assert len(out.split("train")) > len(out.split("val"))


def _grouped_manifest(n_groups=5, seed=0):
    """IEMOCAP-like: each group (session) holds two speakers; one speaker also appears in the next group."""
    import random

    rng = random.Random(seed)
    clips = []
    for g in range(1, n_groups + 1):
        for spk in ("F", "M"):
            for i in range(10):
                clips.append(Clip(f"g{g}{spk}_{i}", f"g{g}{spk}_{i}.wav", rng.choice(CLASSES), "",
                                  f"Ses{g:02d}{spk}", group=f"Session{g}"))
    return Manifest(clips, list(CLASSES), root=__import__("pathlib").Path("."))


def test_group_column_round_trip_and_session_synonym(tmp_path):
    from lightning_emo.data.manifest import check_group_independent

    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("x.wav", "y.wav"):
        (root / name).write_bytes(b"x")
    m = Manifest([Clip("x", "x.wav", "happy", "train", "s1", group="Session1"),
                  Clip("y", "y.wav", "sad", "test", "s2", 0.5, 2.0, group="Session2")], CLASSES, root)
    out = m.write(tmp_path / "m.csv")
    assert out.read_text().splitlines()[0] == "clip_id,path,label,split,speaker,group,start,end"
    back = read_manifest(out)
    assert back.clips == m.clips and back.has_groups
    assert "groups: train=1, test=1" in back.summary()
    assert check_group_independent(back.clips) == {}
    # old manifests (no group column) load with empty groups and write no group column
    csv = _corpus(tmp_path, ["a,a.wav,angry,train,s1"])
    old = read_manifest(csv)
    assert old.clips[0].group == "" and not old.has_groups
    assert "group" not in old.write(tmp_path / "old.csv").read_text().splitlines()[0]
    # IEMOCAP users call it session
    csv = _corpus(tmp_path, ["a,a.wav,angry,train,s1,Ses01"], header="clip_id,path,label,split,speaker,session")
    assert read_manifest(csv).clips[0].group == "Ses01"
    csv = _corpus(tmp_path, ["a,a.wav,angry,train,s1,Ses01,Ses01"],
                  header="clip_id,path,label,split,speaker,session,group")
    with pytest.raises(ManifestError, match=r"line 1, field 'group': both session and group columns"):
        read_manifest(csv)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_dealt_by_group_keep_groups_and_speakers_whole(seed):
    from dataclasses import replace

    from lightning_emo.data.manifest import check_group_independent

    m = _grouped_manifest()
    # a speaker recorded in two sessions joins them: both must land in one split
    m = m.with_clips([replace(c, speaker="Ses01F") if c.clip_id == "g2F_0" else c for c in m.clips])
    out = assign_splits(m, seed=seed, by="group")
    assert check_group_independent(out.clips) == {} and check_speaker_independent(out.clips) == {}
    assert {c.split for c in out} == {"train", "val", "test"}
    split_of = {c.group: c.split for c in out}
    assert split_of["Session1"] == split_of["Session2"]
    assert any("group-independent splits" in n and "over 4 groups" in n for n in out.notes)
    # by speaker (the default) sessions may be shared, speakers never are
    by_speaker = assign_splits(m, seed=seed)
    assert check_speaker_independent(by_speaker.clips) == {}
    with pytest.raises(ValueError, match="by must be"):
        assign_splits(m, by="session")


def test_clips_without_speaker_are_dealt_with_their_group():
    from dataclasses import replace

    from lightning_emo.data.manifest import check_group_independent

    m = _grouped_manifest()
    m = m.with_clips([replace(c, speaker="") for c in m.clips])
    out = assign_splits(m, seed=0)
    assert not any("NOT speaker-independent" in n for n in out.notes)
    assert check_group_independent(out.clips) == {}


def test_default_speaker_split_unchanged_by_the_group_machinery():
    """The speaker deal is the one the synthetic corpus and earlier runs were made with (pinned)."""
    out = assign_splits(_speaker_manifest(), seed=3)
    got = {c.speaker: c.split for c in out}
    assert sorted(s for s, v in got.items() if v == "val") == ["spk11", "spk3", "spk8"]
    assert sorted(s for s, v in got.items() if v == "test") == ["spk13", "spk16", "spk18", "spk19"]
