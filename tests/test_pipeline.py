"""The paper's protocol end to end (`reproduce`, `demo`) on the synthetic corpus."""

from __future__ import annotations

import json
import logging
import re

import pytest

from lightning_emo.cli import main
from lightning_emo.data.predictions import read_predictions

TINY = ["--synth.clips_per_class", "4", "--synth.num_speakers", "6",
        "--train_args", '["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false"]']


def test_reproduce_tiny_protocol_writes_every_table(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert main(["reproduce", "--config", "configs/reproduce/synthetic.yaml", "--out", str(out),
                 "--num_workers", "0", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "Table 4" in printed and "Best:" in printed
    fusion = out / "fusion"
    for name in ("results.md", "table2_single.csv", "table3_fusion.csv", "table4_cascade.csv",
                 "table5_cascade_prior.csv", "per_class_recall.csv", "confusion_best.png"):
        assert (fusion / name).is_file(), name
    protocol = json.loads((out / "protocol.json").read_text())
    assert set(protocol["predictions"]) == {"compare", "mfcc", "hog", "hog_sel256"}
    # the stores the heads trained on (a selected set's derived store), as `export --run` reads them
    assert protocol["stores"]["hog_sel256"].endswith("-sel256") and protocol["extracted"]["hog_sel256"].endswith("fps5")
    assert main(["export", "--run", str(out), "--audio", "mfcc", "--video", "hog_sel256", "--rule", "lr",
                 "--out", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    for path in protocol["predictions"].values():
        preds = read_predictions(path)
        assert set(preds.splits) == {"train", "val", "test"} and len(preds.clip_ids) == 28
    # 2 x 2 feature pairs in Table 3, as in the paper
    assert len((fusion / "table3_fusion.csv").read_text().strip().splitlines()) == 1 + 4
    # a single split gets the same summary, its CI a bootstrap over the test clips
    rows = _summary_rows(out)
    assert rows and all(r["n"] == "1" for r in rows)
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in rows if r["metric"] == "WA")
    assert "bootstrap over test clips" in (out / "summary.md").read_text()
    assert "Recommended (highest validation WA)" in printed

    # a re-run reuses stores and trained heads instead of recomputing them
    caplog.set_level(logging.INFO, logger="lightning_emo")
    assert main(["reproduce", "--config", "configs/reproduce/synthetic.yaml", "--out", str(out),
                 "--num_workers", "0", *TINY]) == 0
    assert "reusing" in caplog.text


def test_protocol_needs_both_modalities(tmp_path, capsys):
    assert main(["reproduce", "--config", "configs/reproduce/synthetic.yaml", "--out", str(tmp_path),
                 "--video", "{}"]) == 2
    assert "at least one audio and one video" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_fusion_beats_the_best_single_modality(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    import csv

    with open(out / "fusion" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    single = max(float(r["test_accuracy"]) for r in rows if r["kind"] == "single")
    fused = max(float(r["test_accuracy"]) for r in rows if r["kind"] != "single")
    assert single > 1 / 7 + 0.1
    assert fused > single


@pytest.mark.parametrize("config", ["synthetic.yaml", "cheavd.yaml"])
def test_every_protocol_config_parses_and_names_existing_train_configs(config, capsys):
    import yaml

    from lightning_emo.pipeline import Protocol, _parser, resolve_config

    parser = _parser()
    cfg = parser.instantiate(parser.parse_args(["--config", f"configs/reproduce/{config}"]))
    protocol = Protocol(**{k: cfg[k] for k in Protocol.__dataclass_fields__})
    assert protocol.audio and protocol.video
    for fs in [*protocol.audio.values(), *protocol.video.values()]:
        train = yaml.safe_load(resolve_config(fs.train_config or protocol.train_config).read_text())
        assert train["model"]["class_path"].endswith("EmotionModule")


def _fold_args(out, *extra):
    return ["reproduce", "--config", "configs/reproduce/synthetic.yaml", "--out", str(out), "--num_workers", "0",
            "--synth.clips_per_class", "4", "--synth.num_speakers", "6", "--synth.size", "64", "--synth.max_speech", "2",
            "--train_args", '["--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]',
            "--audio", '{"mfcc": {"extractor": "mfcc", "train_config": "configs/experiment/synthetic_audio.yaml"}}',
            "--video", '{"hog": {"extractor": "hog", "detector": "none", "fps": 5, '
                       '"train_config": "configs/experiment/synthetic_face.yaml"}}',
            "--rules", '["lr", "prior"]', *extra]


def _summary_rows(out):
    import csv

    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_reproduce_folds_write_summary_and_extract_once(tmp_path, caplog, capsys):
    out = tmp_path / "folds"
    assert main(_fold_args(out, "--folds.scheme", "kfold", "--folds.k", "2")) == 0
    rows = _summary_rows(out)
    assert list(rows[0]) == ["method", "metric", "mean", "std", "ci_low", "ci_high", "n"]
    assert {r["metric"] for r in rows} == {"WA", "UA", "macro-F1", "weighted-F1"}
    assert {r["method"] for r in rows} >= {"mfcc", "hog", "mfcc+hog / LR", "mfcc+hog / prior"}
    assert all(r["n"] == "2" and float(r["ci_low"]) <= float(r["mean"]) + 1e-9 for r in rows)
    md = (out / "summary.md").read_text()
    assert "Table 2" in md and "Recommended" in md and "Paired test" in md and "McNemar" in md
    assert (out / "summary_ci.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "folds").iterdir()) == ["fold1-seed0", "fold2-seed0"]
    # extraction ran once for the whole protocol: each store written once, never per fold
    (history,) = json.loads((out / "extraction.json").read_text())
    assert [s["written"] for s in history["stores"]] == [28, 28]
    # the prior rule took each head's micro-F1 from its checkpoint: the same as recomputing it from predictions
    from lightning_emo.fusion.rules import micro_f1_scores

    run = out / "folds" / "fold1-seed0"
    state = json.loads((run / "fusion" / "mfcc+hog" / "prior" / "rule.json").read_text())["state"]
    val = {n: read_predictions(run / "runs" / n / "predictions.csv").split("val") for n in ("hog", "mfcc")}
    refit = micro_f1_scores([val["hog"].probs, val["mfcc"].probs], val["hog"].y)
    assert state["params"]["micro_f1"] == pytest.approx(refit.tolist(), abs=1e-6)
    ckpt = {n: json.loads((run / "runs" / n / "result.json").read_text())["checkpoint"] for n in ("hog", "mfcc")}
    assert main(["fuse", "--audio", f"mfcc={run / 'runs' / 'mfcc' / 'predictions.csv'}",
                 "--video", f"hog={run / 'runs' / 'hog' / 'predictions.csv'}", "--checkpoint", f"mfcc={ckpt['mfcc']}",
                 "--checkpoint", f"hog={ckpt['hog']}", "--rules", "prior", "--out", str(tmp_path / "fused"),
                 "--no-png", "--quiet"]) == 0
    fused = json.loads((tmp_path / "fused" / "mfcc+hog" / "prior" / "rule.json").read_text())["state"]
    assert fused["params"]["micro_f1"] == state["params"]["micro_f1"]
    # `export --run` on the whole output names a run to export instead of looking for heads at the top
    capsys.readouterr()
    assert main(["export", "--run", str(out), "--audio", "mfcc", "--video", "hog", "--out", str(tmp_path / "m")]) != 0
    assert f"holds 2 runs (folds x seeds), each with its own heads: export one of them, e.g. --run {out / 'folds'}" \
        in capsys.readouterr().err
    assert main(["export", "--run", str(run), "--audio", "mfcc", "--video", "hog", "--out", str(tmp_path / "m")]) == 0
    # a re-run skips the finished folds and extracts nothing
    caplog.set_level(logging.INFO, logger="lightning_emo")
    assert main(_fold_args(out, "--folds.scheme", "kfold", "--folds.k", "2")) == 0
    assert caplog.text.count("finished earlier, skipped") == 2
    assert [s["written"] for s in json.loads((out / "extraction.json").read_text())[1]["stores"]] == [0, 0]


@pytest.mark.slow
def test_reproduce_three_seeds_resumes_after_a_real_kill(tmp_path, caplog):
    """kfold x 3 seeds in a subprocess, SIGKILLed once a run has finished; the re-run skips the finished runs."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "killed"
    args = _fold_args(out, "--folds.scheme", "kfold", "--folds.k", "2", "--seeds", "[0, 1, 2]")
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "lightning_emo.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not list((out / "folds").glob("*/DONE")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, "the protocol ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = {p.parent.name for p in (out / "folds").glob("*/DONE")}
    assert finished and len(finished) < 6 and not (out / "summary.csv").exists()
    caplog.set_level(logging.INFO, logger="lightning_emo")
    assert main(args) == 0
    assert caplog.text.count("finished earlier, skipped") == len(finished)
    assert len(list((out / "folds").glob("*/DONE"))) == 6
    assert all(r["n"] == "6" for r in _summary_rows(out))
    assert (out / "summary_ci.png").is_file() and "Recommended" in (out / "summary.md").read_text()
    history = json.loads((out / "extraction.json").read_text())
    assert [s["written"] for s in history[0]["stores"]] == [28, 28]  # the killed run extracted everything once
    assert all(s["written"] == 0 for h in history[1:] for s in h["stores"])


@pytest.mark.parametrize("extra, message", [
    (["--folds.scheme", "kfold", "--folds.k", "50"], "cannot fill 50 speaker-independent folds"),
    (["--folds.scheme", "logo"], "needs the 'group' \\(or 'session'\\) column"),
    (["--folds.scheme", "bogus"], "unknown fold scheme 'bogus'"),
    (["--seeds", "[1, 1]"], "distinct integers"),
    (["--select_metric", "auc"], "select_metric must be one of"),
    (["--crossfit", "1"], "crossfit must be 0"),
])
def test_bad_protocol_options_stop_before_any_work(tmp_path, extra, message, capsys):
    out = tmp_path / "bad"
    assert main(_fold_args(out, *extra)) == 2  # one paragraph (lightning_emo.errors), no traceback
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (out / "features").exists()  # nothing extracted
