"""Cross-corpus `reproduce`: train on a RAVDESS-layout corpus, test on a CREMA-D-layout one through a label map."""

from __future__ import annotations

import csv
import json
import shutil

import av
import pytest

from lightning_emo.cli import main
from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import assign_splits, read_manifest
from lightning_emo.data.synthetic import synthesize

RAVDESS_CODES = {"neutral": "01", "happy": "03", "sad": "04", "angry": "05", "fear": "06", "disgust": "07",
                 "surprise": "08"}
CREMAD_CODES = {"angry": "ANG", "disgust": "DIS", "fear": "FEA", "happy": "HAP", "neutral": "NEU", "sad": "SAD"}


def _remux_flv(src, dst):
    """CREMA-D ships FLV video: remux the synthetic MP4 (H.264 + AAC) into an FLV container with PyAV."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as i, av.open(str(dst), "w", format="flv") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for pkt in i.demux():
            if pkt.dts is None:
                continue
            pkt.stream = streams[pkt.stream.index]
            o.mux(pkt)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """A RAVDESS-layout corpus (4 actors, 7 emotions) and a CREMA-D-layout one (2 actors, its 6), real media."""
    base = tmp_path_factory.mktemp("cross")
    src = read_manifest(synthesize(base / "synth", clips_per_class=6, num_speakers=6, size=64, max_speech=1.5))
    ravdess, cremad = base / "RAVDESS", base / "CREMA-D"
    count: dict[str, int] = {}
    for c in src.clips:
        k = count[c.label] = count.get(c.label, 0) + 1
        path = src.media_path(c)
        if k <= 4:  # actors 1-4, repetition 1
            actor = f"{k:02d}"
            dst = ravdess / f"Actor_{actor}" / f"01-01-{RAVDESS_CODES[c.label]}-01-01-01-{actor}.mp4"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dst)
        elif c.label in CREMAD_CODES:
            _remux_flv(path, cremad / "VideoFlash" / f"{1000 + k}_IEO_{CREMAD_CODES[c.label]}_HI.flv")
    train = assign_splits(CORPORA.build("ravdess", root=ravdess), seed=0)
    train_csv = train.write(base / "ravdess.csv")
    test_csv = CORPORA.build("cremad", root=cremad).write(base / "cremad.csv")
    return base, train_csv, test_csv


def test_reproduce_ravdess_to_cremad_through_a_label_map(corpora, tmp_path):
    base, train_csv, test_csv = corpora
    out = tmp_path / "run"
    assert main(["reproduce", "--config", "configs/reproduce/synthetic.yaml", "--out", str(out),
                 "--manifest", str(train_csv), "--num_workers", "0",
                 "--train_args", '["--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]',
                 "--audio", '{"mfcc": {"extractor": "mfcc", "train_config": "configs/experiment/synthetic_audio.yaml"}}',
                 "--video", '{"hog": {"extractor": "hog", "detector": "none", "fps": 5, '
                            '"train_config": "configs/experiment/synthetic_face.yaml"}, '
                            '"hog64": {"extractor": "hog", "detector": "none", "fps": 5, "select": 64, '
                            '"train_config": "configs/experiment/synthetic_face.yaml"}}',
                 "--rules", '["lr", "prior"]',
                 "--test_corpus.manifest", str(test_csv),
                 "--test_corpus.label_map", "configs/labelmap/cremad_to_ravdess.yaml"]) == 0
    mapped = read_manifest(out / "cross" / "cremad" / "manifest.csv", check_files=False)
    # CREMA-D's fear became RAVDESS' fearful; RAVDESS' surprised (and calm) have no CREMA-D clip: dropped
    assert mapped.classes == ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
    assert len(mapped) == 12 and {c.split for c in mapped.clips} == {"test"}
    with open(out / "summary_cremad.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} >= {"mfcc", "hog", "mfcc+hog / LR", "mfcc+hog / prior"}
    md = (out / "summary.md").read_text()
    assert "In-corpus vs cross-corpus" in md and "cremad WA" in md
    assert "dropped" in md and "surprised" in md  # counted, per side
    # heads for the cross-corpus condition were trained on the shared classes only
    cross_preds = out / "cross-cremad" / "mfcc" / "predictions.csv"
    header = cross_preds.read_text().splitlines()[0].split(",")
    assert header[3:] == mapped.classes
    # the selection fitted on the training clips, applied to the test corpus: same columns
    from lightning_emo.data.store import FeatureStore

    train_sel = FeatureStore.open(next((out / "cross" / "cremad" / "features" / "folds" / "split").iterdir()))
    test_sel = FeatureStore.open(out / "cross-cremad" / "features" / "hog-det-none-fps5-sel64")
    assert test_sel.dim == train_sel.dim == 64 and len(test_sel) == 12
    assert test_sel.selection["train_clips"] == train_sel.selection["train_clips"]
    scores = list(csv.DictReader(open(out / "scores.csv")))
    assert {r["condition"] for r in scores} == {"in", "cross:cremad"}
    # the in-corpus heads kept all of RAVDESS' classes
    assert read_manifest(train_csv).classes == json.loads((train_csv.with_suffix(".json")).read_text())["classes"]
