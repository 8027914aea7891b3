"""MSP-Podcast adapter: consensus labels, speakers and the corpus' own split sets.

Layout (``root``)::

    Audios/MSP-PODCAST_0001_0008.wav ...          the speaking turns (16 kHz)
    Labels/labels_consensus.csv                   one row per turn

``labels_consensus.csv`` has the columns ``FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,
Gender,Split_Set`` (the adapter reads FileName, EmoClass, SpkrID and Split_Set; others may
follow). ``EmoClass`` is the consensus primary emotion: N neutral, H happy, S sad, A angry,
U surprise, F fear, D disgust, C contempt, O other, X no agreement. ``Split_Set`` is
``Train``, ``Development``, ``Test1``, ``Test2`` (and ``Test3`` in later releases, whose
labels are withheld). ``SpkrID`` is a number or ``Unknown``: unknown speakers are left
empty, never pooled into one pseudo-speaker. In ``MSP-PODCAST_0001_0008`` the first number
is the podcast the turn was cut from; it is the ``group`` (``podcast0001``), which keeps a
turn of an unknown speaker with its podcast when splits are dealt.

Turns without a consensus class (X, and O unless ``other='class'``) are counted and skipped,
as are turns of the test sets not chosen and turns whose audio file is missing.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import Clip, Manifest, ManifestError

CODES = {"N": "neutral", "H": "happy", "S": "sad", "A": "angry", "U": "surprise", "F": "fear", "D": "disgust",
         "C": "contempt", "O": "other"}
NO_CONSENSUS = "X"
CLASSES = ["neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt"]
CLASSES_4 = ["neutral", "happy", "sad", "angry"]
SPLIT_SETS = {"Train": "train", "Development": "val"}
TEST_SETS = ("Test1", "Test2", "Test3")
COLUMNS = ("FileName", "EmoClass", "SpkrID", "Split_Set")
_PODCAST = re.compile(r"^MSP-PODCAST_(\d+)_\d+")


@CORPORA.register("msp-podcast")
def prepare(root: str | Path, labels: str | Path | None = None, test_set: str = "Test1", label_set: str = "8",
            other: str = "skip") -> Manifest:
    """Build an MSP-Podcast manifest from ``Labels/labels_consensus.csv`` and ``Audios/``.

    Args:
        root: the release folder (holding ``Audios/`` and ``Labels/``).
        labels: another consensus label file (default ``root/Labels/labels_consensus.csv``).
        test_set: which split set is the manifest's ``test`` (Test1, Test2 or Test3); the
            other test sets are left out (counted).
        label_set: ``"8"`` (the eight primary emotions) or ``"4"`` (neutral, happy, sad, angry;
            the other emotions are counted and skipped).
        other: ``"skip"`` (O counted and skipped) or ``"class"`` (``other`` as a class).
    """
    for name, value, allowed in (("test_set", test_set, TEST_SETS), ("label_set", label_set, ("8", "4")),
                                 ("other", other, ("skip", "class"))):
        if value not in allowed:
            raise ValueError(f"msp-podcast option {name} must be one of {', '.join(allowed)}, got {value!r}")
    root = Path(root)
    label_file = Path(labels) if labels else root / "Labels" / "labels_consensus.csv"
    if not label_file.is_file():
        raise ManifestError(label_file, "MSP-Podcast label file not found (expected Labels/labels_consensus.csv "
                            "with columns FileName,EmoClass,...,SpkrID,Gender,Split_Set)")
    names = list(CLASSES if label_set == "8" else CLASSES_4) + (["other"] if other == "class" else [])
    split_of = dict(SPLIT_SETS, **{test_set: "test"})
    skipped: Counter = Counter()
    other_sets: Counter = Counter()
    missing, clips, seen = 0, [], {}
    with open(label_file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for col in COLUMNS:
            if col not in header:
                raise ManifestError(label_file, f"missing column (header is {','.join(header)})", 1, col)
        idx = {h: i for i, h in enumerate(header)}
        for row in reader:
            line = reader.line_num
            if not row or not any(v.strip() for v in row):
                continue
            if len(row) != len(header):
                raise ManifestError(label_file, f"expected {len(header)} fields, found {len(row)}", line)
            file, code, speaker, split_set = (row[idx[c]].strip() for c in COLUMNS)
            if not file:
                raise ManifestError(label_file, "empty file name", line, "FileName")
            if file in seen:
                raise ManifestError(label_file, f"{file!r} listed twice (first on line {seen[file]})", line, "FileName")
            seen[file] = line
            if split_set not in SPLIT_SETS and split_set not in TEST_SETS:
                raise ManifestError(label_file, f"split set {split_set!r} is not one of Train, Development, "
                                    f"{', '.join(TEST_SETS)}", line, "Split_Set")
            if code != NO_CONSENSUS and code not in CODES:
                raise ManifestError(label_file, f"emotion class {code!r} is not one of "
                                    f"{', '.join(list(CODES) + [NO_CONSENSUS])}", line, "EmoClass")
            if split_set not in split_of:
                other_sets[split_set] += 1
                continue
            label = CODES.get(code)
            if label not in names:
                skipped["no agreement (X)" if code == NO_CONSENSUS else f"{label} ({code})"] += 1
                continue
            audio = root / "Audios" / (file if file.lower().endswith(".wav") else f"{file}.wav")
            if not audio.is_file():
                missing += 1
                continue
            podcast = _PODCAST.match(Path(file).stem)
            clips.append(Clip(Path(file).stem, audio.relative_to(root).as_posix(), label, split_of[split_set],
                              "" if speaker.lower() in ("unknown", "") else f"spk{speaker}",
                              group=f"podcast{podcast.group(1)}" if podcast else ""))
    notes = [f"{len(clips)} turns; split sets Train -> train, Development -> val, {test_set} -> test"]
    if skipped:
        notes.append(f"left out {sum(skipped.values())} turns without a class of the set: "
                     + ", ".join(f"{k}: {v}" for k, v in skipped.most_common()))
    if other_sets:
        notes.append("left out the other test sets: " + ", ".join(f"{k}: {v}" for k, v in sorted(other_sets.items())))
    if missing:
        notes.append(f"left out {missing} labelled turns whose file is missing from Audios/")
    if clips and not any(c.split == "test" for c in clips):
        notes.append(f"no usable turn in {test_set}: the manifest has no test split (choose test_set=Test1|Test2)")
    unknown = sum(1 for c in clips if not c.speaker)
    if unknown:
        notes.append(f"{unknown} turns have an unknown speaker (SpkrID Unknown)")
    if not clips:
        raise ManifestError(label_file, "no usable MSP-Podcast turns: " + "; ".join(notes))
    return Manifest(clips, names, root, corpus="msp-podcast", source=str(label_file), notes=notes)
