"""Scale section: extraction and training with 1 and 2 processes (DDP) and with more clips."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from .harness import (Config, FACE_FPS, STORE_DTYPE, cli_command, fmt, load_average, make_corpus, median, progress,
                      ratio, run_child)
from .training import lightning_epochs, make_feature_corpus

SUMMARY = re.compile(r"extract (\S+): (\d+) clips written.*?; ([\d.]+) s(?: \(([\d.]+) s in the predict loop\))?, "
                     r"([\d.]+) clips/s")


def cli_extract(manifest: Path, name: str, out: Path, devices: int, cfg: Config, work: Path, device) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = cli_command() + ["extract", "--manifest", str(manifest), "--extractor", name, "--out", str(out),
                           "--batch-size", str(cfg.batch_size),
                           *(["--num-workers", str(cfg.num_workers)] if cfg.num_workers is not None else []),
                           "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu",
                           "--trainer.devices", str(devices)]
    if name in ("facenet_vggface2", "hog"):
        cmd += ["--fps", str(FACE_FPS)]
    if name in STORE_DTYPE:
        cmd += ["--dtype", STORE_DTYPE[name]]
    if devices > 1:
        cmd += ["--trainer.strategy", "ddp"]
    rc, out_text, wall = run_child(cmd, work, timeout=3600, log=work / "logs" / f"extract-{name}-{devices}.log")
    if rc != 0:
        raise RuntimeError(f"lightning-emo extract ({devices} processes) failed ({rc}):\n{out_text[-3000:]}")
    m = SUMMARY.search(out_text)
    row = {"wall_s": wall, "processes": devices}
    if m:
        row.update(elapsed_s=float(m.group(3)), loop_s=float(m.group(4)) if m.group(4) else None,
                   clips=int(m.group(2)))
    return row


def cli_fit(corpus, kind: str, devices: int, epochs: int, cfg: Config, work: Path, device) -> dict:
    import yaml

    run_dir = work / "fit" / f"{kind}-{devices}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    timing = run_dir / "epochs.json"
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": epochs, "accelerator": "gpu" if device.type == "cuda" else "cpu",
                    "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "default_root_dir": str(run_dir),
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(run_dir), "name": "logs"}},
                    "callbacks": [{"class_path": "bench_callbacks.EpochTimer", "init_args": {"path": str(timing)}}]},
        "model": {"class_path": "lightning_emo.models.module.EmotionModule",
                  "init_args": {"head": "lstm", "hidden_dim": 128, "dropout": 0.5, "lr": 0.001,
                                "weight_decay": 0.0001, "head_options": SCALE_HEAD_OPTIONS}},
        "data": {"class_path": "lightning_emo.data.datamodule.FeatureDataModule",
                 "init_args": {"manifest": str(corpus["manifest"]), "features": str(corpus["stores"][kind]),
                               "batch_size": cfg.train_batch_size}},
        "checkpoint": {"dirpath": str(run_dir / "checkpoints")},
    }
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    cmd = cli_command() + ["fit", "--config", str(cfg_path)]
    rc, out, wall = run_child(cmd, run_dir, timeout=3600, log=work / "logs" / f"fit-{kind}-{devices}.log")
    if rc != 0:
        raise RuntimeError(f"lightning-emo fit ({devices} processes) failed ({rc}):\n{out[-3000:]}")
    epochs_done = json.loads(timing.read_text())["epochs"]
    train = [e["train"] for e in epochs_done]
    return {"processes": devices, "wall_s": wall, "epoch_s": median(train[1:] if len(train) > 1 else train),
            "first_epoch_s": train[0], "val_s": median([e["val"] for e in epochs_done]),
            "rank0_clips": epochs_done[0]["clips"], "epochs": epochs_done}


# The scale runs train the paper's head with the package's defaults (whole clips at 100 frames/s).
SCALE_HEAD_OPTIONS: dict[str, Any] | None = None


def run(cfg: Config, work: Path, device) -> dict[str, Any]:
    """The section: extract and fit through the CLI with 1 and 2 processes, and in-process with 1x and more clips."""
    from lightning_emo.extractors.extract import run_extraction

    results: dict[str, Any] = {"load_average_start": load_average(), "extract_processes": {}, "extract_size": {},
                               "fit_processes": {}, "fit_size": {}, "factor": cfg.scale_factor}
    small = make_corpus(work / "corpus", cfg, cfg.clips_per_class)
    big = make_corpus(work / f"corpus-{cfg.scale_factor}x", cfg, cfg.clips_per_class * cfg.scale_factor)
    results["clips"] = {"1x": len(small.clips), f"{cfg.scale_factor}x": len(big.clips)}
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    for name in cfg.scale_extractors:
        face = name in ("facenet_vggface2", "hog")
        rows = {}
        for devices in (1, 2):
            progress(f"scale: extract {name} through the CLI with {devices} process(es)")
            rows[devices] = cli_extract(Path(small.source), name, work / "scale-stores" / f"{name}-{devices}",
                                        devices, cfg, work, device)
            progress(f"  {devices} process(es): {fmt(rows[devices].get('elapsed_s'))} s in extract "
                     f"({fmt(rows[devices]['wall_s'])} s with process start)")
        results["extract_processes"][name] = rows
        size_rows = {}
        for label, manifest in (("1x", small), (f"{cfg.scale_factor}x", big)):
            out = work / "scale-stores" / f"{name}-{label}"
            shutil.rmtree(out, ignore_errors=True)
            res = run_extraction(manifest, name, out, fps=FACE_FPS if face else None, batch_size=cfg.batch_size,
                                 num_workers=cfg.num_workers, trainer={"accelerator": accelerator}, overwrite=True,
                                 dtype=STORE_DTYPE.get(name, "float16"))
            size_rows[label] = {"clips": len(manifest.clips), "elapsed_s": res.elapsed, "loop_s": res.loop_seconds}
            progress(f"  {name} {label} ({len(manifest.clips)} clips): {res.elapsed:.2f} s")
        results["extract_size"][name] = size_rows
    corpus = make_feature_corpus(work / "features-1x", cfg.n_train, cfg.n_val, cfg.n_test, cfg.feature_kinds)
    kind = cfg.feature_kinds[0]
    results["fit_kind"] = kind
    results["fit_head_options"] = SCALE_HEAD_OPTIONS
    for devices in (1, 2):
        progress(f"scale: fit {kind} through the CLI with {devices} process(es)")
        results["fit_processes"][devices] = cli_fit(corpus, kind, devices, cfg.ddp_epochs + 1, cfg, work, device)
        progress(f"  {devices} process(es): {fmt(results['fit_processes'][devices]['epoch_s'])} s/epoch")
    f = cfg.scale_factor
    big_corpus = make_feature_corpus(work / f"features-{f}x", cfg.n_train * f, cfg.n_val * f, cfg.n_test * f, (kind,))
    for label, c, n in (("1x", corpus, cfg.n_train), (f"{f}x", big_corpus, cfg.n_train * f)):
        r = lightning_epochs(c, kind, cfg, device, head_options=SCALE_HEAD_OPTIONS, epochs=max(2, cfg.epochs - 1))
        results["fit_size"][label] = {"n_train": n, "epoch_s": r["epoch_s"], "val_s": r["val_s"]}
        progress(f"  fit {kind} {label} ({n} training clips): {fmt(r['epoch_s'])} s/epoch")
    results["load_average_end"] = load_average()
    return results



def render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    f = r["factor"]
    out = ["## Scale", "",
           f"The same work with 1 and 2 processes (`--trainer.devices N --trainer.strategy ddp` through the CLI, in "
           "a subprocess; on the CPU Lightning gives each of the N processes cores/N torch threads) and with 1x and "
           f"{f}x the clips ({', '.join(f'{k}: {v}' for k, v in r['clips'].items())} clips; training "
           f"{r.get('fit_size', {}).get('1x', {}).get('n_train', '?')} → "
           f"{r.get('fit_size', {}).get(f'{f}x', {}).get('n_train', '?')} training clips). Load average "
           f"{r.get('load_average_start')} → {r.get('load_average_end')}.", "",
           f"| work | 1 process | 2 processes | 2 vs 1 | 1x | {f}x | {f}x / 1x (linear = {f}) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, rows in r["extract_processes"].items():
        one, two = rows.get(1) or rows.get("1"), rows.get(2) or rows.get("2")
        size = r["extract_size"].get(name, {})
        s1, sf = size.get("1x", {}).get("elapsed_s"), size.get(f"{f}x", {}).get("elapsed_s")
        out.append(f"| extract {name}, s | {fmt(one.get('elapsed_s'))} | {fmt(two.get('elapsed_s'))} | "
                   f"{fmt(ratio(one.get('elapsed_s'), two.get('elapsed_s')))}x | {fmt(s1)} | {fmt(sf)} | "
                   f"{fmt(ratio(sf, s1))} |")
    fp = r["fit_processes"]
    one, two = fp.get(1) or fp.get("1"), fp.get(2) or fp.get("2")
    size = r["fit_size"]
    s1, sf = size.get("1x", {}).get("epoch_s"), size.get(f"{f}x", {}).get("epoch_s")
    head = "frame_pool=4" if "fit_head_options" not in r else (
        ", ".join(f"{k}={v}" for k, v in (r["fit_head_options"] or {}).items()) or "defaults")
    out.append(f"| fit LSTM ({r.get('fit_kind', 'audio39')}, {head}), s/epoch | {fmt(one['epoch_s'])} | "
               f"{fmt(two['epoch_s'])} | {fmt(ratio(one['epoch_s'], two['epoch_s']))}x | {fmt(s1)} | {fmt(sf)} | "
               f"{fmt(ratio(sf, s1))} |")
    walls = []
    for name, rows in r["extract_processes"].items():
        one, two = rows.get(1) or rows.get("1"), rows.get(2) or rows.get("2")
        walls.append(f"extract {name} {fmt(one['wall_s'])} → {fmt(two['wall_s'])} s")
    walls.append(f"fit {fmt(fp.get(1, fp.get('1'))['wall_s'])} → {fmt(fp.get(2, fp.get('2'))['wall_s'])} s")
    out += ["", "Process columns: time inside `extract` (its own summary line) and the median training epoch, "
            "measured through the CLI; whole commands with process start: " + "; ".join(walls) + ". Size columns: "
            "in-process. On 2 cores one process already keeps both busy (2 torch threads), so 2 processes "
            "(1 thread each) share the same cores: the ideal is 1x, and what DDP adds — a second process start, "
            "a gloo all-reduce of the gradients every step, the feature index merge and the barriers around it "
            "— is the cost the table shows. The same commands spread over N GPUs or machines; the "
            "1x/4x columns show how cost grows with the corpus.", ""]
    return out



def targets(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    return []
