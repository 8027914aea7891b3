"""The benchmark harness: run sizes, the machine, timing (medians, load waiting, child processes), shared inputs."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parents[1]
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
    # faces: a talking-head video of real faces, per-frame detection vs detect-and-track
    face_seconds: float = 60.0
    face_height: int = 720
    face_width: int = 1280
    face_video_fps: float = 25.0
    face_clip_seconds: float = 10.0
    face_clips_per_batch: int = 2
    face_extractors: tuple[str, ...] = ("hog", "facenet_vggface2")
    face_sizes: tuple[int | None, ...] = (480, 640, 960, None)  # MTCNN detection sizes (None: full resolution)
    face_resolution_every: int = 5  # the resolution study runs on every 5th sampled frame
    face_intervals: tuple[int, ...] = (3, 5, 8)  # detect_every values compared (HOG)
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
                   timeline_heavy_minutes=(), scale_factor=2, scale_extractors=("mfcc",), ddp_epochs=1,
                   face_seconds=6.0, face_height=360, face_width=640, face_clip_seconds=3.0,
                   face_sizes=(320, None), face_resolution_every=3)


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
    from lightning_emo.extractors.weights import cache_path

    facenet = cache_path(FACENET_WEIGHTS["vggface2"])  # facenet-pytorch's own cache ($TORCH_HOME/checkpoints)
    facenet.parent.mkdir(parents=True, exist_ok=True)
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
        frames += len(sample_times(info.video_duration or info.duration or 0.0))
    first = probe(manifest.media_path(manifest.clips[0]))
    return {"clips": len(manifest.clips), "seconds": round(sum(durations), 2),
            "mean_seconds": round(sum(durations) / len(durations), 2), "face_frames_5fps": frames,
            "frame": f"{first.width}x{first.height}", "native_fps": first.fps}


def sample_times(duration: float) -> list[float]:
    n = int(math.floor(duration * FACE_FPS + 1e-6))
    return [k / FACE_FPS for k in range(max(n, 1))]


def target_text(met: bool | None) -> str:
    return "–" if met is None else ("met" if met else "**missed**")



def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

