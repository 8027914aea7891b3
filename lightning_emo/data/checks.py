"""Checks that data can be used as asked: class lists matched by name, splits fit for a use.

Two mechanisms every command shares:

* :func:`match_classes`: wherever a class list crosses a file boundary (checkpoint, manifest,
  feature store, ``predictions.csv``, Hub ``config.json``, zoo entry, fusion rule), the two
  lists are compared **by name**. Equal lists pass; the same set in another order gives the
  permutation that reorders the producer's columns into the consumer's order (when the consumer
  can reorder), else :class:`ClassListError` names both lists and both files.
* :func:`check_splits`: before any work, a corpus's splits are checked for what they are about
  to be used for (``train``, ``evaluate``, ``prior``, ``lr_fusion``, ``reproduce``): a use that
  cannot give a meaningful result is refused with :class:`CorpusError` (what, where, how to
  fix); one that can but is weak (one speaker, no speakers, a missing test split) returns
  warnings, which the caller logs loudly.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

from lightning_emo.utils import LocatedError, log

USES = ("prepare", "train", "validate", "evaluate", "prior", "lr_fusion", "reproduce")
# the Lightning stage -> the use its data must serve (predict scores nothing: any clips do)
STAGE_USES = {"fit": "train", "validate": "validate", "test": "evaluate"}


class ClassListError(LocatedError):
    """Two class lists that cannot be matched by name; the message names both lists and both files."""

    kind = "field"


class CorpusError(LocatedError):
    """A corpus whose splits cannot serve the asked use; the message says what to do."""

    kind = "split"


def _show(classes: Sequence[str]) -> str:
    return "[" + ", ".join(map(str, classes)) + "]"


def match_classes(
    have: Sequence[str],
    want: Sequence[str],
    have_from: str | os.PathLike,
    want_from: str | os.PathLike,
    *,
    reorder: bool = True,
    what: str = "",
    error: type[LocatedError] = ClassListError,
) -> list[int] | None:
    """Match the class list ``have`` (a producer's: a checkpoint's outputs, a file's columns) to ``want``.

    Args:
        have: the producer's class names, in its column order.
        want: the consumer's class names, in the order it indexes them.
        have_from, want_from: where each list comes from (file paths; named in the error).
        reorder: whether the consumer can reorder the producer's columns; when False, the same
            set in another order is refused too.
        what: a few words on what is being matched, for the message (e.g. ``"predict"``).
        error: the error class raised (a :class:`LocatedError` taking ``(file, message)``).

    Returns:
        ``None`` when the lists are equal; else ``idx`` (length ``len(want)``) with
        ``have[idx[j]] == want[j]``: ``values[..., idx]`` puts ``have``-ordered columns in ``want``'s order.

    Raises:
        ClassListError: the sets differ (names missing on either side, duplicates), or the order
            differs and ``reorder`` is False.
    """
    have, want = [str(c) for c in have], [str(c) for c in want]
    if have == want:
        return None
    context = f"{what}: " if what else ""
    for names, src in ((have, have_from), (want, want_from)):
        dupes = sorted(c for c, n in Counter(names).items() if n > 1)
        if dupes:
            raise error(src, f"{context}duplicate class name(s) {', '.join(map(repr, dupes))} in "
                                 f"{_show(names)}: class names must be unique")
    both = f"{have_from} has {_show(have)}, {want_from} has {_show(want)}"
    if set(have) != set(want):
        only_have = [c for c in have if c not in set(want)]
        only_want = [c for c in want if c not in set(have)]
        parts = []
        if only_have:
            parts.append(f"only in {have_from}: {', '.join(only_have)}")
        if only_want:
            parts.append(f"only in {want_from}: {', '.join(only_want)}")
        raise error(have_from, f"{context}the class lists differ ({'; '.join(parts)}): {both}. Use files "
                             "made for the same classes (the manifest's sidecar lists them), or retrain")
    if not reorder:
        raise error(have_from, f"{context}the same class list in another order: {both}; the class order "
                             "must be the same here (rewrite one file with the other's order, or retrain)")
    position = {c: i for i, c in enumerate(have)}
    return [position[c] for c in want]


# --------------------------------------------------------------------------- splits


def _records(clips: Iterable[Any]) -> list[tuple[str, str, str]]:
    """``(split, label, speaker)`` of clip-like objects (manifest ``Clip``s or plain tuples)."""
    out = []
    for c in clips:
        if isinstance(c, tuple):
            out.append((str(c[0]), str(c[1]), str(c[2]) if len(c) > 2 else ""))
        else:
            out.append((c.split or "", c.label or "", getattr(c, "speaker", "") or ""))
    return out


def check_splits(
    clips: Iterable[Any],
    classes: Sequence[str],
    use: str,
    source: str | os.PathLike,
    *,
    val_split: str = "val",
    test_split: str = "test",
    warn: bool = True,
) -> list[str]:
    """Check that a corpus's splits can serve ``use``; refuse what cannot, warn about what is weak.

    Args:
        clips: manifest ``Clip``s (``split``, ``label``, ``speaker``), or ``(split, label[, speaker])`` tuples.
        classes: the class list (every class should be learnable and scorable).
        use: ``prepare`` (splits already assigned; warn only), ``train`` (fit: training clips of
            every class and validation clips to select checkpoints on), ``validate`` (scores on
            the validation split), ``evaluate`` (scores on the test split), ``prior`` (the fusion prior = validation micro-F1), ``lr_fusion``
            (logistic regression fitted on validation posteriors), ``reproduce`` (all of these).
        source: the file the clips come from (named in messages).
        val_split, test_split: the split names used for validation and testing.
        warn: log the warnings (``WARNING`` level) as well as returning them.

    Returns:
        The warnings (also logged when ``warn``).

    Raises:
        CorpusError: the use cannot give a meaningful result; the message says how to fix it.
    """
    if use not in USES:
        raise ValueError(f"use must be one of {', '.join(USES)}, got {use!r}")
    records = _records(clips)
    classes = [str(c) for c in classes]
    by_split: dict[str, Counter] = defaultdict(Counter)
    speakers: dict[str, set[str]] = defaultdict(set)
    for split, label, speaker in records:
        by_split[split][label] += 1
        if speaker:
            speakers[split].add(speaker)
    all_speakers = set().union(*speakers.values()) if speakers else set()
    fix_splits = ("reassign splits with `lightning-emo prepare --resplit` (or fill the split column of the "
                  "manifest)")
    if records and not all_speakers:  # a clip split of a small corpus is the usual way to get here
        fix_splits += (", naming each clip's speaker first (folder corpora: `--option speaker_pattern=REGEX`, "
                       "its first group in the file name is the speaker) or with other --ratios TRAIN VAL TEST")
    warnings: list[str] = []

    def refuse(split: str, message: str) -> None:
        if use == "prepare":  # the manifest is still written: training and fusion refuse it later
            warnings.append(f"{source}, split '{split}': {message}")
            return
        raise CorpusError(source, message, where=split)

    train_needed = use in ("prepare", "train", "reproduce")
    val_needed = use in ("prepare", "train", "validate", "prior", "lr_fusion", "reproduce")
    test_needed = use in ("evaluate", "reproduce")

    if train_needed:
        train = by_split.get("train", Counter())
        if not sum(train.values()):
            refuse("train", f"no clips in split 'train': nothing to train on; {fix_splits}")
        absent = [c for c in classes if not train[c]]
        if absent and sum(train.values()):  # trainable, but those classes are never predicted: say so loudly
            warnings.append(f"{source}: class(es) {', '.join(map(repr, absent))} have no training clips, so the "
                            f"model cannot learn them and their recall is 0 by construction (training clips per "
                            f"class: {', '.join(f'{c}={train[c]}' for c in classes)}); add clips of these classes "
                            f"to 'train', {fix_splits}, or drop them from the class list (the manifest's .json "
                            "sidecar)")
    if val_needed:
        val = by_split.get(val_split, Counter())
        if not sum(val.values()):
            why = {"prepare": "training selects checkpoints on it", "validate": "there is nothing to validate on",
                   "train": "checkpoints are selected and training stops early on validation accuracy",
                   "prior": "the fusion prior is the validation micro-F1",
                   "lr_fusion": "LR fusion is fitted on validation posteriors",
                   "reproduce": "checkpoints and fusion are fitted on validation"}[use]
            refuse(val_split, f"no clips in split {val_split!r}: {why}; {fix_splits} (e.g. --ratios 0.7 0.1 0.2)")
        present = [c for c in classes if val[c]]
        if len(present) < 2 and use in ("lr_fusion", "reproduce"):
            refuse(val_split, f"split {val_split!r} holds clips of {len(present)} class(es) "
                   f"({', '.join(present) or 'none'}): LR fusion needs at least two classes to fit on; {fix_splits}")
        if len(present) == 1:
            warnings.append(f"{source}: split {val_split!r} holds clips of only {len(present)} class "
                            f"({', '.join(present)}): validation accuracy and the fusion prior measure that class "
                            f"only; {fix_splits}")
        elif 1 < len(present) < len(classes) and use != "prepare":
            absent = [c for c in classes if not val[c]]
            warnings.append(f"{source}: split {val_split!r} has no clips of {', '.join(absent)}: validation "
                            "accuracy ignores these classes")
    if test_needed or use in ("train", "prepare"):
        test = by_split.get(test_split, Counter())
        if not sum(test.values()):
            if test_needed:
                refuse(test_split, f"no clips in split {test_split!r}: nothing to score on; {fix_splits}")
            warnings.append(f"{source}: no clips in split {test_split!r}: the model can be trained but not tested; "
                            f"{fix_splits}")
    if records and use != "lr_fusion" and use != "prior":
        if not all_speakers:
            warnings.append(f"{source}: no clip names a speaker, so nothing keeps one speaker's clips out of two "
                            "splits and test scores may be optimistic; fill the manifest's speaker column")
        elif len(all_speakers) == 1:
            warnings.append(f"{source}: every clip has the same speaker ({next(iter(all_speakers))!r}): the splits "
                            "cannot be speaker-independent and test scores measure that speaker only")
        else:
            shared = sorted(s for s in all_speakers if sum(s in v for v in speakers.values()) > 1)
            if shared:
                warnings.append(f"{source}: {len(shared)} speaker(s) appear in several splits "
                                f"({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}): the splits are not "
                                f"speaker-independent; {fix_splits}")
    if warn:
        for w in warnings:
            log.warning("WARNING: %s", w)
    return warnings


__all__ = ["ClassListError", "CorpusError", "match_classes", "check_splits", "USES", "STAGE_USES"]
