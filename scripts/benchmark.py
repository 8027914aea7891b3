#!/usr/bin/env python
"""Benchmarks of lightning_emo: extraction, faces, training on cached features, inference and scale -> BENCHMARKS.md.

Usage::

    python scripts/benchmark.py                        # the full run (writes BENCHMARKS.md, benchmarks/)
    python scripts/benchmark.py --quick                # a smoke run in about two minutes (writes under runs/)
    python scripts/benchmark.py --only extraction,training
    python scripts/benchmark.py --device cuda          # on a GPU machine (default: cuda when available)

What is measured (every figure is the median of several runs; ratios compare runs made in the
same invocation, interleaved, on the same clips):

* **extraction**: per extractor (``mfcc``, ``compare``, ``hubert_base``, ``facenet_vggface2`` with
  MTCNN, ``hog`` with MTCNN) clips/s and the realtime factor (seconds of media per second of
  wall time) of ``extract`` (:func:`lightning_emo.extractors.extract.run_extraction`: batched,
  decoding in DataLoader workers) against the naive per-clip loop (decode one clip, run it
  with batch 1; faces: every frame through the detector and the network one at a time), with
  the outputs compared;
* **training**: seconds per epoch and clips/s of the paper's LSTM head on a CHEAVD-sized store
  of random features (Lightning + ``FeatureDataModule``) against plain loops (packed, padded
  without packing, one clip at a time);
* **inference**: ``lightning-emo infer`` latency on a 10 s 720p clip and the peak memory (RSS,
  in a subprocess) of ``Recognizer.timeline`` over 2, 5 and 10 minute videos;
* **scale**: the same extraction and training with 1 and 2 processes (DDP through the CLI)
  and with 1x and 4x the clips;
* **faces**: detect + crop + embed (HOG and facenet) on a 60 s 720p talking-head video of real
  faces, per-frame MTCNN against detect-and-track (face frames/s, box IoU, mask agreement), the
  detection resolution, and cold/warm ``infer`` per recognizer.

Each section is a module of ``scripts/bench/`` (``run``, ``render``, ``targets``) over
``bench/harness.py`` and the BENCHMARKS.md writer ``bench/report.py``.

No pretrained weights are downloaded: HuBERT-base and facenet run with random weights of the
same architecture (same compute), written into a private ``TORCH_HOME`` under the work
directory so the package loads them the way it loads real ones. MTCNN's weights ship with
facenet-pytorch. Results go to ``BENCHMARKS.md`` (atomically), the raw numbers to
``benchmarks/results.json`` and the timeline memory plot to ``benchmarks/timeline_memory.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))  # the bench package and bench_callbacks/bench_media beside this file

from bench.harness import (EXTRACTORS, REPO, Config, atomic_write, load_average, machine_info,  # noqa: E402
                           machine_lines, matmul_gflops, prepare_weights, progress, wait_for_low_load)
from bench.report import report  # noqa: E402

# Sections in the order they run (faces last: it compares two ways side by side and tolerates a loaded
# machine best); each is a module of scripts/bench with run(), render() and targets().
SECTIONS = ("extraction", "training", "inference", "scale", "faces")
REPORT_ORDER = ("extraction", "faces", "training", "inference", "scale")


def section_modules(names=REPORT_ORDER) -> dict[str, Any]:
    return {name: importlib.import_module(f"bench.{name}") for name in names}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section (~2 min)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections among {', '.join(SECTIONS)}")
    p.add_argument("--extractors", default=None, help=f"extractors to benchmark (default: {','.join(EXTRACTORS)})")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=None, help="runs per measurement (default 3; 1 with --quick)")
    p.add_argument("--work", default=None, help="work folder (default runs/benchmark[-quick])")
    p.add_argument("--out", default=None, help="the Markdown report (default BENCHMARKS.md; under --work with --quick)")
    p.add_argument("--json", default=None, help="raw numbers (default benchmarks/results.json beside the report)")
    p.add_argument("--wait-load", type=float, default=None, metavar="L",
                   help="before each section wait (up to --max-wait s) until the 1-minute load average is below L")
    p.add_argument("--max-wait", type=float, default=1800.0)
    p.add_argument("--child-timeline", nargs=5, metavar=("MODEL", "VIDEO", "RESULT", "WINDOW", "HOP"),
                   help=argparse.SUPPRESS)
    p.add_argument("--render", action="store_true",
                   help="only rewrite the report (and plot) from the JSON of an earlier run")
    p.add_argument("--child-infer-stages", nargs=3, metavar=("MODEL", "CLIP", "RESULT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_timeline:
        from bench.inference import timeline_child

        model, video, result, window, hop = args.child_timeline
        return timeline_child(model, video, result, float(window), float(hop))
    if args.child_infer_stages:
        from bench.inference import infer_stages_child

        return infer_stages_child(*args.child_infer_stages)
    cfg = Config.quick_config() if args.quick else Config()
    if args.repeats:
        cfg.repeats = args.repeats
    if args.extractors:
        cfg.extractors = tuple(x.strip() for x in args.extractors.split(",") if x.strip())
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"unknown section(s) {bad}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    work = Path(args.work or (REPO / "runs" / ("benchmark-quick" if cfg.quick else "benchmark"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_md = Path(args.out) if args.out else (work / "BENCHMARKS.md" if cfg.quick else REPO / "BENCHMARKS.md")
    out_json = Path(args.json) if args.json else out_md.parent / "benchmarks" / "results.json"
    out_png = out_json.parent / "timeline_memory.png"
    # Random weights live in a private torch.hub cache: the package finds them where it finds real ones.
    os.environ["TORCH_HOME"] = str(work / "torch_home")
    modules = section_modules()
    from bench.inference import plot_timeline

    if args.render:
        results = json.loads(out_json.read_text())
        cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in results["config"].items()})
        plot_timeline(results, out_png)
        atomic_write(out_md, report(results, cfg, results.get("command", "python scripts/benchmark.py"), modules))
        print(f"wrote {out_md}")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.wait_load:
        wait_for_low_load(args.wait_load, args.max_wait)
    from lightning_emo.utils import setup_logging

    setup_logging()
    import logging
    import warnings

    for noisy in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*The number of training batches.*")
    info = machine_info(device)
    print("\n".join(machine_lines(info)), flush=True)
    prepare_weights(work / "torch_home")
    results: dict[str, Any] = {}
    if out_json.is_file() and set(sections) != set(SECTIONS):
        try:
            previous = json.loads(out_json.read_text())
            if bool(previous.get("config", {}).get("quick")) == cfg.quick:
                results = previous  # keep the sections not run now
        except json.JSONDecodeError:
            pass
    results["machine"] = info
    results["config"] = asdict(cfg)
    results["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    command = "python scripts/benchmark.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    results["command"] = command.strip()
    for section in sections:
        if args.wait_load and section != sections[0]:
            wait_for_low_load(args.wait_load, args.max_wait)
        progress(f"=== {section} ===")
        gemm = round(matmul_gflops(device), 1)  # per section: other jobs on a shared machine change it
        started = time.perf_counter()
        previous = results.get(section)
        results[section] = modules[section].run(cfg, work, device)
        if section == "extraction" and args.extractors and previous:  # a partial rerun keeps the other rows
            results[section]["extractors"] = {**previous.get("extractors", {}), **results[section]["extractors"]}
        results[section]["matmul_gflops"] = gemm
        results[section]["command"] = command.strip()
        results[section]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        results[section]["section_seconds"] = time.perf_counter() - started
        results["machine"]["load_average_end"] = load_average()
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        atomic_write(out_json, json.dumps(results, indent=1, default=str) + "\n")
        plot_timeline(results, out_png)
        atomic_write(out_md, report(results, cfg, command.strip(), modules))
    progress(f"wrote {out_md}, {out_json}" + (f", {out_png}" if out_png.is_file() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
