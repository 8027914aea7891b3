"""ASR source-task data: the utterance manifest, corpus adapters (AISHELL-1, CSV), the token vocabulary, ASRDataModule.

The speech DNN's source task is speech recognition. Its training data is described by an
**ASR manifest**: a CSV with the header ``utt_id,path,transcript`` and optional ``split``
(``train``/``val``/``test`` or empty) and ``speaker`` columns; ``path`` is relative to the
corpus root. As with the emotion manifest, an optional sidecar JSON with the same stem
(``asr.csv`` -> ``asr.json``) holds ``{"root": "<relative to the CSV's folder>", "corpus":
"name"}``. Every reader goes through :func:`read_asr_manifest`, which validates and raises
:class:`ASRManifestError` naming the file, the line and the field.

Adapters turn corpora into that manifest: :func:`prepare_aishell` (AISHELL-1) and
:func:`read_asr_manifest` itself for any corpus already written as a CSV; both are registered
in :data:`ASR_CORPORA`. ``python -m lightning_emo.pretrain.asr_data --corpus aishell --root
DIR --out asr.csv`` writes a validated manifest.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_emo.data.manifest import ManifestError, sidecar_path
from lightning_emo.registry import Registry
from lightning_emo.utils import OutputExistsError, atomic_write_text, check_outputs, log

ASR_COLUMNS = ("utt_id", "path", "transcript")
ASR_OPTIONAL_COLUMNS = ("split", "speaker")
ASR_SPLITS = ("train", "val", "test")
UNITS = ("char", "token")

ASR_CORPORA: Registry = Registry("ASR corpus")


class ASRManifestError(ManifestError):
    """An ASR manifest or corpus that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Utterance:
    """One row of an ASR manifest: an audio file and what is said in it."""

    utt_id: str
    path: str
    transcript: str
    split: str = ""
    speaker: str = ""


@dataclass
class ASRManifest:
    """Utterances and the corpus root their paths are relative to.

    ``notes`` say what an adapter or reader did beyond the obvious (utterances left out and
    why, splits assigned); :meth:`summary` prints them, so nothing is dropped silently.
    """

    utterances: list[Utterance]
    root: Path
    corpus: str = "custom"
    source: str = "<memory>"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self):
        return iter(self.utterances)

    def audio_path(self, utt: Utterance) -> Path:
        return self.root / utt.path

    def split(self, name: str | Sequence[str]) -> list[Utterance]:
        names = (name,) if isinstance(name, str) else tuple(name)
        return [u for u in self.utterances if u.split in names]

    def summary(self) -> str:
        """Counts per split (utterances, speakers), and the notes."""
        lines = [f"ASR manifest {self.source}: {len(self.utterances)} utterances, root {self.root} "
                 f"(corpus: {self.corpus})"]
        by_split: dict[str, list[Utterance]] = defaultdict(list)
        for u in self.utterances:
            by_split[u.split or "(none)"].append(u)
        for name in sorted(by_split, key=lambda s: (ASR_SPLITS + ("(none)",)).index(s)):
            utts = by_split[name]
            speakers = {u.speaker for u in utts if u.speaker}
            lines.append(f"  {name:>6}: {len(utts):>7} utterances, {len(speakers):>5} speakers, "
                         f"{sum(len(u.transcript) for u in utts):>9} transcript characters")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the CSV and its sidecar JSON (root, corpus) atomically; returns the CSV path."""
        path = Path(path)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(ASR_COLUMNS + ASR_OPTIONAL_COLUMNS)
        for u in self.utterances:
            writer.writerow([u.utt_id, u.path, u.transcript, u.split, u.speaker])
        path.parent.mkdir(parents=True, exist_ok=True)
        root = os.path.relpath(Path(self.root).resolve(), path.parent.resolve())
        atomic_write_text(sidecar_path(path), json.dumps({"root": root, "corpus": self.corpus}, indent=2) + "\n")
        atomic_write_text(path, buf.getvalue())
        return path


def _normalize_transcript(text: str) -> str:
    # NFKC folds full-width forms (common in Chinese transcripts) onto their usual code points,
    # and runs of whitespace become one space, so the same sentence always tokenizes the same.
    return " ".join(unicodedata.normalize("NFKC", text).split())


def read_asr_manifest(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    check_files: bool = True,
) -> ASRManifest:
    """Read and validate an ASR manifest CSV (``utt_id,path,transcript[,split,speaker]``).

    Args:
        path: the CSV file.
        root: the corpus root audio paths are relative to; default: the sidecar's ``root``,
            else the CSV's folder.
        check_files: check that every audio file exists.

    Raises:
        ASRManifestError: naming the file, line and field of the first problem found
            (missing column, empty or duplicate ``utt_id``, empty ``path``, audio file not
            found, empty ``transcript``, bad ``split``).
    """
    path = Path(path)
    if not path.is_file():
        raise ASRManifestError(path, "ASR manifest file not found")
    meta: dict[str, Any] = {}
    if sidecar_path(path).is_file():
        try:
            meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ASRManifestError(sidecar_path(path), f"not valid JSON ({e})", e.lineno) from None
    if root is None:
        root = (path.parent / meta["root"]) if "root" in meta else path.parent
    root = Path(root)
    notes: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ASRManifestError(path, "empty ASR manifest: no header and no utterances (expected header "
                                   f"{','.join(ASR_COLUMNS)}[,split,speaker])", 1) from None
        for col in ASR_COLUMNS:
            if col not in header:
                raise ASRManifestError(path, f"missing column (header is {','.join(header)}; expected "
                                       f"{','.join(ASR_COLUMNS)}[,split,speaker])", 1, col)
        unknown = [h for h in header if h not in ASR_COLUMNS + ASR_OPTIONAL_COLUMNS]
        if unknown:
            notes.append(f"ignored extra columns: {', '.join(unknown)}")
        utterances: list[Utterance] = []
        seen: dict[str, int] = {}
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) != len(header):
                raise ASRManifestError(path, f"expected {len(header)} fields, found {len(row)} (quote transcripts "
                                       "that contain commas)", line_no)
            r = dict(zip(header, (v.strip() for v in row)))
            if not r["utt_id"]:
                raise ASRManifestError(path, "empty utt_id", line_no, "utt_id")
            if r["utt_id"] in seen:
                raise ASRManifestError(path, f"duplicate utt_id {r['utt_id']!r} (first on line {seen[r['utt_id']]})",
                                       line_no, "utt_id")
            seen[r["utt_id"]] = line_no
            if not r["path"]:
                raise ASRManifestError(path, "empty path", line_no, "path")
            if check_files and not (root / r["path"]).is_file():
                raise ASRManifestError(path, f"audio file not found: {root / r['path']}", line_no, "path")
            transcript = _normalize_transcript(r["transcript"])
            if not transcript:
                raise ASRManifestError(path, f"empty transcript for utterance {r['utt_id']!r}", line_no, "transcript")
            split = r.get("split", "")
            if split not in ASR_SPLITS + ("",):
                raise ASRManifestError(path, f"bad split name {split!r} (expected train, val, test or empty)",
                                       line_no, "split")
            utterances.append(Utterance(r["utt_id"], r["path"], transcript, split, r.get("speaker", "")))
    if not utterances:
        raise ASRManifestError(path, "empty ASR manifest: a header but no utterances", 2)
    return ASRManifest(utterances, root, corpus=meta.get("corpus", "custom"), source=str(path), notes=notes)


ASR_CORPORA.register("csv", read_asr_manifest)


@ASR_CORPORA.register("aishell")
def prepare_aishell(
    root: str | os.PathLike,
    splits: Sequence[str] = ("train", "dev", "test"),
    transcript: str | os.PathLike | None = None,
) -> ASRManifest:
    """Read AISHELL-1 into an :class:`ASRManifest` (``dev`` becomes ``val``).

    Layout: ``data_aishell/wav/{train,dev,test}/<speaker>/<utt>.wav`` and
    ``data_aishell/transcript/aishell_transcript_v0.8.txt`` with one line per utterance,
    ``<utt_id> <word> <word> ...``. ``root`` is the folder holding ``data_aishell`` or
    ``data_aishell`` itself.

    Utterances with audio but no transcript line (AISHELL-1 has a few hundred) are left out,
    counted, and named in the manifest's notes; transcript lines without audio are counted
    too. Paths in the manifest are relative to the ``data_aishell`` folder.

    Args:
        root: the corpus root.
        splits: which of ``train``, ``dev``, ``test`` to read.
        transcript: the transcript file, if not at the usual place.

    Raises:
        ASRManifestError: missing folders or transcript file, a malformed transcript line (file
            and line), speaker archives not unpacked, or no usable utterance at all.
    """
    root = Path(root)
    base = root / "data_aishell" if (root / "data_aishell").is_dir() else root
    wav_dir = base / "wav"
    if not wav_dir.is_dir():
        raise ASRManifestError(root, "not an AISHELL-1 root: expected data_aishell/wav/{train,dev,test}/<speaker>/*.wav")
    transcript_file = Path(transcript) if transcript else base / "transcript" / "aishell_transcript_v0.8.txt"
    if not transcript_file.is_file():
        raise ASRManifestError(transcript_file, "AISHELL-1 transcript file not found")
    texts: dict[str, str] = {}
    with open(transcript_file, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2 or not parts[1].strip():
                raise ASRManifestError(transcript_file, f"utterance {parts[0]!r} has an empty transcript", line_no,
                                       "transcript")
            if parts[0] in texts:
                raise ASRManifestError(transcript_file, f"duplicate utterance id {parts[0]!r}", line_no, "utt_id")
            texts[parts[0]] = _normalize_transcript(parts[1])
    split_names = {"train": "train", "dev": "val", "test": "test"}
    utterances: list[Utterance] = []
    no_text: list[str] = []
    found: set[str] = set()
    for split in splits:
        if split not in split_names:
            raise ValueError(f"AISHELL-1 splits are train, dev, test; got {split!r}")
        split_dir = wav_dir / split
        if not split_dir.is_dir():
            raise ASRManifestError(split_dir, f"AISHELL-1 {split} folder not found")
        if any(split_dir.glob("*.tar.gz")) and not any(split_dir.glob("*/*.wav")):
            raise ASRManifestError(split_dir, "holds speaker archives (*.tar.gz) but no unpacked WAV files: "
                                   "unpack them first (for f in *.tar.gz; do tar xzf $f; done)")
        for wav in sorted(split_dir.glob("*/*.wav")):
            utt_id, speaker = wav.stem, wav.parent.name
            found.add(utt_id)
            if utt_id not in texts:
                no_text.append(utt_id)
                continue
            utterances.append(Utterance(utt_id, wav.relative_to(base).as_posix(), texts[utt_id],
                                        split_names[split], speaker))
    notes = []
    if no_text:
        shown = ", ".join(no_text[:5]) + (", ..." if len(no_text) > 5 else "")
        notes.append(f"{len(no_text)} utterances have audio but no transcript in {transcript_file.name} and are "
                     f"left out: {shown}")
        log.warning("AISHELL-1: %d utterances without transcript left out (%s)", len(no_text), shown)
    if set(splits) == set(split_names):
        orphans = len(set(texts) - found)
        if orphans:
            notes.append(f"{orphans} transcript lines have no audio file")
    if not utterances:
        raise ASRManifestError(wav_dir, f"no usable utterance: {len(found)} WAV files found under "
                               f"{', '.join(splits)}, {len(no_text)} of them without transcript")
    manifest = ASRManifest(utterances, base, corpus="aishell", source=str(base), notes=notes)
    manifest.missing_transcripts = no_text  # type: ignore[attr-defined]  # for callers that want the list
    return manifest


def assign_asr_splits(manifest: ASRManifest, val_fraction: float = 0.1, seed: int = 0) -> ASRManifest:
    """Fill empty ``split`` fields with ``train``/``val``: deterministic, seeded, by speaker where known.

    When every unassigned utterance has a speaker, whole speakers go to ``val`` (at least one
    when there are two or more speakers), so validation error rates are speaker-independent;
    otherwise utterances are split directly and a note says so.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    todo = [u for u in manifest.utterances if not u.split]
    if not todo:
        return manifest
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    notes = list(manifest.notes)
    by_speaker = all(u.speaker for u in todo)
    group = (lambda u: u.speaker) if by_speaker else (lambda u: u.utt_id)
    groups = sorted({group(u) for u in todo})
    rng.shuffle(groups)
    n_val = round(val_fraction * len(groups))
    if val_fraction > 0 and len(groups) > 1:  # both splits get a group
        n_val = min(max(n_val, 1), len(groups) - 1)
    val = set(groups[:n_val])
    for u in todo:
        assignment[u.utt_id] = "val" if group(u) in val else "train"
    if by_speaker:
        notes.append(f"assigned train/val by speaker (seed {seed}): {n_val} of {len(groups)} speakers to val")
    else:
        notes.append(f"assigned train/val by utterance (seed {seed}; some utterances have no speaker): "
                     f"{n_val} of {len(groups)} to val, NOT speaker-independent")
    utts = [replace(u, split=assignment[u.utt_id]) if u.utt_id in assignment else u for u in manifest.utterances]
    return replace(manifest, utterances=utts, notes=notes)


BLANK = "<blank>"
UNK = "<unk>"
SPACE = "|"


@dataclass
class Vocabulary:
    """Output units of the acoustic model: index 0 is the CTC blank, 1 the unknown token.

    Attributes:
        tokens: the units, in index order from 2.
        unit: ``char`` (every non-space character is a token: Mandarin, or letters) or
            ``token`` (whitespace-separated tokens: words, syllables, phones).
        keep_spaces: with ``char``, word boundaries become the token ``|`` (for alphabetic
            scripts); without, whitespace is dropped (Mandarin transcripts are word-segmented
            with spaces that carry no sound).

    The error rate over these units is the CER (``char``) or the token error rate (``token``).
    """

    tokens: list[str]
    unit: str = "char"
    keep_spaces: bool = False

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"vocabulary unit must be one of {UNITS}, got {self.unit!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")
        if BLANK in self.tokens or UNK in self.tokens:
            raise ValueError(f"{BLANK} and {UNK} are reserved (indices 0 and 1)")
        self._index = {t: i + 2 for i, t in enumerate(self.tokens)}

    @property
    def blank(self) -> int:
        return 0

    @property
    def unk(self) -> int:
        return 1

    def __len__(self) -> int:
        """Number of output classes, blank and unknown included."""
        return len(self.tokens) + 2

    @property
    def symbols(self) -> list[str]:
        return [BLANK, UNK] + list(self.tokens)

    def split(self, text: str) -> list[str]:
        """A transcript as a list of units (before indexing)."""
        text = _normalize_transcript(text)
        if self.unit == "token":
            return text.split()
        if self.keep_spaces:
            return [SPACE if c == " " else c for c in text]
        return [c for c in text if not c.isspace()]

    def encode(self, text: str) -> list[int]:
        """Transcript -> unit indices (unknown units -> 1)."""
        return [self._index.get(t, self.unk) for t in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Unit indices (blanks and unknowns skipped) -> the transcript in the metric's form."""
        toks = [self.tokens[i - 2] for i in ids if i >= 2]
        return self.join(toks)

    def join(self, units: Sequence[str]) -> str:
        if self.unit == "token":
            return " ".join(units)
        return "".join(" " if u == SPACE else u for u in units)

    def reference(self, text: str) -> str:
        """A transcript in the form hypotheses are compared with (unknown units kept as they are)."""
        return self.join(self.split(text))

    def error_rate_metric(self):
        """The torchmetrics metric for this unit: CharErrorRate (``char``) or WordErrorRate (``token``)."""
        from torchmetrics.text import CharErrorRate, WordErrorRate

        return WordErrorRate() if self.unit == "token" else CharErrorRate()

    @classmethod
    def build(cls, transcripts: Iterable[str], unit: str = "char", keep_spaces: bool = False,
              min_count: int = 1) -> "Vocabulary":
        """Collect the units of ``transcripts`` seen at least ``min_count`` times (most frequent first)."""
        probe = cls([], unit, keep_spaces)
        counts = Counter(t for text in transcripts for t in probe.split(text))
        tokens = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        if not tokens:
            raise ValueError(f"no {unit} units with at least {min_count} occurrences in the transcripts")
        return cls(tokens, unit, keep_spaces)

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "keep_spaces": self.keep_spaces, "blank": BLANK, "unk": UNK,
                "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "Vocabulary":
        try:
            return cls(list(d["tokens"]), d.get("unit", "char"), bool(d.get("keep_spaces", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: not a vocabulary ({e})") from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file {path} not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
        return cls.from_dict(d, str(path))


class ASRDataset(Dataset):
    """Utterances as ``{"utt_id", "waveform" (S,) float32, "targets" (L,) long, "transcript"}``."""

    def __init__(self, utterances: Sequence[Utterance], root: str | os.PathLike, vocabulary: Vocabulary,
                 sample_rate: int = 16000):
        self.utterances = list(utterances)
        self.root = Path(root)
        self.vocabulary = vocabulary
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from lightning_emo.data.media import load_audio

        u = self.utterances[i]
        waveform = load_audio(self.root / u.path, sample_rate=self.sample_rate)
        return {"utt_id": u.utt_id, "waveform": waveform,
                "targets": torch.tensor(self.vocabulary.encode(u.transcript), dtype=torch.long),
                "transcript": self.vocabulary.reference(u.transcript)}


def collate_asr(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of :class:`ASRDataset` items into a batch.

    Returns ``{"utt_id": list[str], "waveform": (B, S) float32 (zero-padded), "waveform_lengths":
    (B,) long, "targets": (B, L) long (padded with the blank, 0), "target_lengths": (B,) long,
    "transcript": list[str]}``.
    """
    wave_lengths = torch.tensor([it["waveform"].shape[0] for it in items], dtype=torch.long)
    target_lengths = torch.tensor([it["targets"].shape[0] for it in items], dtype=torch.long)
    waves = torch.zeros(len(items), int(wave_lengths.max()), dtype=torch.float32)
    targets = torch.zeros(len(items), max(int(target_lengths.max()), 1), dtype=torch.long)
    for b, it in enumerate(items):
        waves[b, : it["waveform"].shape[0]] = it["waveform"]
        targets[b, : it["targets"].shape[0]] = it["targets"]
    return {"utt_id": [it["utt_id"] for it in items], "waveform": waves, "waveform_lengths": wave_lengths,
            "targets": targets, "target_lengths": target_lengths, "transcript": [it["transcript"] for it in items]}


class ASRDataModule(pl.LightningDataModule):
    """Batches of utterances for CTC training of the speech DNN.

    The vocabulary is built from the training transcripts in :meth:`setup` (or read from
    ``vocabulary``) and exposed as :attr:`vocabulary`; :class:`SpeechDNNPretraining` takes it
    from here, and stores it in its checkpoint.

    Args:
        manifest: an ASR manifest CSV; with ``corpus="aishell"`` the AISHELL-1 root.
        corpus: the adapter in :data:`ASR_CORPORA` (``csv`` or ``aishell``).
        root: the corpus root for a CSV manifest (default: its sidecar's, else its folder).
        unit: ``char`` or ``token`` (see :class:`Vocabulary`).
        keep_spaces: with ``char``, keep word boundaries as a unit.
        vocabulary: a vocabulary JSON to use instead of building one (fine-tuning, evaluation).
        min_token_count: units seen fewer times in training become ``<unk>``.
        sample_rate: the rate audio is decoded at (the speech DNN's front-end rate).
        batch_size: utterances per batch (per device).
        num_workers: DataLoader workers.
        val_fraction: share of speakers (or utterances) sent to ``val`` where ``split`` is empty.
        seed: seed of that assignment.
        max_utterances: use at most this many training utterances (quick runs), chosen by seed.
    """

    def __init__(
        self,
        manifest: str,
        corpus: str = "csv",
        root: str | None = None,
        unit: str = "char",
        keep_spaces: bool = False,
        vocabulary: str | None = None,
        min_token_count: int = 1,
        sample_rate: int = 16000,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        max_utterances: int | None = None,
    ):
        super().__init__()
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if corpus not in ASR_CORPORA:
            raise ValueError(f"unknown ASR corpus {corpus!r}; known: {', '.join(ASR_CORPORA.names())}")
        self.save_hyperparameters()
        self.manifest_path = manifest
        self.corpus = corpus
        self.root = root
        self.unit = unit
        self.keep_spaces = keep_spaces
        self.vocabulary_path = vocabulary
        self.min_token_count = min_token_count
        self.sample_rate = sample_rate
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.max_utterances = max_utterances
        self.manifest: ASRManifest | None = None
        self.vocabulary: Vocabulary | None = None

    def load_manifest(self) -> ASRManifest:
        """Read (and split) the manifest; no audio is decoded."""
        if self.corpus == "csv":
            manifest = read_asr_manifest(self.manifest_path, root=self.root)
        else:
            manifest = ASR_CORPORA.get(self.corpus)(self.root or self.manifest_path)
        return assign_asr_splits(manifest, self.val_fraction, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is None:
            self.manifest = self.load_manifest()
            log.info(self.manifest.summary())
        train = self.manifest.split("train")
        if self.vocabulary is None:
            if self.vocabulary_path:
                self.vocabulary = Vocabulary.load(self.vocabulary_path)
            else:
                if not train:
                    raise ASRManifestError(self.manifest.source, "no utterance in the train split to build the "
                                           "vocabulary from (give vocabulary=FILE.json)", field="split")
                self.vocabulary = Vocabulary.build((u.transcript for u in train), self.unit, self.keep_spaces,
                                                   self.min_token_count)
        if stage in (None, "fit") and not train:
            raise ASRManifestError(self.manifest.source, "no utterance in the train split", field="split")

    def _subset(self, split: str) -> list[Utterance]:
        assert self.manifest is not None, "call setup() first"
        utts = self.manifest.split(split)
        if split == "train" and self.max_utterances is not None and len(utts) > self.max_utterances:
            utts = random.Random(self.seed).sample(utts, self.max_utterances)
        return utts

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        assert self.manifest is not None and self.vocabulary is not None, "call setup() first"
        ds = ASRDataset(self._subset(split), self.manifest.root, self.vocabulary, self.sample_rate)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_asr, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # No val utterances (val_fraction=0 and no split column): Lightning skips validation.
        return self._loader("val", shuffle=False) if self._subset("val") else []

    def test_dataloader(self) -> DataLoader:
        if not self._subset("test"):
            raise ASRManifestError(self.manifest.source, "no utterance in the test split", field="split")
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        split = "test" if self._subset("test") else "val"
        return self._loader(split, shuffle=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m lightning_emo.pretrain.asr_data``: a corpus -> a validated ASR manifest."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_emo.pretrain.asr_data",
        description="Read an ASR corpus (AISHELL-1, or a CSV to validate), fill empty splits, write an ASR manifest.")
    parser.add_argument("--corpus", default="aishell", choices=ASR_CORPORA.names())
    parser.add_argument("--root", required=True, help="the corpus root (for csv: the CSV file itself)")
    parser.add_argument("--out", required=True, help="the ASR manifest CSV to write (a .json sidecar goes beside it)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out CSV and its sidecar")
    args = parser.parse_args(argv)
    try:
        check_outputs([args.out, sidecar_path(args.out)], args.overwrite)
    except OutputExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        manifest = assign_asr_splits(ASR_CORPORA.get(args.corpus)(args.root), args.val_fraction, args.seed)
        out = manifest.write(args.out)
        notes = manifest.notes
        manifest = read_asr_manifest(out)
        manifest.notes = notes
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(manifest.summary())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
