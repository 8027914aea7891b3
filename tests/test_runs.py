"""One folder per run, evaluation inside the run it evaluates, and logs a person can read when output is a file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:  # tests/ on sys.path (pytest's default) or the repository root (tests as a package)
    from test_configs import CONFIGS, _restore_global_torch_state, fit, synthetic  # noqa: F401
except ImportError:
    from tests.test_configs import CONFIGS, _restore_global_torch_state, fit, synthetic  # noqa: F401

from lightning_emo.cli import main
from lightning_emo.console import Progress, quiet_upstream

FACE = CONFIGS / "experiment" / "synthetic_face.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator", "cpu"]


def _data(root: Path) -> list[str]:
    return ["--data.init_args.manifest", str(root / "manifest.csv"), "--data.init_args.features",
            str(root / "features" / "hog")]


def test_two_loggers_one_folder_and_evaluation_inside_the_run(synthetic):
    fit(["--config", str(FACE), "--config", str(CONFIGS / "logger" / "tensorboard.yaml"), *_data(synthetic),
         *QUIET, "--trainer.max_epochs", "1"])
    versions = sorted(Path("runs", "emotion").iterdir())
    assert [v.name for v in versions] == ["version_0"], versions  # TensorBoard and CSV share one run folder
    run = versions[0]
    assert (run / "metrics.csv").is_file() and list(run.glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()

    ckpt = str(run / "checkpoints" / "last.ckpt")
    for stage in ("validate", "test", "test", "predict"):
        assert main([stage, "--config", str(run / "config.yaml"), "--ckpt_path", ckpt, *QUIET]) == 0
    assert sorted(p.name for p in Path("runs", "emotion").iterdir()) == ["version_0"]  # no new version_N beside it
    for stage, metric in (("validate", "val/acc"), ("test", "test/acc"), ("test-1", "test/acc")):
        assert metric in (run / stage / "metrics.csv").read_text(), stage  # a second test does not overwrite
        assert (run / stage / "config.yaml").is_file()
    assert (run / "predict" / "config.yaml").is_file() and (run / "predictions.csv").is_file()
    assert (run / "metrics.csv").read_text().count("val/acc") >= 1  # the training metrics are still there


def test_fit_log_to_a_file_is_short_lines_without_banners(synthetic, tmp_path):
    log = tmp_path / "fit.log"
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "lightning_emo.cli", "fit", "--config", str(FACE),
                               *_data(synthetic), "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
                               "--trainer.enable_model_summary=false"],
                              cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=300,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text  # no carriage-return redraws of a live bar
    assert max(map(len, text.splitlines())) < 400
    for noise in ("GPU available", "TPU available", "💡", "litlogger", "LeafSpec"):
        assert noise not in text, noise
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split(" (")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], text
    assert "val/acc" in epochs[-1] and "ETA" in epochs[-1]
    done = [line for line in text.splitlines() if line.startswith("fit done after 2 epoch(s): run folder ")]
    assert len(done) == 1 and "best checkpoint " in done[0] and "(val/acc " in done[0] and "last.ckpt " in done[0]


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log(caplog, tmp_path):
    class FakeTTY:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    caplog.set_level(logging.INFO, logger="lightning_emo")
    with Progress(30, "synth", unit="clip", interval=0.0, stream=open(os.devnull, "w")) as p:
        for _ in range(3):
            p.update(10)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("synth: 10/30 clips, ") and "clips/s, ETA " in lines[0]
    assert lines[-1].startswith("synth: 30/30 clips") and "done in 0:00:0" in lines[-1]

    caplog.clear()
    tty = FakeTTY()
    with Progress(2_000_000, "download w.pth", unit="B", stream=tty) as p:
        p.update(1_000_000)
        p.update(1_000_000)
    assert not caplog.records and "download w.pth" in tty.text and "2.00M/2.00M" in tty.text

    with Progress(5, "quiet", enabled=False, stream=open(os.devnull, "w")) as p:
        p.update(5)
    assert not caplog.records


@pytest.mark.parametrize("message, dropped", [("GPU available: False, used: False", True),
                                              ("💡 Tip: For seamless cloud logging ...", True),
                                              ("Restoring states from the checkpoint path at x.ckpt", False)])
def test_lightning_banners_are_dropped_other_messages_kept(message, dropped):
    quiet_upstream()
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("pytorch_lightning")
    logger.addHandler(handler)
    try:
        rank_zero_info(message)
    finally:
        logger.removeHandler(handler)
    assert (message not in records) == dropped
