"""Feature-store integrity: per-clip checksums and the consistency of segments with ``store.json``.

:mod:`lightning_emo.data.store` calls these when it opens a store (every segment's ``dim``,
``dtype`` and file sizes), when it reads a clip (its checksum) and when it meets segments
written before checksums existed (:func:`segment_checksums`, trust on first use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xxhash

from lightning_emo.errors import UserError


class FeatureStoreError(UserError, RuntimeError):
    """A store that cannot be used as asked; the message names the store and what was expected.

    Defined here, below the store, so that these checks raise the store's own error; import it
    from :mod:`lightning_emo.data.store`.
    """


def checksum(feats: np.ndarray, mask: np.ndarray) -> str:
    """xxh3-64 of a clip's rows (as stored: little-endian) then its mask bytes (one 0/1 byte per row)."""
    h = xxhash.xxh3_64()
    h.update(np.ascontiguousarray(feats))
    h.update(np.ascontiguousarray(mask, dtype=np.bool_))
    return h.hexdigest()


def data_suffix(dtype: np.dtype) -> str:
    return ".f16" if np.dtype(dtype) == np.float16 else ".f32"


def check_segments(seg_dir: Path, store_file: str, dim: int, dtype: np.dtype, index: Mapping[str, Any]) -> None:
    """Every segment as ``store.json`` describes it: its dim and dtype, files at least as long as committed.

    Raises:
        FeatureStoreError: naming the segment and what ``store.json`` should say (an edited ``dim``
            would otherwise reinterpret the rows), or the truncated file.
    """
    store = seg_dir.parent
    dtype = np.dtype(dtype)
    for name, rows, seg_dim, seg_dtype in zip(index["segments"], index["rows"], index["dims"], index["dtypes"]):
        if (seg_dim is not None and int(seg_dim) != dim) or (seg_dtype is not None and seg_dtype != str(dtype)):
            raise FeatureStoreError(
                f"feature store {store}: {store_file} says dim {dim}, dtype {dtype} but segment {name} was "
                f"written with dim {seg_dim}, dtype {seg_dtype}: {store_file} was edited (or mixed with another "
                f"store's segments); reading on would reinterpret the data. Restore \"dim\": {seg_dim}, "
                f"\"dtype\": \"{seg_dtype}\" in {store_file}, or re-run extract into a new directory")
        base = seg_dir / name
        for p, need in ((base.with_suffix(data_suffix(dtype)), rows * dim * dtype.itemsize),
                        (base.with_suffix(".mask"), rows)):
            size = p.stat().st_size if p.is_file() else -1
            if rows and size < need:
                raise FeatureStoreError(
                    f"feature store {store}: segment file {p.name} holds {max(size, 0)} bytes, its index "
                    f"{name}.json commits {need}: the file was truncated or removed after writing; re-run "
                    "extract into a new directory")


def segment_checksums(seg_dir: Path, name: str, seg: Mapping[str, Any], store_file: str, dim: int,
                      dtype: np.dtype) -> dict[str, str]:
    """``clip_id -> checksum`` of one segment written before checksums existed, after checking it.

    Raises:
        FeatureStoreError: the segment does not fit ``store.json``, or a clip holds NaN/Inf.
    """
    rows = int(seg["rows"])
    check_segments(seg_dir, store_file, dim, dtype, {"segments": [name], "rows": [rows], "dims": [seg.get("dim")],
                                                      "dtypes": [seg.get("dtype")]})
    dtype = np.dtype(dtype)
    base = seg_dir / name
    if rows:
        feats = np.memmap(base.with_suffix(data_suffix(dtype)), dtype=dtype.newbyteorder("<"), mode="r",
                          shape=(rows, dim))
        mask = np.memmap(base.with_suffix(".mask"), dtype=np.bool_, mode="r", shape=(rows,))
    else:
        feats, mask = np.zeros((0, dim), dtype), np.zeros((0,), bool)
    sums = {}
    for cid, (offset, length, _) in seg["clips"].items():
        x = feats[offset:offset + length]
        if not np.isfinite(x).all():
            raise FeatureStoreError(f"feature store {seg_dir.parent}: clip {cid!r} (segment {name}) holds NaN or "
                                      "infinite features: re-run extract into a new directory")
        sums[cid] = checksum(x, mask[offset:offset + length])
    return sums


__all__ = ["FeatureStoreError", "checksum", "check_segments", "segment_checksums", "data_suffix"]
