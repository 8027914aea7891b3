"""The manifest: the one table every corpus becomes before anything downstream reads it.

A manifest is a CSV with the header ``clip_id,path,label,split,speaker`` and optional
``start,end`` columns (seconds) and an optional ``group`` column: a recording group coarser
than the speaker (IEMOCAP's session, a podcast episode) that fold schemes such as
leave-one-group-out use; ``session`` is read as its synonym. ``path`` is relative to the corpus root. The class list
(names, in order) and the corpus root travel beside it in a sidecar JSON file with the same
stem (``manifest.csv`` -> ``manifest.json``).

Every reader goes through :func:`read_manifest`, which validates and raises
:class:`ManifestError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from lightning_emo.utils import LocatedError, atomic_write_text, not_a_file

REQUIRED_COLUMNS = ("clip_id", "path", "label", "split", "speaker")
OPTIONAL_COLUMNS = ("start", "end", "group")
GROUP_ALIASES = ("group", "session")  # the CSV may call the group column either name
SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.7, 0.1, 0.2)  # the paper's 7:1:2


class ManifestError(LocatedError):
    """A manifest that cannot be used; the message names the file, line and field."""

    kind = "field"

    def __init__(self, file: str | os.PathLike, message: str, line: int | None = None, field: str | None = None):
        super().__init__(file, message, line, field)
        self.field = field


@dataclass(frozen=True)
class Clip:
    """One row of a manifest.

    ``start``/``end`` cut the media file (seconds), ``None`` = whole file. ``group`` is the
    recording group above the speaker (IEMOCAP's ``Session1``..``Session5``; ``""`` = none):
    clips of one group are kept on one side of a split when splits are dealt by group.
    """

    clip_id: str
    path: str
    label: str
    split: str = ""
    speaker: str = ""
    start: float | None = None
    end: float | None = None
    group: str = ""


@dataclass
class Manifest:
    """Clips, the ordered class list and the corpus root that clip paths are relative to."""

    clips: list[Clip]
    classes: list[str]
    root: Path
    corpus: str = "custom"
    source: str = "<memory>"
    notes: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # clip_id -> CSV line

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter(self.clips)

    def media_path(self, clip: Clip) -> Path:
        return self.root / clip.path

    def label_index(self, label: str) -> int:
        return self.classes.index(label)

    def split(self, name: str | Sequence[str]) -> list[Clip]:
        names = (name,) if isinstance(name, str) else tuple(name)
        return [c for c in self.clips if c.split in names]

    def by_id(self) -> dict[str, Clip]:
        return {c.clip_id: c for c in self.clips}

    @property
    def has_groups(self) -> bool:
        """Whether every clip names its group (the ``group``/``session`` column is filled)."""
        return bool(self.clips) and all(c.group for c in self.clips)

    @property
    def has_splits(self) -> bool:
        return all(c.split for c in self.clips)

    def summary(self) -> str:
        """A human-readable account of what was read: counts per split and class, speakers."""
        lines = [f"manifest {self.source}: {len(self.clips)} clips, {len(self.classes)} classes, "
                 f"root {self.root} (corpus: {self.corpus})"]
        splits = sorted({c.split or "(none)" for c in self.clips}, key=lambda s: (SPLITS + ("(none)",)).index(s))
        width = max(len(c) for c in self.classes)
        header = "  " + "class".ljust(width) + "".join(f"{s:>8}" for s in splits) + f"{'total':>8}"
        lines.append(header)
        counts = Counter((c.label, c.split or "(none)") for c in self.clips)
        for label in self.classes:
            row = [counts[(label, s)] for s in splits]
            lines.append("  " + label.ljust(width) + "".join(f"{n:>8}" for n in row) + f"{sum(row):>8}")
        totals = [sum(counts[(lab, s)] for lab in self.classes) for s in splits]
        lines.append("  " + "total".ljust(width) + "".join(f"{n:>8}" for n in totals) + f"{sum(totals):>8}")
        speakers, groups = defaultdict(set), defaultdict(set)
        for c in self.clips:
            speakers[c.split or "(none)"].add(c.speaker)
            groups[c.split or "(none)"].add(c.group)
        lines.append("  speakers: " + ", ".join(f"{s}={len(speakers[s] - {''})}" for s in splits))
        if any(c.group for c in self.clips):
            lines.append("  groups: " + ", ".join(f"{s}={len(groups[s] - {''})}" for s in splits))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def with_clips(self, clips: list[Clip]) -> "Manifest":
        return replace(self, clips=list(clips))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the CSV and its sidecar JSON atomically; returns the CSV path."""
        path = Path(path)
        has_times = any(c.start is not None or c.end is not None for c in self.clips)
        has_group = any(c.group for c in self.clips)
        columns = list(REQUIRED_COLUMNS) + (["group"] if has_group else []) + (["start", "end"] if has_times else [])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for c in self.clips:
            row = [c.clip_id, c.path, c.label, c.split, c.speaker]
            if has_group:
                row.append(c.group)
            if has_times:
                row += ["" if c.start is None else f"{c.start:g}", "" if c.end is None else f"{c.end:g}"]
            writer.writerow(row)
        root = os.path.relpath(self.root.resolve(), path.parent.resolve())
        meta = {"classes": self.classes, "root": root, "corpus": self.corpus}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2) + "\n")
        atomic_write_text(path, buf.getvalue())
        return path


def sidecar_path(csv_path: str | os.PathLike) -> Path:
    return Path(csv_path).with_suffix(".json")


def _parse_time(value: str, file: Path, line: int, name: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        t = float(value)
    except ValueError:
        raise ManifestError(file, f"expected a number of seconds, got {value!r}", line, name) from None
    if not math.isfinite(t) or t < 0:
        raise ManifestError(file, f"expected a finite, non-negative number of seconds, got {value!r}", line, name)
    return t


def _check_header(file: Path, header: list[str]) -> None:
    """Refuse a header naming a column twice: the second copy would silently win for every row."""
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name in seen:
            raise ManifestError(file, f"column named twice in the header (columns {seen[name]} and {i} of "
                                f"{','.join(header)}): remove one of them", 1, name)
        seen[name] = i


def _read_utf8(path: Path) -> str:
    """The file's text; a file in another encoding (latin-1, cp1252) is refused naming the first bad line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ManifestError(path, f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); manifests are "
                            "UTF-8: convert it, e.g. `iconv -f latin1 -t utf-8 IN.csv > OUT.csv`", line) from None


def _check_classes(classes: Sequence[str], file: Path) -> list[str]:
    """The class list as distinct, non-empty names; a duplicate would make two label indices one name."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ManifestError(file, f"classes must be a list of class names, got {classes!r}", None, "classes")
    names = [str(c).strip() if isinstance(c, str) else c for c in classes]
    for c in names:
        if not isinstance(c, str) or not c:
            raise ManifestError(file, f"every class must be a non-empty name, got {c!r} in {list(classes)}",
                                None, "classes")
    dupes = sorted(c for c, n in Counter(names).items() if n > 1)
    if dupes:
        raise ManifestError(file, f"duplicate class name(s) {', '.join(map(repr, dupes))} in {names}: each class "
                            "must be listed once", None, "classes")
    return names


def _check_inside_root(file: Path, line: int, clip_path: str) -> None:
    """Refuse a media path that leaves the corpus root (absolute, or climbing out with ``..``).

    The check is on the text of the manifest: symbolic links inside the root are the corpus
    owner's own arrangement (media kept on another disk) and are followed.
    """
    p = clip_path.replace("\\", "/")
    if os.path.isabs(clip_path) or p.startswith("/") or (len(p) > 2 and p[0].isalpha() and p[1:3] == ":/"):
        raise ManifestError(file, f"absolute media path {clip_path!r}: paths must be relative to the corpus root "
                            "(see the sidecar's 'root' or --root)", line, "path")
    depth = 0
    for part in p.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ManifestError(file, f"media path {clip_path!r} leaves the corpus root: paths must stay "
                                    "inside it (move the root up with --root or the sidecar's 'root')", line, "path")
        elif part not in ("", "."):
            depth += 1


def read_manifest(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    check_files: bool = True,
) -> Manifest:
    """Read and validate a manifest CSV.

    Args:
        path: the CSV file.
        root: the corpus root clip paths are relative to; default: the sidecar's ``root``, else
            the CSV's folder.
        classes: the ordered class list; default: the sidecar's, else the sorted labels found
            (with a note in the summary).
        check_files: check that every media file exists.

    Raises:
        ManifestError: naming the file, line and field of the first problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, not_a_file(path, "manifest file", "manifest.csv"))
    meta: dict = {}
    if sidecar_path(path).is_file():
        try:
            meta = json.loads(_read_utf8(sidecar_path(path)))
        except json.JSONDecodeError as e:
            raise ManifestError(sidecar_path(path), f"not valid JSON ({e})", e.lineno) from None
    notes: list[str] = []
    if root is None:
        # the sidecar's root is relative to the manifest's resolved folder (Manifest.write): joined back the
        # same way and normalised, so that messages show /data/mine, not data/mine/../../../data/mine
        root = Path(os.path.normpath(path.parent.resolve() / meta["root"])) if "root" in meta else path.parent
    root = Path(root)

    with io.StringIO(_read_utf8(path), newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ManifestError(path, "empty manifest: no header and no clips (expected header "
                                f"{','.join(REQUIRED_COLUMNS)})", 1) from None
        header = [h.strip() for h in header]
        _check_header(path, header)
        for col in REQUIRED_COLUMNS:
            if col not in header:
                # a whole header in one column: the file is separated by something else than commas
                sep = next((s for s in (";", "\t", "|") if len(header) == 1 and s in header[0]), None)
                hint = f"; the columns are separated by {sep!r}: a manifest is comma-separated" if sep else ""
                raise ManifestError(path, f"missing column (header is {','.join(header)}; expected "
                                    f"{','.join(REQUIRED_COLUMNS)}[,group][,start,end]){hint}", 1, col)
        group_columns = [h for h in header if h in GROUP_ALIASES]
        if len(group_columns) > 1:
            raise ManifestError(path, f"both {' and '.join(group_columns)} columns: they name the same thing "
                                "(the recording group); keep one", 1, group_columns[-1])
        group_column = group_columns[0] if group_columns else None
        unknown = [h for h in header if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS + GROUP_ALIASES]
        if unknown:
            notes.append(f"ignored extra columns: {', '.join(unknown)}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) != len(header):
                raise ManifestError(path, f"expected {len(header)} fields, found {len(row)}", line_no)
            rows.append((line_no, dict(zip(header, (v.strip() for v in row)))))
    if not rows:
        raise ManifestError(path, "empty manifest: a header but no clips", 2)

    if classes is None:
        classes = meta.get("classes")
    if classes is None:
        classes = sorted({r["label"] for _, r in rows})
        notes.append("no class list given: using the sorted labels found")
    classes = _check_classes(classes, sidecar_path(path) if meta.get("classes") is classes else path)
    class_set = set(classes)

    clips, seen = [], {}
    for line_no, r in rows:
        if not r["clip_id"]:
            raise ManifestError(path, "empty clip_id", line_no, "clip_id")
        if r["clip_id"] in seen:
            raise ManifestError(path, f"duplicate clip_id {r['clip_id']!r} (first on line {seen[r['clip_id']]})",
                                line_no, "clip_id")
        seen[r["clip_id"]] = line_no
        if not r["path"]:
            raise ManifestError(path, "empty path", line_no, "path")
        _check_inside_root(path, line_no, r["path"])
        if check_files and not (root / r["path"]).is_file():
            raise ManifestError(path, f"media file not found: {root / r['path']}", line_no, "path")
        if r["label"] not in class_set:
            raise ManifestError(path, f"unknown label {r['label']!r} (expected one of: {', '.join(classes)})",
                                line_no, "label")
        if r["split"] not in SPLITS + ("",):
            raise ManifestError(path, f"bad split name {r['split']!r} (expected train, val, test or empty)",
                                line_no, "split")
        start = _parse_time(r.get("start", ""), path, line_no, "start")
        end = _parse_time(r.get("end", ""), path, line_no, "end")
        if start is not None and end is not None and start >= end:
            raise ManifestError(path, f"start ({start:g}) must be before end ({end:g})", line_no, "start")
        group = r[group_column] if group_column else ""
        clips.append(Clip(r["clip_id"], r["path"], r["label"], r["split"], r["speaker"], start, end, group))

    splits_given = {bool(c.split) for c in clips}
    if splits_given == {True, False}:
        notes.append("split column is filled for some clips only: the empty ones stay unassigned")
    return Manifest(clips, classes, root, corpus=meta.get("corpus", "custom"), source=str(path), notes=notes,
                    lines=seen)


def assign_splits(
    manifest: Manifest,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    overwrite: bool = False,
    by: str = "speaker",
) -> Manifest:
    """Fill empty ``split`` fields: deterministic, seeded and speaker-independent.

    Speakers are dealt to train/val/test so that each split's share of clips approaches
    ``ratios`` for every class (stratified where possible); no speaker lands in two splits. A
    clip with no speaker but a ``group`` is dealt with its group. When some clip has neither,
    clips are split directly, stratified by label, and a note says so.

    Args:
        by: ``"speaker"`` deals speakers (above); ``"group"`` deals whole groups (IEMOCAP's
            sessions), joined with every speaker they share, so that no group and no speaker
            lands in two splits (a clip without a group is dealt with its speaker).
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers (train, val, test), got {ratios}")
    if by not in ("speaker", "group"):
        raise ValueError(f"by must be 'speaker' or 'group', got {by!r}")
    ratios = [r / sum(ratios) for r in ratios]
    todo = [c for c in manifest.clips if overwrite or not c.split]
    if not todo:
        return manifest
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    notes = list(manifest.notes)
    unit_of = _split_units(todo, by)
    if all(unit_of[c.clip_id] for c in todo):
        groups: dict[tuple[str, str], list[Clip]] = defaultdict(list)
        for c in todo:
            groups[unit_of[c.clip_id]].append(c)
        speakers = sorted(groups)
        n_units = len(speakers)
        kinds = sorted({k for k, _ in speakers})
        rng.shuffle(speakers)
        # Largest speakers first so the small ones can fine-tune the proportions.
        speakers.sort(key=lambda s: -len(groups[s]))
        classes = manifest.classes
        target = Counter(c.label for c in todo)
        have = {s: Counter() for s in SPLITS}
        n_split = Counter()
        total = len(todo)
        # Every split with a non-zero ratio gets at least one speaker (when there are enough):
        # seed the small splits first with the smallest speakers, then deal the rest.
        wanted = [s for s, r in sorted(zip(SPLITS, ratios), key=lambda sr: sr[1]) if r > 0]
        if len(speakers) >= len(wanted):
            for split, spk in zip(wanted, reversed(speakers)):
                have[split].update(Counter(c.label for c in groups[spk]))
                n_split[split] += len(groups[spk])
                for c in groups[spk]:
                    assignment[c.clip_id] = split
            speakers = [s for s in speakers if groups[s][0].clip_id not in assignment]
        for spk in speakers:
            counts = Counter(c.label for c in groups[spk])

            def deficit(split: str) -> float:
                i = SPLITS.index(split)
                if ratios[i] == 0:
                    return -math.inf
                per_class = sum((ratios[i] * target[k] - have[split][k]) * counts[k] / max(target[k], 1)
                                for k in classes)
                overall = (ratios[i] * total - n_split[split]) / total
                return per_class + overall

            best = max(SPLITS, key=deficit)
            have[best].update(counts)
            n_split[best] += len(groups[spk])
            for c in groups[spk]:
                assignment[c.clip_id] = best
        what = " and ".join({"speaker": "speaker", "group": "group"}[k] + "s" for k in kinds)
        notes.append(f"assigned {'group' if by == 'group' else 'speaker'}-independent splits (seed {seed}, ratios "
                     f"{'/'.join(f'{r:.2f}' for r in ratios)}) over {n_units} {what}")
    else:
        missing = sum(1 for c in todo if not unit_of[c.clip_id])
        notes.append(f"{missing} clips have no speaker (and no group): splits are stratified by label over clips, "
                     "NOT speaker-independent")
        by_label: dict[str, list[Clip]] = defaultdict(list)
        for c in todo:
            by_label[c.label].append(c)
        # Rounding each class on its own gives small classes no validation clips at all (5 clips
        # x 0.1 rounds to 0 in every class): round the running totals instead, so the corpus gets
        # its share of val/test clips while each class still gets its share (within one clip) and
        # keeps at least one training clip.
        labels = sorted(by_label)
        rng.shuffle(labels)
        seen, dealt = 0, {"val": 0, "test": 0}
        for label in labels:
            group = sorted(by_label[label], key=lambda c: c.clip_id)
            rng.shuffle(group)
            n = len(group)
            seen += n
            n_val = min(max(math.floor(ratios[1] * seen + 0.5) - dealt["val"], 0), n - 1)
            n_test = min(max(math.floor(ratios[2] * seen + 0.5) - dealt["test"], 0), n - 1 - n_val)
            dealt["val"] += n_val
            dealt["test"] += n_test
            for i, c in enumerate(group):
                assignment[c.clip_id] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    clips = [replace(c, split=assignment[c.clip_id]) if c.clip_id in assignment else c for c in manifest.clips]
    return replace(manifest, clips=clips, notes=notes)


def _split_units(clips: list[Clip], by: str) -> dict[str, tuple[str, str] | None]:
    """The unit each clip is dealt with: ``(kind, name)``, or ``None`` when it has no speaker/group.

    By speaker the unit is the speaker (the group for a clip without one). By group, groups and
    speakers that share a clip are joined (union-find) and each connected set is one unit, named
    by its first group, so neither a group nor a speaker can straddle two splits.
    """
    if by == "speaker":
        return {c.clip_id: ("speaker", c.speaker) if c.speaker else ("group", c.group) if c.group else None
                for c in clips}
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c in clips:
        nodes = [("group", c.group)] if c.group else []
        nodes += [("speaker", c.speaker)] if c.speaker else []
        for n in nodes:
            find(n)
        if len(nodes) == 2:
            a, b = find(nodes[0]), find(nodes[1])
            if a != b:
                parent[max(a, b)] = min(a, b)  # groups sort before speakers: a set is named by a group
    return {c.clip_id: find(("group", c.group) if c.group else ("speaker", c.speaker)) if (c.group or c.speaker)
            else None for c in clips}


def check_speaker_independent(clips: Iterable[Clip]) -> dict[str, set[str]]:
    """Return the speakers found in more than one split (empty when the split is clean)."""
    where: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        if c.speaker and c.split:
            where[c.speaker].add(c.split)
    return {s: v for s, v in where.items() if len(v) > 1}


def check_group_independent(clips: Iterable[Clip]) -> dict[str, set[str]]:
    """Return the groups found in more than one split (empty when the split is clean)."""
    where: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        if c.group and c.split:
            where[c.group].add(c.split)
    return {g: v for g, v in where.items() if len(v) > 1}
