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

Folds and seeds (``folds``, ``seeds``): steps 3-4 run once per fold x seed
(:mod:`lightning_emo.data.folds` cuts the folds; :mod:`lightning_emo.evaluation.runs` runs one)
over the stores extracted ONCE in step 2 (a fold only changes which clips train, validate and
test; a selected store is refitted per fold on the fold's training clips). Each run lives in
``OUT/folds/<fold>-seed<s>/`` and ends with a ``DONE`` marker: a re-run skips finished runs.
``OUT/summary.csv``/``summary.md``/``summary_ci.png`` aggregate them
(:mod:`lightning_emo.evaluation.summary`). The single split with one seed (the default) keeps
the historical layout: ``OUT/runs`` and ``OUT/fusion``. ``test_corpus`` adds a cross-corpus
condition: every run's heads are also tested on a second corpus through a label map.

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

from lightning_emo.errors import ConfigError, command, describe_parse_error
from lightning_emo.configs import resolve_config, resolve_config_args
from lightning_emo.data.folds import FoldOptions
from lightning_emo.evaluation.runs import TestCorpus
from lightning_emo.utils import OutputExistsError, atomic_write_text, log, setup_logging

__all__ = ["FeatureSet", "Protocol", "SynthOptions", "demo_main", "reproduce_main", "resolve_config",
           "run_protocol", "train_and_predict"]


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
        dtype: the stored dtype; default: the extractor's (float32 for ``compare``, else float16).
        train_config: the ``lightning-emo fit`` config of the head (a file, or a shipped name such as
            ``experiment/hubert.yaml``); default: the protocol's.
    """

    extractor: str
    options: dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None
    detector: str = "mtcnn"
    detector_options: dict[str, Any] = field(default_factory=dict)
    fps: Optional[float] = None
    select: Optional[int] = None
    dtype: Optional[str] = None
    train_config: Optional[str] = None


@dataclass
class SynthOptions:
    """Arguments of :func:`lightning_emo.data.synthetic.synthesize` for the built-in corpus.

    A quick look (seconds, not a minute): ``--synth.clips_per_class 4 --synth.num_speakers 6
    --synth.size 64 --synth.max_speech 2``.
    """

    clips_per_class: int = 30
    seed: int = 0
    num_speakers: int = 10
    size: int = 112
    max_speech: float = 4.8


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
        overwrite: use an ``out`` folder that holds files ``reproduce`` did not write (its own
            folder is always resumed).
        batch_size, num_workers: for extraction (``num_workers`` None: the extractor's default).
        extract_trainer: ``pl.Trainer`` arguments of the extraction (``devices``, ``accelerator``).
        folds: the fold scheme (:class:`~lightning_emo.data.folds.FoldOptions`; default: the
            manifest's own split as one fold).
        seeds: training seeds; every fold runs once per seed (``--seed_everything``).
        test_corpus: a second corpus every head is also tested on (cross-corpus).
        crossfit: 0 = the paper's in-sample fit of LR and the prior on validation; K >= 2 =
            K-fold cross-fitting over the validation clips (out-of-sample validation scores).
        val_folds: how the fusion rules are scored on validation (which picks the recommended
            method) when ``crossfit`` is 0: K-fold cross-fitted (default 5), so LR is not scored
            on the clips it was fitted on; 0 = in-sample. Test predictions do not change.
        priors: ``checkpoint``: the prior rule takes each head's validation micro-F1 from the
            FusionPriorCallback state of its best checkpoint; ``refit``: recomputed from predictions.
        select_metric: the validation metric that picks the recommended method (``wa``, ``ua``,
            ``macro_f1``, ``weighted_f1``).
    """

    out: str = "runs/reproduce"
    manifest: Optional[str] = None
    synth: SynthOptions = field(default_factory=SynthOptions)
    audio: dict[str, FeatureSet] = field(default_factory=dict)
    video: dict[str, FeatureSet] = field(default_factory=dict)
    train_config: str = "experiment/synthetic_audio.yaml"
    train_args: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=lambda: ["lr", "ensemble", "prior", "cascade"])
    calibrate: bool = False
    overwrite: bool = False
    batch_size: int = 8
    num_workers: Optional[int] = None
    extract_trainer: dict[str, Any] = field(default_factory=dict)
    folds: FoldOptions = field(default_factory=FoldOptions)
    seeds: list[int] = field(default_factory=lambda: [0])
    test_corpus: Optional[TestCorpus] = None
    crossfit: int = 0
    val_folds: int = 5
    priors: str = "checkpoint"
    select_metric: str = "wa"


def _stage(name: str, index: int, total: int) -> float:
    log.info(f"\n== [{index}/{total}] {name}")
    return time.perf_counter()


def run_protocol(p: Protocol) -> Any:
    """Run the whole protocol.

    Returns the fusion :class:`~lightning_emo.fusion.report.Report` of a single run (one fold,
    one seed), else the ``summary.json`` content (:func:`~lightning_emo.evaluation.summary.summarize`).
    """
    from lightning_emo.data.folds import make_folds
    from lightning_emo.data.manifest import read_manifest
    from lightning_emo.evaluation.runs import is_done, prepare_cross, run_fold, run_name
    from lightning_emo.evaluation.summary import summarize
    from lightning_emo.extractors.extract import run_extraction

    if not p.audio or not p.video:
        raise ConfigError("the protocol needs at least one audio and one video feature set (config keys "
                          "'audio' and 'video')")
    if not p.seeds or len(set(p.seeds)) != len(p.seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {p.seeds}")
    if p.priors not in ("checkpoint", "refit"):
        raise ConfigError(f"priors must be 'checkpoint' or 'refit', got {p.priors!r}")
    from lightning_emo.fusion.metrics import METRICS

    if p.select_metric not in METRICS:  # checked before any work, not after hours of extraction
        raise ConfigError(f"select_metric must be one of {', '.join(METRICS)}, got {p.select_metric!r}")
    if p.crossfit == 1 or p.crossfit < 0:
        raise ConfigError(f"crossfit must be 0 (the paper's in-sample fit) or at least 2 folds, got {p.crossfit}")
    if p.val_folds == 1 or p.val_folds < 0:
        raise ConfigError(f"val_folds must be 0 (in-sample validation scores) or at least 2 folds, got {p.val_folds}")
    out = Path(p.out)
    _claim(out, p.overwrite)
    sets = [(name, "audio", fs) for name, fs in p.audio.items()] + [(name, "video", fs) for name, fs in p.video.items()]
    timings: dict[str, float] = {}

    t = _stage("corpus", 1, 4)
    if p.manifest is None:
        from lightning_emo.data.synthetic import synthesize

        manifest_path = synthesize(out / "corpus", clips_per_class=p.synth.clips_per_class, seed=p.synth.seed,
                                   num_speakers=p.synth.num_speakers, size=p.synth.size,
                                   max_speech=p.synth.max_speech, progress=True)
    else:
        manifest_path = Path(p.manifest)
    manifest = read_manifest(manifest_path)
    folds = make_folds(manifest, p.folds)  # before any work: a fold scheme that cannot be built stops here
    single = p.folds.scheme == "split" and len(p.seeds) == 1
    log.info(manifest.summary())
    log.info(f"folds ({p.folds.scheme}): " + "; ".join(f.describe() for f in folds) + f"; seeds {p.seeds}")
    _check_folds(manifest, folds, manifest_path)
    cross = prepare_cross(p.test_corpus, manifest, out) if p.test_corpus else None
    timings["corpus"] = time.perf_counter() - t

    t = _stage("extract " + ", ".join(f"{name}={fs.extractor}" for name, _, fs in sets), 2, 4)
    stores: dict[str, Path] = {}
    extraction: list[dict[str, Any]] = []
    targets = [(manifest_path, out / "features", stores)]
    if cross is not None:
        targets.append((cross.manifest_path, out / "features" / cross.name, cross.stores))
    for corpus_manifest, folder, into in targets:
        for name, modality, fs in sets:
            # once for the whole protocol: every fold x seed reads these per-clip stores
            result = run_extraction(corpus_manifest, fs.extractor, folder, options=fs.options, weights=fs.weights,
                                    detector=fs.detector, detector_options=fs.detector_options or None, fps=fs.fps,
                                    batch_size=p.batch_size,
                                    num_workers=p.num_workers, name=_store_name(fs), dtype=fs.dtype,
                                    trainer=p.extract_trainer or None)
            log.info(result.summary())
            store = result.store
            if (store.modality == "audio") != (modality == "audio"):
                raise ConfigError(f"feature set {name!r} is listed under {modality} but extractor "
                                  f"{fs.extractor!r} is a {store.modality} extractor")
            into[name] = Path(store.path)
            extraction.append({"set": name, "store": str(store.path), "written": result.written,
                               "skipped": result.skipped})
    _append_json_list(out / "extraction.json", {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stores": extraction})
    timings["extract"] = time.perf_counter() - t

    t = _stage(f"train, predict and fuse: {len(folds)} fold(s) x {len(p.seeds)} seed(s)", 3, 4)
    done_dirs: list[Path] = []
    report = None
    stores_trained: dict[str, str] = {}
    runs = [(fold, seed) for fold in folds for seed in p.seeds]
    for i, (fold, seed) in enumerate(runs, start=1):
        run_dir = out if single else out / "folds" / run_name(fold, seed)
        if is_done(run_dir) and not single:
            log.info(f"[{i}/{len(runs)}] {run_name(fold, seed)}: finished earlier, skipped ({run_dir / 'DONE'})")
            done_dirs.append(run_dir)
            continue
        started = time.perf_counter()
        log.info(f"[{i}/{len(runs)}] {run_name(fold, seed)}")
        reports, run_stores = run_fold(protocol=p, out=out, run_dir=run_dir, fold=fold, seed=seed, manifest=manifest,
                           manifest_path=manifest_path, sets=sets, stores=stores, cross=cross, single=single,
                           train_and_predict=train_and_predict, resolve_config=resolve_config,
                           store_name=_store_name)
        report = reports["in"]
        if single:  # OUT is the run folder: its protocol.json names the stores the heads trained on
            stores_trained = {k: str(v) for k, v in run_stores.items()}
        done_dirs.append(run_dir)
        left = len(runs) - i
        took = time.perf_counter() - started
        log.info(f"[{i}/{len(runs)}] {run_name(fold, seed)} done in {took:.0f} s"
                 + (f"; about {left * took / 60:.1f} min left for {left} run(s)" if left else ""))
    timings["runs"] = time.perf_counter() - t

    t = _stage("summary", 4, 4)
    notes = [f"fold scheme {p.folds.scheme}" + (f" (k={p.folds.k})" if p.folds.scheme == "kfold" else "")
             + f", seeds {p.seeds}; validation part of each training fold: speaker-independent",
             "fusion rules fitted on validation " + ("in-sample (the paper's mode)" if not p.crossfit
                                                     else f"with {p.crossfit}-fold cross-fitting")
             + ("; their validation scores (the recommendation) "
                + (f"{p.crossfit or p.val_folds}-fold cross-fitted" if p.crossfit or p.val_folds else "in-sample")),
             "prior rule micro-F1: " + ("FusionPriorCallback state in each head's best checkpoint"
                                        if p.priors == "checkpoint" else "recomputed from the predictions")]
    if any(fs.select for _, _, fs in sets) and not single:
        notes.append("random-forest selection refitted per fold on the fold's training clips")
    if cross is not None:
        notes += cross.notes
    summary = summarize(out, done_dirs, select_metric=p.select_metric, notes=notes)
    timings["summary"] = time.perf_counter() - t
    atomic_write_text(out / "protocol.json", json.dumps({
        "protocol": asdict(p), "manifest": str(manifest_path),
        "stores": stores_trained if single and stores_trained else {k: str(v) for k, v in stores.items()},
        "extracted": {k: str(v) for k, v in stores.items()},
        "folds": [{"name": f.name, "train": len(f.train), "val": len(f.val), "test": len(f.test)} for f in folds],
        "seeds": p.seeds, "runs": [str(d) for d in done_dirs],
        "predictions": ({name: str(out / "runs" / name / "predictions.csv") for name, _, _ in sets} if single else {}),
        "seconds": timings}, indent=2) + "\n")
    if single and report is not None:
        print(report.markdown())
    else:
        print((out / "summary.md").read_text())
    log.info("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    log.info(f"summary: {out / 'summary.md'}" + (f"; tables of the split: {out / 'fusion'}" if single else
                                                 f"; per-run results: {out / 'folds'}"))
    return report if single else summary


def _check_folds(manifest: Any, folds: list[Any], source: Path) -> None:
    """Before extracting anything: training, LR fusion and scoring must all be possible in every fold."""
    from lightning_emo.data.checks import check_splits
    from lightning_emo.data.folds import fold_manifest

    said: set[str] = set()
    for fold in folds:
        where = source if len(folds) == 1 else f"{source} (fold {fold.name})"
        for warning in check_splits(fold_manifest(manifest, fold).clips, manifest.classes, "reproduce", where,
                                    warn=False):
            if warning not in said:
                said.add(warning)
                log.warning("WARNING: %s", warning)


def _append_json_list(path: Path, item: dict[str, Any]) -> None:
    items = json.loads(path.read_text()) if path.is_file() else []
    atomic_write_text(path, json.dumps([*items, item], indent=2) + "\n")


MARKER = ".lightning-emo-reproduce"


def _claim(out: Path, overwrite: bool) -> None:
    """Make ``out`` this protocol's folder: refuse a non-empty folder it did not write unless ``overwrite``.

    A folder it wrote (its marker or ``protocol.json``) is resumed: finished stores, runs and
    predictions are reused.
    """
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists() and not (out / "protocol.json").exists():
        if not overwrite:
            raise OutputExistsError([out], what="the output folder (not written by reproduce)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


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
    newer than its store) is reused; an interrupted one resumes from its ``last.ckpt``.
    """
    from lightning_emo.models.cli import cli

    done = runs / name / "predictions.csv"
    result = runs / name / "result.json"
    if done.is_file() and result.is_file() and done.stat().st_mtime > (store / "store.json").stat().st_mtime:
        log.info(f"{name}: reusing {done}")
        return done
    args = ["fit", "--config", str(config),
            "--data.init_args.manifest", str(manifest), "--data.init_args.features", str(store),
            "--trainer.logger.class_path", "pytorch_lightning.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name,
            "--trainer.logger.init_args.version", "fit", "--trainer.enable_model_summary", "false", *extra]
    last = runs / name / "fit" / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info(f"{name}: resuming the interrupted training from {last}")
        args += ["--ckpt_path", str(last)]
    elif (runs / name / "fit").exists():  # this protocol's own run, stopped before its first epoch ended
        import shutil

        shutil.rmtree(runs / name / "fit")
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
    _predictions_writer(c.trainer).overwrite = True  # this protocol's own file, rewritten for a new training
    c.trainer.predict(c.model, datamodule=c.datamodule, ckpt_path=best)
    written = _predictions_writer(c.trainer).last_path
    written = Path(written)
    if written != done:
        done.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, done)
    atomic_write_text(result, json.dumps({"checkpoint": best, "predictions": str(done)}) + "\n")
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
                            default_config_files=None, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a protocol YAML: a file, or a shipped name such as reproduce/synthetic.yaml "
                             "(lightning-emo configs list reproduce)")
    parser.add_class_arguments(Protocol, nested_key=None, as_group=False)
    return parser


@command("reproduce")
def reproduce_main(argv: list[str] | None = None) -> int:
    """``lightning-emo reproduce --config reproduce/X.yaml [--out DIR] [--print_config]``.

    ``--config`` is a file or a shipped config's name (:func:`lightning_emo.configs.resolve_config`).
    """
    from argparse import ArgumentError

    setup_logging()
    parser = _parser()
    args = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = parser.parse_args(args)
        cfg = parser.instantiate(cfg)
    except ArgumentError as e:
        raise ConfigError(describe_parse_error(e, "reproduce", args)) from e
    protocol = Protocol(**{k: cfg[k] for k in Protocol.__dataclass_fields__})
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        run_protocol(protocol)
    except SIGTERMException:  # during training: the run's last.ckpt is resumed by the same command
        log.error(f"reproduce stopped by SIGTERM; run the same command again to resume (finished stores, "
                  f"trainings and predictions in {protocol.out} are reused, an interrupted training resumes "
                  "from its last.ckpt)")
        return 143
    return 0


@command("demo")
def demo_main(argv: list[str] | None = None) -> int:
    """``lightning-emo demo [--out DIR]``: the protocol on the built-in synthetic corpus, no download."""
    argv = list(argv or [])
    return reproduce_main.__wrapped__(["--config", "reproduce/synthetic.yaml", *argv])  # errors named `demo`


if __name__ == "__main__":
    sys.exit(reproduce_main())
