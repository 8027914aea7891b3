"""Label maps for cross-corpus evaluation: YAML reading, mapping counts, RAVDESS -> CREMA-D layouts."""

from __future__ import annotations

import pytest

from lightning_emo.cli import main
from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.labelmap import LabelMapError, align_corpora, apply_label_map, load_label_map
from lightning_emo.data.manifest import read_manifest

RAVDESS_TO_CREMAD = """\
# RAVDESS labels onto CREMA-D's six classes
calm: null
fearful: fear
surprised: null
"""


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")


@pytest.fixture
def corpora(tmp_path):
    ravdess = tmp_path / "ravdess"
    for actor in range(1, 5):
        for emotion in range(1, 9):
            _touch(ravdess / f"Actor_{actor:02d}" / f"01-01-{emotion:02d}-01-01-01-{actor:02d}.mp4")
    crema = tmp_path / "crema"
    for actor in (1001, 1002, 1003, 1004):
        for emo in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"):
            _touch(crema / "VideoFlash" / f"{actor}_DFA_{emo}_XX.flv")
    (tmp_path / "map.yaml").write_text(RAVDESS_TO_CREMAD)
    return CORPORA.build("ravdess", root=ravdess), CORPORA.build("cremad", root=crema), tmp_path / "map.yaml"


def test_ravdess_onto_cremad_classes_counts_what_is_dropped(corpora):
    ravdess, crema, yaml_file = corpora
    mapped, counts = apply_label_map(ravdess, yaml_file, crema.classes)
    assert mapped.classes == crema.classes == ["angry", "disgust", "fear", "happy", "neutral", "sad"]
    assert counts.dropped == {"calm": 4, "surprised": 4}
    assert counts.kept["fear"] == 4 and counts.n_kept == 24 and counts.empty_classes == []
    assert {c.label for c in mapped} == set(crema.classes)
    assert mapped.by_id()["01-01-06-01-01-01-03"].label == "fear"
    assert mapped.by_id()["01-01-06-01-01-01-03"].speaker == "actor03"  # speakers travel
    assert any("dropped 8: calm (4), surprised (4)" in n for n in mapped.notes)


def test_align_corpora_keeps_the_shared_classes_on_both_sides(corpora):
    ravdess, crema, yaml_file = corpora
    # Train on CREMA-D without its disgust clips, test on RAVDESS: disgust exists on one side only.
    crema = crema.with_clips([c for c in crema if c.label != "disgust"])
    train, test, counts = align_corpora(crema, ravdess, yaml_file)
    assert train.classes == test.classes == ["angry", "fear", "happy", "neutral", "sad"]
    assert counts["test"].dropped == {"calm": 4, "surprised": 4, "disgust": 4}
    assert counts["train"].dropped == {} and counts["train"].empty_classes == ["disgust"]
    assert len(test) == 20 and len(train) == 20


def test_identity_and_typos(corpora):
    ravdess, crema, _ = corpora
    mapped, counts = apply_label_map(ravdess, None, crema.classes, drop_empty_classes=True)
    assert counts.dropped == {"calm": 4, "fearful": 4, "surprised": 4}
    assert mapped.classes == ["angry", "disgust", "happy", "neutral", "sad"] and counts.empty_classes == ["fear"]
    with pytest.raises(LabelMapError, match=r"maps 'fearful' to 'feared', which is not a target class"):
        apply_label_map(ravdess, {"fearful": "feared"}, crema.classes)
    with pytest.raises(LabelMapError, match="no clip of"):
        apply_label_map(ravdess, None, ["bored"])


@pytest.mark.parametrize("text, line, message", [
    ("calm: null\ncalm: neutral\n", 2, r"'calm' is mapped twice \(first on line 1\)"),
    ("- calm\n- fear\n", 1, "expected a YAML mapping"),
    ("calm: [a, b]\n", 1, "the value must be one target class name"),
    ("calm: neutral\nfearful: {\n", None, "not valid YAML"),
    ("", None, "empty label map"),
])
def test_bad_label_map_files_name_the_line(tmp_path, text, line, message):
    path = tmp_path / "map.yaml"
    path.write_text(text)
    with pytest.raises(LabelMapError, match=message) as e:
        load_label_map(path)
    if line is not None:
        assert f"map.yaml, line {line}" in str(e.value)


def test_label_map_file_values_and_lines(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text(RAVDESS_TO_CREMAD)
    lm = load_label_map(path)
    assert lm.mapping == {"calm": None, "fearful": "fear", "surprised": None}
    assert lm.lines == {"calm": 2, "fearful": 3, "surprised": 4}


def test_prepare_with_label_map(corpora, tmp_path, capsys):
    ravdess, crema, yaml_file = corpora
    out = tmp_path / "out" / "ravdess_as_cremad.csv"
    code = main(["prepare", "--corpus", "ravdess", "--root", str(ravdess.root), "--out", str(out),
                 "--label-map", str(yaml_file), "--classes", *crema.classes])
    assert code == 0
    m = read_manifest(out)
    assert m.classes == crema.classes and len(m) == 24 and m.has_splits
    printed = capsys.readouterr().out
    assert "dropped 8: calm (4), surprised (4)" in printed
    bad = tmp_path / "bad.yaml"
    bad.write_text("fearful: feared\n")
    code = main(["prepare", "--corpus", "ravdess", "--root", str(ravdess.root), "--out", str(tmp_path / "x.csv"),
                 "--label-map", str(bad), "--classes", *crema.classes])
    assert code == 2 and "bad.yaml, line 1, key 'fearful': maps 'fearful' to 'feared'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_shipped_label_maps_fit_the_adapters_classes():
    """Every shipped map names only its source corpus' labels and its target corpus' classes."""
    from lightning_emo.data.corpora import cremad, emodb, iemocap, meld, msp_podcast, ravdess
    from lightning_emo.data.labelmap import shipped_label_maps

    classes = {"ravdess": ravdess.CLASSES, "cremad": cremad.CLASSES, "emodb": emodb.CLASSES, "meld": meld.CLASSES,
               "msp-podcast": msp_podcast.CLASSES + ["other"], "iemocap": iemocap.CLASSES_4}
    names = shipped_label_maps()
    assert {"ravdess_to_cremad", "cremad_to_ravdess", "emodb_to_iemocap", "meld_to_iemocap"} <= set(names)
    for name in names:
        source, target = name.split("_to_")
        lm = load_label_map(name)
        assert set(lm.mapping) <= set(classes[source]), name
        lm.check_targets(classes[target])
        # every source label ends somewhere on purpose: a target class, or dropped by name
        ends = {lab: lm.target(lab) for lab in classes[source]}
        assert all(t is None or t in classes[target] for t in ends.values()), name
        assert all(lab in lm.mapping for lab, t in ends.items() if t is None or t not in classes[target]), name
    assert load_label_map("labelmap/ravdess_to_cremad.yaml").mapping == load_label_map("ravdess_to_cremad").mapping
    with pytest.raises(LabelMapError, match="or the name of a shipped one: cremad_to_iemocap"):
        load_label_map("ravdess_to_nowhere")
