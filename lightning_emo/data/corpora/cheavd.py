"""CHEAVD adapter: the paper's seven classes, from a label file beside the clips.

CHEAVD's distribution layout is not public, so this adapter expects a layout any copy can
be put into::

    root/
      labels.csv        file,label[,speaker][,split]   (or pass --labels FILE; TSV also read)
      <clips>           the media files, at the paths given in ``file`` (relative to root)

Labels may be the English names below or CHEAVD's Chinese names (愤怒 angry, 厌恶 disgust,
恐惧 fear, 高兴/快乐 happy, 悲伤 sad, 惊讶 surprise, 中性 neutral). Rows with other
(non-prototypical) labels are an error unless ``other='skip'``, in which case the summary
counts them.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import Clip, Manifest, ManifestError

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # the paper's order
ALIASES = {
    "愤怒": "angry", "生气": "angry", "anger": "angry",
    "厌恶": "disgust", "disgusted": "disgust",
    "恐惧": "fear", "害怕": "fear", "fearful": "fear",
    "高兴": "happy", "快乐": "happy", "happiness": "happy",
    "悲伤": "sad", "伤心": "sad", "sadness": "sad",
    "惊讶": "surprise", "surprised": "surprise",
    "中性": "neutral",
}


def normalize_label(label: str) -> str | None:
    label = label.strip()
    low = label.lower()
    if low in CLASSES:
        return low
    return ALIASES.get(label) or ALIASES.get(low)


@CORPORA.register("cheavd")
def prepare(root: str | Path, labels: str | Path | None = None, other: str = "error") -> Manifest:
    """Build a CHEAVD manifest from ``root`` and its label file (default ``root/labels.csv``)."""
    if other not in ("error", "skip"):
        raise ValueError(f"other must be 'error' or 'skip', got {other!r}")
    root = Path(root)
    label_file = Path(labels) if labels else root / "labels.csv"
    if not label_file.is_file():
        raise ManifestError(label_file, "CHEAVD label file not found (expected columns file,label[,speaker][,split])")
    text = label_file.read_text(encoding="utf-8-sig")
    dialect = csv.excel_tab if "\t" in text.splitlines()[0] else csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    for col in ("file", "label"):
        if col not in header:
            raise ManifestError(label_file, f"missing column (header is {','.join(header)})", 1, col)
    idx = {h: i for i, h in enumerate(header)}
    clips, skipped = [], Counter()
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(v.strip() for v in row):
            continue
        if len(row) != len(header):
            raise ManifestError(label_file, f"expected {len(header)} fields, found {len(row)}", line)
        raw = row[idx["label"]]
        label = normalize_label(raw)
        if label is None:
            if other == "skip":
                skipped[raw] += 1
                continue
            raise ManifestError(label_file, f"label {raw!r} is not one of the seven CHEAVD classes "
                                f"({', '.join(CLASSES)}); pass other='skip' to leave such clips out", line, "label")
        file = row[idx["file"]].strip()
        speaker = row[idx["speaker"]].strip() if "speaker" in idx else ""
        split = row[idx["split"]].strip().lower() if "split" in idx else ""
        split = {"training": "train", "validation": "val", "valid": "val", "dev": "val", "testing": "test"}.get(split, split)
        clips.append(Clip(Path(file).with_suffix("").as_posix(), file, label, split, speaker))
    if not clips:
        raise ManifestError(label_file, "no clips with one of the seven classes", 2)
    notes = [f"left out {sum(skipped.values())} clips with other labels: "
             + ", ".join(f"{k} ({v})" for k, v in skipped.most_common())] if skipped else []
    return Manifest(clips, list(CLASSES), root, corpus="cheavd", source=str(label_file), notes=notes)
