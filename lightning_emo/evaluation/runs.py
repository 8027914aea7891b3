"""One run of the protocol (one fold x one seed): fold manifest, per-fold selection, heads, fusion, scores, done-marker.

A run folder holds ``manifest.csv`` (the fold's splits over the corpus's clips), ``runs/<set>/``
(each head's LightningCLI run, ``predictions.csv`` and ``result.json`` naming its best
checkpoint), ``fusion/`` (the fusion report of the fold), ``cross-<name>/`` (the same for a
test corpus), ``scores.csv`` + ``test_labels.json`` (what :mod:`~lightning_emo.evaluation.summary`
aggregates) and, written last and atomically, ``DONE``: a re-run skips a folder that has it
and redoes (resuming each head's finished parts) one that does not.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from lightning_emo.data.folds import Fold, fold_manifest
from lightning_emo.data.manifest import Manifest
from lightning_emo.utils import atomic_write_text, log

DONE = "DONE"


@dataclass
class TestCorpus:
    """A second corpus to test every head on (cross-corpus evaluation).

    Attributes:
        manifest: its manifest CSV (its own splits are ignored: every clip is a test clip).
        label_map: a label-map YAML renaming its labels onto the training corpus' classes
            (``fearful: fear``, ``calm: null``; see :mod:`lightning_emo.data.labelmap`); None = names as they are.
        name: the name used in folder names and reports (default: the manifest's corpus name).
    """

    manifest: str
    label_map: Optional[str] = None
    name: Optional[str] = None


@dataclass
class CrossSetup:
    """A prepared test corpus: the mapped manifest, its stores, and the training corpus restricted to shared classes."""

    name: str
    manifest_path: Path
    manifest: Manifest
    train: Manifest  # the training corpus on the shared classes
    retrain: bool  # heads must be trained on the shared classes (some training clips were dropped)
    stores: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_done(run_dir: Path) -> bool:
    return (run_dir / DONE).is_file()


def run_name(fold: Fold, seed: int) -> str:
    return f"{fold.name}-seed{seed}"


def _best_checkpoint(run: Path) -> str | None:
    result = run / "result.json"
    return json.loads(result.read_text()).get("checkpoint") if result.is_file() else None


def stored_micro_f1(runs: Path, names: list[str]) -> dict[str, float]:
    """``name -> validation micro-F1`` stored by ``FusionPriorCallback`` in each head's best checkpoint."""
    from lightning_emo.fusion.callback import fusion_state_from_checkpoint

    out = {}
    for name in names:
        ckpt = _best_checkpoint(runs / name)
        if not ckpt or not Path(ckpt).is_file():
            continue
        try:
            metrics = fusion_state_from_checkpoint(ckpt)["metrics"]
        except KeyError:
            continue
        if len(metrics) == 1:  # one head, one modality
            out[name] = float(next(iter(metrics.values()))["micro_f1"])
    return out


def predict_with(checkpoint: str, manifest: Path, store: Path, output: Path) -> Path:
    """Posteriors of a trained head (its best checkpoint) over every clip of ``manifest`` into ``output``."""
    import pytorch_lightning as pl

    from lightning_emo.data.datamodule import FeatureDataModule
    from lightning_emo.models.module import EmotionModule
    from lightning_emo.models.writer import PredictionsWriter

    if output.is_file() and output.stat().st_mtime > Path(checkpoint).stat().st_mtime:
        return output
    model = EmotionModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    dm = FeatureDataModule(str(manifest), str(store), batch_size=16, predict_splits=["test"])
    writer = PredictionsWriter(output=str(output))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[writer], accelerator="cpu", devices=1)
    trainer.predict(model, datamodule=dm)
    return output


def _cross_predictions(val_csv: Path, test_csv: Path, prefix: str):
    """Validation rows of the training corpus + every test-corpus row (clip ids prefixed) as one Predictions."""
    from lightning_emo.data.predictions import Predictions, read_predictions

    val = read_predictions(val_csv).split("val")
    test = read_predictions(test_csv).split("test").reordered(val.classes, val_csv)  # by name, or refused
    return Predictions(val.clip_ids + [f"{prefix}:{c}" for c in test.clip_ids], val.splits + test.splits,
                       val.labels + test.labels, np.concatenate([val.probs, test.probs]), list(val.classes),
                       str(test_csv))


def run_fold(
    *,
    protocol: Any,
    out: Path,
    run_dir: Path,
    fold: Fold,
    seed: int,
    manifest: Manifest,
    manifest_path: Path,
    sets: list[tuple[str, str, Any]],
    stores: dict[str, Path],
    cross: CrossSetup | None,
    single: bool,
    train_and_predict: Callable[..., Path],
    resolve_config: Callable[[str], Path],
    store_name: Callable[[Any], str],
) -> dict[str, Any]:
    """Run one fold x seed end to end and write its done-marker.

    Returns ``({condition: Report}, {set: the store its head trained on})`` (a selected set's
    store is the fold's selected store, which ``lightning-emo export --run`` needs).
    """
    from lightning_emo.evaluation.summary import write_run_scores
    from lightning_emo.fusion.report import fuse_report

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    p = protocol
    if single:
        fold_path = manifest_path  # the manifest's own split: nothing to rewrite
    else:
        fold_path = fold_manifest(manifest, fold).write(run_dir / "manifest.csv")
    log.info(fold.describe() + "".join(f"\n  note: {n}" for n in fold.notes))
    fold_stores = _selected_stores(out, fold, fold_path, sets, stores, single, store_name)
    extra = [*p.train_args, f"--seed_everything={seed}"]
    predictions: dict[str, Path] = {}
    for name, modality, fs in sets:
        config = resolve_config(fs.train_config or p.train_config)
        predictions[name] = train_and_predict(name, fold_path, fold_stores[name], run_dir / "runs", config, extra)
    modalities = {name: modality for name, modality, _ in sets}
    stored = stored_micro_f1(run_dir / "runs", list(modalities)) if p.priors == "checkpoint" else {}
    report = fuse_report({n: predictions[n] for n in modalities}, modalities=modalities, rules=p.rules,
                         calibrate=p.calibrate, crossfit=p.crossfit, stored_f1=stored, select_metric=p.select_metric,
                         seed=seed, val_folds=p.val_folds)
    report.notes[:0] = [f"{fold.name}, seed {seed}"] + list(fold.notes)
    report.write(run_dir / "fusion")
    reports: dict[str, Any] = {"in": report}
    if cross is not None:
        reports[f"cross:{cross.name}"] = _run_cross(p, out, run_dir, fold, cross, sets, stores, fold_stores,
                                                    predictions, extra, modalities, seed, train_and_predict,
                                                    resolve_config, store_name)
    write_run_scores(run_dir, reports)
    atomic_write_text(run_dir / "protocol.json", json.dumps({
        "fold": fold.name, "seed": seed, "manifest": str(fold_path),
        "stores": {k: str(v) for k, v in fold_stores.items()},
        "predictions": {k: str(v) for k, v in predictions.items()}}, indent=2) + "\n")
    # written last: a run killed before this line is redone (its finished heads are reused)
    atomic_write_text(run_dir / DONE, json.dumps({"fold": fold.name, "seed": seed,
                                                  "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    return reports, fold_stores


def _selected_stores(out: Path, fold: Fold, fold_path: Path, sets, stores: dict[str, Path], single: bool,
                     store_name) -> dict[str, Path]:
    """Per-fold random-forest selection: the selector is fitted on the fold's training clips only."""
    from lightning_emo.extractors.selection import select_features

    result = dict(stores)
    for name, _, fs in sets:
        if not fs.select:
            continue
        target = None if single else out / "features" / "folds" / fold.name / f"{store_name(fs)}-sel{fs.select}"
        # shared by every seed of the fold (the selection depends on the fold's training clips only)
        result[name] = Path(select_features(stores[name], fold_path, fs.select, out=target).path)
    return result


def _run_cross(p, out: Path, run_dir: Path, fold: Fold, cross: CrossSetup, sets, stores, fold_stores, predictions,
               extra, modalities, seed: int, train_and_predict, resolve_config, store_name):
    """Score every head (and fusion) of this run on the test corpus, fitted on this fold's validation clips."""
    from lightning_emo.fusion.report import fuse_report

    cdir = run_dir / f"cross-{cross.name}"
    if cross.retrain:
        # the training corpus restricted to the classes both corpora share gets its own heads
        keep = {c.clip_id for c in cross.train.clips}
        sub = Fold(fold.name, [c for c in fold.train if c in keep], [c for c in fold.val if c in keep],
                   [c for c in fold.test if c in keep], list(fold.notes))
        fold_path = fold_manifest(cross.train, sub).write(cdir / "manifest.csv")
        train_stores = _selected_stores(out / "cross" / cross.name, sub, fold_path, sets, stores, False, store_name)
        runs = cdir / "runs"
        heads = {name: train_and_predict(name, fold_path, train_stores[name], runs,
                                         resolve_config(fs.train_config or p.train_config), extra)
                 for name, _, fs in sets}
    else:
        train_stores, runs, heads = fold_stores, run_dir / "runs", dict(predictions)
    models = {}
    for name, _, fs in sets:
        ckpt = _best_checkpoint(runs / name)
        if ckpt is None:
            raise RuntimeError(f"{runs / name}: no result.json naming the best checkpoint")
        store = cross.stores[name]
        if fs.select:  # the fold's selector (fitted on its training clips) applied to the test corpus
            store = apply_selection(Path(train_stores[name]), store,
                                    cdir / "features" / f"{store_name(fs)}-sel{fs.select}")
        test_csv = predict_with(ckpt, cross.manifest_path, store, cdir / name / "predictions.csv")
        models[name] = _cross_predictions(heads[name], test_csv, cross.name)
    stored = stored_micro_f1(runs, list(modalities)) if p.priors == "checkpoint" else {}
    report = fuse_report(models, modalities=modalities, rules=p.rules, calibrate=p.calibrate, crossfit=p.crossfit,
                         stored_f1=stored, select_metric=p.select_metric, seed=seed, val_folds=p.val_folds)
    report.notes[:0] = [f"cross-corpus: trained on {fold.name} (seed {seed}), tested on {cross.name}"] + cross.notes
    report.write(cdir / "fusion")
    return report


def apply_selection(selected: Path, parent: Path, out: Path) -> Path:
    """Write ``out``: the test corpus' ``parent`` store reduced to the columns the fold's ``selected`` store kept."""
    import shutil

    from lightning_emo.data.store import FeatureStore
    from lightning_emo.extractors.selection import FeatureSelector

    src = FeatureStore.open(selected)
    par = FeatureStore.open(parent)
    key = {**par.key, "selection": src.key.get("selection")}
    if (out / "store.json").is_file():
        try:
            if len(FeatureStore.open(out, expect_key=key)) == len(par):
                return out
        except Exception:  # stale or partial: rebuilt below
            pass
        shutil.rmtree(out)
    selector = FeatureSelector.from_store(src)
    derived = FeatureStore.create(out, par.spec, key, dtype=str(par.dtype), dim=src.dim,
                                  extra_meta={"selection": {**(src.selection or {}), "parent": str(parent.resolve())}})
    shutil.copy(src.selector_path, derived.selector_path)  # the same selector travels with the derived store
    with derived.writer(rank=0, commit_every=64) as w:
        for cid, reason in par.missing.items():
            w.add_missing(cid, reason)
        for cid in par.clip_ids:
            feats, mask = par.get(cid)
            w.add(cid, selector.transform(np.asarray(feats)), np.asarray(mask))
    derived.merge()
    return out


def prepare_cross(test: TestCorpus, train: Manifest, out: Path) -> CrossSetup:
    """Read the test corpus, map its labels onto the training classes and keep the shared classes on both sides."""
    from lightning_emo.data.labelmap import align_corpora
    from lightning_emo.data.manifest import read_manifest

    other = read_manifest(test.manifest)
    name = test.name or other.corpus or "cross"
    mapped_train, mapped_test, counts = align_corpora(train, other, test.label_map)
    mapped_test = replace(mapped_test, clips=[replace(c, split="test") for c in mapped_test.clips])
    path = mapped_test.write(out / "cross" / name / "manifest.csv")
    retrain = list(mapped_train.classes) != list(train.classes) or len(mapped_train.clips) != len(train.clips)
    notes = counts["test"].notes(f"test corpus {name}") + counts["train"].notes("training corpus")
    if retrain:
        notes.append(f"heads for {name} are trained on the {len(mapped_train.classes)} shared classes "
                     f"({', '.join(mapped_train.classes)})")
    return CrossSetup(name, path, mapped_test, mapped_train, retrain, notes=notes)
