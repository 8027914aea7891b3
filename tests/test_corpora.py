"""Corpus adapters on layouts built here, and `lightning-emo prepare` end to end."""

from __future__ import annotations

import json

import pytest

from lightning_emo.cli import main
from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import ManifestError, check_speaker_independent, read_manifest


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


@pytest.fixture
def ravdess(tmp_path):
    root = tmp_path / "ravdess"
    for actor in range(1, 9):
        for emotion in range(1, 9):
            for modality, ext in (("01", "mp4"), ("02", "mp4"), ("03", "wav")):
                _touch(root / f"Actor_{actor:02d}" / f"{modality}-01-{emotion:02d}-01-01-01-{actor:02d}.{ext}")
            _touch(root / f"Actor_{actor:02d}" / f"01-02-{emotion:02d}-01-01-01-{actor:02d}.mp4")  # song
    return root


def test_ravdess_labels_from_file_names(ravdess):
    m = CORPORA.build("ravdess", root=ravdess)
    assert m.classes[:3] == ["neutral", "calm", "happy"] and len(m.classes) == 8
    assert len(m) == 8 * 8  # audio-video speech files only
    clip = m.by_id()["01-01-06-01-01-01-03"]
    assert clip.label == "fearful" and clip.speaker == "actor03" and clip.path.endswith(".mp4")
    audio = CORPORA.build("ravdess", root=ravdess, modality="audio-only")
    assert all(c.path.endswith(".wav") for c in audio) and len(audio) == 64
    assert len(CORPORA.build("ravdess", root=ravdess, modality="all", channel="all")) == 8 * 8 * 4


def test_ravdess_bad_file_name(ravdess):
    _touch(ravdess / "Actor_01" / "01-01-09-01-01-01-01.mp4")
    with pytest.raises(ManifestError, match=r"field 'file name': emotion field '09'"):
        CORPORA.build("ravdess", root=ravdess)


def test_cremad(tmp_path):
    root = tmp_path / "crema"
    for actor in (1001, 1002, 1003):
        for emo in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"):
            _touch(root / "AudioWAV" / f"{actor}_DFA_{emo}_XX.wav")
            _touch(root / "VideoFlash" / f"{actor}_IEO_{emo}_HI.flv")
    video = CORPORA.build("cremad", root=root)
    assert len(video) == 18 and video.by_id()["1002_IEO_FEA_HI"].label == "fear"
    assert video.by_id()["1002_IEO_FEA_HI"].speaker == "1002"
    audio = CORPORA.build("cremad", root=root, media="audio")
    assert all(c.path.startswith("AudioWAV/") for c in audio)
    _touch(root / "AudioWAV" / "1001_XXX_ANG_XX.wav")
    with pytest.raises(ManifestError, match="sentence code 'XXX'"):
        CORPORA.build("cremad", root=root, media="audio")


def test_folder_per_label(tmp_path):
    root = tmp_path / "folders"
    for label in ("happy", "sad"):
        for spk in ("a", "b"):
            _touch(root / label / f"{spk}_1.wav")
    m = CORPORA.build("folder", root=root, speaker_pattern=r"^(\w)_")
    assert m.classes == ["happy", "sad"] and len(m) == 4 and {c.speaker for c in m} == {"a", "b"}
    assert m.notes == []
    # files that are not media are counted and named in the summary, not dropped silently
    _touch(root / "happy" / "notes.txt")
    _touch(root / "sad" / "take2" / "a_2.flac.part")
    m = CORPORA.build("folder", root=root, speaker_pattern=r"^(\w)_")
    assert len(m) == 4 and m.notes == ["skipped 2 file(s) that are not media by their extension: happy/notes.txt, "
                                       "sad/take2/a_2.flac.part"]
    assert "note: skipped 2 file(s)" in m.summary()
    with pytest.raises(ManifestError, match="folder is not one of the classes"):
        CORPORA.build("folder", root=root, classes=["happy"])


def test_cheavd_label_file_with_chinese_names(tmp_path):
    root = tmp_path / "cheavd"
    rows = ["file,label,speaker"]
    for i, label in enumerate(["愤怒", "happy", "悲伤", "中性", "惊讶", "恐惧", "厌恶"]):
        rows.append(f"clips/{i:03d}.avi,{label},spk{i % 3}")
        _touch(root / "clips" / f"{i:03d}.avi")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    m = CORPORA.build("cheavd", root=root)
    assert m.classes == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert [c.label for c in m][:3] == ["angry", "happy", "sad"]
    (root / "labels.csv").write_text("\n".join(rows + ["clips/x.avi,焦虑,spk1"]) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 9, field 'label'"):
        CORPORA.build("cheavd", root=root)
    m = CORPORA.build("cheavd", root=root, other="skip")
    assert len(m) == 7 and "焦虑 (1)" in m.notes[0]


def test_prepare_command_writes_speaker_independent_manifest(ravdess, tmp_path, capsys):
    out = tmp_path / "out" / "ravdess.csv"
    assert main(["prepare", "--corpus", "ravdess", "--root", str(ravdess), "--out", str(out), "--seed", "1"]) == 0
    m = read_manifest(out)
    assert m.has_splits and check_speaker_independent(m.clips) == {}
    assert json.loads(out.with_suffix(".json").read_text())["corpus"] == "ravdess"
    assert "64 clips" in capsys.readouterr().out


def test_prepare_validates_hand_written_manifest(tmp_path, capsys):
    _touch(tmp_path / "a.wav")
    bad = tmp_path / "in.csv"
    bad.write_text("clip_id,path,label,split,speaker\na,a.wav,happy,train,s1\nb,missing.wav,happy,test,s2\n")
    code = main(["prepare", "--corpus", "manifest", "--root", str(tmp_path), "--manifest", str(bad),
                 "--classes", "happy", "sad", "--out", str(tmp_path / "out.csv")])
    assert code == 2
    assert "in.csv, line 3, field 'path': media file not found" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_prepare_rejects_unknown_adapter_option(ravdess, tmp_path):
    with pytest.raises(SystemExit):
        main(["prepare", "--corpus", "ravdess", "--root", str(ravdess), "--out", str(tmp_path / "m.csv"),
              "--option", "colour=red"])
