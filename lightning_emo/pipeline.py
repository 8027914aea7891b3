"""The paper's protocol in one command: extract every feature set, train a head on each, predict, fuse, tables.

``lightning-emo reproduce --config configs/reproduce/cheavd.yaml`` runs, for any corpus:

1. a manifest (given, or the built-in synthetic corpus generated first);
2. ``extract`` for every audio and video feature set (stores are cached and resumable: a
   re-run skips finished work), with random-forest selection where a set asks for it;
3. ``fit`` of one head per feature set through the same LightningCLI as ``lightning-emo fit``
   (its checkpoint, config and logs under ``OUT/runs/<set>``), then ``predict`` with the
   best checkpoint, writing ``predictions.csv``;
4. ``fuse``: every audio x video pair with every rule, fitted on validation, scored on test,
   written as the paper's Tables 2-5 (Markdown and CSV) with a confusion-matrix PNG.

``lightning-emo demo`` is the same protocol on the synthetic corpus with feature sets that
need no pretrained weights (``configs/reproduce/synthetic.yaml``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from lightning_emo.utils import atomic_write_text, log, setup_logging

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class FeatureSet:
    """One feature set of the protocol (a row of the paper's Table 2).

    Attributes:
        extractor: a registered extractor name (``compare``, ``speech_bottleneck``, ``face_cnn``...).
        options: the extractor builder's keyword arguments (e.g. ``{"layer": 9}``).
        weights: a local weights file for extractors that load one.
        detector: the face detector (``mtcnn``, or ``none`` for corpora of face crops).
        detector_options: its options (mtcnn: ``detect_every``, ``cut_threshold``, ``redetect_*``,
            ``detect_size``, ``min_face_size``...; see ``lightning-emo extract --help``).
        fps: video frames per second sampled for face extractors.
        select: keep this many random-forest-selected dimensions (the paper's 1024 / 2048).
        dtype: the stored dtype; ``float32`` for features beyond float16's range (openSMILE's).
        train_config: the ``lightning-emo fit`` config of the head; default: the protocol's.
    """

    extractor: str
    options: dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None
    detector: str = "mtcnn"
    detector_options: dict[str, Any] = field(default_factory=dict)
    fps: Optional[float] = None
    select: Optional[int] = None
    dtype: str = "float16"
    train_config: Optional[str] = None


@dataclass
class SynthOptions:
    """Arguments of :func:`lightning_emo.data.synthetic.synthesize` for the built-in corpus."""

    clips_per_class: int = 30
    seed: int = 0
    num_speakers: int = 10


@dataclass
class Protocol:
    """Everything ``reproduce`` does; every path inside ``out``.

    Attributes:
        out: the output folder (corpus when synthesized, features, runs, fusion tables).
        manifest: the corpus manifest; ``None`` = generate the synthetic corpus in ``out/corpus``.
        synth: options of the synthetic corpus (when ``manifest`` is ``None``).
        audio: name -> audio feature set (``a60``, ``a1024``...).
        video: name -> video feature set (``v1024``, ``v2048``...).
        train_config: the default ``fit`` config of every head (a LightningCLI YAML).
        train_args: extra ``fit`` arguments for every head, e.g. ``["--trainer.max_epochs=30"]``.
        rules: fusion rules (``lr ensemble prior cascade weighted``).
        calibrate: temperature-scale each model on validation before fusing.
        batch_size, num_workers: for extraction (``num_workers`` None: the extractor's default).
        extract_trainer: ``pl.Trainer`` arguments of the extraction (``devices``, ``accelerator``).
    """

    out: str = "runs/reproduce"
    manifest: Optional[str] = None
    synth: SynthOptions = field(default_factory=SynthOptions)
    audio: dict[str, FeatureSet] = field(default_factory=dict)
    video: dict[str, FeatureSet] = field(default_factory=dict)
    train_config: str = str(CONFIG_DIR / "experiment" / "synthetic_audio.yaml")
    train_args: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=lambda: ["lr", "ensemble", "prior", "cascade"])
    calibrate: bool = False
    batch_size: int = 8
    num_workers: Optional[int] = None
    extract_trainer: dict[str, Any] = field(default_factory=dict)


def _stage(name: str, index: int, total: int) -> float:
    log.info(f"\n== [{index}/{total}] {name}")
    return time.perf_counter()


def run_protocol(p: Protocol) -> Any:
    """Run the whole protocol; returns the fusion :class:`~lightning_emo.fusion.report.Report`."""
    from lightning_emo.data.manifest import read_manifest
    from lightning_emo.extractors.extract import extract
    from lightning_emo.fusion.report import fuse_report

    if not p.audio or not p.video:
        raise ValueError("the protocol needs at least one audio and one video feature set (config keys "
                         "'audio' and 'video')")
    out = Path(p.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = [(name, "audio", fs) for name, fs in p.audio.items()] + [(name, "video", fs) for name, fs in p.video.items()]
    total = 3 + len(sets)
    timings: dict[str, float] = {}

    t = _stage("corpus", 1, total)
    if p.manifest is None:
        from lightning_emo.data.synthetic import synthesize

        manifest_path = synthesize(out / "corpus", clips_per_class=p.synth.clips_per_class, seed=p.synth.seed,
                                   num_speakers=p.synth.num_speakers, progress=True)
    else:
        manifest_path = Path(p.manifest)
    manifest = read_manifest(manifest_path)
    if not manifest.has_splits:
        raise ValueError(f"{manifest_path}: every clip needs a split; run `lightning-emo prepare` to assign "
                         "speaker-independent splits")
    log.info(manifest.summary())
    timings["corpus"] = time.perf_counter() - t

    t = _stage("extract " + ", ".join(f"{name}={fs.extractor}" for name, _, fs in sets), 2, total)
    stores: dict[str, Path] = {}
    for name, modality, fs in sets:
        store = extract(manifest_path, fs.extractor, out / "features", options=fs.options, weights=fs.weights,
                        detector=fs.detector, detector_options=fs.detector_options or None, fps=fs.fps, batch_size=p.batch_size, num_workers=p.num_workers,
                        name=_store_name(fs), select=fs.select, dtype=fs.dtype, trainer=p.extract_trainer or None)
        if (store.modality == "audio") != (modality == "audio"):
            raise ValueError(f"feature set {name!r} is listed under {modality} but extractor {fs.extractor!r} "
                             f"is a {store.modality} extractor")
        stores[name] = Path(store.path)
    timings["extract"] = time.perf_counter() - t

    predictions: dict[str, Path] = {}
    for i, (name, modality, fs) in enumerate(sets, start=3):
        t = _stage(f"train and predict {name} ({modality}: {fs.extractor})", i, total)
        config = resolve_config(fs.train_config or p.train_config)
        predictions[name] = train_and_predict(name, manifest_path, stores[name], out / "runs", config, p.train_args)
        timings[f"train {name}"] = time.perf_counter() - t

    t = _stage("fuse", total, total)
    modalities = {name: modality for name, modality, _ in sets}
    report = fuse_report({n: predictions[n] for n in modalities}, modalities=modalities, rules=p.rules,
                         calibrate=p.calibrate)
    report.write(out / "fusion")
    timings["fuse"] = time.perf_counter() - t
    atomic_write_text(out / "protocol.json", json.dumps({"protocol": asdict(p), "manifest": str(manifest_path),
                                                         "stores": {k: str(v) for k, v in stores.items()},
                                                         "predictions": {k: str(v) for k, v in predictions.items()},
                                                         "seconds": timings}, indent=2) + "\n")
    print(report.markdown())
    log.info("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    log.info(f"tables, fused predictions and the confusion matrix: {out / 'fusion'}")
    return report


def resolve_config(path: str) -> Path:
    """A config path as given, else relative to the repository's ``configs/`` parent (shipped configs)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR.parent / path
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"config {path} not found (looked in {Path.cwd()} and {CONFIG_DIR.parent})")


def _store_name(fs: FeatureSet) -> str:
    """A store directory name that tells configurations of one extractor apart."""
    parts = [fs.extractor]
    parts += [f"{k}{v}" for k, v in sorted(fs.options.items())]
    if fs.detector != "mtcnn":
        parts.append(f"det-{fs.detector}")
    parts += [f"{k}{v}" for k, v in sorted(fs.detector_options.items())]
    if fs.fps:
        parts.append(f"fps{fs.fps:g}")
    return "-".join(str(x).replace("/", "_").replace(" ", "") for x in parts)


def train_and_predict(name: str, manifest: Path, store: Path, runs: Path, config: str, extra: list[str]) -> Path:
    """``fit`` a head on one store through the LightningCLI, then ``predict`` with its best checkpoint.

    Returns the written ``predictions.csv``. A finished run (``runs/<name>/predictions.csv``
    newer than its store) is reused.
    """
    from lightning_emo.models.cli import cli

    done = runs / name / "predictions.csv"
    if done.is_file() and done.stat().st_mtime > (store / "store.json").stat().st_mtime:
        log.info(f"{name}: reusing {done}")
        return done
    args = ["fit", "--config", str(config),
            "--data.init_args.manifest", str(manifest), "--data.init_args.features", str(store),
            "--trainer.logger.class_path", "pytorch_lightning.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name,
            "--trainer.logger.init_args.version", "fit", "--trainer.enable_model_summary", "false", *extra]
    import torch

    threads = torch.get_num_threads()
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # The heads are small: on CPU one intra-op thread beats two competing ones (10 epochs of
        # the synthetic HOG head: 12 s with one thread, 66 s with two on a busy 2-core machine).
        torch.set_num_threads(1)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given args beside a command line
    try:
        c = cli(args)
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    best = c.trainer.checkpoint_callback.best_model_path or None
    c.trainer.predict(c.model, datamodule=c.datamodule, ckpt_path=best)
    written = _predictions_writer(c.trainer).last_path
    written = Path(written)
    if written != done:
        done.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, done)
    log.info(f"{name}: best checkpoint {best}; predictions {done}")
    return done


def _predictions_writer(trainer):
    from lightning_emo.models.writer import PredictionsWriter

    for cb in trainer.callbacks:
        if isinstance(cb, PredictionsWriter):
            return cb
    raise RuntimeError("the trainer has no PredictionsWriter callback")


def _parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="lightning-emo reproduce", description=__doc__.split("\n\n")[0],
                            default_config_files=None)
    parser.add_argument("--config", action=ActionConfigFile, help="a protocol YAML (configs/reproduce/)")
    parser.add_class_arguments(Protocol, nested_key=None, as_group=False)
    return parser


def reproduce_main(argv: list[str] | None = None) -> int:
    """``lightning-emo reproduce --config configs/reproduce/X.yaml [--out DIR] [--print_config]``."""
    setup_logging()
    parser = _parser()
    cfg = parser.parse_args(argv)
    cfg = parser.instantiate(cfg)
    protocol = Protocol(**{k: cfg[k] for k in Protocol.__dataclass_fields__})
    run_protocol(protocol)
    return 0


def demo_main(argv: list[str] | None = None) -> int:
    """``lightning-emo demo [--out DIR]``: the protocol on the built-in synthetic corpus, no download."""
    argv = list(argv or [])
    return reproduce_main(["--config", str(CONFIG_DIR / "reproduce" / "synthetic.yaml"), *argv])


if __name__ == "__main__":
    sys.exit(reproduce_main())
