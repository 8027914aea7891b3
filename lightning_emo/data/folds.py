"""Evaluation folds over a manifest: which clips train, validate and test in each fold of a protocol.

A :class:`Fold` names the clip ids of its three parts; :func:`make_folds` builds them by one of
the schemes below, and :func:`fold_manifest` turns a fold into an ordinary manifest (the same
clips, the same corpus root, the ``split`` column rewritten) that ``fit``/``predict`` read. The
feature stores are per clip, so a fold never needs new extraction.

Schemes (``FoldOptions.scheme``):

* ``split``: the manifest's own ``split`` column as one fold (the paper's single 7:1:2 split);
* ``kfold``: speaker-independent k-fold, scikit-learn's ``StratifiedGroupKFold`` with the
  speaker as the group (stratified by label as far as whole speakers allow; no speaker in two
  folds). Clips without a speaker are their own group (a note says the split is then not
  speaker-independent for them);
* ``loso``: leave one speaker out (``LeaveOneGroupOut`` over speakers): one fold per speaker;
* ``logo``: leave one group out over the manifest's ``group``/``session`` column (IEMOCAP's
  leave-one-session-out);
* ``files``: fixed folds read from ``fold_file`` (see :func:`read_fold_file`): a CSV
  ``clip_id,fold`` (the fold each clip is tested in), or EmoBox's published fold folder.

Inside every fold but ``split``, the validation part is carved out of the training part,
speaker-independently (``StratifiedGroupKFold`` over the training speakers with
``round(1 / val_share)`` splits; the first split's held-out speakers validate). It serves early
stopping, the LR fusion fit and the micro-F1 prior. Folds do not depend on the training seed:
every seed of a protocol sees the same folds, so seeds and methods compare on the same clips.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from lightning_emo.data.manifest import Clip, Manifest, ManifestError
from lightning_emo.errors import UserError

SCHEMES = ("split", "kfold", "loso", "logo", "files")


class FoldError(UserError, ValueError):
    """Folds that cannot be built as asked (too few speakers, no group column, a bad fold file)."""


@dataclass
class FoldOptions:
    """How to cut a manifest into folds.

    Attributes:
        scheme: ``split``, ``kfold``, ``loso``, ``logo`` or ``files`` (see the module docstring).
        k: the number of folds for ``kfold``.
        fold_file: for ``files``: a ``clip_id,fold`` CSV or an EmoBox dataset folder.
        val_share: the share of each training part that validates (the paper's 1 of 7+1).
        seed: seeds the fold assignment (not the training: see ``Protocol.seeds``).
        only: run only these fold names (e.g. ``[fold1]``); empty: all.
    """

    scheme: str = "split"
    k: int = 5
    fold_file: str | None = None
    val_share: float = 0.125
    seed: int = 0
    only: list[str] = field(default_factory=list)


@dataclass
class Fold:
    """One fold: the clip ids of its train, val and test parts, and notes on how it was made."""

    name: str
    train: list[str]
    val: list[str]
    test: list[str]
    notes: list[str] = field(default_factory=list)

    def split_of(self) -> dict[str, str]:
        """``clip_id -> "train"/"val"/"test"`` (clips in no part are absent)."""
        out = {c: "train" for c in self.train}
        out.update({c: "val" for c in self.val})
        out.update({c: "test" for c in self.test})
        return out

    def describe(self) -> str:
        return f"{self.name}: train {len(self.train)}, val {len(self.val)}, test {len(self.test)} clips"


def fold_manifest(manifest: Manifest, fold: Fold) -> Manifest:
    """The manifest of one fold: clips of the fold only, ``split`` rewritten; root and classes unchanged."""
    where = fold.split_of()
    clips = [replace(c, split=where[c.clip_id]) for c in manifest.clips if c.clip_id in where]
    return replace(manifest, clips=clips, notes=list(manifest.notes) + list(fold.notes))


def _speakers(clips: Sequence[Clip], notes: list[str], what: str = "speaker") -> np.ndarray:
    """The group of each clip: its speaker, or the clip itself when it names none."""
    missing = sum(1 for c in clips if not c.speaker)
    if missing:
        notes.append(f"{missing} clip(s) name no speaker: each is its own group, so the {what}-independence "
                     "holds only for the others")
    return np.array([c.speaker or f"<clip:{c.clip_id}>" for c in clips])


def _stratified_group_split(clips: Sequence[Clip], groups: np.ndarray, n_splits: int, seed: int):
    """``StratifiedGroupKFold`` over ``clips`` (labels as strata); yields ``(train_idx, test_idx)``.

    When a class has fewer clips than ``n_splits`` it cannot be stratified: plain shuffled
    ``GroupKFold`` then (still no group on two sides).
    """
    import warnings

    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    y = np.array([c.label for c in clips])
    if min(Counter(y.tolist()).values()) < n_splits:
        yield from GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(clips)), y, groups)
        return
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has only N members": stratified as far as it goes
        warnings.filterwarnings("ignore", message=r".*least populated class.*", category=UserWarning)
        yield from splitter.split(np.zeros(len(clips)), y, groups)


def carve_validation(clips: Sequence[Clip], val_share: float, seed: int, where: str) -> tuple[list[str], list[str],
                                                                                            list[str]]:
    """Split a training pool into ``(train ids, val ids, notes)`` speaker-independently.

    Raises:
        FoldError: the pool has fewer than two speakers (no speaker-independent validation).
    """
    if not 0 < val_share < 1:
        raise FoldError(f"val_share must be between 0 and 1 (exclusive), got {val_share}")
    notes: list[str] = []
    groups = _speakers(clips, notes)
    n_groups = len(set(groups))
    if n_groups < 2:
        raise FoldError(f"{where}: the training part has {n_groups} speaker(s); a speaker-independent "
                        "validation part needs at least two. Use a scheme that leaves more speakers for "
                        "training (fewer folds), or give the clips speakers")
    n_splits = min(max(2, round(1 / val_share)), n_groups)
    train_idx, val_idx = next(_stratified_group_split(clips, groups, n_splits, seed))
    return [clips[i].clip_id for i in train_idx], [clips[i].clip_id for i in val_idx], notes


def _from_test_parts(manifest: Manifest, parts: list[tuple[str, list[Clip], list[Clip]]], opts: FoldOptions,
                     notes: list[str]) -> list[Fold]:
    """Folds from (name, test clips, training pool) triples: validation carved from each pool."""
    folds = []
    for i, (name, test, pool) in enumerate(parts):
        train, val, more = carve_validation(pool, opts.val_share, opts.seed + i, f"fold {name}")
        folds.append(Fold(name, train, val, [c.clip_id for c in test], notes + more))
    return folds


def make_folds(manifest: Manifest, options: FoldOptions | None = None) -> list[Fold]:
    """Cut ``manifest`` into folds by ``options.scheme`` (see the module docstring).

    Raises:
        FoldError: one clear sentence on what cannot be done and how to fix it.
    """
    opts = options or FoldOptions()
    if opts.scheme not in SCHEMES:
        raise FoldError(f"unknown fold scheme {opts.scheme!r}; known: {', '.join(SCHEMES)}")
    clips = list(manifest.clips)
    notes: list[str] = []
    if opts.scheme == "split":
        if not manifest.has_splits:
            raise FoldError(f"{manifest.source}: the 'split' scheme needs every clip's split; run `lightning-emo "
                            "prepare` to assign speaker-independent splits, or choose scheme kfold/loso/logo")
        parts = {s: [c.clip_id for c in clips if c.split == s] for s in ("train", "val", "test")}
        empty = [s for s, ids in parts.items() if not ids]
        if empty:
            raise FoldError(f"{manifest.source}: the 'split' scheme needs train, val and test clips; none in "
                            f"{', '.join(empty)}")
        folds = [Fold("split", parts["train"], parts["val"], parts["test"])]
    elif opts.scheme == "kfold":
        if opts.k < 2:
            raise FoldError(f"kfold needs k >= 2, got {opts.k}")
        groups = _speakers(clips, notes)
        if len(set(groups)) < opts.k:
            raise FoldError(f"{manifest.source}: {len(set(groups))} speakers cannot fill {opts.k} speaker-"
                            f"independent folds; use k <= {len(set(groups))} or scheme loso")
        parts = [(f"fold{i + 1}", [clips[j] for j in test], [clips[j] for j in train])
                 for i, (train, test) in enumerate(_stratified_group_split(clips, groups, opts.k, opts.seed))]
        folds = _from_test_parts(manifest, parts, opts, notes)
    elif opts.scheme in ("loso", "logo"):
        if opts.scheme == "logo":
            missing = [c.clip_id for c in clips if not getattr(c, "group", "")]
            if missing:
                raise FoldError(f"{manifest.source}: leave-one-group-out needs the 'group' (or 'session') column "
                                f"filled for every clip; {len(missing)} clip(s) have none (first: {missing[0]!r})")
            keys = [c.group for c in clips]  # type: ignore[attr-defined]
        else:
            keys = list(_speakers(clips, notes))
        names = sorted(set(keys))
        if len(names) < 3:
            raise FoldError(f"{manifest.source}: {len(names)} {'groups' if opts.scheme == 'logo' else 'speakers'} "
                            "are too few to leave one out and still validate on another (need 3 or more)")
        parts = [(_safe(n), [c for c, k in zip(clips, keys) if k == n], [c for c, k in zip(clips, keys) if k != n])
                 for n in names]
        folds = _from_test_parts(manifest, parts, opts, notes)
    else:
        if not opts.fold_file:
            raise FoldError("scheme 'files' needs fold_file: a clip_id,fold CSV or an EmoBox dataset folder")
        folds = read_fold_file(opts.fold_file, manifest, opts)
    if opts.only:
        unknown = [n for n in opts.only if n not in {f.name for f in folds}]
        if unknown:
            raise FoldError(f"folds {unknown} do not exist; the folds are {', '.join(f.name for f in folds)}")
        folds = [f for f in folds if f.name in opts.only]
    check_folds(manifest, folds)
    return folds


def _safe(name: str) -> str:
    """A fold name usable as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "fold"


def check_folds(manifest: Manifest, folds: Sequence[Fold]) -> None:
    """Refuse folds with an empty part or a speaker on two sides of one fold (a leak)."""
    by_id = manifest.by_id()
    for f in folds:
        for part in ("train", "val", "test"):
            if not getattr(f, part):
                raise FoldError(f"fold {f.name}: no {part} clip")
        side: dict[str, set[str]] = defaultdict(set)
        for cid, part in f.split_of().items():
            spk = by_id[cid].speaker
            if spk:
                side[spk].add(part)
        leaks = sorted(s for s, parts in side.items() if len(parts) > 1)
        if leaks:
            f.notes.append(f"speakers in two parts of the fold (given by the fold file): {', '.join(leaks[:5])}"
                           + (f" and {len(leaks) - 5} more" if len(leaks) > 5 else ""))


# --------------------------------------------------------------------------- fold files


def read_fold_file(path: str | os.PathLike, manifest: Manifest, options: FoldOptions | None = None) -> list[Fold]:
    """Fixed folds from a file or folder.

    Accepted:

    * a CSV with columns ``clip_id,fold``: each clip is tested in the fold it names and trains
      in the others (clips not listed take part in no fold); validation is carved out of each
      training part as for the other schemes;
    * an EmoBox dataset folder (``EmoBox/data/<dataset>``) holding ``fold_<k>/`` sub-folders
      with ``<dataset>_train_fold_<k>.jsonl`` and ``<dataset>_test_fold_<k>.jsonl`` (JSON
      lines ``{"key", "wav", "emo", ...}``; the ``.json`` dict form ``{key: {...}}`` is read
      too). A fold's ``*_valid_fold_<k>``/``*_dev_fold_<k>`` file, when present, is its
      validation part; otherwise validation is carved out of its train list. EmoBox keys are
      matched to the manifest's clips by ``clip_id`` = key, = key without its ``<dataset>-``
      prefix, or = the file stem of ``wav`` matching the stem of the clip's ``path``. The
      ``emo`` field is not compared with the manifest's label (EmoBox uses its own short names).

    Listed keys that match no clip are counted in the fold's notes; a fold with none matched
    is refused.
    """
    opts = options or FoldOptions(scheme="files")
    path = Path(path)
    if path.is_dir():
        return _read_emobox(path, manifest, opts)
    if not path.is_file():
        raise FoldError(f"{path}: fold file not found (expected a clip_id,fold CSV or an EmoBox dataset folder)")
    by_id = manifest.by_id()
    assign: dict[str, str] = {}
    unknown: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for col in ("clip_id", "fold"):
            if col not in header:
                raise ManifestError(path, f"missing column (header is {','.join(header)}; expected clip_id,fold)",
                                    1, col)
        ci, fi = header.index("clip_id"), header.index("fold")
        for line, row in enumerate(reader, start=2):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) != len(header):
                raise ManifestError(path, f"expected {len(header)} fields, found {len(row)}", line)
            cid, fold = row[ci].strip(), row[fi].strip()
            if not fold:
                raise ManifestError(path, "empty fold name", line, "fold")
            if cid in assign:
                raise ManifestError(path, f"clip {cid!r} is listed twice (a clip is tested in one fold)", line,
                                    "clip_id")
            if cid not in by_id:
                unknown.append(cid)
                continue
            assign[cid] = fold
    names = sorted(set(assign.values()), key=_natural)
    if len(names) < 2:
        raise FoldError(f"{path}: {len(names)} fold(s) named; fixed folds need at least two")
    notes = [f"{len(unknown)} clip id(s) of {path.name} are not in the manifest (first: {unknown[0]!r})"] if unknown else []
    listed = [c for c in manifest.clips if c.clip_id in assign]
    if len(listed) < len(manifest.clips):
        notes.append(f"{len(manifest.clips) - len(listed)} manifest clip(s) are in no fold of {path.name}")
    parts = [(_safe(n), [c for c in listed if assign[c.clip_id] == n], [c for c in listed if assign[c.clip_id] != n])
             for n in names]
    return _from_test_parts(manifest, parts, opts, notes)


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _emobox_rows(file: Path) -> list[dict]:
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(file, f"not valid JSON ({e.msg})", e.lineno) from None
        if not isinstance(data, dict):
            raise ManifestError(file, "expected a JSON object {key: {wav, emo, ...}} (EmoBox's .json form)")
        return [{"key": k, **(v if isinstance(v, dict) else {})} for k, v in data.items()]
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ManifestError(file, f"not a JSON object per line ({e.msg})", line) from None
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            raise ManifestError(file, "each line must be a JSON object with a string 'key' (EmoBox's fold format)",
                                line, "key")
        rows.append(row)
    return rows


def _emobox_file(folder: Path, part: str, k: str) -> Path | None:
    for ext in (".jsonl", ".json"):
        found = sorted(folder.glob(f"*_{part}_fold_{k}{ext}"))
        if found:
            return found[0]
    return None


def _read_emobox(root: Path, manifest: Manifest, opts: FoldOptions) -> list[Fold]:
    fold_dirs = sorted((d for d in root.iterdir() if d.is_dir() and re.fullmatch(r"fold_\d+", d.name)),
                       key=lambda d: int(d.name.split("_")[1]))
    if not fold_dirs:
        raise FoldError(f"{root}: no fold_<k> folders; expected EmoBox's data/<dataset>/fold_<k>/"
                        "<dataset>_{train,test}_fold_<k>.jsonl")
    by_id = manifest.by_id()
    by_stem: dict[str, list[str]] = defaultdict(list)
    for c in manifest.clips:
        by_stem[Path(c.path).stem].append(c.clip_id)

    def match(row: dict) -> str | None:
        key = row["key"]
        if key in by_id:
            return key
        dataset = row.get("dataset")
        if isinstance(dataset, str) and key.startswith(dataset + "-") and key[len(dataset) + 1:] in by_id:
            return key[len(dataset) + 1:]
        wav = row.get("wav")
        if isinstance(wav, str):
            stem = Path(wav).stem
            if len(by_stem.get(stem, ())) == 1:
                return by_stem[stem][0]
        return None

    folds = []
    for i, d in enumerate(fold_dirs):
        k = d.name.split("_")[1]
        files = {part: _emobox_file(d, part, k) for part in ("train", "test", "valid", "dev")}
        for part in ("train", "test"):
            if files[part] is None:
                raise FoldError(f"{d}: no *_{part}_fold_{k}.jsonl (EmoBox's fold layout)")
        parts: dict[str, list[str]] = {}
        unmatched = Counter()
        for part in ("train", "test", "valid", "dev"):
            if files[part] is None:
                continue
            ids = []
            for row in _emobox_rows(files[part]):
                cid = match(row)
                if cid is None:
                    unmatched[part] += 1
                else:
                    ids.append(cid)
            parts[part] = ids
        val = parts.get("valid") or parts.get("dev")
        notes = [f"{n} {part} key(s) of {d.name} match no manifest clip" for part, n in sorted(unmatched.items())]
        if not parts["train"] or not parts["test"]:
            raise FoldError(f"{d}: none of the {'train' if not parts['train'] else 'test'} keys matches a manifest "
                            "clip (matched by clip_id, by the key without its '<dataset>-' prefix, or by the wav "
                            "file's stem); check that the manifest is the same corpus")
        if val:
            folds.append(Fold(f"fold{k}", [c for c in parts["train"] if c not in set(val)], val, parts["test"],
                              notes))
        else:
            pool = [by_id[c] for c in parts["train"]]
            train, val, more = carve_validation(pool, opts.val_share, opts.seed + i, f"EmoBox {d.name}")
            folds.append(Fold(f"fold{k}", train, val, parts["test"], notes + more))
    return folds
