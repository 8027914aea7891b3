"""Inference section: cold and warm `lightning-emo infer` on a 720p clip, and the timeline's peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .harness import (Config, FACE_FPS, RANDOM_WEIGHTS, SCRIPTS, child_env, cli_command, fmt, load_average, median,
                      progress, ratio, rss_mb, run_child, target_text)

def build_recognizer(work: Path, audio: str, video: str | None, name: str) -> Path:
    """An exported recognizer: real extractor specs, LSTM heads (a few steps), with a video model a fitted prior rule."""
    from lightning_emo.data.corpora.cheavd import CLASSES
    from lightning_emo.extractors.extract import build_for_extraction
    from lightning_emo.hub import Recognizer
    from lightning_emo.hub._testing import fused_rule_files, train_head_checkpoint

    out = work / "models" / name
    export = out / "export"
    if (export / "config.json").is_file():
        return export
    specs = {"audio": build_for_extraction(audio).spec}
    if video is not None:
        specs["video"] = build_for_extraction(video, fps=FACE_FPS).spec
    ckpts = {m: train_head_checkpoint(out / f"{m}.ckpt", s.to_dict(), list(CLASSES), hidden_dim=128, steps=3,
                                      seed=i) for i, (m, s) in enumerate(specs.items())}
    common = dict(name=name, license="apache-2.0", corpus="none (benchmark stand-in)",
                  split_protocol="heads trained a few steps on random features")
    if video is None:
        model = Recognizer.from_checkpoints(ckpts, **common)
    else:
        fusion = fused_rule_files(out / "fusion", list(CLASSES), audio=audio, video=video, rules=("prior",))
        model = Recognizer.from_checkpoints(ckpts, fusion=fusion / f"{audio}+{video}" / "prior" / "rule.json",
                                            detector="mtcnn", fps=FACE_FPS, **common)
    model.save_pretrained(export)
    return export


def inference_clip(cfg: Config, work: Path) -> Path:
    """The section's talking-face clip (10 s of 720p with speech-like audio at full sizes), written once."""
    from bench_media import talking_face_clip

    clip = work / "media" / f"clip_{cfg.clip_seconds:g}s_{cfg.clip_height}p.mp4"
    if not clip.is_file():
        progress(f"writing a {cfg.clip_seconds:g} s {cfg.clip_width}x{cfg.clip_height} talking-face clip")
        talking_face_clip(clip, seconds=cfg.clip_seconds, height=cfg.clip_height, width=cfg.clip_width,
                          face=cfg.clip_face)
    return clip


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


def run(cfg: Config, work: Path, device) -> dict[str, Any]:
    """The section: cold and warm `infer` per recognizer, then the timeline's memory in fresh processes."""
    import torch

    from bench_media import loop_video
    from lightning_emo.data.media import load_audio, load_frames, probe
    from lightning_emo.hub import Recognizer

    results: dict[str, Any] = {"load_average_start": load_average(), "models": {}}
    media = work / "media"
    clip = inference_clip(cfg, work)
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
        rc, out, _ = run_child([sys.executable, str(SCRIPTS / "benchmark.py"), "--child-infer-stages", str(export),
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
        cmd = [sys.executable, str(SCRIPTS / "benchmark.py"), "--child-timeline", str(exports[short]), str(video),
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



def render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
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
                   f"{target_text(x['cli_s'] < 3.0)} (warm: {target_text(x['predict_s'] < 3.0)}) | {stages} | {parts} |")
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
                       f"**{fmt(x['peak_rss_mb'])}** | {target_text(x['peak_rss_mb'] < 2048)} |")
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



def targets(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = []
    for label, x in (r.get("models") or {}).items():
        rows.append(f"| `infer` on a 10 s 720p clip, {label} | <3 s | cold {fmt(x['cli_s'])} s, warm "
                    f"{fmt(x['predict_s'])} s | {target_text(x['cli_s'] < 3)} (warm: {target_text(x['predict_s'] < 3)}) |")
    for x in (r.get("timeline") or {}).get("runs") or []:
        rows.append(f"| timeline peak RSS, {x['model']}, {x['video_seconds'] / 60:.0f} min | <2 GB | "
                    f"{fmt(x['peak_rss_mb'])} MiB | {target_text(x['peak_rss_mb'] < 2048)} |")
    return rows
