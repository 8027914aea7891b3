#!/usr/bin/env python
"""Benchmarks of lightning_emo: extraction, training on cached features, inference and scale -> BENCHMARKS.md.

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
  and with 1x and 4x the clips.

No pretrained weights are downloaded: HuBERT-base and facenet run with random weights of the
same architecture (same compute), written into a private ``TORCH_HOME`` under the work
directory so the package loads them the way it loads real ones. MTCNN's weights ship with
facenet-pytorch. Results go to ``BENCHMARKS.md`` (atomically), the raw numbers to
``benchmarks/results.json`` and the timeline memory plot to ``benchmarks/timeline_memory.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
SECTIONS = ("extraction", "training", "inference", "scale")
EXTRACTORS = ("mfcc", "compare", "hubert_base", "facenet_vggface2", "hog")
TARGET_EXTRACTORS = ("hubert_base", "facenet_vggface2")  # the ">= 5x the per-clip loop" targets
FACE_FPS = 5.0
RANDOM_WEIGHTS = ("hubert_base", "facenet_vggface2")
# openSMILE's ComParE LLDs (energies, spectral sums) exceed float16's range (6.5e4) on ordinary speech.
STORE_DTYPE = {"compare": "float32"}


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    """Sizes of one benchmark run (``--quick`` shrinks them all)."""

    quick: bool = False
    repeats: int = 3
    # extraction corpus (synthetic talking faces): clips per class, frame side, native fps, speech length
    clips_per_class: int = 3
    frame_size: int = 256
    video_fps: float = 25.0
    min_speech: float = 1.5
    max_speech: float = 4.5
    extractors: tuple[str, ...] = EXTRACTORS
    batch_size: int = 8
    num_workers: int | None = None  # None: the package's default (default_decoding_workers)
    # training: a CHEAVD-sized corpus of stored random features
    n_train: int = 1550
    n_val: int = 221
    n_test: int = 443
    train_batch_size: int = 32
    epochs: int = 3
    per_clip_subset: int = 160  # clips timed for the batch-1 loop (extrapolated to the epoch)
    packed_batches: int = 8  # batches timed for the bare packed loop (extrapolated: it is the slow one)
    feature_kinds: tuple[str, ...] = ("audio39", "audio60", "video1024")
    # inference
    clip_seconds: float = 10.0
    clip_height: int = 720
    clip_width: int = 1280
    clip_face: int = 320
    timeline_minutes: tuple[float, ...] = (2.0, 5.0, 10.0)
    timeline_heavy_minutes: tuple[float, ...] = (2.0,)
    window: float = 4.0
    hop: float = 2.0
    # scale
    scale_factor: int = 4
    scale_extractors: tuple[str, ...] = ("mfcc", "hubert_base")
    ddp_epochs: int = 3

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(quick=True, repeats=1, clips_per_class=1, frame_size=128, min_speech=0.4, max_speech=1.0,
                   n_train=140, n_val=20, n_test=40, epochs=2, per_clip_subset=20, packed_batches=2,
                   feature_kinds=("audio39", "video1024"),
                   clip_seconds=3.0, clip_height=360, clip_width=640, clip_face=160, timeline_minutes=(0.25, 0.5),
                   timeline_heavy_minutes=(), scale_factor=2, scale_extractors=("mfcc",), ddp_epochs=1)


# --------------------------------------------------------------------------------------------
# small helpers


class Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


progress = Progress()


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def wait_for_low_load(threshold: float, max_wait: float) -> list[float]:
    """Sleep (up to ``max_wait`` s) until the 1-minute load average is below ``threshold``; returns the last reading."""
    deadline = time.monotonic() + max_wait
    la = load_average()
    while la and la[0] >= threshold and time.monotonic() < deadline:
        progress(f"load average {la[0]:.2f} >= {threshold}: waiting (up to {deadline - time.monotonic():.0f} s more)")
        time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))
        la = load_average()
    return la


def rss_mb(pid: int | str = "self", field_name: str = "VmRSS") -> float | None:
    """A process's resident memory (``VmRSS``) or peak (``VmHWM``) in MiB, from ``/proc``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def fmt(value, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "–"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return f"{value}{unit}"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    if abs(value) >= 10:
        return f"{value:.1f}{unit}"
    return f"{value:.{digits}f}{unit}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def cli_command() -> list[str]:
    """The ``lightning-emo`` console script of this interpreter (``-m lightning_emo.cli`` without one)."""
    exe = Path(sys.executable).with_name("lightning-emo")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "lightning_emo.cli"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def run_child(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None,
              log: Path | None = None) -> tuple[int, str, float]:
    """Run ``cmd``; returns ``(returncode, combined output, wall seconds)``."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(cwd), env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout)
    return proc.returncode, proc.stdout, wall


# --------------------------------------------------------------------------------------------
# the machine


def matmul_gflops(device, n: int = 1024, seconds: float = 1.0) -> float:
    """Sustained fp32 GEMM rate (GFLOP/s) of ``n x n`` matrices: the compute roof the extractors run under."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        reps += 1
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - started) / 1e9


def machine_info(device) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": usable, "ram_gb": round(mem_gb, 1) if mem_gb else None,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cuda_available": torch.cuda.is_available(), "device": str(device),
        "load_average_start": load_average(),
    }
    for mod in ("torchaudio", "torchvision", "pytorch_lightning", "av", "numpy", "facenet_pytorch", "opensmile"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except ImportError:
            info[mod] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 1024 ** 3:.0f} GiB"
        info["bf16"] = torch.cuda.is_bf16_supported()
    info["matmul_gflops"] = round(matmul_gflops(device), 1)
    return info


def machine_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"CPU: {info['cpu']} — {info['usable_cpus']} usable of {info['logical_cpus']} logical cores; "
        f"RAM {info['ram_gb']} GB; {info['os']}",
        f"torch {info['torch']} ({info['torch_threads']} intra-op / {info['torch_interop_threads']} inter-op threads; "
        f"OMP_NUM_THREADS={info['OMP_NUM_THREADS'] or 'unset'}), torchaudio {info['torchaudio']}, "
        f"Lightning {info['pytorch_lightning']}, PyAV {info['av']}, Python {info['python']}",
        f"device: {info['device']}" + (f" ({info['gpu']})" if info.get("gpu") else " (no CUDA GPU visible)"),
        f"fp32 GEMM 1024³: {info['matmul_gflops']} GFLOP/s at the start (each section measures its own: the "
        "compute roof of its notes)",
        f"load average (1/5/15 min) at start: {info.get('load_average_start')}",
    ]
    return lines


# --------------------------------------------------------------------------------------------
# inputs: corpora and random weights


def prepare_weights(torch_home: Path) -> dict[str, str]:
    """Random weights of HuBERT-base and facenet's InceptionResnetV1, where the package looks for real ones."""
    import torch

    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    out = {}
    from lightning_emo.extractors.ssl import build_architecture, get_bundle

    hubert = ckpt / get_bundle("HUBERT_BASE")._path
    if not hubert.is_file():
        progress("writing random HuBERT-base weights (same architecture as the pretrained bundle)")
        torch.manual_seed(0)
        torch.save(build_architecture("HUBERT_BASE").state_dict(), hubert)
    out["hubert_base"] = str(hubert)
    from facenet_pytorch import InceptionResnetV1

    from lightning_emo.extractors.face import FACENET_WEIGHTS

    facenet = ckpt / FACENET_WEIGHTS["vggface2"].filename
    if not facenet.is_file():
        progress("writing random facenet (InceptionResnetV1) weights")
        torch.manual_seed(0)
        torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), facenet)
    out["facenet_vggface2"] = str(facenet)
    return out


def make_corpus(root: Path, cfg: Config, clips_per_class: int):
    """The synthetic corpus (MP4 talking faces + speech-like audio) and its manifest."""
    from lightning_emo.data.manifest import read_manifest
    from lightning_emo.data.synthetic import synthesize

    path = synthesize(root, clips_per_class=clips_per_class, fps=cfg.video_fps, size=cfg.frame_size,
                      min_speech=cfg.min_speech, max_speech=cfg.max_speech)
    return read_manifest(path)


def corpus_facts(manifest) -> dict[str, Any]:
    from lightning_emo.data.media import probe

    durations, frames = [], 0
    for c in manifest.clips:
        info = probe(manifest.media_path(c))
        durations.append(info.duration or 0.0)
        frames += len(_sample_times(info.video_duration or info.duration or 0.0))
    first = probe(manifest.media_path(manifest.clips[0]))
    return {"clips": len(manifest.clips), "seconds": round(sum(durations), 2),
            "mean_seconds": round(sum(durations) / len(durations), 2), "face_frames_5fps": frames,
            "frame": f"{first.width}x{first.height}", "native_fps": first.fps}


def _sample_times(duration: float) -> list[float]:
    n = int(math.floor(duration * FACE_FPS + 1e-6))
    return [k / FACE_FPS for k in range(max(n, 1))]


# --------------------------------------------------------------------------------------------
# extraction


def _autocast(device, spec):
    import torch

    from lightning_emo.extractors.extract import resolve_precision

    precision = resolve_precision("auto", "gpu" if device.type == "cuda" else "cpu", spec)
    if device.type != "cuda" or precision == "32-true":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision.startswith("bf16") else torch.float16)


def build_naive(name: str, device, batch1: bool = True):
    """The extractor (and face detector) as a per-clip script would build them: batch 1 everywhere."""
    from lightning_emo.extractors.extract import build_for_extraction
    from lightning_emo.extractors.face_detect import build_face_detector

    options = {}
    probe_model = build_for_extraction(name, None, None, FACE_FPS)
    face = probe_model.spec.modality == "face"
    if face and batch1:
        options["batch_size"] = 1
    model = build_for_extraction(name, options, None, FACE_FPS if face else None) if options else probe_model
    model = model.eval().requires_grad_(False).to(device)
    det = None
    if face:
        det = build_face_detector("mtcnn", crop_size=model.spec.crop_size, batch_size=1 if batch1 else 32).to(device)
    return model, det


def naive_loop(model, det, manifest, device, clips=None) -> tuple[float, dict, dict]:
    """Decode one clip, run it with batch 1 (faces: one frame per detector/network call); the MERTools/EmoBox way.

    Returns ``(seconds, {clip_id: (features (T, D), mask (T,))}, {"decode": s, "detect": s, "compute": s})``.
    """
    import numpy as np
    import torch

    from lightning_emo.data.media import load_audio, load_frames

    spec = model.spec
    out, parts = {}, {"decode": 0.0, "detect": 0.0, "compute": 0.0}
    started = time.perf_counter()
    with torch.inference_mode():
        for c in (clips or manifest.clips):
            path = manifest.media_path(c)
            t0 = time.perf_counter()
            if spec.modality == "audio":
                wave = load_audio(path, spec.sample_rate)
                if device.type == "cuda":
                    wave = wave.pin_memory()
                t1 = time.perf_counter()
                x = wave[None].to(device, non_blocking=True)
                with _autocast(device, spec):
                    feats, n = model(x, torch.tensor([len(wave)], device=device))
                feats = feats[0, :int(n[0])].float().cpu().numpy()
                out[c.clip_id] = (feats, np.ones(len(feats), bool))
                parts["decode"] += t1 - t0
                parts["compute"] += time.perf_counter() - t1
            else:
                frames, _ = load_frames(path, fps=FACE_FPS)
                if device.type == "cuda":
                    frames = frames.pin_memory()
                t1 = time.perf_counter()
                with torch.autocast(device.type, enabled=False):
                    faces = det(frames.to(device, non_blocking=True))
                sync(device)
                t2 = time.perf_counter()
                lengths = torch.tensor([len(frames)], device=device)
                with _autocast(device, spec):
                    feats, _ = model(faces.crops[None], lengths, mask=faces.mask[None])
                mask = faces.mask.cpu().numpy()
                feats = feats[0].float().masked_fill(~faces.mask[:, None], 0.0).cpu().numpy()
                out[c.clip_id] = (feats, mask)
                parts["decode"] += t1 - t0
                parts["detect"] += t2 - t1
                parts["compute"] += time.perf_counter() - t2
    sync(device)
    return time.perf_counter() - started, out, parts


def batched_compute(model, det, manifest, device, batch_size: int) -> dict[str, float]:
    """Decode everything first (timed apart), then run batches of ``batch_size`` clips: the compute floor."""
    import torch

    from lightning_emo.data.clips import ClipDataset, collate_clips

    spec = model.spec
    ds = ClipDataset(manifest, None, modalities=("audio",) if spec.modality == "audio" else ("video",),
                     sample_rate=spec.sample_rate or 16000, fps=None if spec.modality == "audio" else FACE_FPS)
    t0 = time.perf_counter()
    batches = [collate_clips([ds[j] for j in range(i, min(len(ds), i + batch_size))])
               for i in range(0, len(ds), batch_size)]
    decode = time.perf_counter() - t0
    detect = compute = 0.0
    with torch.inference_mode():
        for b in batches:
            t1 = time.perf_counter()
            if spec.modality == "audio":
                with _autocast(device, spec):
                    model(b["waveform"].to(device), b["waveform_lengths"].to(device))
                sync(device)
                compute += time.perf_counter() - t1
            else:
                clips = [f.to(device) for f in b["frames"]]
                with torch.autocast(device.type, enabled=False):
                    faces = det.crop_batch(clips, b["frame_lengths"], crop_size=spec.crop_size)
                sync(device)
                t2 = time.perf_counter()
                with _autocast(device, spec):
                    model(faces.crops, b["frame_lengths"].to(device), mask=faces.mask)
                sync(device)
                detect += t2 - t1
                compute += time.perf_counter() - t2
    return {"decode": decode, "detect": detect, "compute": compute, "total": decode + detect + compute}


def padding_share(manifest, batch_size: int) -> dict[str, float]:
    """Share of the waveform samples in ``extract``'s batches that are padding: manifest order vs sorted by length."""
    from lightning_emo.data.media import probe

    d = [probe(manifest.media_path(c)).duration or 0.0 for c in manifest.clips]

    def share(ds):
        padded = sum(max(ds[i:i + batch_size]) * len(ds[i:i + batch_size]) for i in range(0, len(ds), batch_size))
        return 1.0 - sum(ds) / padded if padded else 0.0

    return {"manifest_order": share(d), "sorted": share(sorted(d))}


def compare_outputs(store, naive: dict) -> dict[str, Any]:
    """How far the stored (batched, float16) features are from the per-clip loop's (float32).

    ``max_rel_diff`` = max |a - b| / max |b| over the frames both found a face in (worst clip);
    ``mean_rel_diff`` = mean |a - b| / mean |b| (HOG is ill-conditioned on flat image regions:
    L2-Hys normalisation of near-zero gradients turns 1e-6 crop differences into large ones there).
    """
    import numpy as np

    worst, diff_sum, ref_sum, mask_equal, mask_total, shape_mismatch = 0.0, 0.0, 0.0, 0, 0, 0
    for cid, (b, bm) in naive.items():
        a, am = store.get(cid)
        a, am = np.asarray(a, np.float32), np.asarray(am, bool)
        if a.shape != b.shape:
            shape_mismatch += 1
            continue
        mask_equal += int((am == bm).sum())
        mask_total += len(bm)
        both = am & bm
        if both.any():
            scale = max(float(np.abs(b[both]).max()), 1e-6)
            d = np.abs(a[both] - b[both])
            worst = max(worst, float(d.max()) / scale)
            diff_sum += float(d.sum())
            ref_sum += float(np.abs(b[both]).sum())
    agree = mask_equal / mask_total if mask_total else 1.0
    mean_rel = diff_sum / ref_sum if ref_sum else 0.0
    ok = shape_mismatch == 0 and mean_rel <= 5e-3 and agree >= 0.98
    return {"max_rel_diff": worst, "mean_rel_diff": mean_rel, "mask_agreement": agree,
            "shape_mismatches": shape_mismatch, "ok": ok}


def flops_per_unit(model, det, spec, device) -> float | None:
    """FLOPs per second of audio (audio extractors) or per face crop (face networks), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if spec.weights.kind == "none":
        return None
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        if spec.modality == "audio":
            x = torch.zeros(1, spec.sample_rate * 4, device=device)
            model(x, torch.tensor([x.shape[1]], device=device))
            return counter.get_total_flops() / 4.0
        x = torch.zeros(1, 2, 3, spec.crop_size, spec.crop_size, device=device)
        model(x, torch.tensor([2], device=device))
        return counter.get_total_flops() / 2.0


def bench_extraction(cfg: Config, work: Path, device) -> dict[str, Any]:
    import torch

    from lightning_emo.data.features import FeatureStore
    from lightning_emo.data.media import probe
    from lightning_emo.extractors.extract import run_extraction

    manifest = make_corpus(work / "corpus", cfg, cfg.clips_per_class)
    facts = corpus_facts(manifest)
    progress(f"extraction corpus: {facts['clips']} clips, {facts['seconds']} s of media, {facts['frame']} at "
             f"{facts['native_fps']} fps ({facts['face_frames_5fps']} frames at {FACE_FPS:g} fps)")
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    from lightning_emo.extractors.extract import default_decoding_workers

    workers = cfg.num_workers if cfg.num_workers is not None else default_decoding_workers(device.type == "cpu")
    results: dict[str, Any] = {"corpus": facts, "batch_size": cfg.batch_size, "num_workers": workers,
                               "repeats": cfg.repeats, "extractors": {}, "load_average_start": load_average()}
    for name in cfg.extractors:
        progress(f"extraction: {name}")
        model, det = build_naive(name, device)
        spec = model.spec
        face = spec.modality == "face"
        # warm-up of both ways on one clip (kernel caches, lazy imports), untimed
        naive_loop(model, det, manifest, device, clips=manifest.clips[:1])
        warm = work / "stores" / f"{name}-warmup"
        shutil.rmtree(warm, ignore_errors=True)
        run_extraction(manifest.with_clips(manifest.clips[:1]), name, warm, fps=FACE_FPS if face else None,
                       batch_size=cfg.batch_size, num_workers=cfg.num_workers, trainer={"accelerator": accelerator},
                       overwrite=True, dtype=STORE_DTYPE.get(name, "float16"))
        naive_s, extract_s, loop_s, parts = [], [], [], []
        naive_out, store = None, None
        for r in range(cfg.repeats):
            t, naive_out, p = naive_loop(model, det, manifest, device)
            naive_s.append(t)
            parts.append(p)
            progress(f"  {name} per-clip loop {r + 1}/{cfg.repeats}: {t:.2f} s")
            out = work / "stores" / f"{name}-r{r}"
            shutil.rmtree(out, ignore_errors=True)
            res = run_extraction(manifest, name, out, fps=FACE_FPS if face else None, batch_size=cfg.batch_size,
                                 num_workers=cfg.num_workers, trainer={"accelerator": accelerator}, overwrite=True,
                                 dtype=STORE_DTYPE.get(name, "float16"))
            extract_s.append(res.elapsed)
            loop_s.append(res.loop_seconds or None)
            store = FeatureStore.open(res.store.path)
            progress(f"  {name} extract {r + 1}/{cfg.repeats}: {res.elapsed:.2f} s "
                     f"({res.loop_seconds:.2f} s in the predict loop)")
        # Other `extract` settings, same clips: what the profile suggests (see the report's notes)
        settings: dict[str, dict[str, Any]] = {}
        if spec.weights.kind != "none" and spec.modality == "audio":
            durations = {c.clip_id: probe(manifest.media_path(c)).duration or 0.0 for c in manifest.clips}
            by_length = manifest.with_clips(sorted(manifest.clips, key=lambda c: durations[c.clip_id]))
            settings["clips sorted by length"] = {"manifest": by_length}
            settings["--batch-size 1"] = {"batch_size": 1}
        if face:
            settings["--detector-option min_face_size=80"] = {"detector_options": {"min_face_size": 80}}
        variants: dict[str, Any] = {}
        for label, opts in settings.items():
            runs = []
            for r in range(cfg.repeats):
                out = work / "stores" / f"{name}-variant-r{r}"
                shutil.rmtree(out, ignore_errors=True)
                res = run_extraction(opts.get("manifest", manifest), name, out, fps=FACE_FPS if face else None,
                                     batch_size=opts.get("batch_size", cfg.batch_size), num_workers=cfg.num_workers,
                                     detector_options=opts.get("detector_options"),
                                     trainer={"accelerator": accelerator}, overwrite=True,
                                     dtype=STORE_DTYPE.get(name, "float16"))
                runs.append(res.elapsed)
                progress(f"  {name} extract, {label} {r + 1}/{cfg.repeats}: {res.elapsed:.2f} s")
            v = {"runs": runs, "extract_s": median(runs)}
            if face:
                v["agreement"] = compare_outputs(FeatureStore.open(res.store.path), naive_out)
            variants[label] = v
        agreement = compare_outputs(store, naive_out)
        bmodel, bdet = build_naive(name, device, batch1=False)
        floor = batched_compute(bmodel, bdet, manifest, device, cfg.batch_size)
        padded_batch = None
        if getattr(bmodel, "clip_by_clip_on_cpu", False) and device.type == "cpu":
            # what the CPU path avoids: the same batches run as one padded, masked batch each
            bmodel.clip_by_clip_on_cpu = False
            padded_batch = batched_compute(bmodel, bdet, manifest, device, cfg.batch_size)
            bmodel.clip_by_clip_on_cpu = True
        flops = flops_per_unit(bmodel, bdet, spec, device)
        del model, det, bmodel, bdet
        units = facts["face_frames_5fps"] if face else None
        n, secs = facts["clips"], facts["seconds"]
        row = {
            "modality": spec.modality, "dim": spec.dim, "random_weights": name in RANDOM_WEIGHTS,
            "naive_s": median(naive_s), "extract_s": median(extract_s), "loop_s": median(loop_s),
            "naive_runs": naive_s, "extract_runs": extract_s, "loop_runs": loop_s,
            "naive_parts": {k: median([p[k] for p in parts]) for k in parts[0]},
            "batched_compute": floor, "flops_per_unit": flops, "agreement": agreement,
        }
        for v in variants.values():
            v["speedup"] = ratio(median(naive_s), v["extract_s"])
        row["variants"] = variants
        row["padding"] = padding_share(manifest, cfg.batch_size) if spec.modality == "audio" else None
        row["speedup"] = ratio(row["naive_s"], row["extract_s"])
        row["speedup_loop"] = ratio(row["naive_s"], row["loop_s"])
        for key in ("naive", "extract", "loop"):
            s = row[f"{key}_s"]
            row[f"{key}_clips_per_s"] = ratio(n, s)
            row[f"{key}_rtf"] = ratio(secs, s)
            row[f"{key}_frames_per_s"] = ratio(units, s) if units else None
        if flops:
            work_units = facts["face_frames_5fps"] if face else secs
            row["naive_gflops"] = flops * work_units / row["naive_parts"]["compute"] / 1e9
            row["batched_gflops"] = flops * work_units / floor["compute"] / 1e9 if floor["compute"] else None
            if padded_batch and padded_batch["compute"]:
                row["padded_batch_compute"] = padded_batch
                row["padded_batch_gflops"] = flops * work_units / padded_batch["compute"] / 1e9
        results["extractors"][name] = row
        if device.type == "cuda":
            torch.cuda.empty_cache()
        progress(f"  {name}: per-clip {fmt(row['naive_s'])} s, extract {fmt(row['extract_s'])} s "
                 f"-> {fmt(row['speedup'])}x; outputs agree: {agreement['ok']} "
                 f"(mean rel diff {agreement['mean_rel_diff']:.1e}, max {agreement['max_rel_diff']:.1e}, mask agreement {agreement['mask_agreement']:.3f})")
    results["load_average_end"] = load_average()
    return results


# --------------------------------------------------------------------------------------------
# training on cached features

FEATURE_KINDS = {
    # kind: (modality, dim, frames per second, description)
    "audio39": ("audio", 39, 100.0, "audio-like: 39-d (13 MFCC + Δ + ΔΔ) at 100 frames/s"),
    "audio60": ("audio", 60, 100.0, "audio-like: 60-d at 100 frames/s"),
    "video1024": ("face", 1024, 5.0, "video-like: 1024-d at 5 frames/s, ~10% frames without a face"),
}


def _kind_spec(kind: str):
    from lightning_emo.extractors.base import ExtractorSpec, WeightsSource

    modality, dim, rate, desc = FEATURE_KINDS[kind]
    return ExtractorSpec(name=f"bench_{kind}", modality=modality, dim=dim,
                         sample_rate=16000 if modality == "audio" else None, frame_rate=rate,
                         crop_size=None if modality == "audio" else 160, weights=WeightsSource(kind="none"),
                         description=f"random features ({desc}) for scripts/benchmark.py")


def make_feature_corpus(root: Path, n_train: int, n_val: int, n_test: int, kinds, seed: int = 0) -> dict[str, Any]:
    """A manifest of ``n_train + n_val + n_test`` clips and one store of random features per kind.

    Clip lengths follow CHEAVD's (about 1 to 12 s, mean ~3.2 s: log-normal); the features carry
    a small class-dependent shift so the head has something to learn.
    """
    import numpy as np

    from lightning_emo.data.corpora.cheavd import CLASSES
    from lightning_emo.data.features import FeatureStore, cache_key
    from lightning_emo.data.manifest import Clip, Manifest

    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.csv"
    stores = {k: root / "features" / k for k in kinds}
    done = root / "done.json"
    stamp = {"n": [n_train, n_val, n_test], "kinds": list(kinds), "seed": seed}
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return {"manifest": manifest_path, "stores": stores, **json.loads((root / "facts.json").read_text())}
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    durations = np.clip(rng.lognormal(math.log(2.9), 0.45, n), 1.0, 12.0)
    labels = rng.integers(0, len(CLASSES), n)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    clips = [Clip(f"c{i:05d}", f"clips/c{i:05d}.mp4", CLASSES[labels[i]], splits[i], f"spk{i % 40:02d}")
             for i in range(n)]
    Manifest(clips, list(CLASSES), root, corpus="benchmark").write(manifest_path)
    facts: dict[str, Any] = {"clips": n, "mean_seconds": float(durations.mean()), "frames": {}}
    for kind in kinds:
        modality, dim, rate, _ = FEATURE_KINDS[kind]
        spec = _kind_spec(kind)
        shutil.rmtree(stores[kind], ignore_errors=True)
        store = FeatureStore.create(stores[kind], spec, cache_key(spec), dtype="float16")
        centres = rng.normal(0, 0.5, (len(CLASSES), dim)).astype(np.float32)
        total = 0
        with store.writer(commit_every=512) as w:
            for i, c in enumerate(clips):
                t = max(1, int(durations[i] * rate) - (2 if modality == "audio" else 0))
                x = rng.standard_normal((t, dim), dtype=np.float32) + centres[labels[i]]
                mask = None
                if modality == "face":
                    mask = rng.random(t) > 0.1
                    mask[rng.integers(0, t)] = True
                w.add(c.clip_id, x, mask)
                total += t
        store.merge()
        facts["frames"][kind] = total
    (root / "facts.json").write_text(json.dumps(facts))
    done.write_text(json.dumps(stamp))
    return {"manifest": manifest_path, "stores": stores, **facts}


def _module_and_data(corpus, kind: str, batch_size: int, head_options=None, bucket_by_length: bool = True):
    from lightning_emo.data.features import FeatureDataModule
    from lightning_emo.models.module import EmotionModule

    dm = FeatureDataModule(str(corpus["manifest"]), str(corpus["stores"][kind]), batch_size=batch_size,
                           num_workers=0, bucket_by_length=bucket_by_length)
    module = EmotionModule(input_dim=dm.input_dim, classes=dm.classes, modality=dm.modality,
                           extractor_spec=dm.extractor_spec, head="lstm", hidden_dim=128, dropout=0.5,
                           head_options=head_options, lr=1e-3, weight_decay=1e-4, class_counts=dm.class_counts)
    return module, dm


def lightning_epochs(corpus, kind: str, cfg: Config, device, head_options=None, epochs: int | None = None,
                     limit_batches: int | None = None, bucket_by_length: bool = True):
    """``Trainer.fit`` of the LSTM head; per-epoch training seconds (epoch start to the last batch's end).

    ``limit_batches``: train on that many (random) batches per epoch and scale the time to the full epoch.
    """
    import pytorch_lightning as pl

    from bench_callbacks import EpochTimer

    module, dm = _module_and_data(corpus, kind, cfg.train_batch_size, head_options, bucket_by_length)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=epochs or cfg.epochs, accelerator="gpu" if device.type == "cuda" else "cpu",
                         devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer],
                         limit_train_batches=limit_batches or 1.0)
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - started
    full = math.ceil(len(dm.clips("train")) / cfg.train_batch_size)
    scale = full / timer.epochs[0]["batches"] if timer.epochs and timer.epochs[0]["batches"] else 1.0
    train = [e["train"] * scale for e in timer.epochs]
    steady = train[1:] if len(train) > 1 else train
    return {"epoch_s": median(steady), "first_epoch_s": train[0], "epochs": timer.epochs, "fit_wall_s": wall,
            "val_s": median([e["val"] for e in timer.epochs]), "clips": timer.epochs[0]["clips"],
            "timed_batches": timer.epochs[0]["batches"], "batches_per_epoch": full}


def _materialised_batches(corpus, kind: str, batch_size: int, device):
    """One shuffled epoch of padded batches held in memory (the plain loops need no DataLoader), and the
    same clips in batches of similar length (sorted by length, batch order shuffled)."""
    import torch

    from lightning_emo.data.features import collate_features

    module, dm = _module_and_data(corpus, kind, batch_size, bucket_by_length=False)
    dm.setup("fit")
    out = []
    for b in dm.train_dataloader():
        out.append((b["x"].to(device), b["lengths"].to(device), b["mask"].to(device), b["label"].to(device)))
    ds = dm.datasets["train"]
    items = [ds[i] for i in range(len(ds))]
    name = next(iter(dm.stores))
    items.sort(key=lambda it: len(it[name]["x"]))
    bucketed = []
    for i in range(0, len(items), batch_size):
        b = collate_features(items[i:i + batch_size], [name], single=True)
        bucketed.append((b["x"].to(device), b["lengths"].to(device), b["mask"].to(device), b["label"].to(device)))
    order = torch.randperm(len(bucketed), generator=torch.Generator().manual_seed(0)).tolist()
    return out, [bucketed[i] for i in order], dm.input_dim, dm.num_classes


class PaddedLSTM:
    """The naive head: the same layers run over the whole padded batch (no packing), last state gathered."""

    def __init__(self, dim: int, classes: int, device):
        import torch
        from torch import nn

        self.hidden = nn.Linear(dim, 128).to(device)
        self.lstm = nn.LSTM(128, 128, batch_first=True).to(device)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(128, classes).to(device)
        self.params = [*self.hidden.parameters(), *self.lstm.parameters(), *self.out.parameters()]
        self.torch = torch

    def __call__(self, x, lengths, mask):
        if mask is not None:  # frames without content (no face) are dropped, as the package's head does
            from lightning_emo.models.heads import compact

            x, lengths = compact(x, lengths, mask)
        h, _ = self.lstm(self.hidden(x))
        last = h[self.torch.arange(len(h), device=h.device), (lengths - 1).clamp(min=0)]
        return self.out(self.drop(last))


def plain_epochs(batches, dim: int, classes: int, device, variant: str, epochs: int, subset: int | None = None,
                 max_batches: int | None = None):
    """Per-epoch seconds of a plain PyTorch loop over batches in memory.

    ``packed``: the package's LSTM head forced onto ``pack_padded_sequence`` (PyTorch's idiom for
    variable-length batches, and the package's CUDA path); ``padded``: the same layers over the
    whole padded batch, last valid state gathered (the package's CPU path); ``per_clip``: ``padded`` with batch 1 (each
    clip alone, no padding), one optimizer step per clip, stopping after ``subset`` clips.
    ``max_batches``: time only the first batches and scale the time to the whole epoch.
    """
    import torch
    from torch.nn import functional as F

    from lightning_emo.models.heads import build_head

    torch.manual_seed(0)
    if variant == "packed":
        head = build_head("lstm", dim, classes, 128, 0.5).to(device).train()
        head._run_padded = lambda h, lengths, zero_padding=True: head._run_packed(h, lengths)  # pack on any device
        model, params = head, list(head.parameters())
    else:
        model = PaddedLSTM(dim, classes, device)
        params = model.params
    opt = torch.optim.Adam(params, lr=1e-3)
    times, clips_seen = [], 0
    for _ in range(epochs):
        sync(device)
        started = time.perf_counter()
        clips_seen = 0
        for x, lengths, mask, y in (batches[:max_batches] if max_batches else batches):
            if variant == "per_clip":
                for i in range(len(y)):
                    if subset is not None and clips_seen >= subset:
                        break
                    keep = mask[i, :int(lengths[i])]
                    xi = x[i:i + 1, :int(lengths[i])][:, keep]  # the clip's frames with content, alone
                    logits = model(xi, torch.tensor([xi.shape[1]], device=device), None)
                    loss = F.cross_entropy(logits, y[i:i + 1])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    clips_seen += 1
                if subset is not None and clips_seen >= subset:
                    break
            else:
                logits = model(x, lengths, mask)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                clips_seen += len(y)
        sync(device)
        elapsed = time.perf_counter() - started
        if max_batches and max_batches < len(batches):
            elapsed *= len(batches) / max_batches
        times.append(elapsed)
    return times, clips_seen


def packed_profile(batches, dim: int, classes: int, device) -> dict[str, float]:
    """Share of CPU time per op in one forward + backward of the LSTM head on ``pack_padded_sequence`` (one batch)."""
    from torch.nn import functional as F
    from torch.profiler import ProfilerActivity, profile

    from lightning_emo.models.heads import build_head

    head = build_head("lstm", dim, classes, 128, 0.5).to(device).train()
    head._run_padded = lambda h, lengths, zero_padding=True: head._run_packed(h, lengths)
    # One batch cut to 150 frames: the profiler keeps what every step allocates alive, and the packed
    # backward allocates a gradient the size of the whole batch per step (a long batch needs tens of GB).
    x, lengths, mask, y = batches[0]
    t = min(150, x.shape[1])
    x, lengths, mask = x[:, :t], lengths.clamp(max=t), mask[:, :t]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.cross_entropy(head(x, lengths, mask), y).backward()
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values()) or 1.0
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:6]
    return {k: v / total for k, v in top}


def bench_training(cfg: Config, work: Path, device) -> dict[str, Any]:
    corpus = make_feature_corpus(work / "features-1x", cfg.n_train, cfg.n_val, cfg.n_test, cfg.feature_kinds)
    progress(f"training store: {corpus['clips']} clips ({cfg.n_train} train), mean {corpus['mean_seconds']:.2f} s")
    results: dict[str, Any] = {"n_train": cfg.n_train, "n_val": cfg.n_val, "n_test": cfg.n_test,
                               "batch_size": cfg.train_batch_size, "epochs": cfg.epochs,
                               "mean_seconds": corpus["mean_seconds"], "kinds": {},
                               "load_average_start": load_average()}
    for kind in cfg.feature_kinds:
        modality, dim, rate, desc = FEATURE_KINDS[kind]
        progress(f"training: {kind} ({desc})")
        row: dict[str, Any] = {"description": desc, "dim": dim, "rate": rate,
                               "train_frames": None, "variants": {}}
        light = lightning_epochs(corpus, kind, cfg, device)
        row["variants"]["lightning"] = light
        progress(f"  Lightning + FeatureDataModule (defaults): {fmt(light['epoch_s'])} s/epoch")
        unbucketed = lightning_epochs(corpus, kind, cfg, device, bucket_by_length=False)
        row["variants"]["lightning_random"] = unbucketed
        progress(f"  Lightning, bucket_by_length=False: {fmt(unbucketed['epoch_s'])} s/epoch")
        if modality == "audio":
            pooled = lightning_epochs(corpus, kind, cfg, device, head_options={"frame_pool": 4})
            row["variants"]["lightning_pool4"] = pooled
            progress(f"  Lightning, frame_pool=4: {fmt(pooled['epoch_s'])} s/epoch")
        batches, bucketed, d, c = _materialised_batches(corpus, kind, cfg.train_batch_size, device)
        row["train_frames"] = int(sum(int(b[1].sum()) for b in batches))
        row["padded_frames"] = {"random": int(sum(b[0].shape[0] * b[0].shape[1] for b in batches)),
                                "bucketed": int(sum(b[0].shape[0] * b[0].shape[1] for b in bucketed))}
        for variant, data in (("packed", batches), ("padded", batches), ("bucketed", bucketed)):
            packed = variant == "packed"
            times, n = plain_epochs(data, d, c, device, "packed" if packed else "padded", max(3, cfg.epochs),
                                    max_batches=cfg.packed_batches if packed else None)
            row["variants"][f"plain_{variant}"] = {"epoch_s": median(times[1:]), "runs": times, "clips": n,
                                                   "timed_batches": cfg.packed_batches if packed else len(data)}
            progress(f"  plain loop, {variant}: {fmt(median(times[1:]))} s/epoch"
                     + (f" (timed on {cfg.packed_batches} batches, extrapolated)" if packed else ""))
        if modality == "audio" and device.type == "cpu":
            with contextlib.suppress(Exception):  # the profiler is a diagnostic, never a failure
                row["packed_profile"] = packed_profile(batches, d, c, device)
        times, n = plain_epochs(batches, d, c, device, "per_clip", 2, subset=cfg.per_clip_subset)
        per_clip = median(times[1:]) / max(n, 1)
        row["variants"]["plain_per_clip"] = {"epoch_s": per_clip * cfg.n_train, "runs": times, "clips": n,
                                             "extrapolated_from": n}
        progress(f"  plain loop, one clip at a time: {fmt(per_clip * cfg.n_train)} s/epoch "
                 f"(timed on {n} clips, extrapolated)")
        for v in row["variants"].values():
            v["clips_per_s"] = ratio(cfg.n_train, v["epoch_s"])
        results["kinds"][kind] = row
    results["load_average_end"] = load_average()
    return results


# --------------------------------------------------------------------------------------------
# inference


def build_recognizer(work: Path, audio: str, video: str, name: str) -> Path:
    """An exported audio+video recognizer: real extractor specs, LSTM heads (a few steps), a fitted prior rule."""
    from lightning_emo.data.corpora.cheavd import CLASSES
    from lightning_emo.extractors.extract import build_for_extraction
    from lightning_emo.hub import Recognizer
    from lightning_emo.hub._testing import fused_rule_files, train_head_checkpoint

    out = work / "models" / name
    export = out / "export"
    if (export / "config.json").is_file():
        return export
    specs = {"audio": build_for_extraction(audio).spec, "video": build_for_extraction(video, fps=FACE_FPS).spec}
    ckpts = {m: train_head_checkpoint(out / f"{m}.ckpt", s.to_dict(), list(CLASSES), hidden_dim=128, steps=3,
                                      seed=i) for i, (m, s) in enumerate(specs.items())}
    fusion = fused_rule_files(out / "fusion", list(CLASSES), audio=audio, video=video, rules=("prior",))
    model = Recognizer.from_checkpoints(ckpts, fusion=fusion / f"{audio}+{video}" / "prior" / "rule.json",
                                        detector="mtcnn", fps=FACE_FPS, name=name, license="apache-2.0",
                                        corpus="none (benchmark stand-in)",
                                        split_protocol="heads trained a few steps on random features")
    model.save_pretrained(export)
    return export


def timeline_child(model_dir: str, video: str, result: str, window: float, hop: float) -> int:
    """Run in a subprocess: a timeline over ``video``; writes peak RSS, RSS samples and timing to ``result``."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - started, rss_mb() or 0.0))
            done.wait(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from lightning_emo.hub import Recognizer

    model = Recognizer.from_pretrained(model_dir)
    loaded = rss_mb()
    t0 = time.perf_counter()
    windows, labels = 0, []
    for row in model.timeline(video, window=window, hop=hop):
        windows += 1
        labels.append(row.prediction.label)
    elapsed = time.perf_counter() - t0
    done.set()
    thread.join()
    Path(result).write_text(json.dumps({"peak_rss_mb": rss_mb(field_name="VmHWM"), "rss_after_load_mb": loaded,
                                        "windows": windows, "seconds": elapsed, "samples": samples}))
    return 0


def infer_stages_child(model_dir: str, clip: str, result: str) -> int:
    """Run in a fresh subprocess: where a cold ``infer`` spends its time (imports, loading, first and second predict)."""
    t0 = time.perf_counter()
    from lightning_emo.hub import Recognizer

    t1 = time.perf_counter()
    model = Recognizer.from_pretrained(model_dir)
    t2 = time.perf_counter()
    model.predict(clip)
    t3 = time.perf_counter()
    model.predict(clip)
    t4 = time.perf_counter()
    Path(result).write_text(json.dumps({
        "import": t1 - t0, "load": t2 - t1, "first_predict": t3 - t2, "warm_predict": t4 - t3,
        "imports_lightning": "pytorch_lightning" in sys.modules, "imports_sklearn": "sklearn" in sys.modules}))
    return 0


def import_seconds(module: str) -> float | None:
    """Seconds to import ``module`` in a fresh process that has already imported torch."""
    code = (f"import time, torch; t = time.perf_counter(); import {module}; "
            "print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=child_env(), timeout=300)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def bench_inference(cfg: Config, work: Path, device) -> dict[str, Any]:
    import torch

    from bench_media import loop_video, talking_face_clip
    from lightning_emo.data.media import load_audio, load_frames, probe
    from lightning_emo.hub import Recognizer

    results: dict[str, Any] = {"load_average_start": load_average(), "models": {}}
    media = work / "media"
    clip = media / f"clip_{cfg.clip_seconds:g}s_{cfg.clip_height}p.mp4"
    if not clip.is_file():
        progress(f"writing a {cfg.clip_seconds:g} s {cfg.clip_width}x{cfg.clip_height} talking-face clip")
        talking_face_clip(clip, seconds=cfg.clip_seconds, height=cfg.clip_height, width=cfg.clip_width,
                          face=cfg.clip_face)
    info = probe(clip)
    results["clip"] = {"seconds": info.duration, "size": f"{info.width}x{info.height}", "fps": info.fps}
    models = {"hubert_base + facenet_vggface2": ("hubert_base", "facenet_vggface2", "heavy"),
              "mfcc + hog": ("mfcc", "hog", "light")}
    exports = {}
    for label, (a, v, short) in models.items():
        progress(f"inference: building the {label} recognizer")
        exports[short] = build_recognizer(work, a, v, short)
    for label, (a, v, short) in models.items():
        export = exports[short]
        row: dict[str, Any] = {"audio": a, "video": v, "random_weights": [x for x in (a, v) if x in RANDOM_WEIGHTS]}
        cold = []
        for r in range(cfg.repeats):
            cmd = cli_command() + ["infer", str(clip), "--model", str(export), "--quiet",
                                   "--json", str(work / f"infer-{short}.json"), "--device", str(device)]
            rc, out, wall = run_child(cmd, work, timeout=1200, log=work / "logs" / f"infer-{short}-{r}.log")
            if rc != 0:
                raise RuntimeError(f"lightning-emo infer failed ({rc}):\n{out[-3000:]}")
            cold.append(wall)
            progress(f"  {label}: `lightning-emo infer` (cold process) {wall:.2f} s")
        row["cli_s"] = median(cold)
        row["cli_runs"] = cold
        stages_path = work / f"infer-stages-{short}.json"
        rc, out, _ = run_child([sys.executable, str(Path(__file__).resolve()), "--child-infer-stages", str(export),
                                str(clip), str(stages_path)], work, timeout=1200)
        if rc == 0:
            row["stages"] = json.loads(stages_path.read_text())
            progress("  cold process stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in row["stages"].items()
                                                           if isinstance(v, float)))
        model = Recognizer.from_pretrained(str(export), map_location=str(device)) if device.type == "cuda" else \
            Recognizer.from_pretrained(str(export))
        model.predict(clip)  # warm-up: builds the extractors
        warm = []
        for _ in range(cfg.repeats):
            t = time.perf_counter()
            pred = model.predict(clip)
            warm.append(time.perf_counter() - t)
        row["predict_s"] = median(warm)
        row["predict_runs"] = warm
        row["label"] = pred.label
        parts = {}
        t = time.perf_counter()
        wave = load_audio(clip, sample_rate=model.sample_rate())
        parts["decode audio"] = time.perf_counter() - t
        t = time.perf_counter()
        frames, _ = load_frames(clip, fps=model.fps())
        parts["decode video (5 fps of 25)"] = time.perf_counter() - t
        with torch.inference_mode():
            t = time.perf_counter()
            fa = model.extract("audio", wave)
            parts[f"audio: {a}"] = time.perf_counter() - t
            rt = model._runtime("video")
            t = time.perf_counter()
            faces = rt.module.detector.crop_batch([frames.to(rt.device)], torch.tensor([len(frames)]),
                                                  crop_size=rt.module.spec.crop_size)
            parts["video: MTCNN detect + track + crop"] = time.perf_counter() - t
            t = time.perf_counter()
            rt.module.extractor(faces.crops, torch.tensor([len(frames)], device=faces.crops.device), mask=faces.mask)
            parts[f"video: {v}"] = time.perf_counter() - t
            fv = model.extract("video", frames)
            t = time.perf_counter()
            model.predict_features({"audio": fa, "video": fv})
            parts["heads + fusion"] = time.perf_counter() - t
        row["parts"] = parts
        row["faces_found"] = int(faces.mask.sum())
        row["frames"] = int(len(frames))
        del model
        results["models"][label] = row
        progress(f"  {label}: warm predict {fmt(row['predict_s'])} s; parts " +
                 ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    # timeline memory, each length in a fresh process
    results["timeline"] = {"window": cfg.window, "hop": cfg.hop, "runs": []}
    plan = [("light", "mfcc + hog", m) for m in cfg.timeline_minutes] + \
           [("heavy", "hubert_base + facenet_vggface2", m) for m in cfg.timeline_heavy_minutes]
    for short, label, minutes in plan:
        video = media / f"long_{minutes:g}min.mp4"
        if not video.is_file():
            loop_video(clip, video, minutes * 60)
        seconds = probe(video).duration
        result = work / f"timeline-{short}-{minutes:g}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-timeline", str(exports[short]), str(video),
               str(result), str(cfg.window), str(cfg.hop)]
        progress(f"timeline: {label} over {minutes:g} min ({seconds:.0f} s) in a subprocess")
        rc, out, wall = run_child(cmd, work, timeout=6 * 3600, log=work / "logs" / f"timeline-{short}-{minutes:g}.log")
        if rc != 0:
            raise RuntimeError(f"timeline child failed ({rc}):\n{out[-3000:]}")
        r = json.loads(result.read_text())
        r.update({"model": label, "minutes": minutes, "video_seconds": seconds, "wall_s": wall})
        results["timeline"]["runs"].append(r)
        progress(f"  peak RSS {r['peak_rss_mb']:.0f} MiB (after loading {r['rss_after_load_mb']:.0f} MiB), "
                 f"{r['windows']} windows in {r['seconds']:.1f} s")
    results["imports"] = {m: import_seconds(m) for m in ("pytorch_lightning", "sklearn.linear_model", "torchvision")}
    results["load_average_end"] = load_average()
    return results


def plot_timeline(results: dict[str, Any], path: Path) -> Path | None:
    runs = (results.get("inference") or {}).get("timeline", {}).get("runs") or []
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    models = sorted({r["model"] for r in runs})
    for m in models:
        rs = sorted([r for r in runs if r["model"] == m], key=lambda r: r["video_seconds"])
        ax1.plot([r["video_seconds"] / 60 for r in rs], [r["peak_rss_mb"] for r in rs], "o-", label=m)
        for r in rs:
            ts = [s[0] for s in r["samples"]]
            ax2.plot(ts, [s[1] for s in r["samples"]], label=f"{m}, {r['video_seconds'] / 60:.1f} min")
    ax1.axhline(2048, color="red", ls="--", lw=1, label="target 2 GB")
    ax1.set_xlabel("video length (min)")
    ax1.set_ylabel("peak RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax1.set_title("timeline peak memory vs video length")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("process time (s)")
    ax2.set_ylabel("RSS (MiB)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("RSS while the timeline runs")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# scale

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
        "data": {"class_path": "lightning_emo.data.features.FeatureDataModule",
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


def bench_scale(cfg: Config, work: Path, device) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------
# the report


def report_summary(results: dict[str, Any]) -> list[str]:
    """The issue's targets, one row each, from whichever sections were measured."""
    rows: list[str] = []
    ex = (results.get("extraction") or {}).get("extractors") or {}
    for name, what in (("hubert_base", "SSL model (HuBERT-base)"), ("facenet_vggface2", "face pipeline (MTCNN + facenet)")):
        if name in ex:
            x = ex[name]["speedup"]
            rows.append(f"| extract vs per-clip loop, {what}, 2 CPU cores | ≥5x | {fmt(x)}x | {_target(x >= 5)} |")
    tr = (results.get("training") or {}).get("kinds") or {}
    for kind, x in tr.items():
        v = x["variants"]
        light, pool = v["lightning"]["epoch_s"], v.get("lightning_pool4", {}).get("epoch_s")
        extra = f" (frame_pool=4: {fmt(pool)} s, {_target(pool < 1)})" if pool else ""
        rows.append(f"| training epoch, 1550 clips, {x['description']} | <1 s | {fmt(light)} s{extra} | "
                    f"{_target(light < 1)} |")
    inf = results.get("inference") or {}
    for label, x in (inf.get("models") or {}).items():
        rows.append(f"| `infer` on a 10 s 720p clip, {label} | <3 s | cold {fmt(x['cli_s'])} s, warm "
                    f"{fmt(x['predict_s'])} s | {_target(x['cli_s'] < 3)} (warm: {_target(x['predict_s'] < 3)}) |")
    for x in (inf.get("timeline") or {}).get("runs") or []:
        rows.append(f"| timeline peak RSS, {x['model']}, {x['video_seconds'] / 60:.0f} min | <2 GB | "
                    f"{fmt(x['peak_rss_mb'])} MiB | {_target(x['peak_rss_mb'] < 2048)} |")
    if not rows:
        return []
    gpu = results.get("machine", {}).get("cuda_available")
    return (["## Targets at a glance", "", "| target | goal | measured | |", "| --- | --- | --- | --- |"] + rows
            + ([] if gpu else ["| GPU: ≥20x the loop, ≥5000x realtime HuBERT-base, ≥1500 face frames/s | | "
                               "no GPU lent | not measured |"])
            + ["", "Each section below says what bounds a missed target.", ""])


def _provenance(section: dict[str, Any], results: dict[str, Any]) -> str:
    """Which run measured a section (sections can be re-run alone with --only)."""
    gemm = section.get("matmul_gflops")
    return (f"*Measured {section.get('finished', results.get('finished', '?'))} by "
            f"`{section.get('command', results.get('command', 'python scripts/benchmark.py'))}`"
            + (f"; fp32 GEMM {gemm} GFLOP/s at the section's start" if gemm else "") + ".*")


def _target(met: bool | None) -> str:
    return "–" if met is None else ("met" if met else "**missed**")


def report(results: dict[str, Any], cfg: Config, command: str) -> str:
    m = results["machine"]
    gpu = m.get("cuda_available")
    out = ["# Benchmarks", "",
           f"Written by `scripts/benchmark.py` ({'quick smoke run — small sizes, not the reference figures' if cfg.quick else 'full sizes'}); "
           f"last run `{command}` on {results.get('finished', '?')}. Each section says which run measured it "
           "(`--only` re-runs sections and keeps the others); the raw numbers are in `benchmarks/results.json`.", "",
           "## Machine", ""]
    out += [f"- {line}" for line in machine_lines(m)]
    out.append(f"- load average at the end: {m.get('load_average_end')} "
               "(the machine is shared with other jobs: each section below records its own)")
    if not gpu:
        out.append("- **No GPU**: none was lent to the task that produced these figures, so every figure is on "
                   "the CPU and the GPU targets (≥20x the per-clip loop, 5000x realtime for HuBERT-base, "
                   "1500 face frames/s) are not measured. The script has the GPU code paths (device "
                   "selection, pinned memory, bf16/fp16 autocast as `extract` resolves it): run "
                   "`python scripts/benchmark.py --device cuda` on a GPU machine.")
    out.append("- **Random weights**: HuBERT-base and facenet (InceptionResnetV1, VGGFace2) run with random "
               "weights of the same architecture (the pretrained files cannot be downloaded here); the compute "
               "is the same. MTCNN uses its real weights (they ship with facenet-pytorch).")
    out.append("")
    out += report_summary(results)
    sections = {
        "extraction": lambda r: report_extraction(r, {**m, "matmul_gflops": r.get("matmul_gflops", m["matmul_gflops"])},
                                                  gpu),
        "training": lambda r: report_training(r, r.get("matmul_gflops", m["matmul_gflops"])),
        "inference": report_inference,
        "scale": report_scale,
    }
    for name, render in sections.items():
        if name in results:
            lines = render(results[name])
            lines[2:2] = [_provenance(results[name], results), ""]
            out += lines
    out += ["## How to run", "",
            "```bash",
            "python scripts/benchmark.py                       # everything (full sizes), writes this file",
            "python scripts/benchmark.py --quick               # smoke run, ~2 min, writes runs/benchmark-quick/",
            "python scripts/benchmark.py --only extraction,training   # some sections (others kept from the JSON)",
            "python scripts/benchmark.py --only extraction --extractors hubert_base   # one extractor's rows",
            "python scripts/benchmark.py --device cuda         # on a GPU machine",
            "python scripts/benchmark.py --wait-load 1.5       # wait for a quiet machine first",
            "```", ""]
    return "\n".join(out)


def report_extraction(r: dict[str, Any], machine: dict, gpu: bool) -> list[str]:
    c = r["corpus"]
    rows = r["extractors"]
    out = ["## Extraction", "",
           f"Corpus: {c['clips']} synthetic clips (drawn talking faces with speech-like audio, H.264 + AAC), "
           f"{c['seconds']} s in all (mean {c['mean_seconds']} s), {c['frame']} at {fmt(c['native_fps'])} fps; "
           f"face extractors sample {FACE_FPS:g} frames/s ({c['face_frames_5fps']} frames). Median of "
           f"{r['repeats']} runs each, the two ways interleaved in the same process after an untimed warm-up of "
           f"each; load average {r.get('load_average_start')} → {r.get('load_average_end')}.", "",
           "- **per-clip loop**: decode one clip, run it alone (audio: batch 1 = one clip; faces: each frame "
           "through MTCNN and the network one at a time), the way MERTools/EmoBox/emotion2vec scripts extract;",
           f"- **extract**: `run_extraction` (what `lightning-emo extract` runs): batches of {r['batch_size']} clips, "
           + (f"decoding in {r['num_workers']} DataLoader workers" if r["num_workers"] else
            "decoding in the main process (the package's default on 2 cores: no core is left for workers)")
           + ", faces detected for all frames of a batch in "
           "chunks, features written to the store; its time includes the Trainer's start, any workers' start "
           "and the store's merge (the *loop only* column is the predict loop alone);",
           "- **realtime factor (RTF)** = seconds of media per second of wall time;",
           "- **agree**: stored features (float16; compare: float32, its LLDs exceed float16's range) vs the "
           "per-clip loop's float32: mean |diff| / mean |value| ≤ 5e-3 (shown with max |diff| / max |value|), "
           "face masks compared frame by frame. HOG's maximum is large by nature: L2-Hys normalises the "
           "near-zero gradients of flat regions, where crops that differ by 1e-6 (roi_align in a batch vs "
           "alone) give different histograms.", "",
           "| extractor | per-clip loop: clips/s | RTF | extract: clips/s | RTF | face frames/s loop → extract | "
           "**extract vs loop** | loop only | agree |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, x in rows.items():
        face = x["modality"] == "face"
        frames = (f"{fmt(x['naive_frames_per_s'])} → {fmt(x['extract_frames_per_s'])}" if face else "–")
        a = x["agreement"]
        agree = ("yes" if a["ok"] else "**no**") + f" ({a.get('mean_rel_diff', 0):.0e} / {a['max_rel_diff']:.0e}" + \
            (f"; masks {a['mask_agreement']:.3f})" if face else ")")
        label = name + (" + MTCNN" if face else "") + (" *" if x["random_weights"] else "")
        out.append(f"| {label} | {fmt(x['naive_clips_per_s'])} | {fmt(x['naive_rtf'])}x | "
                   f"{fmt(x['extract_clips_per_s'])} | {fmt(x['extract_rtf'])}x | {frames} | "
                   f"**{fmt(x['speedup'])}x** | {fmt(x['speedup_loop'])}x | {agree} |")
    out += ["", "\\* random weights, same architecture and compute.", ""]
    var_rows = {n: x for n, x in rows.items() if x.get("variants")}
    if var_rows:
        out += ["Other `extract` settings on the same clips (medians; *vs loop* against the same per-clip loop "
                "runs). Clips sorted by length: the manifest's clips ordered by duration, so a batch holds clips of "
                "similar length (padding: share of the computed samples that are padding, manifest order → sorted).",
                "", "| extractor | setting | extract s | vs loop | note |", "| --- | --- | ---: | ---: | --- |"]
        for name, x in var_rows.items():
            out.append(f"| {name} | default (batch {r['batch_size']}, manifest order) | {fmt(x['extract_s'])} | "
                       f"{fmt(x['speedup'])}x | |")
            for label, v in x["variants"].items():
                note = ""
                if "sorted" in label and x.get("padding"):
                    pad = x["padding"]
                    note = (f"padding {fmt(100 * pad['manifest_order'], 0)}% → {fmt(100 * pad['sorted'], 0)}%")
                if v.get("agreement"):
                    a = v["agreement"]
                    note = f"face masks agree with the loop's on {100 * a['mask_agreement']:.1f}% of frames"
                shown = f"`{label}`" if label.startswith("--") else label
                out.append(f"| {name} | {shown} | {fmt(v['extract_s'])} | {fmt(v['speedup'])}x | {note} |")
        out.append("")
    out += ["Where the time goes (seconds for the whole corpus). *Loop*: the per-clip loop split into decoding, "
            "detection and network. *Batched*: the same model on batches of clips decoded in advance, no Lightning "
            "and no workers (one run) — the compute floor of `extract`:", "",
            "| extractor | loop: decode | detect | network | batched: decode | detect | network | "
            "network GFLOP/s: loop → batched |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, x in rows.items():
        pp, b = x["naive_parts"], x["batched_compute"]
        gf = (f"{fmt(x.get('naive_gflops'))} → {fmt(x.get('batched_gflops'))}" if x.get("flops_per_unit") else "–")
        det = x["modality"] == "face"
        out.append(f"| {name} | {fmt(pp['decode'])} | {fmt(pp['detect']) if det else '–'} | {fmt(pp['compute'])} | "
                   f"{fmt(b['decode'])} | {fmt(b['detect']) if det else '–'} | {fmt(b['compute'])} | {gf} |")
    out += ["", f"GFLOP/s = the network's FLOPs (counted by `torch.utils.flop_counter`) over its time; the "
            f"machine's fp32 GEMM rate is {machine.get('matmul_gflops')} GFLOP/s.", "", "### Targets", ""]
    for name in TARGET_EXTRACTORS:
        if name not in rows:
            continue
        x = rows[name]
        met = x["speedup"] is not None and x["speedup"] >= 5
        out.append(f"- **{name}**: `extract` is {fmt(x['speedup'])}x the per-clip loop on this CPU "
                   f"(target ≥5x on 2 CPU cores): {_target(met)}. " + extraction_note(name, x, machine))
    cheap = [n for n, x in rows.items() if x["speedup"] is not None and x["speedup"] < 1 and n not in TARGET_EXTRACTORS]
    if cheap:
        out.append(f"- Below 1x ({', '.join(cheap)}): these cost little per clip (or, for HOG, per frame after "
                   "detection), so `extract`'s fixed costs — Trainer set-up, "
                   f"committing and merging the store — dominate on {c['clips']} clips; the scale section shows how "
                   "they amortise over more clips.")
    if not gpu:
        out.append("- GPU targets (≥20x the loop, 5000x realtime HuBERT-base, 1500 face frames/s): not measured "
                   "(no GPU).")
    out.append("")
    return out


def extraction_note(name: str, x: dict, machine: dict) -> str:
    pp, b = x["naive_parts"], x["batched_compute"]
    roof = machine.get("matmul_gflops") or 0
    overhead = ratio(x["extract_s"], b["total"])
    best = max(((label, v) for label, v in (x.get("variants") or {}).items() if v.get("speedup")),
               key=lambda kv: kv[1]["speedup"], default=None)
    best_text = (f" The best setting tried, `{best[0]}`, gives {fmt(best[1]['speedup'])}x."
                 if best and best[1]["speedup"] > (x.get("speedup") or 0) else "")
    if x["modality"] == "audio":
        gl, gb, gp = x.get("naive_gflops"), x.get("batched_gflops"), x.get("padded_batch_gflops")
        pad = x.get("padding") or {}
        padded = (f" Run as one padded, masked batch the same model reaches only {fmt(gp)} GFLOP/s "
                  f"({fmt(100 * pad.get('manifest_order', 0), 0)}% of a batch's samples in manifest order are padding, "
                  "and the convolutional front-end's activations of 8 clips — 512 channels at a fifth of the sample "
                  "rate, hundreds of MB — spill out of the caches): that is why on a CPU `extract` runs SSL encoders "
                  f"clip by clip inside each batch, at {fmt(gb)} GFLOP/s." if gp else
                  f" Batched (clips decoded in advance, no Lightning) it runs at {fmt(gb)} GFLOP/s.")
        return (f"The per-clip loop spends {fmt(pp['decode'])} s decoding and {fmt(pp['compute'])} s in the network: "
                f"at batch 1 HuBERT-base runs at {fmt(gl)} GFLOP/s, {fmt(100 * (gl or 0) / roof if roof else None, 0)}% "
                f"of the machine's GEMM rate ({roof} GFLOP/s)." + padded + " On a CPU the per-clip loop is "
                "compute-bound, not launch- or "
                f"decode-bound: no batching can beat roof / batch-1 rate = {fmt(roof / gl if gl else None)}x, so 5x "
                f"is out of reach here; `extract` itself takes {fmt(overhead)}x the same model on the same batches "
                "without Lightning (the Trainer's start, decoding, the store's writes)." + best_text + " On a GPU the batch-1 loop "
                "is launch-bound (one 3 s clip cannot fill the device) and batching is what pays: that target "
                "needs a GPU run.")
    det_gain = ratio(pp["detect"], b["detect"])
    net_gain = ratio(pp["compute"], b["compute"])
    floor_gain = ratio(x["naive_s"], b["total"])
    net_bound = ratio(x["naive_s"], b["compute"])
    return (f"Detection: {fmt(pp['detect'])} s one frame at a time vs {fmt(b['detect'])} s batched "
            f"({fmt(det_gain)}x: MTCNN runs its pyramid once per chunk of frames instead of once per frame); the "
            f"network: {fmt(pp['compute'])} s at batch 1 vs {fmt(b['compute'])} s batched ({fmt(net_gain)}x, "
            f"{fmt(x.get('naive_gflops'))} → {fmt(x.get('batched_gflops'))} GFLOP/s, at the machine's GEMM rate). "
            f"With no overhead at all the batched pipeline is {fmt(floor_gain)}x the loop, and `extract` takes "
            f"{fmt(overhead)}x that floor (the Trainer's start, video decoding, the store's writes). Even with free detection and decoding, the batched network alone bounds the gain at "
            f"{fmt(net_bound)}x: on 2 cores the face network's FLOPs, not batching, set the limit." + best_text +
            " Beyond that only less work helps: detection on every k-th frame with the tracker filling the gaps, "
            "or a smaller face network.")


def lstm_flops_per_frame(dim: int, hidden: int = 128) -> int:
    """Forward + backward FLOPs per frame of the paper's head (linear ``dim -> hidden``, LSTM ``hidden``):
    ``2`` per multiply-add, backward ~2x forward (input and weight gradients)."""
    macs = dim * hidden + 4 * hidden * (hidden + hidden)
    return 3 * 2 * macs


def report_training(r: dict[str, Any], gemm: float) -> list[str]:
    out = ["## Training on cached features", "",
           f"A CHEAVD-sized store of random features: {r['n_train']} training clips (+{r['n_val']} val, "
           f"+{r['n_test']} test), log-normal lengths of mean {r['mean_seconds']:.2f} s (1 to 12 s); the paper's head "
           f"(linear 128 → LSTM 128 → dropout 0.5 → softmax; Adam), batch {r['batch_size']}, whole clips. Seconds "
           f"per training epoch (epoch start to the last batch; validation not included), median of epochs "
           f"2..{r['epochs']}; load average {r.get('load_average_start')} → {r.get('load_average_end')}.", "",
           "- **Lightning**: `Trainer.fit(EmotionModule, FeatureDataModule)` with the package's defaults: on the "
           "CPU `LSTMHead` runs the padded batch (the same logits and gradients as packing) and "
           "`FeatureDataModule` batches clips of similar length (`bucket_by_length=True`);",
           "- **random batches**: the same with `bucket_by_length=False`;",
           "- **frame_pool=4**: defaults with `head_options={frame_pool: 4}` (4 frames averaged: 100 → 25 "
           "frames/s; a different model);",
           "- **plain, packed**: the naive way most recipes write it — the same head on `pack_padded_sequence` "
           "(PyTorch's idiom for variable-length batches) in a bare loop over random batches held in memory "
           "(timed on the first batches, extrapolated: it is that slow);",
           "- **plain, padded** / **+ buckets**: the package's padded head in a bare loop (no Lightning, no "
           "DataLoader), random / length-bucketed batches;",
           "- **one clip at a time**: the padded head with batch 1 (each clip alone, no padding), one optimizer "
           "step per clip (timed on a subset, extrapolated).", "",
           "| features | frames/epoch | **Lightning** s/epoch | clips/s | random batches | frame_pool=4 | "
           "plain packed | plain padded | + buckets | one clip at a time | **vs packed** | target <1 s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for kind, x in r["kinds"].items():
        v = x["variants"]
        light = v["lightning"]["epoch_s"]
        pool = v.get("lightning_pool4", {}).get("epoch_s")
        out.append(f"| {x['description']} | {fmt(x['train_frames'])} | **{fmt(light)}** | "
                   f"{fmt(v['lightning']['clips_per_s'])} | {fmt(v.get('lightning_random', {}).get('epoch_s'))} | "
                   f"{fmt(pool)} | {fmt(v['plain_packed']['epoch_s'])} | {fmt(v['plain_padded']['epoch_s'])} | "
                   f"{fmt(v.get('plain_bucketed', {}).get('epoch_s'))} | {fmt(v['plain_per_clip']['epoch_s'])} | "
                   f"**{fmt(ratio(v['plain_packed']['epoch_s'], light))}x** | {_target(light < 1.0)}"
                   + (f" (frame_pool=4: {_target(pool < 1.0)})" if pool else "") + " |")
    out.append("")
    for kind, x in r["kinds"].items():
        v = x["variants"]
        light, packed, padded = v["lightning"]["epoch_s"], v["plain_packed"]["epoch_s"], v["plain_padded"]["epoch_s"]
        bucket = v.get("plain_bucketed", {}).get("epoch_s")
        per_clip = v["plain_per_clip"]["epoch_s"]
        pf = x.get("padded_frames") or {}
        prof = x.get("packed_profile") or {}
        share = prof.get("aten::fill_", 0) + prof.get("aten::add_", 0)
        line = (f"- {kind}: the package trains {fmt(ratio(packed, light))}x faster than the packed loop and "
                f"{fmt(ratio(per_clip, light))}x faster than one clip at a time; Lightning + `FeatureDataModule` "
                f"take {fmt(ratio(light, bucket))}x the bare bucketed loop. Length buckets cut the padded frames "
                f"from {fmt(pf.get('random'))} to {fmt(pf.get('bucketed'))} ({fmt(ratio(padded, bucket))}x "
                f"faster than random batches in the bare loop).")
        if share:
            line += (f" Packing is slow on the CPU because autograd runs a packed LSTM step by step and the "
                     "backward of every step's slice of the packed input allocates and adds a zero-filled "
                     "gradient the size of the whole packed input (`aten::fill_` + `aten::add_` = "
                     f"{fmt(100 * share, 0)}% of the CPU time of one batch's forward + backward in the profile): "
                     "its cost grows with the square of the clip length.")
        frames = pf.get("bucketed") or x["train_frames"]
        floor = lstm_flops_per_frame(x["dim"]) * frames / (gemm * 1e9) if gemm else None
        if light >= 1.0 and floor:
            line += (f" **Why the target is missed**: the arithmetic itself. One epoch is {fmt(frames)} "
                     f"(bucketed, padded) frames x {fmt(lstm_flops_per_frame(x['dim']) / 1e6)} MFLOP (LSTM and "
                     f"hidden layer, forward + backward) = {fmt(lstm_flops_per_frame(x['dim']) * frames / 1e9)} "
                     f"GFLOP: {fmt(floor)} s at this machine's GEMM rate ({fmt(gemm)} GFLOP/s), and the "
                     f"package runs at {fmt(100 * floor / light, 0)}% of that rate. Under 1 s at 100 frames/s "
                     "needs fewer frames: `frame_pool` (4 → 25 frames/s) or `max_frames` crops, or a GPU.")
        elif floor:
            line += f" Arithmetic floor at the GEMM rate: {fmt(floor)} s/epoch ({fmt(100 * floor / light, 0)}% reached)."
        out.append(line)
    out.append("")
    return out


def report_inference(r: dict[str, Any]) -> list[str]:
    c = r["clip"]
    out = ["## Inference", "",
           f"`lightning-emo infer` on a {fmt(c['seconds'])} s {c['size']} clip at {fmt(c['fps'])} fps (a drawn "
           f"talking face on a larger frame, AAC audio); audio + video recognizers exported with LSTM heads and a "
           f"fitted prior fusion; video sampled at {FACE_FPS:g} frames/s, MTCNN on frames scaled to 640 px. *CLI*: "
           "the command in a fresh process (import, model load, predict, as a user runs it); *warm*: "
           "`Recognizer.predict` in a process that has predicted once. Medians; load average "
           f"{r.get('load_average_start')} → {r.get('load_average_end')}.", "",
           "| recognizer | CLI (cold) s | warm predict s | target <3 s | cold process: import / load / 1st predict "
           "/ 2nd predict s | where the warm time goes (s) |",
           "| --- | ---: | ---: | --- | --- | --- |"]
    for label, x in r["models"].items():
        parts = "; ".join(f"{k} {v:.2f}" for k, v in x["parts"].items())
        st = x.get("stages") or {}
        stages = " / ".join(fmt(st.get(k)) for k in ("import", "load", "first_predict", "warm_predict")) if st else "–"
        star = " *" if x["random_weights"] else ""
        out.append(f"| {label}{star} | **{fmt(x['cli_s'])}** | {fmt(x['predict_s'])} | "
                   f"{_target(x['cli_s'] < 3.0)} (warm: {_target(x['predict_s'] < 3.0)}) | {stages} | {parts} |")
    out += ["", "\\* random weights, same compute.", ""]
    imports = r.get("imports") or {}
    notes = []
    for label, x in r["models"].items():
        st = x.get("stages") or {}
        if x["cli_s"] >= 3.0 and st:
            lazy = st["first_predict"] - st["warm_predict"]
            notes.append(f"- {label}: the cold command misses 3 s while the prediction itself takes "
                         f"{fmt(x['predict_s'])} s warm: {fmt(st['import'])} s go to importing, {fmt(st['load'])} s "
                         f"to loading and {fmt(lazy)} s of the first prediction to lazy imports and building the "
                         "extractors (most of it importing torchvision, see below).")
    loaded = sorted({name for x in r["models"].values() for name, key in
                     (("pytorch_lightning", "imports_lightning"), ("scikit-learn", "imports_sklearn"))
                     if (x.get("stages") or {}).get(key)})
    out += notes
    fastest = min((x.get("stages") or {} for x in r["models"].values()), key=lambda st: st.get("load", 1e9))
    before_work = sum(v or 0 for v in (fastest.get("import"), fastest.get("load"), imports.get("torchvision")))
    out += [f"- Import costs in a fresh process (after torch): `pytorch_lightning` "
            f"{fmt(imports.get('pytorch_lightning'))} s (it pulls torchmetrics → torchvision → torch._dynamo), "
            f"`sklearn.linear_model` {fmt(imports.get('sklearn.linear_model'))} s. "
            + (f"The inference process imported {', '.join(loaded)}." if loaded else
               "Inference imports neither: extractors run through `FeatureRunner` (plain PyTorch; `extract` wraps "
               "it in a LightningModule) and scikit-learn loads only for LR fusion.")
            + f" What bounds a cold start now is importing torch and torchvision ({fmt(imports.get('torchvision'))} "
            "s after torch: `torchvision.ops` imports `torch._dynamo`), which the face pipeline needs (facenet-"
            f"pytorch's MTCNN, `roi_align`): with loading the model, {fmt(before_work)} s before any work on "
            "this machine, so under 3 s cold is out of reach with a face detector; a process that stays up (`Recognizer` from Python, or the timeline) pays "
            "it once and predicts a clip in the warm time.", ""]
    t = r.get("timeline") or {}
    runs = t.get("runs") or []
    if runs:
        out += [f"Timeline (`Recognizer.timeline`: windows of {t['window']:g} s every {t['hop']:g} s, streamed) in a "
                "fresh process per video; peak RSS is the process's `VmHWM` (imports and models included). The long "
                "videos repeat the clip (packets copied, not re-encoded).", "",
                "| recognizer | video | windows | wall s (x realtime) | RSS after loading MiB | peak RSS MiB | "
                "target <2 GB |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for x in runs:
            out.append(f"| {x['model']} | {x['video_seconds'] / 60:.1f} min | {x['windows']} | {fmt(x['seconds'])} "
                       f"({fmt(ratio(x['video_seconds'], x['seconds']))}x) | {fmt(x['rss_after_load_mb'])} | "
                       f"**{fmt(x['peak_rss_mb'])}** | {_target(x['peak_rss_mb'] < 2048)} |")
        light = sorted([x for x in runs if x["model"] == runs[0]["model"]], key=lambda x: x["video_seconds"])
        out.append("")
        w, h = (int(v) for v in c["size"].split("x"))
        frames_per_window = int(round(t["window"] * FACE_FPS))
        window_mb = frames_per_window * w * h * 3 / 1e6
        if len(light) > 1:
            grow = light[-1]["peak_rss_mb"] - light[0]["peak_rss_mb"]
            longer = light[-1]["video_seconds"] / light[0]["video_seconds"]
            out += [f"Flat in video length? Peak RSS changes by {grow:+.0f} MiB from "
                    f"{light[0]['video_seconds'] / 60:.1f} to {light[-1]['video_seconds'] / 60:.1f} min "
                    f"({longer:.1f}x longer): " + ("flat (within 10%)." if abs(grow) < 0.1 * light[0]['peak_rss_mb']
                                                    else "**not flat**.") +
                    f" Above the loaded model, each window holds {frames_per_window} frames of {c['size']} "
                    f"(~{fmt(window_mb, 0)} MB as uint8); the face detector scales them to 640 px a few at a time "
                    "and converts only each face box's region to float for the crops (whole 720p frames in "
                    f"float32 would be ~{fmt(4 * window_mb, 0)} MB per copy). What remains above the loaded models "
                    "is the detector's and the networks' activations and the allocator's cached blocks, the same "
                    "for every window: the peak does not grow with the video.", "",
                    "![timeline memory](benchmarks/timeline_memory.png)", ""]
    return out


def report_scale(r: dict[str, Any]) -> list[str]:
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


# --------------------------------------------------------------------------------------------
# main


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
        model, video, result, window, hop = args.child_timeline
        return timeline_child(model, video, result, float(window), float(hop))
    if args.child_infer_stages:
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
    if args.render:
        results = json.loads(out_json.read_text())
        cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in results["config"].items()})
        plot_timeline(results, out_png)
        atomic_write(out_md, report(results, cfg, results.get("command", "python scripts/benchmark.py")))
        print(f"wrote {out_md}")
        return 0
    sys.path.insert(0, str(SCRIPTS))
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
    runners: dict[str, Callable] = {"extraction": bench_extraction, "training": bench_training,
                                    "inference": bench_inference, "scale": bench_scale}
    command = "python scripts/benchmark.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    results["command"] = command.strip()
    for section in sections:
        if args.wait_load and section != sections[0]:
            wait_for_low_load(args.wait_load, args.max_wait)
        progress(f"=== {section} ===")
        gemm = round(matmul_gflops(device), 1)  # per section: other jobs on a shared machine change it
        started = time.perf_counter()
        previous = results.get(section)
        results[section] = runners[section](cfg, work, device)
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
        atomic_write(out_md, report(results, cfg, command.strip()))
    progress(f"wrote {out_md}, {out_json}" + (f", {out_png}" if out_png.is_file() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
