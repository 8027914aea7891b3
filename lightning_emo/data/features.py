"""The feature store (frozen-extractor outputs on disk, memory-mapped) and the DataModule that batches it.

A store is a directory per (corpus, extractor configuration)::

    STORE/
      store.json                 format, extractor spec, cache key, dim, dtype[, selection]
      .lock                      advisory lock: open writers hold it shared, cleanup needs it exclusive
      index.json                 merged index (a cache of the segment indexes, rebuilt when stale)
      segments/
        r0-3f2a9c1b.f16          rank 0's features: rows of D values, raw little-endian (np.memmap)
        r0-3f2a9c1b.mask         one byte per row: 1 = a real frame with content, 0 = no face found
        r0-3f2a9c1b.json         the segment's committed index: rows, clip_id -> [offset, length, n_valid],
                                 clip_id -> reason for clips recorded without a sequence (no audio track)
      selector.safetensors       (derived stores only) the fitted feature selector

Writes are atomic and resumable: a writer (one per rank) appends rows to its own segment and,
every few clips, fsyncs the data and then atomically replaces the segment's ``.json``. Only
rows a committed ``.json`` lists are ever read, so a killed run loses at most the clips in
flight and never leaves a corrupt entry; a re-run skips every committed clip. Readers merge
the segment indexes (lazily, or from ``index.json`` when it is up to date).

:class:`FeatureDataModule` turns one store (or a dict of stores, one per modality) plus a
manifest into padded batches ``{"clip_id", "split", "label", "x" (B, T, D) float32,
"lengths" (B,), "mask" (B, T) bool}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from lightning_emo.data.manifest import Clip, Manifest, read_manifest
from lightning_emo.data.samplers import LengthBucketSampler
from lightning_emo.extractors.base import ExtractorSpec
from lightning_emo.extractors.runner import MISSING_NO_AUDIO, MISSING_NO_FRAMES, MISSING_NO_VIDEO  # why no sequence
from lightning_emo.utils import atomic_write_text, log

STORE_FORMAT = 1
STORE_FILE = "store.json"
INDEX_FILE = "index.json"
SEGMENTS_DIR = "segments"
SELECTOR_FILE = "selector.safetensors"
LOCK_FILE = ".lock"
DTYPES = ("float16", "float32")
# Builder options that do not change the features (speed, where files are cached, a local weight
# file's path: the file itself enters the key through its sha256).
NON_CONTENT_OPTIONS = frozenset({"batch_size", "weights", "cache_dir", "local_files_only", "download"})


class FeatureStoreError(RuntimeError):
    """A store that cannot be used as asked; the message names the store and what was expected."""


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
        from lightning_emo.extractors.base import sha256_file

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
        elif path.exists() and any(path.iterdir()):
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
        return feats[e.offset:e.offset + e.length], mask[e.offset:e.offset + e.length]

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
        if index is None:
            index = self._merge_segments(listing, stamp)
        self._segments = list(index["segments"])
        self._rows = list(index["rows"])
        self._entries = {cid: _Entry(*e) for cid, e in index["clips"].items()}
        self._missing = dict(index["missing"])
        self.duplicates = int(index.get("duplicates", 0))
        self._maps = {}

    def _merge_segments(self, listing: list[Path], stamp: dict[str, list[int]]) -> dict[str, Any]:
        segments, rows, clips, missing, dup = [], [], {}, {}, 0
        for p in listing:
            try:
                seg = json.loads(p.read_text())
            except (json.JSONDecodeError, OSError) as e:  # os.replace makes this impossible short of tampering
                raise FeatureStoreError(f"feature store {self.path}: segment index {p.name} is unreadable "
                                        f"({e})") from None
            i = len(segments)
            segments.append(p.stem)
            rows.append(int(seg["rows"]))
            for cid, (offset, length, n_valid) in seg["clips"].items():
                if cid in clips or cid in missing:
                    dup += 1
                    continue
                clips[cid] = [i, offset, length, n_valid]
            for cid, reason in seg.get("missing", {}).items():
                if cid in clips or cid in missing:
                    dup += 1
                    continue
                missing[cid] = reason
        return {"format": STORE_FORMAT, "segments": segments, "rows": rows, "stamps": stamp, "clips": clips,
                "missing": missing, "duplicates": dup}

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

    def load_selector(self):
        """The fitted :class:`~lightning_emo.extractors.selection.FeatureSelector` of a derived store."""
        if not self.selection:
            raise FeatureStoreError(f"feature store {self.path} is not a selected (derived) store")
        from lightning_emo.extractors.selection import FeatureSelector

        return FeatureSelector.load(self.path / self.selection["selector"])


def _data_suffix(dtype: np.dtype) -> str:
    return ".f16" if np.dtype(dtype) == np.float16 else ".f32"


def _stat_stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _remove_store(path: Path) -> None:
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
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


class _StoreLock:
    """An advisory ``flock`` on ``STORE/.lock``: writers hold it shared, cleanup needs it exclusive (non-blocking).

    The OS drops the lock of a killed process, so a dead run never blocks cleanup. Where
    ``fcntl`` is missing (Windows) locking is a no-op and counts as acquired.
    """

    def __init__(self, store_path: Path, exclusive: bool):
        self.fd: int | None = None
        self.acquired = True
        try:
            import fcntl
        except ImportError:
            return
        self.fd = os.open(store_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except OSError:
            self.acquired = False
            self.release()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


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
        if not np.isfinite(features).all():
            raise ValueError(f"feature store {self.store.path}: clip {clip_id!r}: features contain NaN or inf")
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
            self._seg_rows, self._seg_clips, self._seg_missing = 0, {}, {}
        base = seg_dir / self._seg
        data_path, mask_path = base.with_suffix(_data_suffix(self.store.dtype)), base.with_suffix(".mask")
        row_bytes = self.store.dim * self.store.dtype.itemsize
        clips, missing = dict(self._seg_clips), dict(self._seg_missing)
        rows = self._seg_rows
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
                rows += data.shape[0]
            fd.flush()
            fm.flush()
            os.fsync(fd.fileno())
            os.fsync(fm.fileno())
        index = {"format": STORE_FORMAT, "segment": self._seg, "rank": self.rank, "dim": self.store.dim,
                 "dtype": str(self.store.dtype), "rows": rows, "clips": clips, "missing": missing}
        _atomic_write_synced(base.with_suffix(".json"), json.dumps(index) + "\n")
        _fsync_dir(seg_dir)
        for clip_id, data, mask, reason in self._pending:
            if reason is not None:
                self.missing[reason] += 1
            else:
                self.written += 1
                self.no_valid += int(not mask.any())
        self._seg_rows, self._seg_clips, self._seg_missing = rows, clips, missing
        self._pending = []
        self._last_commit = time.monotonic()

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


# --------------------------------------------------------------------------------------------
# random-forest feature selection -> a derived store


def select_features(
    store: FeatureStore | str | os.PathLike,
    manifest: Manifest | str | os.PathLike,
    k: int,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    overwrite: bool = False,
    root: str | os.PathLike | None = None,
    **selector_options: Any,
) -> FeatureStore:
    """Fit a random-forest :class:`FeatureSelector` on the store's TRAIN clips and write a derived store.

    The selector (:mod:`lightning_emo.extractors.selection`) samples frames with content of the
    training clips, labelled with their clip's class. The derived store keeps the ``k`` most
    important feature columns of every manifest clip (all splits); its key is the parent key plus
    the selection, and the fitted selector is saved in it (``selector.safetensors``) so that
    inference applies the same columns. Re-running with the same arguments reuses it.

    Args:
        store: the parent store (or its path).
        manifest: the manifest whose ``train`` split the selector is fitted on.
        k: how many features to keep (the paper: 1024 or 2048 of 9216).
        out: the derived store directory; default ``<parent>-sel<k>`` beside the parent.
        seed: seeds the frame subsampling and the forest.
        overwrite: replace a derived store whose key differs.
        root: the manifest's corpus root (only used to read the manifest).
        selector_options: ``FeatureSelector`` arguments (``unit``, ``n_estimators``, ``max_samples``, ...).
    """
    from lightning_emo.extractors.selection import FeatureSelector

    parent = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, root=root, check_files=False)
    if not 0 < k <= parent.dim:
        raise ValueError(f"select k={k}: must be between 1 and the store's dimension {parent.dim} ({parent.path})")
    if parent.selection:
        raise ValueError(f"feature store {parent.path} is already a selected store (k={parent.selection['k']}); "
                         "select from its parent")
    out = Path(out) if out is not None else parent.path.with_name(f"{parent.path.name}-sel{k}")
    absent = [c.clip_id for c in manifest.clips if c.clip_id not in parent]
    if absent:
        raise FeatureStoreError(_absent_message(parent, absent, len(manifest.clips)))
    train = [c for c in manifest.split("train") if parent.n_valid(c.clip_id) > 0]
    if not train:
        raise ValueError(f"manifest {manifest.source}: no clip of split 'train' has a frame with content in "
                         f"{parent.path} to fit the feature selector on")
    selector = FeatureSelector(k=k, seed=seed, **selector_options)
    selection_key = {"method": "random_forest", "k": int(k), "unit": selector.unit, "params": selector.params,
                     "fit_split": "train",
                     "train_clips": _digest(sorted(f"{c.clip_id}:{c.label}" for c in train))}
    key = {**parent.key, "selection": _jsonable(selection_key)}
    if (out / STORE_FILE).is_file():
        try:
            derived = FeatureStore.open(out, expect_key=key)
        except StaleStoreError:
            if not overwrite:
                raise
            _remove_store(out)
        else:
            if (out / SELECTOR_FILE).is_file():
                return _write_selected(parent, derived, derived.load_selector(), manifest.clips)
            _remove_store(out)  # killed between creating the store and saving its selector

    t0 = time.monotonic()
    log.info(f"fitting the random-forest feature selector on {len(train)} train clips ({parent.dim} features, "
             f"keeping {k})")
    features, masks = zip(*(parent.get(c.clip_id) for c in train))
    selector.fit(list(features), [manifest.label_index(c.label) for c in train], list(masks))
    log.info(f"selector fitted on {selector.info.get('samples')} frames in {time.monotonic() - t0:.1f} s")
    selection_meta = {**selection_key, "parent": str(parent.path.resolve()), "parent_key": parent.key,
                      "parent_dim": parent.dim, "selector": SELECTOR_FILE}
    derived = FeatureStore.create(out, parent.spec, key, dtype=str(parent.dtype), dim=k,
                                  extra_meta={"selection": selection_meta})
    with atomic_path_keep_suffix(out / SELECTOR_FILE) as tmp:
        selector.save(tmp)
    return _write_selected(parent, derived, selector, manifest.clips)


def _write_selected(parent: FeatureStore, derived: FeatureStore, selector, clips: Sequence[Clip]) -> FeatureStore:
    with derived.writer(rank=0, commit_every=64) as w:
        for c in clips:
            if c.clip_id in derived:
                continue
            if c.clip_id in parent.missing:
                w.add_missing(c.clip_id, parent.missing[c.clip_id])
                continue
            feats, mask = parent.get(c.clip_id)
            w.add(c.clip_id, selector.transform(np.asarray(feats)), np.asarray(mask))
    derived.merge()
    log.info(f"wrote selected store {derived.path}: {derived.dim} of {parent.dim} features, {len(derived)} clips")
    return derived


@contextlib.contextmanager
def atomic_path_keep_suffix(path: Path) -> Iterator[Path]:
    """Like :func:`lightning_emo.utils.atomic_path`, with a temporary name that keeps ``path``'s suffix."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _digest(items: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def _absent_message(store: FeatureStore, absent: Sequence[str], total: int) -> str:
    shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
    key = store.key
    hint = f"--extractor {key.get('extractor', store.spec.name)}"
    if key.get("detector"):
        hint += f" --detector {key['detector']}"
    return (f"feature store {store.path} lacks {len(absent)} of the manifest's {total} clips ({shown}): run "
            f"`lightning-emo extract --manifest MANIFEST {hint} --out {store.path.parent}` to add them "
            "(finished clips are skipped)")


# --------------------------------------------------------------------------------------------
# datasets and the DataModule


class FeatureDataset(Dataset):
    """Clips of one split read from one or more stores.

    ``__getitem__`` returns ``{"clip_id", "split", "label": int, <name>: {"x": (T, D) float32,
    "mask": (T,) bool}}`` for each store name. With ``max_frames``, sequences longer than that are
    cropped to a random window (that holds a frame with content whenever the clip has one).
    """

    def __init__(self, stores: Mapping[str, FeatureStore], clips: Sequence[Clip], classes: Sequence[str],
                 max_frames: int | None = None):
        self.stores = dict(stores)
        self.clips = list(clips)
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip = self.clips[i]
        item: dict[str, Any] = {"clip_id": clip.clip_id, "split": clip.split, "label": self.class_index[clip.label]}
        for name, store in self.stores.items():
            feats, mask = store.get(clip.clip_id)
            if self.max_frames and len(mask) > self.max_frames:
                start = _crop_start(mask, self.max_frames)
                feats, mask = feats[start:start + self.max_frames], mask[start:start + self.max_frames]
            item[name] = {"x": torch.from_numpy(np.array(feats, dtype=np.float32)),
                          "mask": torch.from_numpy(np.array(mask, dtype=bool))}
        return item


def _crop_start(mask: np.ndarray, n: int) -> int:
    """A uniform window start; re-centred on a random valid frame when the window would hold none."""
    t = len(mask)
    start = int(torch.randint(0, t - n + 1, ()).item())
    if not mask[start:start + n].any():
        valid = np.flatnonzero(mask)
        if len(valid):
            j = int(valid[torch.randint(0, len(valid), ()).item()])
            lo, hi = max(0, j - n + 1), min(j, t - n)
            start = int(torch.randint(lo, hi + 1, ()).item())
    return start


def collate_features(items: Sequence[dict[str, Any]], names: Sequence[str], single: bool = False) -> dict[str, Any]:
    """Pad a list of :class:`FeatureDataset` items into a batch.

    Returns ``{"clip_id": list[str], "split": list[str], "label": LongTensor (B,)}`` plus, per
    store name, ``{"x": (B, T, D) float32 zero-padded, "lengths": (B,) long, "mask": (B, T) bool}``
    (mask False on padding and on frames without content) under ``batch[name]``; with
    ``single``, those three sit at the top level instead.
    """
    batch: dict[str, Any] = {
        "clip_id": [it["clip_id"] for it in items],
        "split": [it["split"] for it in items],
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
    }
    for name in names:
        seqs = [it[name] for it in items]
        lengths = torch.tensor([s["x"].shape[0] for s in seqs], dtype=torch.long)
        t_max = max(1, int(lengths.max())) if len(seqs) else 1
        dim = seqs[0]["x"].shape[1] if seqs else 0
        x = torch.zeros(len(seqs), t_max, dim)
        mask = torch.zeros(len(seqs), t_max, dtype=torch.bool)
        for i, s in enumerate(seqs):
            n = s["x"].shape[0]
            x[i, :n] = s["x"]
            mask[i, :n] = s["mask"]
        part = {"x": x, "lengths": lengths, "mask": mask}
        if single:
            batch.update(part)
        else:
            batch[name] = part
    return batch


class _Collate:
    """A picklable collate function (DataLoader workers may be spawned)."""

    def __init__(self, names: Sequence[str], single: bool):
        self.names, self.single = list(names), single

    def __call__(self, items):
        return collate_features(items, self.names, self.single)


class FeatureDataModule(pl.LightningDataModule):
    """Batches of stored feature sequences for training, evaluating and predicting heads.

    Args:
        manifest: the manifest CSV (labels and splits; media files need not be present).
        features: one store directory, or ``{name: store directory}`` for several modalities
            (e.g. ``{"audio": ..., "face": ...}``); batches then hold ``batch[name]["x"]`` etc.
        batch_size: clips per batch.
        num_workers: DataLoader worker processes (they read the memory-mapped segments).
        sampler: ``random`` (shuffle) or ``balanced`` (``WeightedRandomSampler`` with weights
            inversely proportional to the training class frequencies, drawn with replacement).
        predict_splits: the splits ``predict`` runs over, in one DataLoader (``batch["split"]`` tells them apart).
        max_frames: crop training sequences longer than this to a random window (None = whole).
        bucket_by_length: training batches of clips of similar length
            (:class:`~lightning_emo.data.samplers.LengthBucketSampler`: less padding, the same
            model; with either ``sampler``); evaluation batches keep the manifest order.
        root: the manifest's corpus root (default: from its sidecar).
        seed: seed of the training sampler.

    Batches: ``{"clip_id": list[str], "split": list[str], "label": LongTensor (B,), "x": FloatTensor
    (B, T, D), "lengths": LongTensor (B,), "mask": BoolTensor (B, T)}`` (True = a real frame with
    content). A clip without any frame with content (no face anywhere, no audio track) is left
    out for that store (with several stores: only when no store has content for it, otherwise
    the empty modality gets ``lengths`` 0); :meth:`missing_clip_ids` lists them.
    """

    def __init__(
        self,
        manifest: str,
        features: str | dict[str, str],
        batch_size: int = 32,
        num_workers: int = 0,
        sampler: str = "random",
        predict_splits: list[str] = ["train", "val", "test"],  # noqa: B006 (jsonargparse shows the default)
        max_frames: int | None = None,
        bucket_by_length: bool = True,
        root: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if sampler not in ("random", "balanced"):
            raise ValueError(f"sampler must be 'random' or 'balanced', got {sampler!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1 or None, got {max_frames}")
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.sampler = batch_size, num_workers, sampler
        self.predict_splits = list(predict_splits)
        self.max_frames, self.seed, self.bucket_by_length = max_frames, seed, bucket_by_length
        self.manifest = read_manifest(manifest, root=root, check_files=False)
        self._single = isinstance(features, (str, os.PathLike))
        if self._single:
            store = FeatureStore.open(features)
            self.stores: dict[str, FeatureStore] = {store.modality: store}
        else:
            if not features:
                raise ValueError("features: give a store directory or a non-empty {name: store directory} dict")
            self.stores = {name: FeatureStore.open(p) for name, p in features.items()}
        for name, store in self.stores.items():
            absent = [c.clip_id for c in self.manifest.clips if c.clip_id not in store]
            if absent:
                raise FeatureStoreError(_absent_message(store, absent, len(self.manifest.clips)))
        # A clip trains nothing when no store has a frame with content for it.
        self._empty = {name: {c.clip_id for c in self.manifest.clips if store.n_valid(c.clip_id) == 0}
                       for name, store in self.stores.items()}
        left_out = set.intersection(*self._empty.values())
        self._left_out = left_out
        self._clips = {s: [c for c in self.manifest.clips if c.split == s and c.clip_id not in left_out]
                       for s in ("train", "val", "test", "")}
        if left_out:
            per_split = Counter(c.split or "(none)" for c in self.manifest.clips if c.clip_id in left_out)
            reasons = Counter()
            for store in self.stores.values():
                for cid in left_out:
                    reasons[store.missing.get(cid, "no_face" if store.modality == "face" else "no_valid_frame")] += 1
            splits = ", ".join(f"{s}={n}" for s, n in sorted(per_split.items()))
            why = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
            log.info(f"FeatureDataModule: leaving out {len(left_out)} of {len(self.manifest.clips)} clips with no "
                     f"frame with content ({splits}; {why}); predict writes empty rows for them")
        self.datasets: dict[str, FeatureDataset] = {}

    # ---- what the model links to

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    @property
    def input_dims(self) -> dict[str, int]:
        """Store name (the modality, for a single store) -> feature dimension."""
        return {name: store.dim for name, store in self.stores.items()}

    @property
    def input_dim(self) -> int:
        """The feature dimension of the single store (with several stores: see :attr:`input_dims`)."""
        if len(self.stores) != 1:
            raise AttributeError(f"FeatureDataModule has {len(self.stores)} stores ({', '.join(self.stores)}): "
                                 "use input_dims")
        return next(iter(self.stores.values())).dim

    @property
    def modality(self) -> str:
        """``audio`` or ``face`` for one store; the store names joined by ``+`` for several."""
        if self._single:
            return next(iter(self.stores.values())).modality
        return "+".join(self.stores)

    @property
    def extractor_spec(self) -> dict[str, Any]:
        """The extractor spec (``ExtractorSpec.to_dict()``) of the single store; ``{name: spec}`` for several.

        A selected store's spec is its parent extractor's; the selection travels in :attr:`selection`.
        """
        if self._single:
            return next(iter(self.stores.values())).spec.to_dict()
        return {name: s.spec.to_dict() for name, s in self.stores.items()}

    @property
    def selection(self) -> dict[str, Any] | None:
        """The single store's feature selection (``store.json`` ``selection``) or None; ``{name: ...}`` for several."""
        if self._single:
            return next(iter(self.stores.values())).selection
        return {name: s.selection for name, s in self.stores.items()}

    @property
    def class_counts(self) -> list[int]:
        """Training clips per class (index = class index), counting only the clips that are batched."""
        counts = Counter(c.label for c in self._clips["train"])
        return [counts[c] for c in self.manifest.classes]

    def missing_clip_ids(self, split: str | None = None) -> list[str]:
        """Clips left out of batches (no frame with content in any store), in manifest order; or of one split."""
        return [c.clip_id for c in self.manifest.clips
                if c.clip_id in self._left_out and (split is None or c.split == split)]

    def clips(self, split: str) -> list[Clip]:
        """The clips of ``split`` that are batched."""
        return list(self._clips.get(split, []))

    # ---- Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            self.datasets[split] = FeatureDataset(self.stores, self._clips[split], self.classes,
                                                  self.max_frames if split == "train" else None)
        predict = [c for c in self.manifest.clips if c.split in self.predict_splits and c.clip_id not in self._left_out]
        self.datasets["predict"] = FeatureDataset(self.stores, predict, self.classes)

    def _loader(self, name: str, sampler=None, shuffle: bool = False) -> DataLoader:
        if name not in self.datasets:
            self.setup()
        generator = torch.Generator().manual_seed(self.seed) if shuffle or sampler is not None else None
        return DataLoader(self.datasets[name], batch_size=self.batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=_Collate(list(self.stores), self._single),
                          generator=generator, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        if not self._clips["train"]:
            raise FeatureStoreError(f"manifest {self.manifest.source}: no usable clip in split 'train' "
                                    f"({len(self.missing_clip_ids('train'))} left out for lack of content)")
        clips = self._clips["train"]
        weights = None
        if self.sampler == "balanced":
            counts = Counter(c.label for c in clips)
            weights = torch.tensor([1.0 / counts[c.label] for c in clips], dtype=torch.double)
        if self.bucket_by_length:
            lengths = [max(store.length(c.clip_id) for store in self.stores.values()) for c in clips]
            if self.max_frames:
                lengths = [min(n, self.max_frames) for n in lengths]
            # under DDP each rank takes every world_size-th index: a bucket spans all ranks' batches
            world = self.trainer.world_size if self.trainer is not None else 1
            return self._loader("train", sampler=LengthBucketSampler(
                lengths, self.batch_size * world, weights=weights, seed=self.seed))
        if weights is not None:
            sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                            generator=torch.Generator().manual_seed(self.seed))
            return self._loader("train", sampler=sampler)
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


__all__ = ["FeatureStore", "StoreWriter", "FeatureStoreError", "StaleStoreError", "FeatureDataModule",
           "FeatureDataset", "collate_features", "cache_key", "key_differences", "select_features",
           "MISSING_NO_AUDIO", "MISSING_NO_VIDEO", "MISSING_NO_FRAMES"]
