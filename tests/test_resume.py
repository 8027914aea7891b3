"""Interrupted training: last.ckpt every epoch, exact resume (killed, SIGTERM, fine-tuning), the run directory."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

try:  # tests/ on sys.path (pytest's default) or the repository root (tests as a package)
    from test_module import _WaveformData, make_toy_corpus
except ImportError:
    from tests.test_module import _WaveformData, make_toy_corpus

from lightning_emo.cli import main

try:
    from lightning_emo.data.datamodule import FeatureDataModule
except ImportError:  # before the store / datamodule split
    from lightning_emo.data.features import FeatureDataModule
from lightning_emo.models.module import EmotionModule
from lightning_emo.models.resume import SIGTERM_EXIT, EpochCheckpoint, RngState, resume_in_run_dir

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_resume")
    make_toy_corpus(root)
    return root


def _datamodule(toy: Path, **kw) -> FeatureDataModule:
    return FeatureDataModule(str(toy / "manifest.csv"), str(toy / "audio"), batch_size=4, max_frames=6, **kw)


class _Crash(Exception):
    pass


class _CrashAt(pl.Callback):
    """Raises in the middle of an epoch: the process dies there, as far as the checkpoints know."""

    def __init__(self, epoch: int, batch: int = 1):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise _Crash(f"crashed in epoch {self.epoch}")


def _fit(tmp_path: Path, name: str, module_kw: dict, data_kw: dict, toy: Path, max_epochs: int,
         ckpt_path: str | None = None, crash_at: int | None = None) -> tuple[pl.Trainer, pl.LightningModule]:
    pl.seed_everything(0)
    dm = _datamodule(toy, **data_kw)
    module = EmotionModule(input_dim=dm.input_dim, num_classes=dm.num_classes, classes=dm.classes,
                           modality=dm.modality, class_counts=dm.class_counts, head="lstm", hidden_dim=8,
                           dropout=0.5, **module_kw)
    ckpt = EpochCheckpoint(dirpath=tmp_path / name / "checkpoints", monitor="val/acc", mode="max", save_last=True,
                           filename="best-{epoch}")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=CSVLogger(tmp_path, name=name),
                         callbacks=[ckpt, RngState(), *([_CrashAt(crash_at)] if crash_at is not None else [])],
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=2,
                         log_every_n_steps=1, deterministic="warn")
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, module


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _epoch_of(path: str | Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def test_last_ckpt_is_the_last_epoch_even_when_the_metric_never_improves(toy, tmp_path):
    # lr 0: val/acc never changes, so the monitored metric improves only at epoch 0
    trainer, _ = _fit(tmp_path, "flat", {"lr": 0.0}, {}, toy, max_epochs=3)
    cb = trainer.checkpoint_callback
    assert _epoch_of(cb.last_model_path) == 2 and Path(cb.last_model_path).name == "last.ckpt"
    assert [p.name for p in Path(cb.dirpath).glob("best-*.ckpt")] == ["best-epoch=0.ckpt"]  # best-k as before
    # Lightning's own ModelCheckpoint keeps last.ckpt at the last improvement: the behaviour fixed here
    pl.seed_everything(0)
    dm = _datamodule(toy)
    module = EmotionModule(input_dim=dm.input_dim, num_classes=dm.num_classes, classes=dm.classes, lr=0.0)
    plain = ModelCheckpoint(dirpath=tmp_path / "plain", monitor="val/acc", mode="max", save_last=True)
    pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, callbacks=[plain], enable_progress_bar=False,
               enable_model_summary=False).fit(module, dm)
    assert _epoch_of(plain.last_model_path) == 0


@pytest.mark.parametrize("module_kw, data_kw", [
    ({"scheduler": "cosine"}, {}),                                   # length buckets (the default)
    ({"scheduler": "plateau"}, {"bucket_by_length": False}),         # a plain shuffle
    ({"optimizer": "sgd"}, {"bucket_by_length": False, "sampler": "balanced"}),  # weighted draws
], ids=["buckets-cosine", "shuffle-plateau", "balanced-sgd"])
def test_resumed_run_ends_where_the_uninterrupted_one_does(toy, tmp_path, module_kw, data_kw):
    full, full_module = _fit(tmp_path, "full", module_kw, data_kw, toy, max_epochs=4)
    with pytest.raises(_Crash):
        _fit(tmp_path, "part", module_kw, data_kw, toy, max_epochs=4, crash_at=2)
    last = tmp_path / "part" / "checkpoints" / "last.ckpt"
    assert _epoch_of(last) == 1
    resumed, resumed_module = _fit(tmp_path, "part", module_kw, data_kw, toy, max_epochs=4, ckpt_path=str(last))
    _same_weights(full_module.state_dict(), resumed_module.state_dict())
    assert full.optimizers[0].state_dict()["param_groups"] == resumed.optimizers[0].state_dict()["param_groups"]
    assert {k: float(v) for k, v in full.callback_metrics.items()} == \
        {k: float(v) for k, v in resumed.callback_metrics.items()}


def test_fine_tuning_resumes_with_its_unfrozen_blocks(tmp_path):
    def run(name: str, epochs: int, ckpt_path: str | None = None, crash_at: int | None = None):
        pl.seed_everything(0)
        data = _WaveformData()
        module = EmotionModule(num_classes=3, classes=data.classes, extractor="toy_blocks", unfreeze_after_epochs=1,
                               unfreeze_layers=1, extractor_lr=1e-2, hidden_dim=16, dropout=0.3)
        ckpt = EpochCheckpoint(dirpath=tmp_path / name, monitor="val/acc", mode="max", save_last=True)
        crash = [_CrashAt(crash_at)] if crash_at is not None else []
        trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, callbacks=[ckpt, RngState(), *crash],
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return trainer, module

    full, full_module = run("full", 4)
    # the unfrozen block's final weights are in last.ckpt, whatever val/acc did
    last = torch.load(full.checkpoint_callback.last_model_path, map_location="cpu", weights_only=True)
    assert last["epoch"] == 3
    torch.testing.assert_close(last["state_dict"]["extractor.blocks.2.0.weight"],
                               full_module.extractor.blocks[2][0].weight, rtol=0, atol=0)
    for stop in (1, 2):  # crashed in the unfreezing epoch, and after it (the extra parameter group restored)
        with pytest.raises(_Crash):
            run(f"part{stop}", 4, crash_at=stop)
        assert _epoch_of(tmp_path / f"part{stop}" / "last.ckpt") == stop - 1
        resumed, module = run(f"part{stop}", 4, ckpt_path=str(tmp_path / f"part{stop}" / "last.ckpt"))
        _same_weights(full_module.state_dict(), module.state_dict())
        assert len(resumed.optimizers[0].param_groups) == 3


def _logger_config(save_dir: Path, name: str = "toy", version=None) -> dict:
    return {"ckpt_path": "last", "trainer": {"logger": _Namespace(class_path="pytorch_lightning.loggers.CSVLogger",
                                                                  init_args={"save_dir": str(save_dir), "name": name,
                                                                             "version": version})}}


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_ckpt_path_last_resumes_in_the_newest_run_that_has_one(tmp_path):
    base = tmp_path / "runs" / "toy"
    for version, has_last in ((0, True), (1, True), (2, False)):  # version_2: a run killed before its first epoch
        (base / f"version_{version}" / "checkpoints").mkdir(parents=True)
        if has_last:
            (base / f"version_{version}" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    config = _logger_config(tmp_path / "runs")
    assert resume_in_run_dir(config) == base / "version_1" / "checkpoints" / "last.ckpt"
    assert config["trainer"]["logger"].init_args["version"] == 1
    # an explicit path inside a run sets that run's version; an explicit version or a foreign path is left alone
    config = _logger_config(tmp_path / "runs")
    config["ckpt_path"] = str(base / "version_0" / "checkpoints" / "last.ckpt")
    resume_in_run_dir(config)
    assert config["trainer"]["logger"].init_args["version"] == 0
    config = _logger_config(tmp_path / "runs", version=5)
    assert resume_in_run_dir(config) is None and config["ckpt_path"] == "last"
    config = _logger_config(tmp_path / "runs", version=0)  # explicit, and the checkpoint is that run's
    config["ckpt_path"] = str(base / "version_0" / "checkpoints" / "last.ckpt")
    assert resume_in_run_dir(config) == Path(config["ckpt_path"])
    config = _logger_config(tmp_path / "runs")
    config["ckpt_path"] = str(tmp_path / "elsewhere.ckpt")
    assert resume_in_run_dir(config) is None and config["trainer"]["logger"].init_args["version"] is None
    # nothing to resume: Lightning's own warning, a fresh run
    config = _logger_config(tmp_path / "empty")
    assert resume_in_run_dir(config) is None


# ------------------------------------------------------------------ real kills through the CLI


def _config(toy: Path, tmp: Path, max_epochs: int = 5) -> Path:
    path = tmp / "toy.yaml"
    path.write_text(textwrap.dedent(f"""\
        seed_everything: 0
        trainer:
          max_epochs: {max_epochs}
          accelerator: cpu
          enable_progress_bar: false
          enable_model_summary: false
          log_every_n_steps: 1
          logger:
            class_path: pytorch_lightning.loggers.CSVLogger
            init_args: {{save_dir: runs, name: toy}}
        model:
          class_path: lightning_emo.models.module.EmotionModule
          init_args: {{head: lstm, hidden_dim: 8, dropout: 0.5, lr: 0.01, scheduler: cosine}}
        data:
          class_path: FeatureDataModule
          init_args: {{manifest: {toy / 'manifest.csv'}, features: {toy / 'audio'}, batch_size: 4, max_frames: 6}}
        """))
    return path


def _kill_config(tmp: Path, epoch: int, sig: str) -> Path:
    path = tmp / f"kill_{sig}.yaml"
    path.write_text(f"trainer:\n  callbacks:\n    - class_path: helpers.KillAt\n"
                    f"      init_args: {{epoch: {epoch}, batch: 2, signal: {sig}}}\n")
    return path


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "lightning_emo.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(toy, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    config = _config(toy, tmp)
    result = _cli(["fit", "--config", str(config)], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "runs" / "toy" / "version_0"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_fit_resumed_with_ckpt_path_last_reaches_the_same_result(toy, tmp_path, uninterrupted, sig):
    config = _config(toy, tmp_path)
    killed = _cli(["fit", "--config", str(config), "--config", str(_kill_config(tmp_path, 3, sig))], tmp_path)
    run = tmp_path / "runs" / "toy" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    if sig == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL
    else:  # preemption: stops after the batch, exits 143 and says how to resume
        assert killed.returncode == SIGTERM_EXIT, killed.stderr[-3000:]
        assert "SIGTERM" in killed.stderr and f"--ckpt_path {last.relative_to(tmp_path)}" in killed.stderr
        assert "last completed epoch (2)" in killed.stderr
    assert _epoch_of(last) == 2  # epochs 0-2 completed, epoch 3 interrupted

    # the same command plus --ckpt_path (last, or the path the message names): the same run directory, epoch 3 on
    resumed = _cli(["fit", "--config", str(config), "--ckpt_path", "last" if sig == "SIGKILL" else str(last)],
                   tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs" / "toy").iterdir()) == ["version_0"]
    assert _rows(run) == _rows(uninterrupted)  # every epoch's metrics, the interrupted epoch once
    a = torch.load(uninterrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    _same_weights(a["state_dict"], b["state_dict"])
    best = sorted(p.name for p in (uninterrupted / "checkpoints").glob("best-*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("best-*")) == best  # the best-k bookkeeping resumed


def test_fit_without_anything_to_resume_from_starts_afresh(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(toy, tmp_path, max_epochs=1)
    assert main(["fit", "--config", str(config), "--ckpt_path", "last"]) == 0
    assert _epoch_of(tmp_path / "runs" / "toy" / "version_0" / "checkpoints" / "last.ckpt") == 0


def test_sigterm_during_fit_exits_143_keeping_the_last_completed_epoch(toy, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))  # helpers.KillAt, named in the config
    config = _config(toy, tmp_path, max_epochs=4)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["fit", "--config", str(config), "--config", str(_kill_config(tmp_path, 2, "SIGTERM"))]) == SIGTERM_EXIT
    last = Path("runs/toy/version_0/checkpoints/last.ckpt")
    assert _epoch_of(last) == 1
    assert f"fit stopped by SIGTERM during epoch 2; the partial epoch is dropped. {last} holds the last " \
           f"completed epoch (1). Resume with: lightning-emo fit --config runs/toy/version_0/config.yaml " \
           f"--ckpt_path {last}" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == before  # Lightning's handler is gone again


@pytest.mark.slow
def test_fit_on_a_full_disk_names_the_checkpoint_and_what_was_kept(toy, tmp_path):
    import resource

    def limit() -> None:  # writes past 30 kB fail with EFBIG: the real OSError path of a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "lightning_emo.cli", "fit", "--config", str(_config(toy, tmp_path))],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode != 0
    ckpt = "runs/toy/version_0/checkpoints/best-epoch=0"
    assert f"the file-size limit was reached while writing {ckpt}" in result.stderr
    assert "no checkpoint had been written yet" in result.stderr
    assert not list((tmp_path / "runs" / "toy" / "version_0" / "checkpoints").glob("*.ckpt"))  # no torn file


def test_fit_without_ckpt_path_refuses_a_named_version_that_holds_a_run(tmp_path):
    from lightning_emo.models.resume import refuse_finished_run_dir
    from lightning_emo.utils import OutputExistsError

    config = _logger_config(tmp_path / "runs", version="mine")
    refuse_finished_run_dir(config)  # nothing there yet
    (tmp_path / "runs" / "toy" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "toy" / "mine" / "metrics.csv").write_text("epoch,step\n0,1\n")
    with pytest.raises(OutputExistsError, match=r"run folder .*mine already exists; nothing was written\. Resume"):
        refuse_finished_run_dir(config)
    refuse_finished_run_dir(_logger_config(tmp_path / "runs"))  # no version named: a new folder, nothing to refuse


def test_last_ckpt_as_a_link_still_follows_every_epoch(toy, tmp_path):
    pl.seed_everything(0)
    dm = _datamodule(toy)
    module = EmotionModule(input_dim=dm.input_dim, num_classes=dm.num_classes, classes=dm.classes, lr=0.0)
    ckpt = EpochCheckpoint(dirpath=tmp_path / "link", monitor="val/acc", mode="max", save_last="link")
    pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, callbacks=[ckpt], enable_progress_bar=False,
               enable_model_summary=False).fit(module, dm)
    assert _epoch_of(tmp_path / "link" / "last.ckpt") == 2


def test_sigterm_during_predict_exits_143_writing_nothing(toy, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    config = _config(toy, tmp_path, max_epochs=1)
    assert main(["fit", "--config", str(config)]) == 0
    run = Path("runs/toy/version_0")
    kill = tmp_path / "kill_predict.yaml"
    kill.write_text("trainer:\n  callbacks:\n    - class_path: helpers.KillAt\n"
                    "      init_args: {epoch: 0, batch: 0, signal: SIGTERM, stage: predict}\n")
    args = ["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    assert main([*args, "--config", str(kill)]) == SIGTERM_EXIT
    assert "predict stopped by SIGTERM; nothing was written" in caplog.text
    assert not (run / "predictions.csv").exists()
    assert main(args) == 0 and (run / "predictions.csv").is_file()


def test_reproduce_resumes_an_interrupted_training_to_the_same_predictions(toy, tmp_path, monkeypatch):
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from lightning_emo.pipeline import train_and_predict

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    config = _config(toy, tmp_path, max_epochs=4)
    manifest, store = toy / "manifest.csv", toy / "audio"
    whole = train_and_predict("toy", manifest, store, tmp_path / "whole", str(config), [])
    with pytest.raises(SIGTERMException):  # preempted in epoch 2 (reproduce_main turns this into exit 143)
        train_and_predict("toy", manifest, store, tmp_path / "cut", str(config),
                          ["--config", str(_kill_config(tmp_path, 2, "SIGTERM"))])
    assert _epoch_of(tmp_path / "cut" / "toy" / "fit" / "checkpoints" / "last.ckpt") == 1
    resumed = train_and_predict("toy", manifest, store, tmp_path / "cut", str(config), [])
    assert resumed.read_text() == whole.read_text()
    assert _rows(tmp_path / "cut" / "toy" / "fit") == _rows(tmp_path / "whole" / "toy" / "fit")


def test_ctrl_c_during_fit_exits_130_saying_what_was_kept(toy, tmp_path, monkeypatch, caplog):
    """Ctrl-C: Lightning stops at once (its exit(1)); the command says what was kept and exits 130."""
    from lightning_emo.models.resume import SIGINT_EXIT

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))  # helpers.KillAt, named in the config
    config = _config(toy, tmp_path, max_epochs=4)
    before = signal.getsignal(signal.SIGINT)
    try:
        assert main(["fit", "--config", str(config), "--config", str(_kill_config(tmp_path, 2, "SIGINT"))]) \
            == SIGINT_EXIT
    finally:
        signal.signal(signal.SIGINT, before)  # Lightning leaves Ctrl-C ignored after handling one
    last = Path("runs/toy/version_0/checkpoints/last.ckpt")
    assert _epoch_of(last) == 1
    assert f"fit stopped by Ctrl-C during epoch 2; the partial epoch is dropped. {last} holds the last " \
           "completed epoch (1). Resume with: lightning-emo fit" in caplog.text
