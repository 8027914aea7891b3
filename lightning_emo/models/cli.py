"""The LightningCLI behind ``lightning-emo fit|validate|test|predict``: links, callbacks and defaults.

The model is any LightningModule named by ``model.class_path``: :class:`EmotionModule` in every
emotion config, the source-task recipes of :mod:`lightning_emo.pretrain` in ``configs/pretrain/``.
What the data knows is linked into the model on instantiation, never written twice: the class
names and their number, the input dimension, the modality, the extractor spec and the training
class counts (``data.<attr> -> model.init_args.<attr>``; a datamodule without an attribute,
e.g. raw clips have no ``input_dim``, simply does not set it).

Callbacks every run gets (each configurable under its own key):

* ``checkpoint``: ``ModelCheckpoint`` on ``val/acc`` (mode max), plus ``last.ckpt`` at the end of
  every epoch (:class:`~lightning_emo.models.resume.EpochCheckpoint`); with the RNG states in it
  and ``fit --ckpt_path last`` resuming in the same run directory, a resumed run ends where an
  uninterrupted one would (:mod:`lightning_emo.models.resume`); SIGTERM stops after the current
  batch with exit status 143 and says how to resume;
* ``early_stopping``: ``EarlyStopping`` on ``val/acc`` (mode max, patience 20);
* ``predictions``: :class:`~lightning_emo.models.writer.PredictionsWriter`, which makes
  ``predict`` write ``predictions.csv`` into the run directory (or ``--predictions.output``);
* ``fusion``: :class:`~lightning_emo.fusion.callback.FusionPriorCallback` (validation
  micro-F1 per modality, the fusion prior, saved in the checkpoint), when installed.

The last two read emotion posteriors and are dropped for other LightningModules.

Each run writes one folder (every file-based logger in it; evaluation from a run's checkpoint
inside that run) and, when stderr is not a terminal, short progress lines:
:mod:`lightning_emo.models.runs`.

Defaults: a CSV logger under ``runs/`` (TensorBoard and wandb loggers: ``configs/logger/``),
``seed_everything: 0`` and ``trainer.deterministic: warn`` (same seed, same metrics on CPU for
a fixed number of threads), the resolved config saved as ``config.yaml`` in the run directory.
Multi-GPU: ``--trainer.devices N --trainer.strategy ddp``. ``--config`` takes a file or the name of
a shipped config (``experiment/hubert.yaml``, see :mod:`lightning_emo.configs`) from any folder.

Usage::

    lightning-emo fit --config configs/experiment/synthetic_audio.yaml
    lightning-emo fit --config configs/experiment/synthetic_audio.yaml --print_config
    lightning-emo predict --config runs/synthetic_audio/version_0/config.yaml \
        --ckpt_path runs/synthetic_audio/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import re
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning import Callback, LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import EarlyStopping, ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_emo.console import is_interactive, quiet_upstream
from lightning_emo.errors import ConfigError, UserError, command, describe_parse_error, find_user_error
from lightning_emo.models.module import EmotionModule
from lightning_emo.models.resume import (
    SIGINT_EXIT,
    SIGTERM_EXIT,
    EpochCheckpoint,
    KeepMetrics,
    Preemption,
    RngState,
    interrupted,
    refuse_finished_run_dir,
    resume_in_run_dir,
)
from lightning_emo.models.runs import LogProgressBar, RunSummary, place_loggers
from lightning_emo.models.writer import PredictionsWriter
from lightning_emo.registry import UnknownNameError
from lightning_emo.utils import DiskFullError, disk_full, setup_logging

# datamodule attribute -> EmotionModule argument (same name)
LINKED = ("num_classes", "classes", "input_dim", "modality", "extractor_spec", "class_counts")

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs",
                                                                                  "name": "emotion"}},
    "deterministic": "warn",
    "max_epochs": 50,
}


def _import_datamodules() -> None:
    """Import the package's datamodules so configs can name them by class name (``FeatureDataModule``)."""
    for module in ("lightning_emo.data.datamodule", "lightning_emo.data.clips", "lightning_emo.pretrain.asr_data",
                   "lightning_emo.pretrain.face_data", "lightning_emo.pretrain.speech", "lightning_emo.pretrain.faces"):
        try:
            __import__(module)
        except ImportError:  # an optional part that is not installed / not built
            pass


def _fusion_callback():
    try:
        from lightning_emo.fusion.callback import FusionPriorCallback
    except ImportError:
        return None
    return FusionPriorCallback


def _section(error: BaseException) -> str:
    """``model``/``data`` (and the class) from jsonargparse's wrapper of a failed instantiation."""
    text = str(error)
    m = re.search(r"class_path='([\w.]+)'", text)
    cls = m.group(1).rsplit(".", 1)[-1] if m else None
    section = "model" if "core.module.LightningModule" in text else "data" if "LightningDataModule" in text else None
    return " ".join(x for x in (section, f"({cls})" if cls else None) if x)


class EmotionCLI(LightningCLI):
    """LightningCLI for :class:`EmotionModule` (and any other LightningModule) over any LightningDataModule.

    Other LightningModules (the source-task recipes of :mod:`lightning_emo.pretrain`) get the
    same trainer, checkpoint, early-stopping and logger options, without the callbacks that
    read emotion posteriors (the fusion prior, ``predictions.csv``).

    A bad option or config value is raised as a :class:`~lightning_emo.errors.ConfigError` naming
    the key (jsonargparse's nested report condensed), a constructor or the Trainer refusing its
    arguments as one naming the section; the package's own errors pass as they are.
    """

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in ("last", "best", "hpc") or str(ckpt_path).startswith("registry"):
            return super()._parse_ckpt_path()
        if Path(ckpt_path).is_dir():
            found = sorted(str(p) for p in Path(ckpt_path).rglob("*.ckpt"))[:4]
            raise ConfigError(f"--ckpt_path {ckpt_path}: is a folder, not a checkpoint file. Give one .ckpt"
                              + (f" (here: {', '.join(found)})" if found else " a `fit` run saved (<run>/checkpoints/)")
                              + ", or `last` to resume from the run's last.ckpt.")
        if not Path(ckpt_path).is_file():
            raise ConfigError(f"--ckpt_path {ckpt_path}: no such checkpoint file. Give the path of a .ckpt a `fit` "
                              "run saved (<run>/checkpoints/), or `last` to resume from the run's last.ckpt.")
        try:
            super()._parse_ckpt_path()
        except UserError:
            raise
        except Exception as e:  # torch.load of something that is not a checkpoint: pickle, zip, EOF errors
            if isinstance(e, ArgumentError):
                raise ConfigError(f"--ckpt_path {ckpt_path}: its hyper-parameters do not fit the config: "
                                  f"{describe_parse_error(e, subcommand, print_config=False)}") from e
            raise ConfigError(f"--ckpt_path {ckpt_path}: not a Lightning checkpoint (torch.load could not read it: "
                              f"{type(e).__name__}). Give a .ckpt a `fit` run saved (<run>/checkpoints/).") from e

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except UserError:
            raise
        except (ValueError, KeyError, MisconfigurationException) as e:
            found = find_user_error(e)
            if isinstance(found, UnknownNameError) and _section(e):  # `head: lstmm`: say where it was configured
                raise ConfigError(f"{_section(e)}: {found}") from e
            if found is not None:
                raise
            # a constructor (or the Trainer) rejected a configured value: name the section
            inner = e
            while inner.__cause__ is not None:
                inner = inner.__cause__
            if not isinstance(inner, (ValueError, KeyError, MisconfigurationException)):
                raise  # TypeError, AttributeError...: a bug, keep its traceback
            message = str(inner.args[0] if isinstance(inner, KeyError) and inner.args else inner)
            where = _section(e) if inner is not e else ""
            if isinstance(inner, MisconfigurationException):
                where = "trainer"
            raise ConfigError(f"{where + ': ' if where else ''}{message.rstrip('.')}. Fix the value in the config or "
                              f"on the command line (`--print_config` shows what was resolved).") from e

    def before_instantiate_classes(self) -> None:
        self._resumed_run = None
        if self.subcommand == "fit":
            ckpt = resume_in_run_dir(self.config["fit"])
            if ckpt is not None:
                self._resumed_run = ckpt.parent.parent
                # resuming in its own folder: its checkpoints are meant to be there, KeepMetrics keeps its rows
                import warnings

                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            elif not self.config["fit"].get("ckpt_path"):
                refuse_finished_run_dir(self.config["fit"])

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if not isinstance(self.model, EmotionModule):
            emotion_only = tuple(c for c in (PredictionsWriter, _fusion_callback()) if c is not None)
            callbacks = [c for c in callbacks if not isinstance(c, emotion_only)]
        callbacks = [*callbacks, RngState(), Preemption(), RunSummary()]
        if getattr(self, "_resumed_run", None) is not None:
            callbacks.append(KeepMetrics(self._resumed_run))
        quiet_upstream()
        stage = self.subcommand or "fit"
        place_loggers(config.get("logger"), stage, self.config.get(stage, {}).get("ckpt_path") if self.subcommand
                      else None)
        given = [*callbacks, *(config.get("callbacks") or [])]
        if (not is_interactive() and config.get("enable_progress_bar") is not False
                and not any(isinstance(c, ProgressBar) for c in given)):
            callbacks = [*callbacks, LogProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The parser of each subcommand, whose ``--help`` says that configs can be named."""
        parser = super().init_parser(**kwargs)
        for action in parser._actions:
            if "--config" in action.option_strings:
                action.help = ("a config file (json or yaml), or the name of a config shipped with the package "
                               "(experiment/hubert.yaml, configs/model/blstm.yaml: `lightning-emo configs list`), "
                               "used when no such local file exists; repeat to layer configs (later ones win)")
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse with every ``--config`` resolved first: a shipped name (``experiment/hubert.yaml``) works from any folder.

        A parse error becomes one :class:`~lightning_emo.errors.ConfigError` naming the key.
        """
        from lightning_emo.configs import resolve_config_args

        arguments = list(sys.argv[1:] if args is None else args) if args is None or isinstance(args, (list, tuple)) \
            else []
        try:
            if args is None or isinstance(args, (list, tuple)):
                # args None: the console script's own command line (also what DDP relaunches with)
                self.config = parser.parse_args(resolve_config_args(arguments))
            else:
                super().parse_arguments(parser, args)
        except ArgumentError as e:
            raise ConfigError(describe_parse_error(e, arguments[0] if arguments else "", arguments)) from e

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "best-epoch={epoch}-val_acc={val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.save_last": True,
        })
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/acc", "early_stopping.mode": "max",
                             "early_stopping.patience": 20})
        parser.add_lightning_class_args(PredictionsWriter, "predictions")
        fusion = _fusion_callback()
        if fusion is not None:
            parser.add_lightning_class_args(fusion, "fusion")
        for name in LINKED:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


def cli(argv: list[str] | None = None, run: bool = True, **kwargs: Any) -> EmotionCLI:
    """Build (and by default run) the CLI on ``argv`` (``["fit", "--config", ...]``); returns the CLI object."""
    _import_datamodules()
    defaults = dict(
        model_class=LightningModule,  # EmotionModule by default in configs; pretrain recipes too
        subclass_mode_model=True,
        datamodule_class=LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        auto_configure_optimizers=False,  # EmotionModule owns its param groups (output-layer weight decay)
        # parse errors raise (EmotionCLI turns them into one ConfigError) instead of printing usage and exiting
        parser_kwargs={"exit_on_error": False, **{c: {"exit_on_error": False} for c in ("fit", "validate", "test",
                                                                                         "predict")}},
    )
    defaults.update(kwargs)
    return EmotionCLI(args=argv, run=run, **defaults)


@command()
def main(argv: list[str] | None = None) -> int:
    """``lightning-emo fit|validate|test|predict ...``: ``argv`` starts with the subcommand.

    A bad input is printed as one paragraph (exit status 2); see :mod:`lightning_emo.errors`.
    """
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    # LightningCLI reads sys.argv itself when it holds exactly these arguments (the console script,
    # and the processes DDP launches from it); passing them again only earns a warning
    try:
        cli(None if argv == sys.argv[1:] else argv)
    except SIGTERMException:  # Lightning stopped after the current batch; Preemption said how to resume
        return SIGTERM_EXIT
    except SystemExit as e:  # Lightning's exit(1) after Ctrl-C; Preemption said what was kept
        if interrupted(e):
            return SIGINT_EXIT
        raise
    except DiskFullError:  # already says which file and what was kept
        raise
    except OSError as e:  # a checkpoint write is atomic: the one it would have replaced is still there
        full = disk_full(e, kept="every checkpoint written before (last.ckpt: the last completed epoch) is intact",
                         then="resume with the same command plus --ckpt_path last")
        if full is None:
            raise
        raise full from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
