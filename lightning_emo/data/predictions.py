"""The ``predictions.csv`` exchange format between training (``predict``) and decision-level fusion.

A predictions file is a CSV with the header ``clip_id,split,label`` followed by one column per
class name, in the class order, holding the model's posterior probabilities (each row sums to
1). ``label`` is the reference label name, or empty when unknown. A clip the model could not
see (no face found, no audio track) has *all* its probability fields empty; it is read back as
a row of NaN, so "missing" travels with the array and is never silently zero-filled.

Every reader goes through :func:`read_predictions`, which validates and raises
:class:`PredictionsError` naming the file, the line and the column at fault.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lightning_emo.utils import LocatedError, atomic_write_text, not_a_file

KEY_COLUMNS = ("clip_id", "split", "label")
SUM_TOLERANCE = 1e-3  # rows must sum to 1 within this (values are written with 8 significant digits)


class PredictionsError(LocatedError):
    """A predictions file that cannot be used; the message names the file, line and column."""

    kind = "column"

    def __init__(self, file: str | os.PathLike, message: str, line: int | None = None, column: str | None = None):
        super().__init__(file, message, line, column)
        self.column = column


@dataclass(eq=False)
class Predictions:
    """Posteriors of one model over a set of clips.

    Attributes:
        clip_ids: ``N`` clip ids (unique).
        splits: ``N`` split names (``train``/``val``/``test`` or empty).
        labels: ``N`` reference label names, ``""`` where unknown.
        probs: ``(N, C)`` float64 posteriors; a row of NaN = the model did not see that clip.
        classes: the ``C`` class names, in column order.
        source: where the predictions came from (a file path, or ``<memory>``).
        lines: the line of each row in ``source`` (set by :func:`read_predictions`), for messages.
    """

    clip_ids: list[str]
    splits: list[str]
    labels: list[str]
    probs: np.ndarray
    classes: list[str]
    source: str = "<memory>"
    lines: list[int] | None = None
    _index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float64)
        n = len(self.clip_ids)
        if (self.probs.shape != (n, len(self.classes)) or len(self.splits) != n or len(self.labels) != n
                or (self.lines is not None and len(self.lines) != n)):
            raise ValueError(f"{self.source}: inconsistent sizes: {n} clip ids, {len(self.splits)} splits, "
                             f"{len(self.labels)} labels, probs {self.probs.shape}, {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def index(self) -> dict[str, int]:
        """``clip_id -> row``."""
        if self._index is None:
            self._index = {c: i for i, c in enumerate(self.clip_ids)}
        return self._index

    @property
    def y(self) -> np.ndarray:
        """``(N,)`` int64 label indices into :attr:`classes`; ``-1`` where the label is unknown."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup.get(lab, -1) for lab in self.labels], dtype=np.int64)

    @property
    def missing(self) -> np.ndarray:
        """``(N,)`` bool: True where the model did not see the clip (NaN row)."""
        return np.isnan(self.probs).all(axis=1)

    @property
    def predicted(self) -> np.ndarray:
        """``(N,)`` int64 argmax class per clip; ``-1`` where the model did not see the clip."""
        out = np.full(len(self), -1, dtype=np.int64)
        seen = ~self.missing
        out[seen] = self.probs[seen].argmax(axis=1)
        return out

    def _take(self, rows: Sequence[int] | np.ndarray) -> "Predictions":
        rows = np.asarray(rows, dtype=np.int64)
        return Predictions([self.clip_ids[i] for i in rows], [self.splits[i] for i in rows],
                           [self.labels[i] for i in rows], self.probs[rows].copy(), list(self.classes), self.source,
                           None if self.lines is None else [self.lines[i] for i in rows])

    def split(self, name: str | Sequence[str]) -> "Predictions":
        """The rows whose split is ``name`` (or one of several names), in file order."""
        names = (name,) if isinstance(name, str) else tuple(name)
        return self._take([i for i, s in enumerate(self.splits) if s in names])

    def align(self, clip_ids: Sequence[str]) -> "Predictions":
        """The rows for ``clip_ids``, in that order.

        Raises:
            PredictionsError: naming (a few of) the clip ids this file does not hold.
        """
        absent = [c for c in clip_ids if c not in self.index]
        if absent:
            raise PredictionsError(self.source, f"{len(absent)} requested clip(s) not in this file: "
                                   f"{_few(absent)}")
        return self._take([self.index[c] for c in clip_ids])

    def with_probs(self, probs: np.ndarray, source: str | None = None) -> "Predictions":
        """A copy with other posteriors over the same clips (e.g. a fusion rule's output)."""
        if source is None:
            return Predictions(list(self.clip_ids), list(self.splits), list(self.labels), probs, list(self.classes),
                               self.source, self.lines)
        return Predictions(list(self.clip_ids), list(self.splits), list(self.labels), probs, list(self.classes), source)

    def reordered(self, classes: Sequence[str], other: str | os.PathLike = "<memory>") -> "Predictions":
        """These predictions with their columns in ``classes``' order, matched by name.

        Raises:
            ClassListError: the class sets differ (names both lists and both files).
        """
        from lightning_emo.data.checks import match_classes

        index = match_classes(self.classes, classes, self.source, other)
        if index is None:
            return self
        return Predictions(list(self.clip_ids), list(self.splits), list(self.labels), self.probs[:, index],
                           [self.classes[i] for i in index], self.source, self.lines)

    def line_of(self, clip_id: str) -> int | None:
        """The line ``clip_id`` is on in :attr:`source`, when read from a file."""
        return None if self.lines is None else self.lines[self.index[clip_id]]

    def write(self, path: str | os.PathLike) -> Path:
        """Write these predictions to ``path`` (atomic); see :func:`write_predictions`."""
        return write_predictions(path, self.clip_ids, self.splits, self.labels, self.probs, self.classes)


def _few(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(repr(x) for x in list(items)[:k])
    return shown + (f", ... ({len(items) - k} more)" if len(items) > k else "")


def _format_prob(p: float) -> str:
    return "" if math.isnan(p) else format(float(p), ".8g")


def write_predictions(
    path: str | os.PathLike,
    clip_ids: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
) -> Path:
    """Write a ``predictions.csv`` atomically.

    Args:
        path: the CSV to write (its folder is created).
        clip_ids: ``N`` unique clip ids.
        splits: ``N`` split names.
        labels: ``N`` reference label names (``""`` where unknown).
        probs: ``(N, C)`` posteriors, each row summing to 1, or a whole row of NaN for a clip the
            model did not see (written as empty fields).
        classes: the ``C`` class names (the probability column headers, in order).

    Raises:
        ValueError: on inconsistent sizes, duplicate clip ids, an unknown label, a partially
            missing row, or a row that is not a probability vector (the message names the clip).
    """
    probs = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    n = len(clip_ids)
    if probs.ndim != 2 or probs.shape != (n, len(classes)):
        raise ValueError(f"{path}: probs must have shape ({n}, {len(classes)}) = (clips, classes), got {probs.shape}")
    if len(splits) != n or len(labels) != n:
        raise ValueError(f"{path}: {n} clip ids but {len(splits)} splits and {len(labels)} labels")
    bad_names = [c for c in classes if c in KEY_COLUMNS or not c]
    if bad_names or len(set(classes)) != len(classes):
        raise ValueError(f"{path}: class names must be unique, non-empty and not one of {KEY_COLUMNS}: {classes}")
    class_set = set(classes)
    seen: set[str] = set()
    for i, (cid, lab) in enumerate(zip(clip_ids, labels)):
        if not cid:
            raise ValueError(f"{path}: empty clip id at row {i}")
        if cid in seen:
            raise ValueError(f"{path}: duplicate clip id {cid!r}")
        seen.add(cid)
        if lab and lab not in class_set:
            raise ValueError(f"{path}: clip {cid!r} has unknown label {lab!r} (classes: {', '.join(classes)})")
        row = probs[i]
        nan = np.isnan(row)
        if nan.all():
            continue
        if nan.any():
            raise ValueError(f"{path}: clip {cid!r} has a partially missing posterior {row.tolist()} "
                             "(a clip is either seen, all values, or missing, all NaN)")
        if not np.isfinite(row).all() or (row < -SUM_TOLERANCE).any() or abs(row.sum() - 1.0) > SUM_TOLERANCE:
            raise ValueError(f"{path}: clip {cid!r} posterior is not a probability vector "
                             f"(values {row.tolist()}, sum {row.sum():.6g})")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(KEY_COLUMNS) + classes)
    for cid, split, lab, row in zip(clip_ids, splits, labels, probs):
        writer.writerow([cid, split, lab] + [_format_prob(p) for p in row])
    path = Path(path)
    atomic_write_text(path, buf.getvalue())
    return path


def read_predictions(path: str | os.PathLike, classes: Sequence[str] | None = None) -> Predictions:
    """Read and validate a ``predictions.csv``.

    Args:
        path: the CSV file.
        classes: the expected class list; the file must have exactly these probability columns
            (in any order: the returned ``probs`` follow ``classes``). Default: the file's
            columns after ``clip_id,split,label``, in file order.

    Returns:
        :class:`Predictions` with ``probs`` ``(N, C)`` float64, NaN rows for missing clips.

    Raises:
        PredictionsError: naming the file, line and column of the first problem: a missing
            column, a value that is not a number, a row not summing to 1 (tolerance
            :data:`SUM_TOLERANCE`), a partially empty row, an unknown label, a duplicate clip_id.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(path, not_a_file(path, "predictions file", "predictions.csv"))
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise PredictionsError(path, "empty file: no header (expected clip_id,split,label,<class>...)", 1) from None
        for col in KEY_COLUMNS:
            if col not in header:
                raise PredictionsError(path, f"missing column (header is {','.join(header)}; expected "
                                       "clip_id,split,label then one column per class)", 1, col)
        file_classes = [h for h in header if h not in KEY_COLUMNS]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise PredictionsError(path, "duplicate column in header", 1, dup[0])
        if classes is None:
            classes = file_classes
        classes = [str(c) for c in classes]
        if not classes:
            raise PredictionsError(path, "no class columns after clip_id,split,label", 1)
        for c in classes:
            if c not in header:
                raise PredictionsError(path, f"missing class column (expected classes {', '.join(classes)})", 1, c)
        extra = [h for h in file_classes if h not in classes]
        if extra:
            raise PredictionsError(path, f"unexpected column (expected classes {', '.join(classes)})", 1, extra[0])
        col = {h: i for i, h in enumerate(header)}
        class_cols = [col[c] for c in classes]
        class_set = set(classes)
        clip_ids: list[str] = []
        lines: list[int] = []
        splits: list[str] = []
        labels: list[str] = []
        rows: list[list[float]] = []
        first_line: dict[str, int] = {}
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) != len(header):
                raise PredictionsError(path, f"expected {len(header)} fields, found {len(row)}", line_no)
            row = [v.strip() for v in row]
            cid, split, lab = row[col["clip_id"]], row[col["split"]], row[col["label"]]
            if not cid:
                raise PredictionsError(path, "empty clip_id", line_no, "clip_id")
            if cid in first_line:
                raise PredictionsError(path, f"duplicate clip_id {cid!r} (first on line {first_line[cid]})",
                                       line_no, "clip_id")
            first_line[cid] = line_no
            if lab and lab not in class_set:
                raise PredictionsError(path, f"unknown label {lab!r} (expected one of: {', '.join(classes)} "
                                       "or empty)", line_no, "label")
            values = [row[j] for j in class_cols]
            empty = [v == "" for v in values]
            if all(empty):
                rows.append([math.nan] * len(classes))
            else:
                if any(empty):
                    c = classes[empty.index(True)]
                    raise PredictionsError(path, "partially empty posterior: leave all probability fields "
                                           "empty for a clip the model did not see, or fill them all",
                                           line_no, c)
                probs = []
                for c, v in zip(classes, values):
                    try:
                        p = float(v)
                    except ValueError:
                        raise PredictionsError(path, f"expected a probability, got {v!r}", line_no, c) from None
                    if not math.isfinite(p) or p < -SUM_TOLERANCE or p > 1 + SUM_TOLERANCE:
                        raise PredictionsError(path, f"expected a probability in [0, 1], got {v!r}", line_no, c)
                    probs.append(p)
                total = math.fsum(probs)
                if abs(total - 1.0) > SUM_TOLERANCE:
                    raise PredictionsError(path, f"probabilities sum to {total:.6g}, not 1 (tolerance "
                                           f"{SUM_TOLERANCE:g})", line_no, classes[0])
                rows.append(probs)
            clip_ids.append(cid)
            lines.append(line_no)
            splits.append(split)
            labels.append(lab)
    if not clip_ids:
        raise PredictionsError(path, "a header but no rows", 2)
    return Predictions(clip_ids, splits, labels, np.asarray(rows, dtype=np.float64).reshape(len(rows), len(classes)),
                       classes, source=str(path), lines=lines)


def check_compatible(predictions: Sequence[Predictions], split: str | Sequence[str] | None = None) -> None:
    """Check that several predictions can be fused: same class list, same clips (per split).

    Args:
        predictions: two or more :class:`Predictions` (the first is the reference).
        split: compare only the clips of this split (or splits); default all clips.

    Raises:
        PredictionsError: naming the file whose classes differ, or which clips are in one file and
            not the other (a few ids of each), or whose labels/splits disagree for a clip.
    """
    if len(predictions) < 2:
        return
    ref = predictions[0]
    ref_view = ref if split is None else ref.split(split)
    for other in predictions[1:]:
        if list(other.classes) != list(ref.classes):  # reorder first with Predictions.reordered
            from lightning_emo.data.checks import match_classes

            match_classes(other.classes, ref.classes, other.source, ref.source, reorder=False, error=PredictionsError)
        view = other if split is None else other.split(split)
        a, b = set(ref_view.clip_ids), set(view.clip_ids)
        if a != b:
            only_ref = [c for c in ref_view.clip_ids if c not in b]
            only_other = [c for c in view.clip_ids if c not in a]
            where = "" if split is None else f" in split {split!r}"
            parts = []
            if only_ref:
                parts.append(f"{len(only_ref)} clip(s) only in {ref.source}: {_few(only_ref)}")
            if only_other:
                parts.append(f"{len(only_other)} clip(s) only in this file: {_few(only_other)}")
            raise PredictionsError(other.source, f"clip set{where} differs from {ref.source}: " + "; ".join(parts))
        for cid, s, lab in zip(view.clip_ids, view.splits, view.labels):
            j = ref.index[cid]
            if ref.splits[j] != s:
                raise PredictionsError(other.source, f"clip {cid!r} is in split {s!r} here but {ref.splits[j]!r} "
                                       f"in {ref.source}", other.line_of(cid), "split")
            if lab and ref.labels[j] and ref.labels[j] != lab:
                raise PredictionsError(other.source, f"clip {cid!r} is labelled {lab!r} here but "
                                       f"{ref.labels[j]!r} in {ref.source}", other.line_of(cid), "label")
