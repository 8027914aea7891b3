"""``lightning-emo extract``: frozen extractors over a manifest through a Lightning predict loop into feature stores.

One store per extractor (``FEATURES_DIR/<name>/``, :mod:`lightning_emo.data.store`). The
raw-clip DataModule decodes media (in DataLoader workers where the model leaves cores free:
:func:`default_decoding_workers`); :class:`ExtractionModule` runs the frozen extractor in
``predict_step`` through :class:`~lightning_emo.extractors.runner.FeatureRunner` (audio:
waveforms -> features; face: frames -> face detector crops + mask -> features) under mixed
precision on GPU; :class:`FeatureStoreWriter` appends each rank's results to its own segment
as batches finish and rank 0 merges the index at the end. Runs resume: committed clips are
skipped. ``--trainer.devices N`` (with ``--trainer.strategy ddp``) runs N processes.

Python API: :func:`extract`. Test hook: the environment variable
``LIGHTNING_EMO_EXTRACT_DELAY`` (seconds) makes each rank sleep after every written batch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import BasePredictionWriter, Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from lightning_emo.data.manifest import Clip, Manifest, read_manifest
from lightning_emo.data.store import FeatureStore, FeatureStoreError, RunLock, StaleStoreError, cache_key
from lightning_emo.errors import ConfigError, UsageError, command, describe_parse_error
from lightning_emo.extractors.base import EXTRACTORS, Extractor, ExtractorSpec, check_options
from lightning_emo.extractors.runner import (  # noqa: F401  (EXTRACTOR_MODULES, register_extractors: API)
    EXTRACTOR_MODULES,
    MISSING_NO_AUDIO,
    MISSING_NO_FRAMES,
    MISSING_NO_VIDEO,
    ClipFeatures,
    FeatureRunner,
    build_for_extraction,
    builder_accepts,
    register_extractors,
)
from lightning_emo.extractors.selection import select_features
from lightning_emo.console import Progress, quiet_upstream
from lightning_emo.utils import log, output_dir, setup_logging

DEFAULT_FPS = 5.0
MAX_FPS = 240.0  # --fps above any camera's rate only repeats frames
DELAY_ENV = "LIGHTNING_EMO_EXTRACT_DELAY"
SIGTERM_EXIT = 143  # 128 + SIGTERM
SIGINT_EXIT = 130  # 128 + SIGINT (Ctrl-C)
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


# --------------------------------------------------------------------------------------------
# the Lightning parts


class ExtractionModule(pl.LightningModule):
    """Runs a :class:`~lightning_emo.extractors.runner.FeatureRunner` in ``predict_step``.

    Args:
        extractor: a built, frozen extractor.
        detector: the face detector (face extractors only), e.g. ``build_face_detector("mtcnn")``.

    ``predict_step`` takes a raw-clip batch (:mod:`lightning_emo.data.clips`) and returns the
    runner's list of :class:`ClipFeatures`; Lightning adds devices, DDP and mixed precision.
    """

    def __init__(self, extractor: Extractor, detector: torch.nn.Module | None = None):
        super().__init__()
        self.runner = FeatureRunner(extractor, detector)
        self.spec: ExtractorSpec = extractor.spec

    @property
    def extractor(self) -> Extractor:
        return self.runner.extractor

    @property
    def detector(self) -> torch.nn.Module | None:
        return self.runner.detector

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[ClipFeatures]:
        return self.runner(batch)


class FeatureStoreWriter(BasePredictionWriter):
    """Writes each rank's :class:`ClipFeatures` into its own store segment as batches finish.

    Nothing is returned to the predict loop, so memory stays bounded. At the end every rank
    commits; :func:`run_extraction` then has all ranks meet at a barrier and rank 0 merge the
    index. On an exception the completed clips are committed, so a re-run resumes after them.
    """

    def __init__(self, store: FeatureStore, commit_every: int = 16):
        super().__init__(write_interval="batch")
        self.store = store
        self.commit_every = commit_every
        self.writer = None
        self.delay = float(os.environ.get(DELAY_ENV, "0") or 0)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer = self.store.writer(rank=trainer.global_rank, commit_every=self.commit_every)

    def write_on_batch_end(self, trainer, pl_module, prediction: list[ClipFeatures], batch_indices, batch,
                           batch_idx, dataloader_idx) -> None:
        for r in prediction:
            if r.missing is not None:
                self.writer.add_missing(r.clip_id, r.missing)
            else:
                self.writer.add(r.clip_id, r.features, r.mask)
        if self.delay:
            time.sleep(self.delay)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # No collective here: a rank whose share is empty skips the predict hooks altogether.
        # The barrier and rank 0's merge follow trainer.predict (see run_extraction).
        if self.writer is not None:
            self.writer.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.writer is not None:
            self.writer.close()


class StopOnSigterm(Callback):
    """Stops the predict loop after the current batch on SIGTERM (Lightning's signal connector records it;
    its predict loop, unlike its training loops, does not act on it). The writer then commits."""

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException()


class ExtractionProgress(Callback):
    """Rank 0's progress in clips (:class:`~lightning_emo.console.Progress`: a bar on a terminal, else log lines)."""

    def __init__(self, desc: str, interval: float = 10.0):
        self.desc, self.interval = desc, interval
        self.progress: Progress | None = None
        self.loop_seconds = 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dataloaders = trainer.predict_dataloaders
        dl = dataloaders[0] if isinstance(dataloaders, (list, tuple)) else dataloaders
        total = len(dl.dataset)  # rank 0's share
        desc = self.desc
        if trainer.world_size > 1:
            everything = len(trainer.datamodule.todo) if hasattr(trainer.datamodule, "todo") else total
            desc += f" (rank 0 of {trainer.world_size}; {everything} clips in all)"
        self.progress = Progress(total, desc, unit="clip", interval=self.interval)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.progress is not None:
            self.progress.update(len(batch["clip_id"]))

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.progress is not None:
            self.loop_seconds = self.progress.elapsed
            self.progress.close()
            self.progress = None


class ExtractionData(pl.LightningDataModule):
    """The manifest clips not yet in the store, as raw-clip batches (decoded in DataLoader workers).

    The to-do list is computed by rank 0 in :meth:`setup` and broadcast, so every rank splits
    the same list; rank ``r`` of ``W`` takes clips ``r, r + W, ...`` (the Trainer runs with
    ``use_distributed_sampler=False``: Lightning's own predict sampler refuses fewer clips than
    ranks, which a resumed run can have). A rank with no clip skips the loop.
    """

    def __init__(self, manifest: Manifest, store: FeatureStore, modality: str, sample_rate: int | None,
                 fps: float | None, batch_size: int = 8, num_workers: int | None = None, on_error: str = "raise"):
        super().__init__()
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a rank may have no clip left
        self.manifest, self.store, self.modality = manifest, store, modality
        self.on_error = on_error
        self.sample_rate, self.fps = sample_rate, fps
        self.batch_size, self.num_workers = batch_size, num_workers
        self.todo: list[Clip] = []

    def setup(self, stage: str | None = None) -> None:
        todo = None
        if self.trainer is None or self.trainer.is_global_zero:
            self.store.refresh()
            todo = [c.clip_id for c in self.manifest.clips if c.clip_id not in self.store]
        if self.trainer is not None:
            todo = self.trainer.strategy.broadcast(todo, src=0)
        by_id = self.manifest.by_id()
        self.todo = [by_id[c] for c in todo]

    def predict_dataloader(self) -> DataLoader:
        from lightning_emo.data.clips import ClipDataset, collate_clips

        # Native frame size: the face detector works on whole frames and crops at the extractor's size.
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        dataset = ClipDataset(self.manifest.with_clips(self.todo[rank::world]), None,
                              modalities=("audio",) if self.modality == "audio" else ("video",),
                              sample_rate=self.sample_rate or 16000, fps=self.fps, missing_ok=True,
                              on_error=self.on_error)
        workers = self.num_workers
        if workers is None:
            on_cpu = self.trainer is None or self.trainer.strategy.root_device.type == "cpu"
            workers = default_decoding_workers(on_cpu, world)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers,
                          collate_fn=collate_clips, pin_memory=torch.cuda.is_available())


def default_decoding_workers(on_cpu: bool, processes: int = 1) -> int:
    """Decoding worker processes per rank when none are asked for.

    On the CPU the extractor's threads already use the rank's cores, and workers decoding beside
    them only take turns with those threads (on 2 cores, 2 workers made HuBERT-base extraction
    ~20% slower than decoding in the main process): workers get only the cores torch leaves
    free. With a GPU computing, up to 4 workers decode ahead of it.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    cores = max(1, cores // max(1, processes))
    if on_cpu:
        return max(0, min(2, cores - torch.get_num_threads()))
    return max(0, min(4, cores - 1))


# --------------------------------------------------------------------------------------------
# the Python API


@dataclass
class ExtractionResult:
    """What one extractor's run did (rank 0's view, after the merge)."""

    store: FeatureStore
    written: int = 0
    skipped: int = 0
    no_face: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    loop_seconds: float = 0.0
    processes: int = 1
    detector: str | None = None
    is_global_zero: bool = True

    @property
    def clips_per_second(self) -> float:
        return self.written / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        name = self.store.path.name
        parts = [f"{self.written} clips written", f"{self.skipped} skipped (already present)"]
        if self.store.modality == "face":
            parts.append(f"{self.no_face} with no face (detector {self.detector})")
        if self.missing.get(MISSING_NO_AUDIO):
            parts.append(f"{self.missing[MISSING_NO_AUDIO]} with no audio track")
        if self.missing.get(MISSING_NO_VIDEO):
            parts.append(f"{self.missing[MISSING_NO_VIDEO]} with no video track")
        if self.missing.get(MISSING_NO_FRAMES):
            parts.append(f"{self.missing[MISSING_NO_FRAMES]} with nothing decoded "
                         "(empty or, with --on-error warn, broken)")
        for reason, n in sorted(self.missing.items()):
            if reason not in (MISSING_NO_AUDIO, MISSING_NO_VIDEO, MISSING_NO_FRAMES):
                parts.append(f"{n} missing ({reason})")
        procs = f", {self.processes} processes" if self.processes > 1 else ""
        loop = f" ({self.loop_seconds:.1f} s in the predict loop)" if self.loop_seconds else ""
        return (f"extract {name}: {', '.join(parts)}; {self.elapsed:.1f} s{loop}, {self.clips_per_second:.2f} "
                f"clips/s{procs} -> {self.store.path}")


def extract(
    manifest: str | os.PathLike | Manifest,
    extractor: str,
    out: str | os.PathLike,
    *,
    options: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    detector: str = "mtcnn",
    detector_options: Mapping[str, Any] | None = None,
    fps: float | None = None,
    batch_size: int = 8,
    num_workers: int | None = None,
    precision: str = "auto",
    dtype: str | None = None,
    name: str | None = None,
    select: int | None = None,
    select_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    commit_every: int = 16,
    on_error: str = "raise",
    trainer: Mapping[str, Any] | None = None,
    root: str | os.PathLike | None = None,
) -> FeatureStore:
    """Extract one extractor's features for every clip of a manifest into ``out/<name>``; returns the store.

    Args:
        manifest: manifest CSV (or a read :class:`Manifest`).
        extractor: a registered extractor name (``mfcc``, ``hubert_base``, ``hog``, ``face_cnn``, ...).
        out: the features directory; the store goes to ``out/<name>``.
        options: the extractor builder's keyword arguments (e.g. ``{"layer": 9}``).
        weights: a local weights file for extractors that load one.
        detector, detector_options: the face detector (``mtcnn`` or ``none``) and its arguments.
        fps: video frames per second sampled for face extractors (default: the spec's, else 5).
        batch_size, num_workers: clips per batch and decoding worker processes per rank (None:
            :func:`default_decoding_workers`).
        precision: ``auto`` (bf16/fp16 mixed on GPU, fp32 on CPU) or a Lightning precision.
        dtype: stored dtype, ``float16`` or ``float32``; default: the extractor's ``store_dtype``
            (float32 for ``compare``, whose values exceed float16's range).
        name: the store's directory name (default: the extractor name).
        select: also write a derived store keeping this many random-forest-selected features
            (fitted on the train split), ``out/<name>-sel<k>``, and return it.
        select_options: ``FeatureSelector`` arguments.
        overwrite: replace a store written with another configuration.
        commit_every: clips per commit (what a killed run can lose).
        on_error: ``raise`` (default: a broken media file stops the run, naming the clip; a re-run
            resumes) or ``warn`` (log it and record the clip as missing, ``no_frames``).
        trainer: more ``pl.Trainer`` arguments (``devices``, ``accelerator``, ...). Several devices
            need ``strategy="ddp"`` launched from the command line (the script is re-run per rank).
        root: the manifest's corpus root (default: its sidecar's).
    """
    result = run_extraction(manifest, extractor, out, options=options, weights=weights, detector=detector,
                            detector_options=detector_options, fps=fps, batch_size=batch_size,
                            num_workers=num_workers, precision=precision, dtype=dtype, name=name,
                            overwrite=overwrite, commit_every=commit_every, on_error=on_error, trainer=trainer,
                            root=root)
    if result.is_global_zero:
        log.info(result.summary())
    if select and result.is_global_zero:
        m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, root=root, check_files=False)
        return select_features(result.store, m, select, overwrite=overwrite, **dict(select_options or {}))
    return result.store


def check_accelerator(trainer: Mapping[str, Any]) -> None:
    """Refuse ``--trainer.accelerator cuda``/``gpu``/``mps`` on a machine without one, before any store is made."""
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ConfigError(f"--trainer.accelerator {accelerator}: CUDA is not available on this machine (torch "
                          f"{torch.__version__}{', built without CUDA' if torch.version.cuda is None else ''}); use "
                          "--trainer.accelerator cpu (or auto)")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("--trainer.accelerator mps: MPS is not available on this machine; use --trainer.accelerator "
                          "cpu (or auto)")


def resolve_precision(precision: str, accelerator: Any, spec: ExtractorSpec | None = None) -> str:
    """``auto`` -> ``bf16-mixed`` (or ``16-mixed`` without bf16) for a network on a CUDA GPU, else ``32-true``.

    Handcrafted extractors (no weights: ``mfcc``, ``compare``, ``hog``) stay in fp32: they gain
    nothing from autocast and MFCC energies lose digits in bf16.
    """
    if precision != "auto":
        return precision
    gpu = torch.cuda.is_available() and str(accelerator) in ("auto", "gpu", "cuda")
    if not gpu or (spec is not None and spec.weights.kind == "none"):
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def run_extraction(
    manifest: str | os.PathLike | Manifest,
    extractor: str,
    out: str | os.PathLike,
    *,
    options: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    detector: str = "mtcnn",
    detector_options: Mapping[str, Any] | None = None,
    fps: float | None = None,
    batch_size: int = 8,
    num_workers: int | None = None,
    precision: str = "auto",
    dtype: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
    commit_every: int = 16,
    on_error: str = "raise",
    trainer: Mapping[str, Any] | None = None,
    root: str | os.PathLike | None = None,
    wait: bool = False,
) -> ExtractionResult:
    """:func:`extract` without the selection step, returning counts and timing (:class:`ExtractionResult`).

    One run writes a store at a time (:class:`~lightning_emo.data.store.RunLock`): a second run
    on the same store is refused naming the first, or with ``wait`` waits for it and then
    extracts only what is left. On SIGTERM the loop stops after the current batch, commits and
    raises Lightning's ``SIGTERMException`` (the ``extract`` command exits with status 143).
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, root=root)
    register_extractors()
    builder = EXTRACTORS.get(extractor)
    probe_fps = fps
    model = build_for_extraction(extractor, options, weights, fps)
    spec = model.spec
    face = spec.modality == "face"
    if face and probe_fps is None:
        probe_fps = spec.frame_rate or DEFAULT_FPS
        if spec.frame_rate is None and builder_accepts(builder, "fps") and "fps" not in (options or {}):
            model = build_for_extraction(extractor, options, weights, probe_fps)
            spec = model.spec
    det = None
    key_extra: dict[str, Any] = {}
    if face:
        from lightning_emo.extractors.face_detect import build_face_detector

        det = build_face_detector(detector, crop_size=spec.crop_size, **dict(detector_options or {}))
        # the detector's effective settings (detect-and-track policy, detection size), not only those given:
        # a store made with other defaults is refused as stale instead of being mixed
        key_extra["detector_options"] = {**det.cache_options(), **dict(detector_options or {})}
    requested = dtype
    dtype = dtype or model.store_dtype
    key = cache_key(spec, dtype=dtype, detector=detector if face else None, fps=probe_fps if face else None,
                    extra=key_extra or None)
    store_path = Path(out) / (name or extractor)
    # the lock first, so that a run replacing a store (overwrite) or creating it has it to itself;
    # DDP ranks > 0 (launched with RANK/LOCAL_RANK set) run under their rank 0's lock
    lock = None
    if _launch_rank() == 0:
        store_path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(store_path, command=" ".join(["lightning-emo", *sys.argv[1:]]), wait=wait)
    try:
        try:
            store = FeatureStore.create(store_path, spec, key, dtype=dtype, overwrite=overwrite)
        except StaleStoreError as e:
            if "dtype" not in e.differences:
                raise
            old = e.differences["dtype"][0]
            why = (f"{extractor}'s values need {dtype}, its default" if requested is None
                   else f"--dtype {dtype} was asked for")
            raise StaleStoreError(f"{e} The store holds {old} features and {why}: pass --dtype {old} to keep using "
                                  f"the store as it is, or --overwrite to extract it again as {dtype}.",
                                  e.differences) from None
        return _run_locked(store, manifest, model, det, spec, probe_fps, batch_size, num_workers, precision,
                           commit_every, on_error, trainer, detector if face else None)
    finally:
        if lock is not None:
            lock.release()


def _launch_rank() -> int:
    from lightning_fabric.utilities.rank_zero import _get_rank

    return _get_rank() or 0


def _run_locked(store: FeatureStore, manifest: Manifest, model, det, spec: ExtractorSpec, probe_fps: float | None,
                batch_size: int, num_workers: int | None, precision: str, commit_every: int, on_error: str,
                trainer: Mapping[str, Any] | None, detector: str | None) -> ExtractionResult:
    store.refresh()  # what an earlier run (perhaps the one this run waited for) committed
    store_path = store.path
    total = len(manifest.clips)
    pending = sum(1 for c in manifest.clips if c.clip_id not in store)
    result = ExtractionResult(store, skipped=total - pending, detector=detector)
    if pending == 0:
        _count(result, manifest)
        return result

    trainer_args = dict(trainer or {})
    for fixed in ("callbacks", "logger", "enable_progress_bar", "precision", "use_distributed_sampler"):
        trainer_args.pop(fixed, None)
    trainer_args.setdefault("accelerator", "auto")
    trainer_args.setdefault("devices", 1)
    trainer_args.setdefault("enable_model_summary", False)
    trainer_args.setdefault("enable_checkpointing", False)
    writer = FeatureStoreWriter(store, commit_every=commit_every)
    progress = ExtractionProgress(f"extract {store_path.name}")
    quiet_upstream()
    try:
        pl_trainer = pl.Trainer(logger=False, enable_progress_bar=False, callbacks=[writer, progress, StopOnSigterm()],
                                use_distributed_sampler=False,
                                precision=resolve_precision(precision, trainer_args["accelerator"], spec),
                                **trainer_args)
    except MisconfigurationException as e:  # e.g. --trainer.accelerator cuda on a machine without CUDA
        raise ConfigError(f"--trainer: {str(e).rstrip('.')}. Fix the --trainer.* option") from e
    data = ExtractionData(manifest, store, spec.modality, spec.sample_rate, probe_fps, batch_size, num_workers,
                          on_error)
    module = ExtractionModule(model, det)
    started = time.monotonic()
    pl_trainer.predict(module, datamodule=data, return_predictions=False)
    pl_trainer.strategy.barrier("lightning_emo.extract.written")
    if pl_trainer.is_global_zero:
        store.merge(cleanup=True)
    pl_trainer.strategy.barrier("lightning_emo.extract.merged")
    result.elapsed = time.monotonic() - started
    result.loop_seconds = progress.loop_seconds
    result.processes = pl_trainer.world_size
    result.is_global_zero = pl_trainer.is_global_zero
    if result.is_global_zero:
        store.refresh()
        result.skipped = total - len(data.todo)
        result.written = sum(1 for c in data.todo if c.clip_id in store)
        _count(result, manifest)
        if result.written < len(data.todo):
            raise FeatureStoreError(f"extract {store_path.name}: {len(data.todo) - result.written} of {len(data.todo)} "
                               f"clips were not written to {store_path}; re-run to resume")
    return result


def _count(result: ExtractionResult, manifest: Manifest) -> None:
    store = result.store
    missing = store.missing
    ids = [c.clip_id for c in manifest.clips if c.clip_id in store]
    if store.modality == "face":
        result.no_face = sum(1 for c in ids if c not in missing and store.n_valid(c) == 0)
    counts: dict[str, int] = {}
    for c in ids:
        if c in missing:
            counts[missing[c]] = counts.get(missing[c], 0) + 1
    result.missing = counts


# --------------------------------------------------------------------------------------------
# command line


def _parse_value(value: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _parse_pairs(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"{flag} expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v)
    return out


def list_extractors() -> str:
    """One line per registered extractor: its name, where its default weights come from, and whether they are cached."""
    from lightning_emo.extractors.base import DEFAULT_WEIGHTS
    from lightning_emo.extractors.weights import describe_source, is_cached

    register_extractors()
    names = EXTRACTORS.names()
    width = max(map(len, names))
    lines = []
    for name in names:
        source = DEFAULT_WEIGHTS.get(name)
        if source is None:
            lines.append(f"{name.ljust(width)}  no weights")
            continue
        state = ""
        if source.kind in ("torchaudio", "facenet", "hf-hub", "timm"):
            found = is_cached(source)
            state = f"  [cached: {found}]" if found else "  [not cached: downloads on first use]"
        lines.append(f"{name.ljust(width)}  {describe_source(source)}{state}")
    return "\n".join(lines)


def build_parser():
    """The ``lightning-emo extract`` parser (jsonargparse; ``pl.Trainer`` arguments under ``--trainer.*``)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="lightning-emo extract",
        exit_on_error=False,  # parse errors become one ConfigError naming the option (main)
        description="Run frozen feature extractors over a manifest into feature stores (one per extractor, "
        "FEATURES_DIR/<name>/), resuming where an earlier run stopped. Several processes: --trainer.devices N "
        "--trainer.strategy ddp. Pretrained weights download on first use into the upstream caches "
        "(torchaudio: $TORCH_HOME/hub/checkpoints, facenet: $TORCH_HOME/checkpoints, Hub files: the HF cache); "
        "LIGHTNING_EMO_WEIGHTS_URL=URL fetches non-Hub files as URL/<file name> (a mirror), "
        "LIGHTNING_EMO_DOWNLOAD_TIMEOUT sets the seconds to wait, --offline or HF_HUB_OFFLINE=1 downloads nothing.",
    )
    parser.add_argument("--manifest", required=True, help="the manifest CSV")
    parser.add_argument("--root", default=None, help="the corpus root (default: the manifest sidecar's)")
    parser.add_argument("--extractor", action="append", required=True,
                        help="a registered extractor name; repeat for several (one store each)")
    parser.add_argument("--out", required=True, help="the features directory (stores go to OUT/<name>/)")
    parser.add_argument("--name", default=None,
                        help="the store name (one --extractor only; default: the extractor name)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="extractor option (YAML value), e.g. layer=9; repeatable")
    parser.add_argument("--weights", default=None, help="local weights file for extractors that load one")
    parser.add_argument("--detector", default="mtcnn", help="face detector: mtcnn or none (face extractors)")
    parser.add_argument("--detector-option", action="append", default=[], metavar="KEY=VALUE",
                        help="face detector option, repeatable: mtcnn takes detect_every (detect on every K-th "
                             "sampled frame and track between; 1: every frame; default 5), cut_threshold, "
                             "redetect_score, redetect_iou, redetect_similarity, detect_size, min_face_size, ...")
    parser.add_argument("--detect-every", type=int, default=None, metavar="K",
                        help="mtcnn: detect faces on every K-th sampled frame, at shot cuts and where the track is "
                             "unsure, and track between (default 5; 1: detect on every frame)")
    parser.add_argument("--fps", type=float, default=None,
                        help="video frames per second sampled for face extractors "
                        f"(default: the spec's, else {DEFAULT_FPS:g})")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="decoding worker processes per rank (default: the cores torch leaves free on the CPU, "
                             "up to 4 with a GPU)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 (or fp16) mixed precision on GPU, fp32 on CPU")
    parser.add_argument("--dtype", default=None, choices=("float16", "float32"),
                        help="stored dtype (default: what the extractor needs: float32 for compare, else float16)")
    parser.add_argument("--select", type=int, default=None, metavar="K",
                        help="also write OUT/<name>-sel<K>: the K features a random forest fitted on the train "
                        "split finds most important (the paper: 1024 or 2048 of the face CNN's 9216)")
    parser.add_argument("--select-option", action="append", default=[], metavar="KEY=VALUE",
                        help="FeatureSelector option, e.g. n_estimators=200")
    parser.add_argument("--on-error", default="raise", choices=("raise", "warn"),
                        help="a broken media file: raise (stop, naming the clip; a re-run resumes) or warn "
                        "(log it and record the clip as missing)")
    parser.add_argument("--overwrite", action="store_true", help="replace a store written with another configuration")
    parser.add_argument("--wait", action="store_true",
                        help="when another run is writing the store, wait for it (then extract what is left) "
                        "instead of stopping")
    parser.add_argument("--commit-every", type=int, default=16,
                        help="clips per commit (a killed run loses at most these)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the feature selection")
    parser.add_argument("--offline", action="store_true",
                        help="never download weights (also: HF_HUB_OFFLINE=1); a missing file is an error naming "
                        "the file, the cache path and its URL")
    parser.add_argument("--list", action="store_true",
                        help="list the registered extractors, where their weights come from and whether they are "
                        "cached, and exit")
    parser.add_class_arguments(pl.Trainer, "trainer", instantiate=False, fail_untyped=False,
                               skip={"callbacks", "logger", "precision", "enable_progress_bar", "max_epochs",
                                     "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches",
                                     "limit_val_batches", "limit_test_batches", "val_check_interval",
                                     "check_val_every_n_epoch", "num_sanity_val_steps", "log_every_n_steps",
                                     "enable_checkpointing", "accumulate_grad_batches", "gradient_clip_val",
                                     "gradient_clip_algorithm", "overfit_batches", "reload_dataloaders_every_n_epochs",
                                     "enable_autolog_hparams", "model_registry", "fast_dev_run",
                                     "use_distributed_sampler"})
    parser.set_defaults({"trainer.devices": 1})
    return parser


@command("extract")
def main(argv: list[str] | None = None) -> int:
    """``lightning-emo extract``; a bad input is one paragraph on stderr, exit status 2 (:mod:`lightning_emo.errors`)."""
    from argparse import ArgumentError

    if argv is not None and "--list" in argv:
        print(list_extractors())
        return 0
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
        trainer_args = {k: v for k, v in parser.instantiate(cfg).trainer.as_dict().items() if v is not None}
    except ArgumentError as e:
        raise ConfigError(describe_parse_error(e, "extract", sys.argv[1:] if argv is None else argv,
                                               print_config=False)) from e
    setup_logging()
    from lightning_emo.extractors.weights import set_offline

    previous = set_offline(True) if cfg.offline else None
    try:
        return _run(cfg, trainer_args)
    finally:
        if previous is not None:
            set_offline(previous)


def _run(cfg, trainer_args: dict[str, Any]) -> int:
    if cfg.name and len(cfg.extractor) > 1:
        raise UsageError("--name works with one --extractor only")
    for flag, value, low in (("--fps", cfg.fps, None), ("--batch-size", cfg.batch_size, 1),
                             ("--commit-every", cfg.commit_every, 1), ("--num-workers", cfg.num_workers, 0)):
        if value is None:
            continue
        if low is None and not (math.isfinite(value) and 0 < value <= MAX_FPS):
            raise UsageError(f"{flag} {value:g}: expected video frames per second sampled, above 0 and at most "
                             f"{MAX_FPS:g} (e.g. 5)")
        if low is not None and value < low:
            raise UsageError(f"{flag} {value}: expected a whole number >= {low}")
    if cfg.select is not None and cfg.select < 1:
        raise UsageError(f"--select {cfg.select}: expected the number of features to keep (>= 1), e.g. --select 1024")
    options = _parse_pairs(cfg.option, "--option")
    detector_options = _parse_pairs(cfg.detector_option, "--detector-option")
    if cfg.detect_every is not None:
        if cfg.detect_every < 1:
            raise UsageError(f"--detect-every {cfg.detect_every}: expected >= 1 (1: detect on every frame)")
        detector_options["detect_every"] = cfg.detect_every
    select_options = _parse_pairs(cfg.select_option, "--select-option")
    output_dir(cfg.out, "--out")
    check_accelerator(trainer_args)
    register_extractors()
    for name in cfg.extractor:
        EXTRACTORS.get(name)  # an unknown name is refused before any work, listing the known ones
        check_options(name, options)
    manifest = read_manifest(cfg.manifest, root=cfg.root)
    results = []
    for name in cfg.extractor:
        try:
            result = run_extraction(manifest, name, cfg.out, options=options, weights=cfg.weights,
                                    detector=cfg.detector, detector_options=detector_options, fps=cfg.fps,
                                    batch_size=cfg.batch_size, num_workers=cfg.num_workers, precision=cfg.precision,
                                    dtype=cfg.dtype, name=cfg.name, overwrite=cfg.overwrite,
                                    commit_every=cfg.commit_every, on_error=cfg.on_error, trainer=trainer_args,
                                    wait=cfg.wait)
        except (SIGTERMException, SystemExit) as e:
            # SIGTERM: stopped after the current batch; Ctrl-C: Lightning's exit(1) while handling the
            # KeyboardInterrupt, after the writer committed what it had
            ctrl_c = not isinstance(e, SIGTERMException)  # (a SystemExit too)
            if ctrl_c and not isinstance(e.__context__, KeyboardInterrupt):
                raise
            store = FeatureStore.open(Path(cfg.out) / (cfg.name or name))
            done = sum(1 for c in manifest.clips if c.clip_id in store)
            print(f"extract {name}: stopped by {'Ctrl-C' if ctrl_c else 'SIGTERM'}; {done} of {len(manifest.clips)} "
                  f"clips are committed to {store.path}. Run the same command again to extract the rest.",
                  file=sys.stderr)
            return SIGINT_EXIT if ctrl_c else SIGTERM_EXIT
        if not result.is_global_zero:
            continue
        print(result.summary(), flush=True)
        results.append(result)
    if cfg.select is not None and results:
        for result in results:
            if cfg.select > result.store.dim:
                raise UsageError(f"--select {cfg.select}: {result.store.path} (extracted and kept) has only "
                                 f"{result.store.dim} features; run again with a number from 1 to {result.store.dim} "
                                 "(the extraction is not repeated)")
            derived = select_features(result.store, manifest, cfg.select, seed=cfg.seed, overwrite=cfg.overwrite,
                                      **select_options)
            print(f"select {result.store.path.name}: kept {derived.dim} of {result.store.dim} features "
                  f"-> {derived.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
