"""``lightning-emo fit|test|predict`` end to end: links, saved config, checkpoints, predictions, seeds, loggers, DDP."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

try:  # tests/ on sys.path (pytest's default) or the repository root (tests as a package)
    from test_configs import CONFIGS, _restore_global_torch_state, fit, run_documented_extract, synthetic  # noqa: F401
    from test_module import make_toy_corpus
except ImportError:
    from tests.test_configs import CONFIGS, _restore_global_torch_state, fit, run_documented_extract, synthetic  # noqa
    from tests.test_module import make_toy_corpus

from lightning_emo.cli import main
from lightning_emo.data.datamodule import FeatureDataModule
from lightning_emo.data.manifest import read_manifest
from lightning_emo.data.predictions import read_predictions

AUDIO = CONFIGS / "experiment" / "synthetic_audio.yaml"
FACE = CONFIGS / "experiment" / "synthetic_face.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator", "cpu"]


def _data(root: Path, store: str) -> list[str]:
    return ["--data.init_args.manifest", str(root / "manifest.csv"),
            "--data.init_args.features", str(root / "features" / store)]


def _run_dir(name: str) -> Path:
    runs = sorted(Path("runs", name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    assert runs, f"no run directory under runs/{name}"
    return runs[-1]


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _best(run: Path) -> Path:
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1, list((run / "checkpoints").iterdir())
    return best[0]


def test_print_config_leaves_linked_values_to_the_data(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(AUDIO), "--print_config"])
    assert exit_.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    init = config["model"]["init_args"]
    assert config["model"]["class_path"] == "lightning_emo.models.module.EmotionModule"
    assert init["head"] == "lstm" and init["head_options"] == {"frame_pool": 10}
    for linked in ("num_classes", "classes", "input_dim", "modality", "extractor_spec", "class_counts"):
        assert linked not in init  # never written twice: it comes from the data
    assert config["checkpoint"]["monitor"] == "val/acc" and config["checkpoint"]["mode"] == "max"
    assert config["early_stopping"]["monitor"] == "val/acc" and config["seed_everything"] == 0


def test_fit_saves_config_checkpoint_metrics_then_predict_writes_predictions(synthetic):
    fit(["--config", str(FACE), *_data(synthetic, "hog"), *QUIET, "--trainer.max_epochs", "2"])
    run = _run_dir("synthetic_face")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["init_args"]["features"].endswith("hog") and saved["model"]["init_args"]["head"] == "lstm"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = _best(run)

    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    manifest = read_manifest(synthetic / "manifest.csv", check_files=False)
    assert hp["classes"] == manifest.classes and hp["num_classes"] == 7 and hp["modality"] == "face"
    assert hp["input_dim"] == 1764 and hp["extractor_spec"]["name"] == "hog" and hp["head"] == "lstm"
    assert len(hp["class_counts"]) == 7
    assert any(k.startswith("FusionPriorCallback") for k in ckpt["callbacks"])  # the fusion prior travels too

    rows = _metrics(run)
    columns = set(rows[0])
    for key in ("val/acc", "val/uar", "val/f1_macro", "val/f1_micro", "val/f1_weighted", "val/loss",
                "train/acc", "val/recall/happy", "val/recall/fear"):
        assert key in columns, key
    assert (run / "confusion_val.jsonl").is_file()

    # predict from the checkpoint alone writes predictions.csv into the training run's directory
    assert main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(best), *QUIET]) == 0
    preds = read_predictions(run / "predictions.csv", classes=manifest.classes)
    assert sorted(preds.clip_ids) == sorted(c.clip_id for c in manifest.clips)
    dm = FeatureDataModule(str(synthetic / "manifest.csv"), str(synthetic / "features" / "hog"))
    missing = set(dm.missing_clip_ids())
    assert {c for c, m in zip(preds.clip_ids, preds.missing) if m} == missing
    labels = {c.clip_id: c.label for c in manifest.clips}
    assert all(labels[c] == lab for c, lab in zip(preds.clip_ids, preds.labels))
    seen = ~preds.missing
    np.testing.assert_allclose(preds.probs[seen].sum(1), 1.0, atol=1e-5)

    # one split, to a chosen path
    out = Path("elsewhere/test_predictions.csv")
    assert main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(best), *QUIET,
                 "--predictions.output", str(out), "--predictions.splits", "[test]"]) == 0
    test_only = read_predictions(out)
    assert set(test_only.splits) == {"test"} and len(test_only) == len(manifest.split("test"))
    np.testing.assert_allclose(test_only.probs, preds.align(test_only.clip_ids).probs, atol=1e-7)


def test_same_seed_same_metrics(synthetic):
    def run(seed: int, name: str) -> list[dict[str, str]]:
        fit(["--config", str(AUDIO), *_data(synthetic, "mfcc"), *QUIET, "--trainer.max_epochs", "2",
             "--seed_everything", str(seed), "--trainer.logger.init_args.name", name])
        return _metrics(_run_dir(name))

    a, b, c = run(3, "seed_a"), run(3, "seed_b"), run(4, "seed_c")
    assert a == b
    assert [r["val/loss"] for r in a] != [r["val/loss"] for r in c]


def test_wandb_logger_offline(synthetic, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit(["--config", str(FACE), "--config", str(CONFIGS / "logger" / "wandb.yaml"), *_data(synthetic, "hog"),
         *QUIET, "--trainer.max_epochs", "1"])
    runs = list(Path("runs", "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    images = list(runs[0].rglob("media/images/val/confusion*.png"))
    assert images, "the confusion matrix image did not reach wandb"
    assert (_run_dir("emotion") / "metrics.csv").is_file()  # the CSV logger beside it


def test_fast_above_chance_through_the_cli(tmp_path):
    """The training machinery learns: a clearly separable toy store, 10 epochs, then `test`."""
    make_toy_corpus(tmp_path)
    fit(["--config", str(AUDIO), "--data.init_args.manifest", str(tmp_path / "manifest.csv"),
         "--data.init_args.features", str(tmp_path / "audio"), "--model.init_args.head_options", "{}",
         "--trainer.max_epochs", "10", "--trainer.logger.init_args.name", "toy", *QUIET])
    run = _run_dir("toy")
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(_best(run)), *QUIET]) == 0
    tested = [r for r in _metrics(run / "test") if r.get("test/acc")]  # evaluation writes inside the run
    acc = float(tested[-1]["test/acc"])
    assert acc > 0.6, f"test accuracy {acc} on separable toy features (chance 1/7)"


def _ddp(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "lightning_emo.cli", *args, "--trainer.devices", "2",
                           "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_ddp_predict_with_two_processes_matches_one(synthetic, tmp_path):
    fit(["--config", str(AUDIO), *_data(synthetic, "mfcc"), *QUIET, "--trainer.max_epochs", "1"])
    run = _run_dir("synthetic_audio")
    best = str(_best(run))
    assert main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", best, *QUIET,
                 "--predictions.output", str(tmp_path / "one.csv")]) == 0
    _ddp(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", best,
          "--predictions.output", str(tmp_path / "two.csv"), "--trainer.enable_progress_bar=false"], tmp_path)
    one, two = read_predictions(tmp_path / "one.csv"), read_predictions(tmp_path / "two.csv")
    assert sorted(two.clip_ids) == sorted(one.clip_ids)  # gathered from both ranks, padding duplicates dropped
    np.testing.assert_allclose(two.align(one.clip_ids).probs, one.probs, atol=1e-5)


@pytest.mark.slow
def test_ddp_fit_with_two_processes(synthetic, tmp_path):
    _ddp(["fit", "--config", str(FACE), *_data(synthetic, "hog"), "--trainer.max_epochs", "2",
          "--trainer.enable_progress_bar=false"], tmp_path)
    run = sorted((tmp_path / "runs" / "synthetic_face").glob("version_*"))[-1]
    rows = _metrics(run)
    assert [r["epoch"] for r in rows if r.get("val/acc")] == ["0", "1"]
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1 and (run / "config.yaml").is_file()


@pytest.mark.slow
def test_synthetic_corpus_well_above_chance_for_both_modalities(tmp_path):
    """The synthetic corpus (30 clips per class): MFCC audio head and HOG face head, fit, predict, test accuracy."""
    from lightning_emo.data.synthetic import synthesize

    manifest = synthesize(tmp_path / "corpus", clips_per_class=30, seed=0)
    accuracies = {}
    for config, store, floor in ((AUDIO, "mfcc", 0.22), (FACE, "hog", 0.35)):  # chance: 1/7 = 0.143
        run_documented_extract(config, manifest, tmp_path / "corpus" / "features")
        fit(["--config", str(config), *_data(tmp_path / "corpus", store), *QUIET])
        run = _run_dir(config.stem)
        assert main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(_best(run)), *QUIET]) == 0
        preds = read_predictions(run / "predictions.csv").split("test")
        accuracies[store] = float(np.mean(preds.predicted == preds.y))  # a clip without input counts as wrong
        print(f"synthetic {config.stem}: test accuracy {accuracies[store]:.3f} on {len(preds)} clips (chance 0.143)")
        assert accuracies[store] >= floor, accuracies
