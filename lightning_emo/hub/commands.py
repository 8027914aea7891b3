"""The ``lightning-emo export``, ``push``, ``infer`` and ``zoo`` commands (argument parsing and printing only)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from lightning_emo import errors
from lightning_emo.errors import EXIT_BAD_INPUT, command, present
from lightning_emo.utils import (
    atomic_write_text,
    check_device,
    check_outputs,
    distinct_stems,
    output_dir,
    output_file,
    setup_logging,
)

__all__ = ["export_main", "infer_main", "push_main", "zoo_main"]


def _pairs(values: Sequence[str], flag: str, parser: argparse.ArgumentParser) -> dict[str, str]:
    out = {}
    for v in values or []:
        key, sep, value = v.partition("=")
        if not sep or not key or not value:
            parser.error(f"{flag} expects KEY=VALUE, got {v!r}")
        out[key.strip()] = value.strip()
    return out


def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    columns = zip(header, *rows, strict=True) if rows else ([h] for h in header)
    widths = [max(len(str(x)) for x in col) for col in columns]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*map(str, r)) for r in rows])


def _fail(command: str, error: Exception) -> int:
    """One paragraph on stderr (:func:`lightning_emo.errors.present`); -> exit status 2."""
    return present(command, error)


# ---------------------------------------------------------------------------------------------- export

EXPORT_EPILOG = """\
examples:
  lightning-emo export --ckpt runs/audio/checkpoints/best.ckpt --ckpt runs/face/checkpoints/best.ckpt \\
      --features audio=features/mfcc --features video=features/hog \\
      --fusion runs/fusion/mfcc+hog/prior/rule.json --manifest data/synthetic/manifest.csv --out exported/
  lightning-emo export ... --name synthetic-demo --zoo-entry synthetic-demo     # into zoo/models/synthetic-demo/
  lightning-emo export --run runs/demo --audio mfcc --video hog_sel256 --rule prior \
      --license apache-2.0 --zoo-entry synthetic-demo     # from a `lightning-emo demo` output

The feature stores tell the face detector, frame rate, stored dtype and feature selector the heads were
trained with; without them give --detector (and --fps). Writes config.json, model.safetensors and README.md.
"""


@command("export")
def export_main(argv: list[str] | None = None) -> int:
    """``lightning-emo export``: trained checkpoints (+ fusion rule) -> a recognizer folder in the Hub layout."""
    p = errors.ArgumentParser(prog="lightning-emo export", description=export_main.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXPORT_EPILOG)
    p.add_argument("--ckpt", action="append", default=[], metavar="[MODALITY=]CKPT",
                   help="an EmotionModule checkpoint (modality read from it, or audio=/video=); repeat per modality")
    p.add_argument("--run", default=None, metavar="DIR",
                   help="a `lightning-emo reproduce`/`demo` output folder: take checkpoints, stores, manifest and "
                        "rule from it (with --audio/--video/--rule)")
    p.add_argument("--audio", default=None, metavar="SET", help="with --run: the audio feature set (e.g. mfcc)")
    p.add_argument("--video", default=None, metavar="SET", help="with --run: the video feature set (e.g. hog_sel256)")
    p.add_argument("--rule", default="prior", help="with --run: the fusion rule (default prior)")
    p.add_argument("--fusion", default=None, metavar="RULE_JSON",
                   help="the fitted rule: <out>/<pair>/<rule>/rule.json from `lightning-emo fuse`")
    p.add_argument("--fusion-inputs", default=None, metavar="M1,M2",
                   help="the modality of each rule input, in order (default: read from rule.json)")
    p.add_argument("--features", action="append", default=[], metavar="MODALITY=STORE",
                   help="the feature store a head was trained on (detector, fps, dtype, selector)")
    p.add_argument("--detector", default=None, help="face detector (mtcnn, none) when no video store is given")
    p.add_argument("--detector-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--fps", type=float, default=None, help="video frame rate when no video store is given")
    p.add_argument("--weights", action="append", default=[], metavar="MODALITY=FILE",
                   help="local weights of a file-sourced extractor (embedded in model.safetensors)")
    p.add_argument("--feature-dtype", choices=("float16", "float32"), default=None,
                   help="stored feature dtype when no store is given (default float16)")
    p.add_argument("--manifest", default=None, help="the corpus manifest (corpus name, split protocol)")
    p.add_argument("--corpus", default=None, help="corpus name for the card")
    p.add_argument("--split-protocol", default=None, help="split protocol text for the card")
    p.add_argument("--metrics", default=None, metavar="JSON", help="more metrics to record ({split: {model: {...}}})")
    p.add_argument("--name", default=None, help="model name")
    p.add_argument("--description", default=None, help="one paragraph for the card")
    p.add_argument("--license", default=None, help="license of the exported weights (e.g. apache-2.0)")
    p.add_argument("--repo-id", default=None, help="the Hub repository it will be pushed to (for the card's usage)")
    p.add_argument("--out", default=None, help="output folder (default with --zoo-entry: <zoo>/models/<name>)")
    p.add_argument("--zoo-entry", default=None, metavar="NAME", help="also list it in the zoo under NAME")
    p.add_argument("--zoo", default=None, help="the zoo directory (default: the repository's zoo/)")
    p.add_argument("--overwrite", action="store_true", help="replace an exported recognizer already in --out")
    args = p.parse_args(argv)
    setup_logging()
    from lightning_emo.hub.config import RecognizerError
    from lightning_emo.hub.recognizer import Recognizer
    from lightning_emo.hub.publish import add_entry
    from lightning_emo.hub.zoo import check_name, zoo_dir

    if args.zoo_entry is not None:  # it names files in the zoo: refused before anything is read or written
        check_name(args.zoo_entry, "--zoo-entry")
    if args.out is not None:
        output_dir(args.out, "--out")

    ckpts: dict[str, Any] | list[str]
    named = [c for c in args.ckpt if "=" in c and c.split("=", 1)[0].lower() in ("audio", "video", "face")]
    if named and len(named) != len(args.ckpt):
        p.error("give every --ckpt with a modality (audio=..., video=...) or none")
    ckpts = _pairs(named, "--ckpt", p) if named else list(args.ckpt)
    features: dict[str, Any] = _pairs(args.features, "--features", p)
    fusion, manifest = args.fusion, args.manifest
    if args.run:
        if args.ckpt:
            p.error("--run takes the checkpoints from the run folder: drop --ckpt")
        from lightning_emo.hub.export import protocol_parts

        try:
            parts = protocol_parts(args.run, args.audio, args.video, args.rule)
        except RecognizerError as e:
            return _fail("export", e)
        ckpts = parts["checkpoints"]
        features = {**parts["features"], **features}
        fusion = fusion or parts["fusion"]
        manifest = manifest or parts["manifest"]
    elif not args.ckpt:
        p.error("give --ckpt (one per modality) or --run DIR")
    if args.out is None and args.zoo_entry is None:
        p.error("give --out DIR (or --zoo-entry NAME to export into the zoo)")
    out = Path(args.out) if args.out else zoo_dir(args.zoo) / "models" / args.zoo_entry
    check_outputs([out / name for name in ("config.json", "model.safetensors", "README.md")], args.overwrite)
    try:
        metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    except (OSError, json.JSONDecodeError) as e:
        p.error(f"--metrics {args.metrics}: {e}")
    try:
        model = Recognizer.from_checkpoints(
            ckpts, fusion=fusion,
            fusion_inputs=args.fusion_inputs.split(",") if args.fusion_inputs else None,
            features=features, detector=args.detector,
            detector_options={k: _yaml_value(v) for k, v in _pairs(args.detector_option, "--detector-option",
                                                                     p).items()},
            fps=args.fps, weights=_pairs(args.weights, "--weights", p), feature_dtype=args.feature_dtype,
            manifest=manifest, corpus=args.corpus, split_protocol=args.split_protocol, metrics=metrics,
            name=args.name or args.zoo_entry, description=args.description, license=args.license)
        if args.repo_id:
            model.source = {"repo_id": args.repo_id}
        model.save_pretrained(out)
        size = (out / "model.safetensors").stat().st_size
        print(f"exported {model!r}\n  -> {out}: config.json, model.safetensors ({len(model.tensors())} tensors, "
              f"{size / 1e6:.2f} MB), README.md")
        if args.zoo_entry:
            entry = add_entry(args.zoo_entry, out, zoo=args.zoo)
            print(f"  zoo entry {entry.file} (README regenerated)")
    except (RecognizerError, OSError) as e:
        return _fail("export", e)
    return 0


# ---------------------------------------------------------------------------------------------- push


@command("push")
def push_main(argv: list[str] | None = None) -> int:
    """``lightning-emo push``: upload an exported recognizer folder to the Hugging Face Hub."""
    p = errors.ArgumentParser(
        prog="lightning-emo push", description=push_main.__doc__,
        epilog="The token comes from HF_TOKEN or `hf auth login`; it is never printed. Only config.json, "
               "model.safetensors and README.md are uploaded. HF_ENDPOINT picks the Hub; each request waits at most "
               "LIGHTNING_EMO_HUB_TIMEOUT seconds (default 60).")
    p.add_argument("folder", help="the exported folder (lightning-emo export --out)")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--branch", "--revision", dest="branch", default=None,
                   help="push to this branch (created from main if needed; default main)")
    p.add_argument("--message", default=None, help="commit message")
    args = p.parse_args(argv)
    from lightning_emo.hub.config import RecognizerError
    from lightning_emo.hub.push import PushError, push_folder

    try:
        result = push_folder(args.folder, args.repo_id, private=args.private, branch=args.branch,
                             commit_message=args.message)
    except (RecognizerError, PushError) as e:
        return _fail("push", e)
    print(f"pushed {args.folder} to {result.url} ({'private' if result.private else 'public'}, branch "
          f"{result.revision}, commit {result.commit}): {', '.join(result.files)}")
    if result.commit:
        print(f"load it pinned: hf-hub:{result.repo_id}@{result.commit}")
    return 0


# ---------------------------------------------------------------------------------------------- infer


def _prediction_rows(preds, classes: Sequence[str], modalities: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label", "confidence", "decided_by", "missing"] + [f"fused_{c}" for c in classes]
               + [f"{m}_{c}" for m in modalities for c in classes])
    for p in preds:
        cells = [p.source, p.label or "", "" if p.confidence is None else f"{p.confidence:.6f}", p.decided_by or "",
                 ";".join(f"{m}:{why}" for m, why in p.missing.items())]
        for probs in [p.fused] + [p.probs.get(m) for m in modalities]:
            cells += [""] * len(classes) if probs is None else [f"{float(v):.6f}" for v in probs]
        w.writerow(cells)
    return buf.getvalue()


def _top(p, classes) -> str:
    if p is None:
        return "–"
    i = int(max(range(len(p)), key=lambda k: p[k]))
    return f"{classes[i]} {float(p[i]):.2f}"


@command("infer")
def infer_main(argv: list[str] | None = None) -> int:
    """``lightning-emo infer``: recognise emotions in media files (per clip, or over time with --timeline)."""
    p = errors.ArgumentParser(
        prog="lightning-emo infer", description=infer_main.__doc__,
        epilog="MODEL: an exported folder, hf-hub:ORG/NAME[@REVISION], or a zoo name (lightning-emo zoo). "
               "A file without an audio track or without a face is predicted from the other modality.")
    p.add_argument("files", nargs="+", help="audio/video files")
    p.add_argument("--model", required=True, help="exported folder, hf-hub:ORG/NAME[@REV] or zoo name")
    p.add_argument("--revision", default=None, help="Hub revision (commit, tag or branch)")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache directory")
    p.add_argument("--local-files-only", "--offline", action="store_true",
                   help="never download, neither the model nor its extractors' weights (also: HF_HUB_OFFLINE=1)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--json", default=None, help="write the predictions as JSON here")
    p.add_argument("--csv", default=None, help="write the predictions as CSV here")
    p.add_argument("--timeline", action="store_true", help="sliding-window predictions over each (long) file")
    p.add_argument("--window", type=float, default=4.0, help="timeline window in seconds (default 4)")
    p.add_argument("--hop", type=float, default=2.0, help="timeline step in seconds (default 2)")
    p.add_argument("--out", default="timeline", help="timeline output folder (default: timeline/)")
    p.add_argument("--no-plot", action="store_true", help="timeline: skip the PNG")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    p.add_argument("--detector-option", action="append", default=[], metavar="KEY=VALUE",
                   help="override the model's face detector option, e.g. detect_every=1 (detect on every frame "
                        "instead of every 5th and tracking between); repeatable")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json/--csv files and timelines")
    args = p.parse_args(argv)
    if args.timeline and not (args.window > 0 and 0 < args.hop):
        p.error("--window and --hop must be positive")
    args.detector_options = {k: _yaml_value(v) for k, v in _pairs(args.detector_option, "--detector-option", p).items()}
    # outputs and the device are checked before the model loads or any file is read
    for flag, value in (("--json", args.json), ("--csv", args.csv)):
        if value:
            output_file(value, flag, suffixes=(f".{flag[2:]}",))
    if args.timeline:
        output_dir(args.out, "--out")
    check_device(args.device, "--device")
    setup_logging()
    # every output is known before any work: refuse existing ones (and two files given one timeline name)
    outputs = [f for f in (args.json, args.csv) if f]
    if args.timeline:
        from lightning_emo.hub.timeline import timeline_paths

        args.stems = [Path(args.out) / s for s in distinct_stems(args.files)]
        outputs += [path for stem in args.stems for path in timeline_paths(stem, png=not args.no_plot)]
    check_outputs(outputs, args.overwrite)  # an existing output or two inputs onto one name: refused here
    from lightning_emo.extractors.weights import set_offline

    previous = set_offline(True) if args.local_files_only else None  # extractor weights too, not only the model
    try:
        return _infer(args)
    finally:
        if previous is not None:
            set_offline(previous)


def _infer(args) -> int:
    from lightning_emo.data.media import MediaError
    from lightning_emo.hub.config import RecognizerError
    from lightning_emo.hub.recognizer import Recognizer

    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    try:
        model = Recognizer.from_pretrained(args.model, revision=args.revision, cache_dir=args.cache_dir,
                                           local_files_only=args.local_files_only, map_location=args.device)
    except RecognizerError as e:
        return _fail("infer", e)
    if args.detector_options:
        try:
            model.set_detector_options(**args.detector_options)
            if "video" in model.modalities:
                model._runtime("video")  # builds the detector now: a bad option fails before any file is read
        except (RecognizerError, ValueError, TypeError) as e:
            return _fail("infer", e)
    classes, mods = model.classes, model.modalities
    if args.timeline:
        return _infer_timeline(model, args)
    preds, failed = [], 0
    for f in args.files:
        try:
            preds.append(model.predict(f))
        except (MediaError, RecognizerError) as e:  # the other files' results are still written
            present("infer", e)
            failed += 1
    if not args.quiet and preds:
        header = ["file", "label", "confidence", *mods, "missing"]
        rows = [[Path(pr.source).name, pr.label or "(none)", "–" if pr.confidence is None else f"{pr.confidence:.3f}",
                 *(_top(pr.probs.get(m), classes) for m in mods),
                 ", ".join(f"{m} ({why})" for m, why in pr.missing.items()) or "–"] for pr in preds]
        print(_table(header, rows))
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": args.model, "classes": classes,
                                                 "predictions": [pr.to_dict() for pr in preds]}, indent=1) + "\n")
    if args.csv:
        atomic_write_text(args.csv, _prediction_rows(preds, classes, mods))
    return EXIT_BAD_INPUT if failed else 0


def _infer_timeline(model, args) -> int:
    from lightning_emo.data.media import MediaError
    from lightning_emo.hub.config import RecognizerError
    from lightning_emo.hub.timeline import write_timeline

    failed = 0
    for f, stem in zip(args.files, args.stems):
        try:
            rows = list(model.timeline(f, window=args.window, hop=args.hop))
        except (MediaError, RecognizerError) as e:
            present("infer", e)
            failed += 1
            continue
        written = write_timeline(rows, model.classes, model.modalities, stem, png=not args.no_plot,
                                 meta={"file": str(f), "model": args.model, "window": args.window, "hop": args.hop},
                                 overwrite=args.overwrite)
        if not args.quiet:
            header = ["start", "end", "label", "confidence", *model.modalities, "missing"]
            table = [[f"{r.start:.1f}", f"{r.end:.1f}", r.prediction.label or "(none)",
                      "–" if r.prediction.confidence is None else f"{r.prediction.confidence:.3f}",
                      *(_top(r.prediction.probs.get(m), model.classes) for m in model.modalities),
                      ", ".join(f"{m} ({why})" for m, why in r.prediction.missing.items()) or "–"] for r in rows]
            print(f"{f}: {len(rows)} windows of {args.window:g} s every {args.hop:g} s")
            print(_table(header, table))
        print(f"wrote {', '.join(str(w) for w in written)}")
    return EXIT_BAD_INPUT if failed else 0


# ---------------------------------------------------------------------------------------------- zoo


@command("zoo")
def zoo_main(argv: list[str] | None = None) -> int:
    """``lightning-emo zoo``: list the model zoo (or add an entry, or check/regenerate its README)."""
    p = errors.ArgumentParser(prog="lightning-emo zoo", description=zoo_main.__doc__)
    p.add_argument("--zoo", default=None,
                   help="the zoo directory (default: $LIGHTNING_EMO_ZOO or the repository's zoo/)")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 when zoo/README.md is not up to date")
    p.add_argument("--write-readme", action="store_true", help="regenerate zoo/README.md")
    p.add_argument("--add", default=None, metavar="NAME", help="add an entry for --model-dir")
    p.add_argument("--model-dir", default=None, help="an exported folder (with --add)")
    p.add_argument("--repo-id", default=None, help="with --add: the Hub repository it was pushed to")
    p.add_argument("--revision", default=None, help="with --add: the pinned commit it was pushed as")
    p.add_argument("--description", default=None, help="with --add: one line for the table")
    args = p.parse_args(argv)
    from lightning_emo.hub.config import RecognizerError
    from lightning_emo.hub.publish import add_entry
    from lightning_emo.hub.zoo import README, check_name, list_entries, render_readme, write_readme, zoo_dir

    try:
        if args.add:
            check_name(args.add, "--add")
            if not args.model_dir:
                p.error("--add needs --model-dir")
            if (args.repo_id is None) != (args.revision is None):
                p.error("give --repo-id and --revision together")
            entry = add_entry(args.add, args.model_dir, zoo=args.zoo, repo_id=args.repo_id, revision=args.revision,
                              description=args.description)
            print(f"added {entry.name} -> {entry.file}")
        if args.write_readme:
            print(f"wrote {write_readme(args.zoo)}")
        entries = list_entries(args.zoo)
    except RecognizerError as e:
        return _fail("zoo", e)
    if args.check:
        path = zoo_dir(args.zoo) / README
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != render_readme(entries):
            print(f"{path} is out of date: run `lightning-emo zoo --write-readme`", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps([{**e.to_dict(), "reference": e.reference} for e in entries], indent=1))
    elif not args.add and not args.write_readme:
        if not entries:
            print(f"the zoo ({zoo_dir(args.zoo)}) has no models yet")
        else:
            rows = [[e.name, e.corpus, str(len(e.classes)),
                     " / ".join(e.extractors.get(m, "–") for m in ("audio", "video")), e.fusion or "–",
                     ", ".join(f"{k} {v:.3f}" for k, v in (e.metrics.get("test_accuracy") or {}).items()) or "–",
                     f"{e.repo_id}@{e.revision[:8]}" if e.repo_id else f"zoo/{e.path}"] for e in entries]
            print(_table(["name", "corpus", "classes", "extractors (audio / video)", "fusion", "test accuracy",
                          "source"], rows))
    return 0
