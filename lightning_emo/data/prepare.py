"""``lightning-emo prepare``: a corpus (or a hand-written manifest) -> a validated manifest with splits."""

from __future__ import annotations

import inspect
import math
import sys

from lightning_emo import errors
from lightning_emo.data.checks import CorpusError, check_splits
from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.labelmap import apply_label_map
from lightning_emo.data.manifest import DEFAULT_RATIOS, SPLITS, Manifest, assign_splits, read_manifest, sidecar_path
from lightning_emo.errors import UsageError, UserError, command
from lightning_emo.utils import check_outputs, output_file

SPEAKER_HINT = ("--option speaker_pattern=REGEX (its first group, searched in each file name, is the speaker: "
                "'^([^_]+)_' reads spk01 from spk01_0003.wav)")


def check_assigned_splits(manifest: Manifest, ratios, source) -> None:
    """Refuse splits that came out empty although ``ratios`` asked for them (a corpus that cannot be validated or tested).

    Training selects checkpoints on validation clips and the test split is what is scored: a
    corpus with too few speakers (or clips) for the ratios would otherwise be written and fail
    later, inside training. The message says which fix fits: a speaker pattern, more speakers, or ratios.
    """
    counts = {s: sum(c.split == s for c in manifest.clips) for s in SPLITS}
    total = sum(ratios)
    empty = [s for s, r in zip(SPLITS, ratios) if r > 0 and not counts[s]]
    if not empty:
        return
    speakers = {c.speaker for c in manifest.clips if c.speaker}
    groups = {c.group for c in manifest.clips if c.group}
    asked = "/".join(f"{r / total:.2f}" for r in ratios)
    if not speakers and not groups:
        fix = (f"the clips name no speaker, and {len(manifest.clips)} clips split by class are too few for ratios "
               f"{asked}: name each clip's speaker (folder corpora: {SPEAKER_HINT}; a manifest: its speaker "
               "column), add clips, or change --ratios TRAIN VAL TEST")
    elif len(speakers | groups) < 3:
        fix = (f"only {len(speakers | groups)} speaker(s), and no speaker may be in two splits: add speakers, check "
               f"that the speaker pattern tells them apart, or ask for fewer splits with --ratios (e.g. --ratios "
               "0.8 0.2 0 writes no test split)")
    else:
        fix = (f"{len(speakers | groups)} speakers dealt to train/val/test with ratios {asked} left it empty: give "
               "it a larger share with --ratios TRAIN VAL TEST (e.g. --ratios 0.6 0.2 0.2), or another --seed")
    have = ", ".join(f"{s} {counts[s]}" for s in SPLITS)
    raise CorpusError(source, f"no clips in split {' or '.join(map(repr, empty))} after assigning splits "
                      f"({have} clips): checkpoints are selected on validation clips and scored on test clips. "
                      f"{fix}. Nothing was written.", where=empty[0])


def _parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.replace("-", "_")] = value
    return options


def check_ratios(ratios) -> None:
    """Refuse split ratios that cannot split a corpus: negative or non-finite ones, or no share for train."""
    if len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios) or not ratios[0] > 0:
        raise UsageError(f"--ratios {' '.join(f'{r:g}' for r in ratios)}: expected three non-negative numbers (train, "
                         "val, test) with a positive train share, e.g. 0.7 0.1 0.2 (0 leaves a split out: "
                         "0.8 0.2 0 writes no test split)")


@command("prepare")
def main(argv: list[str] | None = None) -> int:
    names = ", ".join(CORPORA.names())
    parser = errors.ArgumentParser(
        prog="lightning-emo prepare",
        description="Read a corpus with its adapter (or validate a hand-written manifest), assign "
        "speaker-independent splits where the split column is empty, and write a manifest.",
    )
    parser.add_argument("--corpus", required=True, help=f"adapter name ({names}) or 'manifest'")
    parser.add_argument("--root", required=True, help="the corpus root that media paths are relative to")
    parser.add_argument("--out", required=True, help="where to write the manifest CSV (a .json sidecar goes beside it)")
    parser.add_argument("--manifest", help="with --corpus manifest: the hand-written CSV to validate")
    parser.add_argument("--classes", nargs="+", help="the ordered class list (default: the adapter's or the sidecar's); "
                        "with --label-map: the target classes")
    parser.add_argument("--label-map", metavar="FILE",
                        help="YAML mapping the corpus' labels onto --classes ('fearful: fear', 'calm: null'); "
                        "clips of labels with no target class are dropped and counted")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    parser.add_argument("--ratios", type=float, nargs=3, default=DEFAULT_RATIOS, metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--resplit", action="store_true", help="reassign every split, even those given")
    parser.add_argument("--split-by", choices=("speaker", "group"), default="speaker",
                        help="deal speakers (default) or whole groups (the manifest's group/session column, e.g. "
                        "IEMOCAP's sessions) to the splits")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="adapter option, e.g. speaker_pattern=REGEX for folder (the first group, searched "
                        "in each file name, is the speaker: without it a folder corpus has no speakers and "
                        "gets a clip split), modality=audio-only for ravdess, labels=FILE for cheavd")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out CSV and its .json sidecar")
    args = parser.parse_args(argv)
    if args.label_map and not args.classes:
        parser.error("--label-map needs --classes: the target class list the labels are mapped onto")
    check_ratios(args.ratios)
    output_file(args.out, "--out", suffixes=(".csv",))
    # the CSV and its sidecar: an unrelated x.json beside x.csv is the user's too
    check_outputs([args.out, sidecar_path(args.out)], args.overwrite)
    if args.corpus == "manifest":
        if not args.manifest:
            parser.error("--corpus manifest needs --manifest IN.csv")
        manifest = read_manifest(args.manifest, root=args.root, classes=None if args.label_map else args.classes)
    else:
        if args.corpus not in CORPORA:
            parser.error(f"unknown corpus {args.corpus!r}; known: {names}, manifest")
        prepare = CORPORA.get(args.corpus)
        options = _parse_options(args.option)
        accepted = inspect.signature(prepare).parameters
        for key in options:
            if key not in accepted:
                parser.error(f"adapter {args.corpus!r} has no option {key!r} "
                             f"(options: {', '.join(k for k in accepted if k != 'root')})")
        if args.classes and "classes" in accepted and not args.label_map:
            options["classes"] = args.classes
        try:
            manifest = prepare(args.root, **options)
        except UserError:
            raise
        except ValueError as e:  # an option value the adapter does not know: a usage error
            parser.error(f"--corpus {args.corpus}: {e}")
    if args.label_map:
        manifest, _ = apply_label_map(manifest, args.label_map, args.classes)
    assigning = args.resplit or any(not c.split for c in manifest.clips)
    manifest = assign_splits(manifest, ratios=args.ratios, seed=args.seed, overwrite=args.resplit,
                             by=args.split_by)
    if assigning:
        check_assigned_splits(manifest, args.ratios, args.manifest or args.root)
    out = manifest.write(args.out)
    # Read back what was written: the same validation every other command applies. The
    # adapter's and the label map's counts (what was skipped, and why) stay in the summary.
    counted = manifest.notes
    manifest = read_manifest(out)
    manifest.notes = counted + [n for n in manifest.notes if n not in counted]
    print(manifest.summary())
    print(f"wrote {out}")
    # What training, evaluation and fusion will refuse or weigh less, said now rather than later.
    for warning in check_splits(manifest.clips, manifest.classes, "prepare", out, warn=False):
        print(f"warning: {warning}", file=sys.stderr)
    return 0
