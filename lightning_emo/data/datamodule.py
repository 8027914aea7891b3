"""The DataModule over feature stores: clips of a manifest read from one store (or one per modality), padded.

:class:`FeatureDataModule` turns one store (or a dict of stores, one per modality) plus a
manifest into padded batches ``{"clip_id", "split", "label", "x" (B, T, D) float32,
"lengths" (B,), "mask" (B, T) bool}``; with several modalities the per-modality parts sit under
the modality name (``batch["audio"]["x"]``). Training batches come from length buckets
(:mod:`lightning_emo.data.samplers`).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from lightning_emo.data.checks import STAGE_USES, check_splits
from lightning_emo.data.manifest import Clip, read_manifest
from lightning_emo.data.samplers import LengthBucketSampler, eval_sampler, padding_item
from lightning_emo.data.store import FeatureStore, FeatureStoreError, absent_message
from lightning_emo.utils import log


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
        if i >= len(self.clips):  # a DDP rank's stand-in when there are fewer clips than ranks
            return padding_item(self, i)
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
        self._generators: dict[str, torch.Generator] = {}
        self._generator_states: dict[str, torch.Tensor] = {}
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
                raise FeatureStoreError(absent_message(store, absent, len(self.manifest.clips)))
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
        if stage in STAGE_USES:  # before any work: splits that cannot serve the stage are refused
            check_splits(self._clips["train"] + self._clips["val"] + self._clips["test"], self.classes,
                         STAGE_USES[stage], self.manifest.source,
                         warn=stage == "fit" and (self.trainer is None or self.trainer.is_global_zero))
        for split in ("train", "val", "test"):
            self.datasets[split] = FeatureDataset(self.stores, self._clips[split], self.classes,
                                                  self.max_frames if split == "train" else None)
        predict = [c for c in self.manifest.clips if c.split in self.predict_splits and c.clip_id not in self._left_out]
        self.datasets["predict"] = FeatureDataset(self.stores, predict, self.classes)

    def _generator(self, name: str) -> torch.Generator:
        """The seeded generator of one random draw of the training order (its state is checkpointed)."""
        g = self._generators[name] = torch.Generator().manual_seed(self.seed)
        if name in self._generator_states:
            g.set_state(self._generator_states.pop(name))
        return g

    def state_dict(self) -> dict[str, Any]:
        """The training order's generator states: a resumed ``fit`` draws what an uninterrupted one would."""
        return {f"generator/{name}": g.get_state() for name, g in self._generators.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._generator_states = {k.split("/", 1)[1]: v for k, v in state_dict.items() if k.startswith("generator/")}

    def _loader(self, name: str, sampler=None, shuffle: bool = False) -> DataLoader:
        if name not in self.datasets:
            self.setup()
        generator = self._generator(f"{name}_loader") if shuffle or sampler is not None else None
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
                                            generator=self._generator("train_sampler"))
            return self._loader("train", sampler=sampler)
        return self._loader("train", shuffle=True)

    # evaluation under DDP: each clip on exactly one process, never a padded repeat (metrics count it once)
    def val_dataloader(self) -> DataLoader:
        return self._loader("val", sampler=self._eval_sampler("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", sampler=self._eval_sampler("test"))

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", sampler=self._eval_sampler("predict"))

    def _eval_sampler(self, name: str):
        if name not in self.datasets:
            self.setup()
        return eval_sampler(self.datasets[name], self.trainer)


__all__ = ["FeatureDataModule", "FeatureDataset", "collate_features"]
