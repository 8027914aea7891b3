"""The ``lightning-emo`` console script: one dispatcher over the package's commands.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands; the others are
small commands, each owned by the module named in :data:`COMMANDS` and imported only when used.
Every command's ``main(argv)`` parses its own arguments (``lightning-emo CMD --help``).
"""

from __future__ import annotations

import importlib
import sys

from lightning_emo.errors import _take_traceback_flag, command

# name -> ("module:function", one-line help). Functions take the argument list after the name.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("lightning_emo.data.synthetic:main", "write the synthetic audio-visual corpus (MP4 + manifest)"),
    "prepare": ("lightning_emo.data.prepare:main", "turn a corpus into a validated manifest with splits"),
    "extract": ("lightning_emo.extractors.extract:main", "run frozen extractors over a manifest into a feature store"),
    "fit": ("lightning_emo.models.cli:main", "train an emotion head (LightningCLI)"),
    "validate": ("lightning_emo.models.cli:main", "validate a checkpoint (LightningCLI)"),
    "test": ("lightning_emo.models.cli:main", "test a checkpoint (LightningCLI)"),
    "predict": ("lightning_emo.models.cli:main", "write posteriors to predictions.csv (LightningCLI)"),
    "fuse": ("lightning_emo.fusion.commands:main", "decision-level fusion of several predictions.csv"),
    "reproduce": ("lightning_emo.pipeline:reproduce_main", "the paper's protocol: extract, train, predict, fuse, tables"),
    "demo": ("lightning_emo.pipeline:demo_main", "the whole pipeline on the built-in synthetic corpus"),
    "export": ("lightning_emo.hub.commands:export_main", "export a trained recognizer in the Hub layout"),
    "push": ("lightning_emo.hub.commands:push_main", "upload an exported recognizer to the Hugging Face Hub"),
    "infer": ("lightning_emo.hub.commands:infer_main", "recognise emotions in media files (optionally over time)"),
    "zoo": ("lightning_emo.hub.commands:zoo_main", "list the model zoo"),
    "configs": ("lightning_emo.configs:main", "list, show or copy the shipped configs (usable by name from any folder)"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lightning-emo COMMAND [options]   (lightning-emo COMMAND --help)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Configs ship with the package: `--config experiment/hubert.yaml` (fit/validate/test/predict,",
              "reproduce) names a shipped config from any folder when no such local file exists;",
              "`lightning-emo configs list` shows them, `lightning-emo configs copy NAME DEST` copies one to edit."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``lightning-emo COMMAND ...``; a bad input prints one paragraph and returns 2 (:mod:`lightning_emo.errors`).

    ``--traceback`` anywhere (or ``LIGHTNING_EMO_DEBUG=1``) shows the full traceback instead.
    """
    argv = _take_traceback_flag(argv)  # with argv None, from sys.argv too: LightningCLI reads it there
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from lightning_emo import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"lightning-emo: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:  # a command whose module is not built yet
        print(f"lightning-emo {name}: not available ({e})", file=sys.stderr)
        return 2
    args = argv if name in LIGHTNING_COMMANDS else argv[1:]
    # commands' mains are decorated with errors.command already; this covers any that is not
    return command(name)(fn)(args)


if __name__ == "__main__":
    sys.exit(main())
