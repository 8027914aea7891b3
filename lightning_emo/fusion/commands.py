"""The ``lightning-emo fuse`` command: decision-level fusion of several ``predictions.csv`` into the paper's tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_emo import errors
from lightning_emo.errors import UsageError, UserError, command, debug_enabled, present
from lightning_emo.fusion.report import DEFAULT_RULES, expand_rules, fuse_report
from lightning_emo.fusion.rules import RULES
from lightning_emo.utils import check_outputs, log, output_dir, setup_logging

EPILOG = """\
examples:
  lightning-emo fuse --audio a60=runs/a60/predictions.csv --audio a1024=runs/a1024/predictions.csv \\
      --video v1024=runs/v1024/predictions.csv --video v2048=runs/v2048/predictions.csv --out runs/fusion
  lightning-emo fuse --model x=x.csv --model y=y.csv --model z=z.csv --rules lr prior weighted --out fused

Every file needs 'val' rows (the rules are fitted on them) and 'test' rows (scored), over the same
clips and classes. Every audio x video pair is fused with every rule; --model files are fused
together as one group. Writes results.md, table*.csv, results.csv, <pair>/<rule>/predictions.csv
(fusable again), <pair>/<rule>/rule.json and confusion_best.png to --out. Every table gives
WA (accuracy), UA (unweighted average recall) and macro-F1; the recommended method is chosen
by its validation score, and a paired test compares it with the best single model.
"""


def _named(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. a60=runs/a60/predictions.csv), got {value!r}")
    return name.strip(), Path(path)


def build_parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="lightning-emo fuse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--audio", type=_named, action="append", default=[], metavar="NAME=CSV",
                   help="an audio model's predictions.csv (repeatable)")
    p.add_argument("--video", type=_named, action="append", default=[], metavar="NAME=CSV",
                   help="a video model's predictions.csv (repeatable)")
    p.add_argument("--model", type=_named, action="append", default=[], metavar="NAME=CSV",
                   help="another model's predictions.csv (repeatable); these are fused together as one group")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES), metavar="RULE",
                   help=f"rules to run (default: {' '.join(DEFAULT_RULES)}); 'cascade' expands to the paper's "
                        f"Table 4 and 5 variants; known: cascade, {', '.join(RULES)}")
    p.add_argument("--calibrate", action="store_true",
                   help="temperature-scale each model on val (minimum NLL) before every rule")
    p.add_argument("--checkpoint", type=_named, action="append", default=[], metavar="NAME=CKPT",
                   help="a model's Lightning checkpoint: the prior rule then uses the validation micro-F1 that "
                        "FusionPriorCallback stored in it instead of recomputing it from the predictions (repeatable)")
    p.add_argument("--crossfit", type=int, default=0, metavar="K",
                   help="0 (default, the paper): rules fitted and scored on val in-sample; K >= 2: validation scores "
                        "from K-fold cross-fitting over the val clips (out-of-sample)")
    p.add_argument("--val-folds", type=int, default=5, metavar="K",
                   help="how rules are scored on val, which picks the recommended method (with --crossfit 0): K-fold "
                        "cross-fitted (default 5: no clip scored by a rule fitted on it), or 0: in-sample (favours LR); "
                        "test predictions do not change")
    p.add_argument("--select-metric", default="wa", choices=["wa", "ua", "macro_f1", "weighted_f1"],
                   help="validation metric that picks the recommended method (default: wa)")
    p.add_argument("--all", dest="fuse_all", action="store_true", help="also fuse all the models together")
    p.add_argument("--val-split", default="val", help="split the rules are fitted on (default: val)")
    p.add_argument("--test-split", default="test", help="split the rules are scored on (default: test)")
    p.add_argument("--no-png", action="store_true", help="skip the confusion-matrix PNG")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    p.add_argument("--overwrite", action="store_true", help="replace the tables and files of an earlier fuse in --out")
    return p


@command("fuse")
def main(argv: list[str] | None = None) -> int:
    """Run ``lightning-emo fuse``; returns 0, or 2 with a message on stderr for bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    models: dict[str, Path] = {}
    modalities: dict[str, str] = {}
    for modality, items in (("audio", args.audio), ("video", args.video), ("model", args.model)):
        for name, path in items:
            if name in models:
                parser.error(f"model name {name!r} given twice")
            models[name], modalities[name] = path, modality
    try:
        expand_rules(args.rules)
    except KeyError as e:
        parser.error(str(e.args[0]))
    output_dir(args.out, "--out")
    stored: dict[str, float] = {}
    if args.checkpoint:  # Lightning and torch load only when checkpoints are given
        from lightning_emo.fusion.callback import fusion_state_from_checkpoint
    for name, ckpt in args.checkpoint:
        if name not in models:
            parser.error(f"--checkpoint {name}=...: no model called {name!r} (models: {', '.join(models)})")
        try:
            metrics = fusion_state_from_checkpoint(str(ckpt))["metrics"]
        except (OSError, KeyError, ValueError) as e:
            return present("fuse", UsageError(f"--checkpoint {name}={ckpt}: {e}"))
        if len(metrics) != 1:
            raise UsageError(f"--checkpoint {name}={ckpt}: holds metrics of {len(metrics)} modalities "
                             f"({', '.join(metrics)}); expected one head's")
        stored[name] = float(next(iter(metrics.values()))["micro_f1"])
    try:
        # the fixed files first, before any work; Report.write checks all of them again
        check_outputs([args.out / "results.md", args.out / "results.csv"], args.overwrite)
        report = fuse_report(models, modalities, rules=args.rules, calibrate=args.calibrate,
                             fuse_all=args.fuse_all, val_split=args.val_split, test_split=args.test_split,
                             crossfit=args.crossfit, stored_f1=stored, select_metric=args.select_metric,
                             val_folds=args.val_folds)
        written = report.write(args.out, png=not args.no_png, overwrite=args.overwrite)
    except ValueError as e:  # the rules' arguments (crossfit, select_metric) and the files' contents
        if debug_enabled() or isinstance(e, UserError):
            raise
        return present("fuse", e)
    if not args.quiet:
        print(report.markdown())
    log.info("wrote %d files to %s", len(written), args.out)
    return 0
