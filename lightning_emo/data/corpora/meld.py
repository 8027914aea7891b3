"""MELD adapter: the train/dev/test CSVs and their video folders, MELD's own splits kept.

Layout of ``MELD.Raw`` (``root``) once its three tarballs are unpacked::

    train_sent_emo.csv   dev_sent_emo.csv   test_sent_emo.csv
    train_splits/                  dia{Dialogue_ID}_utt{Utterance_ID}.mp4   (train.tar.gz)
    dev_splits_complete/           the same names                           (dev.tar.gz)
    output_repeated_splits_test/   the same names                           (test.tar.gz)

(each CSV and folder is also found one level down, e.g. ``train/train_splits/``). The CSVs
have the columns ``Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,
Season,Episode,StartTime,EndTime``; ``Emotion`` is one of neutral, joy, sadness, anger,
surprise, fear, disgust. Dialogue ids restart in every split, so clip ids are
``train_dia0_utt0``, ``dev_dia0_utt0``, ... and each dialogue is a ``group``
(``train_dia0``). Speakers are the characters (``Chandler``, ...), who appear in all three
splits: MELD's official splits are not speaker-independent, and are kept as published.
Annotated utterances whose video is missing (e.g. dev ``dia110_utt7``) are counted and
skipped.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import Clip, Manifest, ManifestError

CLASSES = ["neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"]
SPLITS = {  # MELD split -> (label CSV, video folder, manifest split)
    "train": ("train_sent_emo.csv", "train_splits", "train"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete", "val"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test", "test"),
}
COLUMNS = ("Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")


def _find(root: Path, name: str, folder: bool) -> Path | None:
    """``root/name`` or ``root/*/name`` (some copies keep each split's files in a subfolder)."""
    for p in [root / name, *sorted(root.glob(f"*/{name}"))]:
        if (p.is_dir() if folder else p.is_file()):
            return p
    return None


def _read_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    # The utterance texts hold a few bytes that are not UTF-8; only the ids and labels are used.
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(path, "empty MELD label file (expected the header Sr No.,Utterance,Speaker,Emotion,...)",
                            1) from None
    for col in COLUMNS:
        if col not in header:
            raise ManifestError(path, f"missing column (header is {','.join(header)})", 1, col)
    rows = []
    for row in reader:
        line = reader.line_num  # utterances may span lines inside quotes: the record's last line
        if not row or not any(v.strip() for v in row):
            continue
        if len(row) != len(header):
            raise ManifestError(path, f"expected {len(header)} fields, found {len(row)}", line)
        rows.append((line, dict(zip(header, (v.strip() for v in row)))))
    return rows


@CORPORA.register("meld")
def prepare(root: str | Path, splits: str = "train,dev,test") -> Manifest:
    """Build a MELD manifest from its CSVs and video folders.

    Args:
        root: ``MELD.Raw``.
        splits: which of MELD's splits to read (comma-separated: train, dev, test); dev
            becomes the manifest's ``val``.
    """
    root = Path(root)
    wanted = [s.strip() for s in str(splits).split(",") if s.strip()]
    for s in wanted:
        if s not in SPLITS:
            raise ValueError(f"meld option splits: {s!r} is not one of train, dev, test")
    clips: list[Clip] = []
    missing: dict[str, int] = {}
    for name in wanted:
        csv_name, folder_name, split = SPLITS[name]
        csv_path = _find(root, csv_name, folder=False)
        if csv_path is None:
            raise ManifestError(root, f"MELD label file {csv_name} not found (expected it in {root} or one "
                                "folder below)")
        folder = _find(root, folder_name, folder=True)
        if folder is None:
            raise ManifestError(root, f"MELD video folder {folder_name}/ not found (expected it in {root} or one "
                                f"folder below; it comes from {name}.tar.gz)")
        seen: dict[tuple[str, str], int] = {}
        missing[name] = 0
        for line, r in _read_csv(csv_path):
            for col in ("Dialogue_ID", "Utterance_ID"):
                if not r[col].isdigit():
                    raise ManifestError(csv_path, f"expected a non-negative integer, got {r[col]!r}", line, col)
            label = r["Emotion"].lower()
            if label not in CLASSES:
                raise ManifestError(csv_path, f"emotion {r['Emotion']!r} is not one of MELD's seven "
                                    f"({', '.join(CLASSES)})", line, "Emotion")
            dia, utt = str(int(r["Dialogue_ID"])), str(int(r["Utterance_ID"]))
            if (dia, utt) in seen:
                raise ManifestError(csv_path, f"dialogue {dia} utterance {utt} listed twice (first on line "
                                    f"{seen[(dia, utt)]})", line, "Utterance_ID")
            seen[(dia, utt)] = line
            video = folder / f"dia{dia}_utt{utt}.mp4"
            if not video.is_file():
                missing[name] += 1
                continue
            clips.append(Clip(f"{name}_dia{dia}_utt{utt}", video.relative_to(root).as_posix(), label, split,
                              r["Speaker"], group=f"{name}_dia{dia}"))
    notes = ["MELD's own splits: " + ", ".join(f"{s} -> {SPLITS[s][2]}" for s in wanted)
             + " (not speaker-independent: the main characters speak in every split)"]
    if any(missing.values()):
        notes.append("left out annotated utterances without a video file: "
                     + ", ".join(f"{s} {n}" for s, n in missing.items() if n))
    if not clips:
        raise ManifestError(root, "no MELD utterance has its video file: " + "; ".join(notes))
    return Manifest(clips, list(CLASSES), root, corpus="meld", source=str(root), notes=notes)
