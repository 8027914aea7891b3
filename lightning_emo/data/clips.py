"""Raw clips as batches: a Dataset that decodes each clip's media on access, its collate, and the DataModules.

Decoding happens in ``ClipDataset.__getitem__``, so DataLoader workers do it in parallel. A
batch (:func:`collate_clips`) is a dict with fixed keys (see ARCHITECTURE.md):

* ``clip_id``, ``split``, ``speaker``: ``list[str]``; ``label``: ``LongTensor (B,)`` (index into the classes)
* audio (when ``"audio"`` is among the modalities): ``waveform`` ``(B, S)`` float32, zero-padded;
  ``waveform_lengths`` ``LongTensor (B,)``; ``has_audio`` ``BoolTensor (B,)``
* video (when ``"video"`` is among them): ``frames``, ``frame_times``, ``frame_lengths``
  ``LongTensor (B,)``, ``has_video`` ``BoolTensor (B,)``. With a ``frame_size`` the frames are one
  zero-padded uint8 tensor ``(B, N, H, W, 3)`` and ``frame_times`` a float64 ``(B, N)`` tensor
  (plus ``frame_sizes`` ``(B, 2)``, each clip's own H, W: an ``int`` size keeps each clip's aspect
  ratio, so smaller clips are padded at the bottom/right); without one (native size) they are
  lists of per-clip tensors ``(N_i, H_i, W_i, 3)`` and ``(N_i,)``.

A clip whose file lacks a requested track (an audio-only file when video is asked for, a video
without an audio track) does not fail the batch: its ``has_audio``/``has_video`` is False and
its length 0. Broken files (corrupt, truncated, nothing in the clip's window) raise a
:class:`~lightning_emo.data.media.MediaError` naming the clip, unless ``on_error="warn"``, which
logs the error and gives the clip length 0 with ``has_*`` True.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_emo.data.corpora.cheavd import CLASSES as CHEAVD_CLASSES
from lightning_emo.data.checks import STAGE_USES, check_splits
from lightning_emo.data.samplers import eval_sampler, padding_item
from lightning_emo.data.manifest import SPLITS, Clip, Manifest, ManifestError, read_manifest, sidecar_path
from lightning_emo.data.media import MediaError, MissingStreamError, load_audio, load_frames, probe
from lightning_emo.utils import log

MODALITIES = ("audio", "video")
ON_ERROR = ("raise", "warn")
END_SLACK = 0.05  # seconds a manifest end may pass a file's reported duration (container rounding)


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):
        modalities = (modalities,)
    mods = tuple(dict.fromkeys(modalities))
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)}")
    return mods


def _check_frame_size(frame_size) -> int | tuple[int, int] | None:
    if frame_size is None:
        return None
    if isinstance(frame_size, int):
        if frame_size <= 0:
            raise ValueError(f"frame_size must be positive, got {frame_size}")
        return frame_size
    size = tuple(int(s) for s in frame_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"frame_size must be an int (shorter side) or (H, W), got {frame_size}")
    return size  # type: ignore[return-value]


class ClipDataset(Dataset):
    """The clips of some splits of a manifest, decoded per item.

    Args:
        manifest: a :class:`Manifest` (from :func:`read_manifest`).
        splits: a split name or several; ``None`` = every clip (also those without a split).
        modalities: ``"audio"`` and/or ``"video"``: only these are decoded.
        sample_rate: audio rate (Hz); the waveform is mono float32.
        fps: frames per second to sample (nearest frame per target time); ``None`` = native.
        frame_size: ``int`` = shorter side (aspect kept), ``(H, W)`` = exact, ``None`` = native size.
        max_seconds: keep at most this much of each clip (from its start).
        missing_ok: a missing track gives ``has_*`` False and length 0 (else it raises).
        on_error: ``"raise"`` (default) or ``"warn"`` for broken media (see the module docstring).
        decode_threads: video decoder threads per clip (0 = FFmpeg's choice, one per core); with
            several DataLoader workers, 1 avoids starting workers x cores threads.

    Items are dicts: ``clip_id``, ``split``, ``speaker``, ``path``, ``label`` (int), and per modality
    ``waveform`` float32 ``(S,)`` + ``has_audio``; ``frames`` uint8 ``(N, H, W, 3)`` + ``frame_times``
    float64 ``(N,)`` + ``has_video`` + ``resized`` (frames were resized to ``frame_size``:
    :func:`collate_clips` pads them into one tensor only then).
    """

    def __init__(
        self,
        manifest: Manifest,
        splits: str | Sequence[str] | None = None,
        modalities: Sequence[str] = MODALITIES,
        sample_rate: int = 16000,
        fps: float | None = None,
        frame_size: int | tuple[int, int] | None = None,
        max_seconds: float | None = None,
        missing_ok: bool = True,
        on_error: str = "raise",
        decode_threads: int = 0,
    ):
        self.manifest = manifest
        self.splits = None if splits is None else ((splits,) if isinstance(splits, str) else tuple(splits))
        self.clips: list[Clip] = list(manifest.clips) if self.splits is None else manifest.split(self.splits)
        self.modalities = _check_modalities(modalities)
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive or None, got {fps}")
        if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
            raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.sample_rate, self.fps = int(sample_rate), fps
        self.frame_size = _check_frame_size(frame_size)
        self.max_seconds, self.missing_ok, self.on_error = max_seconds, missing_ok, on_error
        if decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0, got {decode_threads}")
        self.decode_threads = decode_threads

    def __len__(self) -> int:
        return len(self.clips)

    def window(self, clip: Clip) -> tuple[float | None, float | None]:
        """The ``(start, end)`` to decode: the clip's own, cut to ``max_seconds``."""
        start, end = clip.start, clip.end
        if self.max_seconds is not None:
            limit = (start or 0.0) + self.max_seconds
            end = limit if end is None else min(end, limit)
        return start, end

    def _fail(self, clip: Clip, error: MediaError) -> MediaError:
        where = f"clip {clip.clip_id!r} of manifest {self.manifest.source}"
        if isinstance(error, MissingStreamError):
            return MissingStreamError(error.path, error.kind, f"{error.problem} ({where})")
        return MediaError(error.path, f"{error.problem} ({where})")

    def _check_end(self, clip: Clip, path) -> None:
        """Refuse a manifest ``end`` beyond the media file's duration (decoding would cut the clip short silently)."""
        if clip.end is None:
            return
        try:
            duration = probe(path).duration
        except MediaError:
            return  # the decoding below reports the file itself
        # half a video frame / an audio packet of slack: containers round their durations
        if duration is not None and clip.end > duration + END_SLACK:
            raise ManifestError(self.manifest.source, f"clip {clip.clip_id!r}: end {clip.end:g} s is beyond the "
                                f"duration of {path} ({duration:.3f} s); give an end within the file, or leave it "
                                "empty for the rest of the file", self.manifest.lines.get(clip.clip_id), "end")

    def _decode(self, clip: Clip, what: str, fn):
        """``(value, present)``; ``value`` None when the track is missing or (with on_error=warn) broken."""
        try:
            return fn(), True
        except MissingStreamError as e:
            if self.missing_ok:
                return None, False
            raise self._fail(clip, e) from None
        except MediaError as e:
            if self.on_error == "warn":
                log.warning(f"{what} of {clip.clip_id!r} left empty: {e}")
                return None, True
            raise self._fail(clip, e) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= len(self.clips):  # a DDP rank's stand-in when there are fewer clips than ranks
            return padding_item(self, index)
        clip = self.clips[index]
        path = self.manifest.media_path(clip)
        start, end = self.window(clip)
        self._check_end(clip, path)
        item: dict[str, Any] = {"clip_id": clip.clip_id, "split": clip.split, "speaker": clip.speaker,
                                "path": str(path), "label": self.manifest.label_index(clip.label)}
        if "audio" in self.modalities:
            wave, present = self._decode(clip, "audio", lambda: load_audio(path, self.sample_rate, start, end))
            item["waveform"] = wave if wave is not None else torch.zeros(0, dtype=torch.float32)
            item["has_audio"] = present
        if "video" in self.modalities:
            got, present = self._decode(clip, "video", lambda: load_frames(path, self.fps, self.frame_size, start, end,
                                                                    threads=self.decode_threads))
            if got is None:
                h, w = self.frame_size if isinstance(self.frame_size, tuple) else (0, 0)
                got = torch.zeros((0, h, w, 3), dtype=torch.uint8), torch.zeros(0, dtype=torch.float64)
            item["frames"], item["frame_times"] = got
            item["has_video"] = present
            item["resized"] = self.frame_size is not None
        return item


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`ClipDataset` items into the raw-clip batch dict (keys in the module docstring).

    Shapes: ``waveform`` ``(B, S_max)``; ``frames`` ``(B, N_max, H_max, W_max, 3)`` when the
    items were resized, else a list of ``(N_i, H_i, W_i, 3)``.
    """
    if not items:
        raise ValueError("collate_clips: no items to batch")
    batch: dict[str, Any] = {
        "clip_id": [it["clip_id"] for it in items],
        "split": [it["split"] for it in items],
        "speaker": [it.get("speaker", "") for it in items],
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
    }
    if "waveform" in items[0]:
        lengths = torch.tensor([len(it["waveform"]) for it in items], dtype=torch.long)
        wave = torch.zeros((len(items), int(lengths.max())), dtype=torch.float32)
        for i, it in enumerate(items):
            wave[i, :len(it["waveform"])] = it["waveform"]
        batch.update(waveform=wave, waveform_lengths=lengths,
                     has_audio=torch.tensor([bool(it["has_audio"]) for it in items], dtype=torch.bool))
    if "frames" in items[0]:
        frames = [it["frames"] for it in items]
        lengths = torch.tensor([len(f) for f in frames], dtype=torch.long)
        batch["frame_lengths"] = lengths
        batch["has_video"] = torch.tensor([bool(it["has_video"]) for it in items], dtype=torch.bool)
        if all(it.get("resized", False) for it in items):
            sizes = torch.tensor([tuple(f.shape[1:3]) for f in frames], dtype=torch.long).reshape(len(items), 2)
            n, h, w = int(lengths.max()), int(sizes[:, 0].max()), int(sizes[:, 1].max())
            padded = torch.zeros((len(items), n, h, w, 3), dtype=torch.uint8)
            times = torch.zeros((len(items), n), dtype=torch.float64)
            for i, (f, it) in enumerate(zip(frames, items)):
                padded[i, :f.shape[0], :f.shape[1], :f.shape[2]] = f
                times[i, :len(it["frame_times"])] = it["frame_times"]
            batch.update(frames=padded, frame_times=times, frame_sizes=sizes)
        else:
            batch.update(frames=frames, frame_times=[it["frame_times"] for it in items])
    return batch


class ClipDataModule(pl.LightningDataModule):
    """Train/val/test/predict loaders of raw, decoded clips over a manifest's splits.

    Args:
        manifest: the manifest CSV (read with :func:`read_manifest` on first use, not in ``__init__``).
        root: corpus root the clip paths are relative to (default: the sidecar's).
        modalities, sample_rate, fps, frame_size, max_seconds, missing_ok, on_error, decode_threads:
            see :class:`ClipDataset`.
        batch_size, num_workers: clips per batch; decoding worker processes.
        predict_splits: the splits the predict loader covers; ``None`` = every clip.
        classes: the ordered class list (default: the sidecar's).
        shuffle: shuffle the training clips each epoch.
        drop_last: drop a last incomplete training batch.
    """

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        modalities: Sequence[str] = MODALITIES,
        sample_rate: int = 16000,
        fps: float | None = None,
        frame_size: int | tuple[int, int] | None = None,
        max_seconds: float | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        predict_splits: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        missing_ok: bool = True,
        on_error: str = "raise",
        decode_threads: int = 0,
    ):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if predict_splits is not None:
            bad = [s for s in predict_splits if s not in SPLITS]
            if bad:
                raise ValueError(f"predict_splits must be among {SPLITS}, got {list(predict_splits)}")
        self.manifest_path = str(manifest)
        self.root = root
        self.dataset_options = dict(modalities=_check_modalities(modalities), sample_rate=sample_rate, fps=fps,
                                    frame_size=_check_frame_size(frame_size), max_seconds=max_seconds,
                                    missing_ok=missing_ok, on_error=on_error, decode_threads=decode_threads)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.predict_splits = None if predict_splits is None else tuple(predict_splits)
        self._classes = None if classes is None else list(classes)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self._manifest: Manifest | None = None
        self.save_hyperparameters(ignore=["classes"])  # the model carries the class list (linked)

    # -- the manifest, read once on first use

    def _read(self) -> Manifest:
        return read_manifest(self.manifest_path, root=self.root, classes=self._classes)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = self._read()
        return self._manifest

    @property
    def classes(self) -> list[str]:
        """The ordered class names (labels are indices into this list)."""
        return list(self.manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    # -- datasets and loaders

    def dataset(self, splits: str | Sequence[str] | None) -> ClipDataset:
        """The :class:`ClipDataset` over ``splits`` (``None`` = every clip); raises if it is empty."""
        ds = ClipDataset(self.manifest, splits, **self.dataset_options)
        if len(ds) == 0:
            counts = {s: len(self.manifest.split(s)) for s in SPLITS}
            have = ", ".join(f"{k}={v}" for k, v in counts.items())
            want = "any" if splits is None else "/".join((splits,) if isinstance(splits, str) else splits)
            raise ManifestError(self.manifest.source, f"no clips in split {want!r} (clips per split: {have}); "
                                "assign splits with `lightning-emo prepare`")
        return ds

    def setup(self, stage: str | None = None) -> None:
        manifest = self.manifest  # read (and validate) early, with a clear error
        if stage in STAGE_USES:  # before any work: splits that cannot serve the stage are refused
            check_splits(manifest.clips, manifest.classes, STAGE_USES[stage], manifest.source,
                         warn=stage == "fit" and (self.trainer is None or self.trainer.is_global_zero))

    def _loader(self, ds: ClipDataset, train: bool) -> DataLoader:
        # evaluation under DDP: each clip on exactly one process, never a padded repeat (metrics count it once)
        sampler = None if train else eval_sampler(ds, self.trainer)
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=train and self.shuffle, sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_clips, pin_memory=self.pin_memory, drop_last=train and self.drop_last,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.predict_splits), train=False)


class CHEAVDDataModule(ClipDataModule):
    """:class:`ClipDataModule` for CHEAVD: the paper's seven classes, in the paper's order.

    A manifest whose sidecar lists other classes (or the same in another order) is refused;
    one without a class list is read with CHEAVD's.
    """

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        modalities: Sequence[str] = MODALITIES,
        sample_rate: int = 16000,
        fps: float | None = None,
        frame_size: int | tuple[int, int] | None = None,
        max_seconds: float | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        predict_splits: Sequence[str] | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        missing_ok: bool = True,
        on_error: str = "raise",
        decode_threads: int = 0,
    ):
        super().__init__(manifest, root, modalities, sample_rate, fps, frame_size, max_seconds, batch_size,
                         num_workers, predict_splits, None, shuffle, drop_last, pin_memory, persistent_workers,
                         missing_ok, on_error, decode_threads)

    def _read(self) -> Manifest:
        meta = _sidecar(self.manifest_path)
        listed = meta.get("classes")
        manifest = read_manifest(self.manifest_path, root=self.root, classes=None if listed else CHEAVD_CLASSES)
        if list(manifest.classes) != list(CHEAVD_CLASSES):
            raise ManifestError(sidecar_path(self.manifest_path),
                                f"classes are {manifest.classes}; CHEAVDDataModule expects CHEAVD's seven "
                                f"classes in the paper's order {CHEAVD_CLASSES} (use ClipDataModule for others)",
                                field="classes")
        return manifest


def _sidecar(csv_path: str | os.PathLike) -> dict:
    path = sidecar_path(csv_path)
    if not Path(path).is_file():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(path, f"not valid JSON ({e})", e.lineno) from None
