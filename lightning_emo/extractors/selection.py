"""Random-forest feature selection: keep the k feature dimensions a forest finds most important (the paper's v1024/v2048).

The selector is fitted once on the training split and stored beside the features, so that
validation, test and inference apply exactly the same dimensions.

Fit data (``unit``):

* ``frames`` (default): every valid frame (mask True) of a training clip is one sample labelled
  with its clip's label; frames are subsampled (seeded) to at most ``max_frames_per_clip`` per
  clip and ``max_samples`` overall, so long clips do not dominate and the forest stays fast.
* ``clips``: one sample per clip, the mean of its valid frames.

Importance is scikit-learn's impurity-based ``feature_importances_`` of a
``RandomForestClassifier`` (``max_features="sqrt"``, seeded); the k highest are kept, most
important first (ties by lower index).

:func:`select_features` fits a selector on a feature store's training clips and writes the
derived store (``<parent>-sel<k>``) that training and inference read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from lightning_emo.data.manifest import Clip, Manifest, read_manifest
from lightning_emo.data.store import (
    SELECTOR_FILE,
    STORE_FILE,
    FeatureStore,
    FeatureStoreError,
    StaleStoreError,
    _jsonable,
    _remove_store,
    absent_message,
)
from lightning_emo.utils import log

__all__ = ["FeatureSelector", "select_features"]

_FORMAT = "lightning_emo.FeatureSelector/1"


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


class FeatureSelector:
    """Select the ``k`` most important feature dimensions by random-forest importance.

    Args:
        k: dimensions to keep (1024 or 2048 in the paper).
        unit: ``frames`` or ``clips`` (see the module docstring).
        n_estimators, max_depth, min_samples_leaf: the forest's parameters.
        max_samples: at most this many training samples (seeded subsample).
        max_frames_per_clip: at most this many frames per clip (``unit="frames"``).
        seed: seeds the subsampling and the forest.
        n_jobs: scikit-learn workers for the forest (the result does not depend on it).

    Attributes (after :meth:`fit` or :meth:`load`):
        indices: ``(k,)`` int64, the kept dimensions, most important first.
        importances: ``(D,)`` float64 importances of all input dimensions.
        dim: ``D``, the input dimension.
        params: the parameters that determine the result (what a cache key should hold).
        info: fit details (samples, clips, classes, forest parameters), stored with the selection.
    """

    def __init__(self, k: int = 1024, unit: str = "frames", n_estimators: int = 100, max_depth: int | None = None,
                 min_samples_leaf: int = 1, max_samples: int = 20000, max_frames_per_clip: int = 32, seed: int = 0,
                 n_jobs: int | None = 1):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if unit not in ("frames", "clips"):
            raise ValueError(f"unit must be 'frames' or 'clips', got {unit!r}")
        self.k = int(k)
        self.unit = unit
        self.params = dict(n_estimators=int(n_estimators), max_depth=max_depth, min_samples_leaf=int(min_samples_leaf),
                           max_samples=int(max_samples), max_frames_per_clip=int(max_frames_per_clip), seed=int(seed))
        self.n_jobs = n_jobs  # not in params: it does not change the result
        self.indices: np.ndarray | None = None
        self.importances: np.ndarray | None = None
        self.dim: int | None = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------

    def _samples(self, features, labels, masks) -> tuple[np.ndarray, np.ndarray, int]:
        """Build ``(X (M, D), y (M,), clips used)`` from clips' frame features."""
        if (isinstance(features, torch.Tensor) and features.dim() == 3) or (isinstance(features, np.ndarray) and features.ndim == 3):
            if masks is None:
                raise ValueError("a padded (B, T, D) features tensor needs masks (B, T) saying which frames are real")
            features = list(features)
            masks = list(masks)
        labels = [int(v) for v in (labels.tolist() if isinstance(labels, (torch.Tensor, np.ndarray)) else labels)]
        if len(labels) != len(features):
            raise ValueError(f"FeatureSelector.fit: {len(features)} clips but {len(labels)} labels")
        if masks is not None and len(masks) != len(features):
            raise ValueError(f"FeatureSelector.fit: {len(features)} clips but {len(masks)} masks")
        rng = np.random.default_rng(self.params["seed"])
        xs, ys, used = [], [], 0
        dim = None
        for i, f in enumerate(features):
            f = _to_numpy(f)
            if f.ndim != 2:
                raise ValueError(f"FeatureSelector.fit: clip {i} features must be (T, D), got shape {f.shape}")
            if dim is None:
                dim = f.shape[1]
            elif f.shape[1] != dim:
                raise ValueError(f"FeatureSelector.fit: clip {i} has {f.shape[1]}-d features, earlier clips {dim}-d")
            if masks is not None:
                m = _to_numpy(masks[i]).astype(bool).reshape(-1)
                if len(m) != len(f):
                    raise ValueError(f"FeatureSelector.fit: clip {i} has {len(f)} frames but a mask of {len(m)}")
                f = f[m]
            if len(f) == 0:
                continue  # no face in this clip: nothing to learn from
            used += 1
            if self.unit == "clips":
                xs.append(f.mean(axis=0, keepdims=True))
            else:
                cap = self.params["max_frames_per_clip"]
                if len(f) > cap:
                    f = f[np.sort(rng.choice(len(f), cap, replace=False))]
                xs.append(f)
            ys.append(np.full(len(xs[-1]), labels[i], dtype=np.int64))
        if not xs:
            raise ValueError("FeatureSelector.fit: no valid frames in any clip (every mask is False)")
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(x) > self.params["max_samples"]:
            keep = np.sort(rng.choice(len(x), self.params["max_samples"], replace=False))
            x, y = x[keep], y[keep]
        return x, y, used

    def fit(self, features: Sequence | torch.Tensor | np.ndarray, labels: Sequence[int] | torch.Tensor,
            masks: Sequence | torch.Tensor | None = None) -> "FeatureSelector":
        """Fit on the training split.

        Args:
            features: per clip a ``(T_i, D)`` array/tensor, or a padded ``(B, T, D)`` tensor.
            labels: ``(B,)`` clip labels.
            masks: per clip ``(T_i,)`` bool (True = a real frame with a face), or ``(B, T)``;
                required for a padded tensor, optional for a list (default: all frames).
        """
        from sklearn.ensemble import RandomForestClassifier

        x, y, clips = self._samples(features, labels, masks)
        dim = x.shape[1]
        if self.k > dim:
            raise ValueError(f"FeatureSelector: k={self.k} is larger than the feature dimension {dim}")
        if len(np.unique(y)) < 2:
            raise ValueError(f"FeatureSelector.fit needs at least two classes, got labels {np.unique(y).tolist()}")
        p = self.params
        forest = RandomForestClassifier(n_estimators=p["n_estimators"], max_depth=p["max_depth"],
                                        min_samples_leaf=p["min_samples_leaf"], max_features="sqrt",
                                        random_state=p["seed"], n_jobs=self.n_jobs)
        forest.fit(x, y)
        imp = forest.feature_importances_.astype(np.float64)
        self.importances = imp
        self.indices = np.argsort(-imp, kind="stable")[: self.k].astype(np.int64)
        self.dim = int(dim)
        self.info = dict(unit=self.unit, samples=int(len(x)), clips=int(clips),
                         classes=sorted(int(c) for c in np.unique(y)), **{k: v for k, v in p.items()},
                         importance="sklearn RandomForestClassifier.feature_importances_ (impurity)")
        return self

    # ------------------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self.indices is None:
            raise RuntimeError("FeatureSelector is not fitted: call fit() or FeatureSelector.load()")

    def transform(self, x):
        """Keep the selected dimensions of the last axis: ``(..., D) -> (..., k)`` (tensor or array)."""
        self._check_fitted()
        if x.shape[-1] != self.dim:
            raise ValueError(f"FeatureSelector was fitted on {self.dim}-d features, got shape {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            return x.index_select(-1, torch.as_tensor(self.indices, device=x.device))
        return np.take(np.asarray(x), self.indices, axis=-1)

    __call__ = transform

    def fit_transform(self, features, labels, masks=None):
        self.fit(features, labels, masks)
        if isinstance(features, list):
            return [self.transform(f) for f in features]
        return self.transform(features)

    # ------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        self._check_fitted()
        return dict(format=_FORMAT, k=self.k, dim=self.dim, unit=self.unit, params=self.params, info=self.info,
                    indices=self.indices.tolist(), importances=self.importances.tolist())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the selection: ``.json`` (everything as JSON) or ``.safetensors`` (tensors + JSON metadata)."""
        state = self.state()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            tensors = {"indices": np.asarray(state.pop("indices"), dtype=np.int64),
                       "importances": np.asarray(state.pop("importances"), dtype=np.float64)}
            save_file(tensors, str(path), metadata={"format": _FORMAT, "state": json.dumps(state)})
        elif path.suffix == ".json":
            path.write_text(json.dumps(state, indent=1))
        else:
            raise ValueError(f"FeatureSelector.save: expected a .json or .safetensors path, got {path}")
        return path

    @classmethod
    def from_store(cls, store: FeatureStore) -> "FeatureSelector":
        """The selector a derived store was written with (:func:`select_features`)."""
        return cls.load(store.selector_path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureSelector":
        """Read a selection written by :meth:`save`."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path} is not a FeatureSelector file (metadata format {meta.get('format')!r}, "
                                 f"expected {_FORMAT!r})")
            state = json.loads(meta["state"])
            tensors = load_file(str(path))
            state["indices"], state["importances"] = tensors["indices"], tensors["importances"]
        elif path.suffix == ".json":
            state = json.loads(path.read_text())
            if state.get("format") != _FORMAT:
                raise ValueError(f"{path} is not a FeatureSelector file (format {state.get('format')!r}, "
                                 f"expected {_FORMAT!r})")
        else:
            raise ValueError(f"FeatureSelector.load: expected a .json or .safetensors path, got {path}")
        sel = cls(k=state["k"], unit=state["unit"], **state["params"])
        sel.indices = np.asarray(state["indices"], dtype=np.int64)
        sel.importances = np.asarray(state["importances"], dtype=np.float64)
        sel.dim = int(state["dim"])
        sel.info = dict(state["info"])
        if sel.indices.shape != (sel.k,) or sel.indices.min() < 0 or sel.indices.max() >= sel.dim:
            raise ValueError(f"{path}: indices must be {sel.k} values in [0, {sel.dim}), got shape "
                             f"{sel.indices.shape}")
        return sel

    def __repr__(self) -> str:
        fitted = f"dim={self.dim}" if self.indices is not None else "not fitted"
        return f"FeatureSelector(k={self.k}, unit={self.unit!r}, {fitted})"


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
        raise FeatureStoreError(absent_message(parent, absent, len(manifest.clips)))
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
                return _write_selected(parent, derived, FeatureSelector.from_store(derived), manifest.clips)
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
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]
