"""The feature store: frozen-extractor outputs on disk, memory-mapped, written atomically and resumably.

A store is a directory per (corpus, extractor configuration)::

    STORE/
      store.json                 format, extractor spec, cache key, dim, dtype[, selection]
      .lock                      advisory lock: open writers hold it shared, cleanup needs it exclusive
      .run.lock                  one extraction run at a time: held exclusively, names its holder
      index.json                 merged index (a cache of the segment indexes, rebuilt when stale)
      segments/
        r0-3f2a9c1b.f16          rank 0's features: rows of D values, raw little-endian (np.memmap)
        r0-3f2a9c1b.mask         one byte per row: 1 = a real frame with content, 0 = no face found
        r0-3f2a9c1b.json         the segment's committed index: rows, dim, dtype, clip_id -> [offset, length,
                                 n_valid], clip_id -> xxh3-64 checksum of its rows and mask bytes,
                                 clip_id -> reason for clips recorded without a sequence (no audio track)
      selector.safetensors       (derived stores only) the fitted feature selector

Writes are atomic and resumable: a writer (one per rank) appends rows to its own segment and,
every few clips, fsyncs the data and then atomically replaces the segment's ``.json``. Only
rows a committed ``.json`` lists are ever read, so a killed run loses at most the clips in
flight and never leaves a corrupt entry; a re-run skips every committed clip. Readers merge
the segment indexes (lazily, or from ``index.json`` when it is up to date).

Integrity: opening a store checks every segment against ``store.json`` (``dim`` and ``dtype``
as written, file sizes against the committed rows), so an edited ``dim`` is refused rather than
reinterpreting the data; reading a clip checks its checksum (xxh3, far faster than the copy to
float32 that follows), so flipped bytes are refused naming the clip. Writers refuse NaN/Inf
features. Segments written before checksums existed get them recorded the first time the store
is opened with no writer active, after their values are checked finite (trust on first use: a
log line says so); until then they are read unverified.

:mod:`lightning_emo.data.datamodule` batches stores for training; random-forest selection
(:func:`lightning_emo.extractors.selection.select_features`) writes derived stores.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from lightning_emo.data.integrity import FeatureStoreError, check_segments, segment_checksums
from lightning_emo.data.integrity import checksum as _checksum
from lightning_emo.data.locks import LOCK_FILE, RUN_LOCK_FILE, RunLock, StoreBusyError, _StoreLock  # noqa: F401
from lightning_emo.specs import ExtractorSpec
from lightning_emo.utils import atomic_write_text, disk_full, log, sha256_file

STORE_FORMAT = 1
STORE_FILE = "store.json"
INDEX_FILE = "index.json"
SEGMENTS_DIR = "segments"
SELECTOR_FILE = "selector.safetensors"
# Why a clip has no sequence (recorded instead of features; the extractors decide which applies).
MISSING_NO_AUDIO = "no_audio"
MISSING_NO_VIDEO = "no_video"
MISSING_NO_FRAMES = "no_frames"
DTYPES = ("float16", "float32")
# Builder options that do not change the features (speed, where files are cached, a local weight
# file's path: the file itself enters the key through its sha256).
NON_CONTENT_OPTIONS = frozenset({"batch_size", "weights", "cache_dir", "local_files_only", "download"})


class StaleStoreError(FeatureStoreError):
    """A store written with another configuration than the one requested; ``differences`` lists them."""

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]]):
        super().__init__(message)
        self.differences = differences


# --------------------------------------------------------------------------------------------
# cache key


def cache_key(
    spec: ExtractorSpec,
    *,
    dtype: str = "float16",
    weights_sha256: str | None = None,
    detector: str | None = None,
    fps: float | None = None,
    crop_size: int | None = None,
    sample_rate: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that changes a store's contents, as a JSON-able dict.

    Args:
        spec: the extractor's spec (name, options, weights source and revision).
        dtype: the stored dtype.
        weights_sha256: digest of a local weight file (``--weights PATH``), when one is used.
        detector: the face detector (face extractors).
        fps: the video frames per second sampled (face extractors); default ``spec.frame_rate``.
        crop_size: the face crop side; default ``spec.crop_size``.
        sample_rate: the audio sample rate; default ``spec.sample_rate``.
        extra: more fields (e.g. detector options), merged in.
    """
    from lightning_emo import __version__

    w = spec.weights
    sha = weights_sha256 or w.sha256
    local = spec.options.get("weights")
    if sha is None and isinstance(local, (str, os.PathLike)) and Path(local).is_file():

        sha = sha256_file(local)  # a local file is known by its content, not its path
    key: dict[str, Any] = {
        "extractor": spec.name,
        "modality": spec.modality,
        "options": _jsonable({k: v for k, v in spec.options.items() if k not in NON_CONTENT_OPTIONS}),
        "weights": {"kind": w.kind, "uri": w.uri, "filename": w.filename, "revision": w.revision,
                    "sha256": sha},
        "dtype": dtype,
        "package_version": __version__,
    }
    if spec.modality == "audio":
        key["sample_rate"] = sample_rate if sample_rate is not None else spec.sample_rate
    else:
        key["fps"] = fps if fps is not None else spec.frame_rate
        key["crop_size"] = crop_size if crop_size is not None else spec.crop_size
        key["detector"] = detector
    if extra:
        key.update(_jsonable(dict(extra)))
    return key


def key_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted field name -> (old value, new value) for every field that differs (nested dicts flattened)."""
    a, b = _flatten(_jsonable(dict(old))), _flatten(_jsonable(dict(new)))
    missing = object()
    out = {}
    for name in sorted(set(a) | set(b)):
        va, vb = a.get(name, missing), b.get(name, missing)
        if va != vb:
            out[name] = (None if va is missing else va, None if vb is missing else vb)
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so tuples become lists and keys strings: keys compare as stored."""
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------------------------
# store


@dataclass(frozen=True)
class _Entry:
    segment: int  # index into FeatureStore._segments
    offset: int  # first row
    length: int  # rows (frames)
    n_valid: int  # rows whose mask is True
    checksum: str | None = None  # xxh3-64 of the rows' bytes then the mask's; None = written before checksums


class FeatureStore:
    """One extractor configuration's features for a corpus: clip_id -> (features (T, D), mask (T,)).

    Open an existing store with :meth:`open`, make (or resume) one with :meth:`create`, write
    with :meth:`writer`. ``clip_id in store`` is True for every committed clip, including
    those recorded without a sequence (:attr:`missing`, e.g. no audio track).
    """

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self._spec = ExtractorSpec.from_dict(meta["spec"])
        self._dtype = np.dtype(meta["dtype"])
        self._segments: list[str] = []
        self._rows: list[int] = []
        self._entries: dict[str, _Entry] = {}
        self._missing: dict[str, str] = {}
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.duplicates = 0
        self.refresh()

    # ---- construction

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        spec: ExtractorSpec,
        key: Mapping[str, Any],
        dtype: str = "float16",
        dim: int | None = None,
        overwrite: bool = False,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> "FeatureStore":
        """Make a new store at ``path``, or resume the one there when its key matches ``key``.

        Args:
            path: the store directory.
            spec: the extractor spec (saved in ``store.json``).
            key: the cache key (:func:`cache_key`); an existing store with another key is
                refused (:class:`StaleStoreError`) unless ``overwrite``.
            dtype: ``float16`` (default) or ``float32``.
            dim: the stored feature dimension; default ``spec.dim``.
            overwrite: delete an existing store whose key differs and start afresh.
            extra_meta: more fields for ``store.json`` (e.g. ``selection``).
        """
        path = Path(path)
        if dtype not in DTYPES:
            raise ValueError(f"feature store dtype must be one of {DTYPES}, got {dtype!r}")
        if (path / STORE_FILE).is_file():
            try:
                return cls.open(path, expect_key=key)
            except StaleStoreError:
                if not overwrite:
                    raise
                log.info(f"feature store {path}: key differs, --overwrite given: removing the old store")
                _remove_store(path)
        elif path.exists() and any(p.name != RUN_LOCK_FILE for p in path.iterdir()):
            raise FeatureStoreError(f"{path} exists, is not empty and holds no {STORE_FILE}: refusing to write a "
                                    "feature store into it (choose another directory)")
        (path / SEGMENTS_DIR).mkdir(parents=True, exist_ok=True)
        meta = {
            "format": STORE_FORMAT,
            "spec": spec.to_dict(),
            "key": _jsonable(dict(key)),
            "dim": int(dim if dim is not None else spec.dim),
            "dtype": dtype,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if extra_meta:
            meta.update(_jsonable(dict(extra_meta)))
        atomic_write_text(path / STORE_FILE, json.dumps(meta, indent=2) + "\n")
        return cls(path, meta)

    @classmethod
    def open(cls, path: str | os.PathLike, expect_key: Mapping[str, Any] | None = None) -> "FeatureStore":
        """Open the store at ``path``; with ``expect_key``, refuse one written with another configuration.

        Raises:
            FeatureStoreError: no store there, or an unreadable ``store.json``.
            StaleStoreError: the key differs; the message lists each differing field, old vs new.
        """
        path = Path(path)
        meta_path = path / STORE_FILE
        if not meta_path.is_file():
            hint = ""
            if path.is_dir():
                inner = sorted(p.parent.name for p in path.glob(f"*/{STORE_FILE}"))
                if inner:
                    hint = f" (it holds the stores: {', '.join(inner)}; pass one of them)"
            raise FeatureStoreError(f"no feature store at {path}: {STORE_FILE} not found{hint}. "
                                    "Run `lightning-emo extract` to make one.")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise FeatureStoreError(f"{meta_path}: not valid JSON ({e})") from None
        for field in ("format", "spec", "key", "dim", "dtype"):
            if field not in meta:
                raise FeatureStoreError(f"{meta_path}: missing field {field!r}")
        if meta["format"] != STORE_FORMAT:
            raise FeatureStoreError(f"{meta_path}: store format {meta['format']} is not supported "
                                    f"(expected {STORE_FORMAT}); re-run extract into a new directory")
        if expect_key is not None:
            diff = key_differences(meta["key"], expect_key)
            if diff:
                lines = "; ".join(f"{name}: {old!r} (store) vs {new!r} (requested)"
                                  for name, (old, new) in diff.items())
                raise StaleStoreError(
                    f"feature store {path} was written with another configuration — {lines}. "
                    "Write to another --out directory, or pass --overwrite to replace it.", diff)
        return cls(path, meta)

    # ---- properties

    @property
    def spec(self) -> ExtractorSpec:
        """The spec of the extractor that wrote the store."""
        return self._spec

    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]

    @property
    def dim(self) -> int:
        """Feature dimension D of every stored row (after selection, for derived stores)."""
        return int(self.meta["dim"])

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def modality(self) -> str:
        return self._spec.modality

    @property
    def selection(self) -> dict[str, Any] | None:
        """A derived store's selection, else None.

        Keys: ``method``, ``k``, ``unit``, ``params``, ``parent``, ``parent_key``, ``parent_dim``, ``selector``.
        """
        return self.meta.get("selection")

    @property
    def clip_ids(self) -> list[str]:
        """Clips with a stored sequence (in commit order); see :attr:`missing` for the others."""
        return list(self._entries)

    @property
    def missing(self) -> dict[str, str]:
        """clip_id -> reason, for clips recorded without a sequence (``no_audio``, ``no_frames``, ...)."""
        return dict(self._missing)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._entries or clip_id in self._missing

    def __len__(self) -> int:
        return len(self._entries) + len(self._missing)

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, extractor={self._spec.name!r}, dim={self.dim}, "
                f"clips={len(self._entries)}, missing={len(self._missing)})")

    def length(self, clip_id: str) -> int:
        """Number of frames T of a clip's sequence (0 for a missing clip)."""
        return self._entry(clip_id).length if clip_id not in self._missing else 0

    def n_valid(self, clip_id: str) -> int:
        """Number of frames whose mask is True (0 for a missing clip or one with no face at all)."""
        return self._entry(clip_id).n_valid if clip_id not in self._missing else 0

    def _entry(self, clip_id: str) -> _Entry:
        try:
            return self._entries[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in feature store {self.path}") from None

    # ---- reading

    def get(self, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A clip's ``(features (T, D), mask (T,) bool)``; read-only views of the memory-mapped segment.

        A clip recorded without a sequence gives ``(T = 0)`` arrays; an unknown clip raises KeyError.
        """
        if clip_id in self._missing:
            return np.zeros((0, self.dim), self._dtype), np.zeros((0,), bool)
        e = self._entry(clip_id)
        feats, mask = self._arrays(e.segment)
        feats, mask = feats[e.offset:e.offset + e.length], mask[e.offset:e.offset + e.length]
        if e.checksum is not None and _checksum(feats, mask) != e.checksum:
            raise FeatureStoreError(
                f"feature store {self.path}: clip {clip_id!r} (segment {self._segments[e.segment]}, rows "
                f"{e.offset}-{e.offset + e.length - 1}) does not match the checksum written with it: its bytes "
                "changed on disk (a damaged or edited file). Re-run extract into a new directory (or with "
                "--overwrite) to rebuild the store")
        return feats, mask

    def _arrays(self, seg: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._maps.get(seg)
        if arrays is None:
            name, rows = self._segments[seg], self._rows[seg]
            base = self.path / SEGMENTS_DIR / name
            if rows == 0:
                arrays = (np.zeros((0, self.dim), self._dtype), np.zeros((0,), bool))
            else:
                data_path, mask_path = base.with_suffix(_data_suffix(self._dtype)), base.with_suffix(".mask")
                need = rows * self.dim * self._dtype.itemsize
                for p, n in ((data_path, need), (mask_path, rows)):
                    size = p.stat().st_size if p.is_file() else -1
                    if size < n:
                        raise FeatureStoreError(
                            f"feature store {self.path}: segment file {p.name} holds {max(size, 0)} bytes, its "
                            f"index {name}.json commits {n}: the file was truncated or removed after writing; "
                            "re-run extract into a new directory")
                feats = np.memmap(data_path, dtype=self._dtype.newbyteorder("<"), mode="r", shape=(rows, self.dim))
                mask = np.memmap(mask_path, dtype=np.bool_, mode="r", shape=(rows,))
                arrays = (feats, mask)
            self._maps[seg] = arrays
        return arrays

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(clip_id, features, mask)`` for every clip with a sequence."""
        for cid in self._entries:
            yield (cid, *self.get(cid))

    def __getstate__(self):  # DataLoader workers re-open the memory maps instead of pickling their data
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    # ---- index

    def refresh(self) -> None:
        """Re-read the committed segment indexes (from ``index.json`` when it is up to date)."""
        seg_dir = self.path / SEGMENTS_DIR
        listing = sorted(seg_dir.glob("*.json")) if seg_dir.is_dir() else []
        stamp = {p.stem: _stat_stamp(p) for p in listing}
        index = None
        index_path = self.path / INDEX_FILE
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
            except (json.JSONDecodeError, OSError):
                index = None
            if index is not None and index.get("stamps") != stamp:
                index = None
        if index is not None and "dims" not in index:  # written before segments recorded dim/dtype
            index = None
        if index is None:
            index = self._merge_segments(listing, stamp)
            if index["unchecked"]:
                index = self._record_checksums(listing, index)
        self._check_segments(index)
        self._segments = list(index["segments"])
        self._rows = list(index["rows"])
        self._entries = {cid: _Entry(*e) for cid, e in index["clips"].items()}
        self._missing = dict(index["missing"])
        self.duplicates = int(index.get("duplicates", 0))
        self._maps = {}

    def _merge_segments(self, listing: list[Path], stamp: dict[str, list[int]]) -> dict[str, Any]:
        segments, rows, dims, dtypes, clips, missing, dup, unchecked = [], [], [], [], {}, {}, 0, []
        for p in listing:
            try:
                seg = json.loads(p.read_text())
            except (json.JSONDecodeError, OSError) as e:  # os.replace makes this impossible short of tampering
                raise FeatureStoreError(f"feature store {self.path}: segment index {p.name} is unreadable "
                                        f"({e})") from None
            i = len(segments)
            segments.append(p.stem)
            rows.append(int(seg["rows"]))
            dims.append(seg.get("dim"))
            dtypes.append(seg.get("dtype"))
            sums = seg.get("checksums")
            if sums is None and seg["clips"]:
                unchecked.append(p.stem)
            for cid, (offset, length, n_valid) in seg["clips"].items():
                if cid in clips or cid in missing:
                    dup += 1
                    continue
                clips[cid] = [i, offset, length, n_valid, (sums or {}).get(cid)]
            for cid, reason in seg.get("missing", {}).items():
                if cid in clips or cid in missing:
                    dup += 1
                    continue
                missing[cid] = reason
        return {"format": STORE_FORMAT, "segments": segments, "rows": rows, "dims": dims, "dtypes": dtypes,
                "stamps": stamp, "clips": clips, "missing": missing, "duplicates": dup, "unchecked": unchecked}

    def _check_segments(self, index: Mapping[str, Any]) -> None:
        check_segments(self.path / SEGMENTS_DIR, STORE_FILE, self.dim, self._dtype, index)

    def _record_checksums(self, listing: list[Path], index: dict[str, Any]) -> dict[str, Any]:
        """Give segments written before checksums existed theirs (values checked finite first); see the module doc.

        Only with no writer active (the exclusive lock); otherwise they stay unverified for now.
        """
        lock = _StoreLock(self.path, exclusive=True)
        if not lock.acquired:
            log.warning(f"feature store {self.path}: {len(index['unchecked'])} segment(s) written before checksums "
                        "existed are read unverified (a writer is active: they are recorded when none is)")
            return index
        try:
            done = 0
            for p in (q for q in listing if q.stem in set(index["unchecked"])):
                seg = json.loads(p.read_text())
                seg["checksums"] = segment_checksums(self.path / SEGMENTS_DIR, p.stem, seg, STORE_FILE, self.dim,
                                                     self._dtype)
                try:
                    _atomic_write_synced(p, json.dumps(seg) + "\n")
                except OSError as e:  # a read-only store: verified this time, recorded never
                    log.warning(f"feature store {self.path}: cannot record checksums in {p.name} ({e}); its clips "
                                "are read unverified")
                    return index
                done += len(seg["checksums"])
            log.info(f"feature store {self.path}: recorded checksums of {done} clip(s) written before checksums "
                     "existed (their values were checked finite; later changes to their bytes are now refused)")
        finally:
            lock.release()
        return self._merge_segments(listing, {p.stem: _stat_stamp(p) for p in listing})

    def merge(self, cleanup: bool = True) -> Path:
        """Write the merged ``index.json`` (call once every writer has closed, e.g. on rank 0 after a barrier).

        With ``cleanup``, also delete segment files no committed index refers to (a run killed before
        its first commit) and truncate rows past the last commit (the clips a killed run had in flight);
        skipped while any writer holds the store's lock (every open :class:`StoreWriter` holds it
        shared). Returns the index path.
        """
        seg_dir = self.path / SEGMENTS_DIR
        listing = sorted(seg_dir.glob("*.json")) if seg_dir.is_dir() else []
        index = self._merge_segments(listing, {p.stem: _stat_stamp(p) for p in listing})
        lock = _StoreLock(self.path, exclusive=True) if cleanup and seg_dir.is_dir() else None
        if lock is not None and not lock.acquired:
            log.info(f"feature store {self.path}: a writer is still open (another run?): "
                     "leaving uncommitted segment data alone")
        if lock is not None and lock.acquired:
            committed = dict(zip(index["segments"], index["rows"]))
            row_bytes = {_data_suffix(self._dtype): self.dim * self._dtype.itemsize, ".mask": 1}
            for p in seg_dir.iterdir():
                if p.name.startswith("."):  # a temporary file of an interrupted atomic write
                    p.unlink(missing_ok=True)
                    continue
                if p.suffix not in row_bytes:
                    continue
                if p.stem not in committed:
                    p.unlink(missing_ok=True)
                    continue
                need = committed[p.stem] * row_bytes[p.suffix]
                if p.stat().st_size > need:
                    os.truncate(p, need)
        if lock is not None:
            lock.release()
        atomic_write_text(self.path / INDEX_FILE, json.dumps(index) + "\n")
        self.refresh()
        return self.path / INDEX_FILE

    # ---- writing

    def writer(self, rank: int = 0, commit_every: int = 16, commit_seconds: float = 30.0) -> "StoreWriter":
        """A writer appending clips to a new segment owned by ``rank`` (one writer per process)."""
        return StoreWriter(self, rank=rank, commit_every=commit_every, commit_seconds=commit_seconds)

    # ---- reporting

    def summary(self) -> dict[str, Any]:
        """Counts: clips with a sequence, frames, clips with no valid frame (no face), missing by reason."""
        no_valid = sum(1 for e in self._entries.values() if e.n_valid == 0)
        return {
            "clips": len(self._entries),
            "frames": sum(e.length for e in self._entries.values()),
            "no_valid_frame": no_valid,
            "missing": dict(Counter(self._missing.values())),
            "duplicates": self.duplicates,
        }

    @property
    def selector_path(self) -> Path:
        """The fitted selector's file of a derived store (``FeatureSelector.from_store`` loads it)."""
        if not self.selection:
            raise FeatureStoreError(f"feature store {self.path} is not a selected (derived) store")
        return self.path / self.selection["selector"]


def _data_suffix(dtype: np.dtype) -> str:
    return ".f16" if np.dtype(dtype) == np.float16 else ".f32"


def _stat_stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _remove_store(path: Path) -> None:
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.parent == path and p.name == RUN_LOCK_FILE:
            continue  # held by the run that replaces the store
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StoreWriter:
    """Appends clips to one rank-owned segment; commits (fsync data, then replace the index) every few clips.

    Use as a context manager, or call :meth:`close`. Clips already in the store (or already
    written by this writer) are skipped and counted in :attr:`skipped`. A new segment starts
    after ``segment_clips`` clips so that each commit rewrites a small index.
    """

    def __init__(self, store: FeatureStore, rank: int = 0, commit_every: int = 16, commit_seconds: float = 30.0,
                 segment_clips: int = 1024):
        self.store = store
        self.rank = int(rank)
        self.commit_every = max(1, int(commit_every))
        self.commit_seconds = commit_seconds
        self.segment_clips = segment_clips
        self.written = 0
        self.skipped = 0
        self.missing: Counter[str] = Counter()
        self.no_valid = 0
        self._done: set[str] = set()
        self._pending: list[tuple[str, np.ndarray | None, np.ndarray | None, str | None]] = []
        self._seg_sums: dict[str, str] = {}
        self._last_commit = time.monotonic()
        self._seg: str | None = None
        self._seg_rows = 0
        self._seg_clips: dict[str, list[int]] = {}
        self._seg_missing: dict[str, str] = {}
        self._closed = False
        self._lock = _StoreLock(store.path, exclusive=False)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, clip_id: str, features: np.ndarray | torch.Tensor,
            mask: np.ndarray | torch.Tensor | None = None) -> bool:
        """Queue one clip's ``features (T, D)`` and ``mask (T,)`` (True = real content; default all True).

        Returns False (and counts it as skipped) when the clip is already stored.
        """
        if self._closed:
            raise FeatureStoreError(f"writer of {self.store.path} is closed")
        if clip_id in self.store or clip_id in self._done:
            self.skipped += 1
            return False
        if isinstance(features, torch.Tensor):
            features = features.detach().float().cpu().numpy()
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.store.dim:
            raise ValueError(f"feature store {self.store.path}: clip {clip_id!r}: expected features "
                             f"(T, {self.store.dim}), got shape {tuple(features.shape)}")
        finite = np.isfinite(features)
        if not finite.all():
            frame, column = (int(v[0]) for v in np.nonzero(~finite))
            raise ValueError(f"feature store {self.store.path}: clip {clip_id!r}: its features hold "
                             f"{int((~finite).sum())} NaN/infinite value(s) (first at frame {frame}, column "
                             f"{column}); nothing of it was written. The extractor produced them from this "
                             "clip's media: check the file, or skip it with --on-error warn")
        if mask is None:
            mask = np.ones(len(features), bool)
        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu().numpy()
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.shape[0] != features.shape[0]:
            raise ValueError(f"feature store {self.store.path}: clip {clip_id!r}: mask has {mask.shape[0]} frames, "
                             f"features {features.shape[0]}")
        if features.shape[0] == 0:
            return self.add_missing(clip_id, MISSING_NO_FRAMES)
        with np.errstate(over="raise"):
            try:
                data = features.astype(self.store.dtype.newbyteorder("<"))
            except FloatingPointError:
                raise ValueError(f"feature store {self.store.path}: clip {clip_id!r}: values beyond the "
                                 f"{self.store.dtype} range (max |x| = {np.abs(features).max():.3g}); "
                                 "extract with --dtype float32") from None
        self._pending.append((clip_id, np.ascontiguousarray(data), mask, None))
        self._done.add(clip_id)
        self._maybe_commit()
        return True

    def add_missing(self, clip_id: str, reason: str) -> bool:
        """Record a clip that has no sequence (e.g. ``no_audio``): it counts as done but trains nothing."""
        if clip_id in self.store or clip_id in self._done:
            self.skipped += 1
            return False
        self._pending.append((clip_id, None, None, reason))
        self._done.add(clip_id)
        self._maybe_commit()
        return True

    def _maybe_commit(self) -> None:
        if len(self._pending) >= self.commit_every or time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Make every queued clip durable and visible: data fsynced first, then the segment index replaced."""
        if not self._pending:
            return
        seg_dir = self.store.path / SEGMENTS_DIR
        seg_dir.mkdir(parents=True, exist_ok=True)
        if self._seg is None or len(self._seg_clips) + len(self._seg_missing) >= self.segment_clips:
            self._seg = f"r{self.rank}-{uuid.uuid4().hex[:8]}"
            self._seg_rows, self._seg_clips, self._seg_missing, self._seg_sums = 0, {}, {}, {}
        base = seg_dir / self._seg
        data_path, mask_path = base.with_suffix(_data_suffix(self.store.dtype)), base.with_suffix(".mask")
        row_bytes = self.store.dim * self.store.dtype.itemsize
        clips, missing, sums = dict(self._seg_clips), dict(self._seg_missing), dict(self._seg_sums)
        rows = self._seg_rows
        try:
            rows = self._append(data_path, mask_path, rows, row_bytes, clips, missing, sums)
            index = {"format": STORE_FORMAT, "segment": self._seg, "rank": self.rank, "dim": self.store.dim,
                     "dtype": str(self.store.dtype), "rows": rows, "clips": clips, "checksums": sums,
                     "missing": missing}
            _atomic_write_synced(base.with_suffix(".json"), json.dumps(index) + "\n")
            _fsync_dir(seg_dir)
        except OSError as e:
            committed = self.written + sum(self.missing.values())
            full = disk_full(e, e.filename or data_path,
                             kept=f"the store {self.store.path} keeps every clip committed before "
                                  f"({committed} by this run, {len(self.store)} before it); the "
                                  f"{len(self._pending)} clips in flight were not written",
                             then="run the same command again: it resumes after the committed clips")
            if full is None:
                raise
            raise full from e
        for clip_id, data, mask, reason in self._pending:
            if reason is not None:
                self.missing[reason] += 1
            else:
                self.written += 1
                self.no_valid += int(not mask.any())
        self._seg_rows, self._seg_clips, self._seg_missing, self._seg_sums = rows, clips, missing, sums
        self._pending = []
        self._last_commit = time.monotonic()

    def _append(self, data_path: Path, mask_path: Path, rows: int, row_bytes: int, clips: dict, missing: dict,
                sums: dict) -> int:
        """Append the queued clips' rows after the committed ``rows``, fsynced; returns the new row count."""
        with open(data_path, "ab") as fd, open(mask_path, "ab") as fm:
            # A previous commit of this writer that failed half-way may have left rows past the index.
            fd.truncate(rows * row_bytes)
            fm.truncate(rows)
            fd.seek(rows * row_bytes)
            fm.seek(rows)
            for clip_id, data, mask, reason in self._pending:
                if reason is not None:
                    missing[clip_id] = reason
                    continue
                fd.write(data.tobytes())
                fm.write(mask.astype(np.uint8).tobytes())
                clips[clip_id] = [rows, int(data.shape[0]), int(mask.sum())]
                sums[clip_id] = _checksum(data, mask)
                rows += data.shape[0]
            fd.flush()
            fm.flush()
            os.fsync(fd.fileno())
            os.fsync(fm.fileno())
        return rows

    def close(self) -> None:
        """Commit what is queued; the writer cannot be used afterwards."""
        if not self._closed:
            try:
                self.commit()
            finally:
                self._closed = True
                self._lock.release()


def _atomic_write_synced(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def absent_message(store: FeatureStore, absent: Sequence[str], total: int) -> str:
    shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
    key = store.key
    hint = f"--extractor {key.get('extractor', store.spec.name)}"
    if key.get("detector"):
        hint += f" --detector {key['detector']}"
    return (f"feature store {store.path} lacks {len(absent)} of the manifest's {total} clips ({shown}): run "
            f"`lightning-emo extract --manifest MANIFEST {hint} --out {store.path.parent}` to add them "
            "(finished clips are skipped)")


__all__ = ["FeatureStore", "StoreWriter", "FeatureStoreError", "StaleStoreError", "absent_message", "cache_key",
           "key_differences", "MISSING_NO_AUDIO", "MISSING_NO_VIDEO", "MISSING_NO_FRAMES"]
