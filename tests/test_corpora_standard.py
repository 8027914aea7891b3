"""The IEMOCAP, MELD, EmoDB and MSP-Podcast adapters on small mimics of their published layouts.

Every mimic holds real media written with PyAV (WAV, MP4, AVI), so the manifests the
adapters write are decoded here the way `extract` decodes them.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from lightning_emo.cli import main
from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import ManifestError, check_group_independent, check_speaker_independent, read_manifest
from lightning_emo.data.media import load_audio, write_audio, write_video

SR = 16000


def _wav(path, seconds=0.2, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    write_audio(path, 0.3 * np.sin(2 * np.pi * (150 + 10 * seed) * t).astype(np.float32), SR)
    return path


def _video(path, seconds=1.0, fps=5):
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * fps)
    frames = np.full((n, 32, 32, 3), 128, np.uint8)
    t = np.arange(int(seconds * SR)) / SR
    write_video(path, frames, fps, audio=(0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sample_rate=SR,
                threads=1)
    return path


# ---------------------------------------------------------------- IEMOCAP
IEMOCAP_LABELS = ["neu", "hap", "exc", "sad", "ang", "fru", "xxx", "oth", "neu", "sad", "ang", "hap"]


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    """Five sessions, an improvised and a scripted dialog each, 12 utterances per dialog (both actors)."""
    root = tmp_path_factory.mktemp("iemocap")
    base = root / "IEMOCAP_full_release"
    for s in range(1, 6):
        session = base / f"Session{s}"
        for lead, kind in (("F", "impro01"), ("M", "script01_1")):
            dialog = f"Ses0{s}{lead}_{kind}"
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for i, code in enumerate(IEMOCAP_LABELS):
                gender = "FM"[i % 2]
                utt = f"{dialog}_{gender}{i // 2:03d}"
                start, end = 0.25 * i, 0.25 * i + 0.2
                lines += [f"[{start:.4f} - {end:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 2.0000]",
                          "C-E1:\tNeutral;\t()", "A-E1:\tval 3; act 2; dom  2;\t()", ""]
                if not (s == 5 and kind == "impro01" and i == 0):  # one labelled utterance without its WAV
                    _wav(session / "sentences" / "wav" / dialog / f"{utt}.wav", seed=i)
            txt = session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text("\n".join(lines) + "\n")
            # the per-annotator subfolder exists in the release and must not be read
            cat = session / "dialog" / "EmoEvaluation" / "Categorical" / f"{dialog}_e1_cat.txt"
            cat.parent.mkdir(parents=True, exist_ok=True)
            cat.write_text(f"{dialog}_F000 :Neutral state; ()\n")
            _video(session / "dialog" / "avi" / "DivX" / f"{dialog}.avi", seconds=3.2)
    return root


def test_iemocap_four_classes_sessions_and_counts(iemocap):
    m = CORPORA.build("iemocap", root=iemocap)
    assert m.classes == ["neutral", "happy", "sad", "angry"]
    # per dialog: neu hap exc(->happy) sad ang neu sad ang hap = 9 of 12 kept; fru, xxx, oth counted
    assert len(m) == 10 * 9 - 1
    clip = m.by_id()["Ses02M_script01_1_F001"]  # the second F turn of a dialog led by the male actor: exc
    assert clip.label == "happy" and clip.speaker == "Ses02F" and clip.group == "Session2"
    assert clip.path == "IEMOCAP_full_release/Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F001.wav"
    assert m.by_id()["Ses03F_impro01_M000"].speaker == "Ses03M"
    assert {c.speaker for c in m} == {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
    notes = " | ".join(m.notes)
    assert "frustrated (fru): 10" in notes and "no majority (xxx): 10" in notes and "other (oth): 10" in notes
    assert "left out 1 labelled utterances whose WAV file is missing" in notes
    assert load_audio(m.media_path(clip)).shape == (int(0.2 * SR),)


def test_iemocap_options(iemocap):
    all_ = CORPORA.build("iemocap", root=iemocap, label_set="all", excited="class")
    assert all_.classes == ["neutral", "happy", "excited", "sad", "angry", "frustrated", "surprised", "fear", "disgust"]
    assert Counter(c.label for c in all_)["excited"] == 10 and Counter(c.label for c in all_)["frustrated"] == 10
    dropped = CORPORA.build("iemocap", root=iemocap, excited="drop")
    assert len(dropped) == 10 * 8 - 1 and any("excited (exc): 10" in n for n in dropped.notes)
    impro = CORPORA.build("iemocap", root=iemocap, dialogs="improvised")
    assert all("_impro" in c.clip_id for c in impro) and len(impro) == 5 * 9 - 1
    assert any("left out 60 utterances of scripted dialogs" in n for n in impro.notes)
    video = CORPORA.build("iemocap", root=iemocap, media="video", dialogs="scripted")
    clip = video.by_id()["Ses01M_script01_1_M004"]
    assert clip.path.endswith("Session1/dialog/avi/DivX/Ses01M_script01_1.avi")
    assert (clip.start, clip.end) == (2.25, 2.45)
    assert load_audio(video.media_path(clip), start=clip.start, end=clip.end).shape[0] == pytest.approx(0.2 * SR, abs=2)
    with pytest.raises(ValueError, match="excited must be one of merge, drop, class"):
        CORPORA.build("iemocap", root=iemocap, excited="yes")



def test_prepare_refuses_a_bad_adapter_option_value_as_a_usage_error(iemocap, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--corpus", "iemocap", "--root", str(iemocap), "--out", str(tmp_path / "m.csv"),
              "--option", "excited=yes"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--corpus iemocap: iemocap option excited must be one of merge, drop, class, got 'yes'" in err
    assert "Traceback" not in err and not (tmp_path / "m.csv").exists()


def test_iemocap_prepare_splits_by_session(iemocap, tmp_path, capsys):
    out = tmp_path / "iemocap.csv"
    assert main(["prepare", "--corpus", "iemocap", "--root", str(iemocap), "--out", str(out), "--split-by", "group",
                 "--seed", "2"]) == 0
    m = read_manifest(out)
    assert m.has_groups and check_group_independent(m.clips) == {} and check_speaker_independent(m.clips) == {}
    assert sorted(Counter(c.group for c in m.split("test"))) != sorted({c.group for c in m})
    printed = capsys.readouterr().out
    assert "groups: train=3, val=1, test=1" in printed and "no majority (xxx): 10" in printed
    out2 = tmp_path / "by_speaker.csv"
    assert main(["prepare", "--corpus", "iemocap", "--root", str(iemocap), "--out", str(out2)]) == 0
    assert check_speaker_independent(read_manifest(out2).clips) == {}


def test_iemocap_bad_label_line_is_located(iemocap, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(iemocap / "IEMOCAP_full_release" / "Session1", root / "Session1")
    txt = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    lines = txt.read_text().splitlines()
    lines[6] = "[1.2 - ]\tSes01F_impro01_F001\tneu\t[2.5, 2.5, 2.5]"
    txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"Ses01F_impro01.txt, line 7: expected a summary line"):
        CORPORA.build("iemocap", root=root)
    lines[6] = "[1.0 - 1.2]\tSes01F_impro01_F001\tcalm\t[2.5, 2.5, 2.5]"
    txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"line 7: label 'calm' of Ses01F_impro01_F001 is not an IEMOCAP label"):
        CORPORA.build("iemocap", root=root)
    with pytest.raises(ManifestError, match="no IEMOCAP sessions found"):
        CORPORA.build("iemocap", root=tmp_path / "nothing")


# ---------------------------------------------------------------- MELD
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
MELD_EMOTIONS = ["neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"]
MELD_SPEAKERS = ["Chandler", "Joey", "Monica"]


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    root = tmp_path_factory.mktemp("meld") / "MELD.Raw"
    for split, folder, dialogues in (("train", "train_splits", 3), ("dev", "dev_splits_complete", 1),
                                     ("test", "output_repeated_splits_test", 2)):
        rows, n = [MELD_HEADER], 0
        for d in range(dialogues):
            for u in range(4):
                emo = MELD_EMOTIONS[n % 7]
                text = '"Oh, wait\u2019s a\nlong ""line"""' if u == 1 else "Hi."
                rows.append(f"{n + 1},{text},{MELD_SPEAKERS[(d + u) % 3]},{emo},neutral,{d},{u},3,{d + 1},"
                            f'"00:16:16,059","00:16:21,731"')
                n += 1
                if not (split == "dev" and u == 3):  # one annotated utterance without its video
                    _video(root / folder / f"dia{d}_utt{u}.mp4", seconds=0.4)
        (root / f"{split}_sent_emo.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_meld_keeps_its_splits_and_counts_missing_videos(meld, tmp_path, capsys):
    m = CORPORA.build("meld", root=meld)
    assert m.classes == MELD_EMOTIONS
    assert Counter(c.split for c in m) == {"train": 12, "val": 3, "test": 8}
    clip = m.by_id()["test_dia1_utt2"]
    assert clip.path == "output_repeated_splits_test/dia1_utt2.mp4" and clip.group == "test_dia1"
    assert clip.speaker == "Chandler" and clip.label == MELD_EMOTIONS[6 % 7]
    assert "left out annotated utterances without a video file: dev 1" in m.notes
    assert load_audio(m.media_path(clip)).shape[0] == pytest.approx(0.4 * SR, rel=0.1)
    out = tmp_path / "meld.csv"
    assert main(["prepare", "--corpus", "meld", "--root", str(meld), "--out", str(out)]) == 0
    back = read_manifest(out)
    assert [c.split for c in back] == [c.split for c in m]  # prepare kept MELD's own splits
    assert "dev 1" in capsys.readouterr().out
    only = CORPORA.build("meld", root=meld, splits="train,test")
    assert {c.split for c in only} == {"train", "test"}


def test_meld_bad_rows_are_located(meld, tmp_path):
    import shutil

    root = tmp_path / "MELD.Raw"
    shutil.copytree(meld, root)
    csv = root / "dev_sent_emo.csv"
    csv.write_text(csv.read_text().replace(",sadness,", ",sad,", 1))
    with pytest.raises(ManifestError, match=r"dev_sent_emo.csv, line \d+, field 'Emotion': emotion 'sad'"):
        CORPORA.build("meld", root=root)
    shutil.rmtree(root / "dev_splits_complete")
    with pytest.raises(ManifestError, match="video folder dev_splits_complete/ not found"):
        CORPORA.build("meld", root=root)


# ---------------------------------------------------------------- EmoDB
EMODB_SPEAKERS = ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]


@pytest.fixture(scope="module")
def emodb(tmp_path_factory):
    root = tmp_path_factory.mktemp("emodb")
    for i, spk in enumerate(EMODB_SPEAKERS):
        for j, letter in enumerate("WLEAFTN"):
            text = ["a01", "a02", "b01", "b10"][(i + j) % 4]
            _wav(root / "wav" / f"{spk}{text}{letter}{'ab'[j % 2]}.wav", seconds=0.1, seed=j)
    (root / "lablaut").mkdir()
    return root


def test_emodb_codes_and_speaker_independent_prepare(emodb, tmp_path):
    m = CORPORA.build("emodb", root=emodb)
    assert m.classes == ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"]
    assert len(m) == 70 and len({c.speaker for c in m}) == 10
    clip = m.by_id()["03a02Lb"]
    assert clip.label == "boredom" and clip.speaker == "spk03" and clip.path == "wav/03a02Lb.wav"
    assert Counter(c.label for c in m) == {k: 10 for k in m.classes}
    assert load_audio(m.media_path(clip)).shape == (int(0.1 * SR),)
    out = tmp_path / "emodb.csv"
    assert main(["prepare", "--corpus", "emodb", "--root", str(emodb), "--out", str(out), "--seed", "4"]) == 0
    back = read_manifest(out)
    assert back.has_splits and check_speaker_independent(back.clips) == {}
    assert {c.split for c in back} == {"train", "val", "test"}


@pytest.mark.parametrize("name, message", [
    ("03a01Xa.wav", "emotion letter 'X'"),
    ("04a01Fa.wav", "speaker '04' is not one of EmoDB's ten"),
    ("03c01Fa.wav", "expected speaker, text, emotion letter and version"),
    ("03a03Fa.wav", "text code 'a03'"),
])
def test_emodb_bad_names(tmp_path, name, message):
    _wav(tmp_path / "wav" / "03a01Fa.wav", seconds=0.05)
    _wav(tmp_path / "wav" / name, seconds=0.05)
    with pytest.raises(ManifestError, match=f"field 'file name': {message}"):
        CORPORA.build("emodb", root=tmp_path)


# ---------------------------------------------------------------- MSP-Podcast
@pytest.fixture(scope="module")
def msp(tmp_path_factory):
    root = tmp_path_factory.mktemp("msp")
    rows = ["FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"]
    codes = "NHSAUFDCOX"
    sets = ["Train"] * 6 + ["Development", "Test1", "Test2", "Train"]
    n = 0
    for podcast in range(1, 9):
        for k in range(10):
            name = f"MSP-PODCAST_{podcast:04d}_{k:04d}.wav"
            speaker = "Unknown" if podcast == 8 else str(100 + podcast)
            rows.append(f"{name},{codes[(podcast + k) % 10]},4.2,3.8,4.0,{speaker},"
                        f"{'Female' if podcast % 2 else 'Male'},{sets[(podcast + k) % 10 if podcast < 8 else 0]}")
            if n != 5:  # one labelled turn without its audio
                _wav(root / "Audios" / name, seconds=0.05, seed=k)
            n += 1
    (root / "Labels").mkdir()
    (root / "Labels" / "labels_consensus.csv").write_text("\n".join(rows) + "\n")
    return root


def test_msp_podcast_consensus_splits_and_counts(msp, tmp_path, capsys):
    m = CORPORA.build("msp-podcast", root=msp)
    assert m.classes == ["neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt"]
    notes = " | ".join(m.notes)
    assert "no agreement (X): " in notes and "other (O): " in notes
    assert "left out the other test sets: Test2: " in notes
    assert "left out 1 labelled turns whose file is missing" in notes
    found = re.findall(r"(?:\(X\)|\(O\)|Test2): (\d+)|left out (\d+) labelled", notes)
    counted = [int(x) for pair in found for x in pair if x]
    assert len(m) + sum(counted) == 80  # every row of the label file is kept or counted
    clip = m.by_id()["MSP-PODCAST_0003_0004"]
    assert clip.path == "Audios/MSP-PODCAST_0003_0004.wav" and clip.speaker == "spk103" and clip.group == "podcast0003"
    assert clip.label == "contempt" and clip.split == "test"  # Test1 is the test set by default
    assert all(c.speaker == "" and c.split == "train" for c in m if c.group == "podcast0008")
    assert {c.split for c in m} == {"train", "val", "test"}
    test2 = CORPORA.build("msp-podcast", root=msp, test_set="Test2", other="class", label_set="4")
    assert test2.classes == ["neutral", "happy", "sad", "angry", "other"]
    assert Counter(c.split for c in test2)["test"] > 0 and "other" in {c.label for c in test2}
    out = tmp_path / "msp.csv"
    assert main(["prepare", "--corpus", "msp-podcast", "--root", str(msp), "--out", str(out)]) == 0
    assert [c.split for c in read_manifest(out)] == [c.split for c in m]


def test_msp_podcast_bad_rows(tmp_path):
    (tmp_path / "Labels").mkdir()
    csv = tmp_path / "Labels" / "labels_consensus.csv"
    _wav(tmp_path / "Audios" / "MSP-PODCAST_0001_0001.wav", seconds=0.05)
    csv.write_text("FileName,EmoClass,SpkrID,Split_Set\nMSP-PODCAST_0001_0001.wav,Q,12,Train\n")
    with pytest.raises(ManifestError, match=r"line 2, field 'EmoClass': emotion class 'Q'"):
        CORPORA.build("msp-podcast", root=tmp_path)
    csv.write_text("FileName,EmoClass,SpkrID,Split_Set\nMSP-PODCAST_0001_0001.wav,N,12,Validation\n")
    with pytest.raises(ManifestError, match=r"line 2, field 'Split_Set'"):
        CORPORA.build("msp-podcast", root=tmp_path)
    csv.write_text("FileName,EmoClass,SpkrID\n")
    with pytest.raises(ManifestError, match=r"line 1, field 'Split_Set': missing column"):
        CORPORA.build("msp-podcast", root=tmp_path)
