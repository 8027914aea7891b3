"""Faces section: detect + crop + embed on a talking-head video of real faces, per-frame detection against
detect-and-track in the same run (speed, box IoU, mask agreement), the detection resolution, and cold/warm `infer`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .harness import (FACE_FPS, RANDOM_WEIGHTS, Config, cli_command, fmt, load_average, median, progress, ratio,
                      run_child, sync, target_text)
from .inference import build_recognizer, inference_clip

MODES = {"per-frame": {"detect_every": 1}, "detect-and-track": {}}
# cold `infer` per recognizer: label -> (audio, video, short name)
RECOGNIZERS = {"mfcc (audio only)": ("mfcc", None, "audio_only"), "mfcc + hog": ("mfcc", "hog", "light"),
               "hubert_base + facenet_vggface2": ("hubert_base", "facenet_vggface2", "heavy")}
HEAVY_MODULES = ("torchvision", "facenet_pytorch", "timm", "skimage", "torch._dynamo", "pytorch_lightning", "sklearn")


def talking_head(cfg: Config, work: Path) -> tuple[Path, list]:
    """The section's video (real faces, moving camera, cuts, a cutaway) and each frame's ground truth."""
    from lightning_emo.data.face_videos import talking_head_shots, write_face_video

    path = work / "media" / f"talking_head_{cfg.face_seconds:g}s_{cfg.face_height}p.mp4"
    truth_path = path.with_suffix(".truth.json")
    shots = talking_head_shots(cfg.face_seconds, cfg.face_video_fps, cfg.face_height)
    if not (path.is_file() and truth_path.is_file()):
        progress(f"writing a {cfg.face_seconds:g} s {cfg.face_width}x{cfg.face_height} talking-head video "
                 f"({cfg.face_video_fps:g} fps) of the astronaut and cameraman photographs")
        truth = write_face_video(path, shots, cfg.face_height, cfg.face_width, cfg.face_video_fps)
        truth_path.write_text(json.dumps([{"shot": t.shot, "boxes": t.boxes.tolist(), "visible": t.visible.tolist()}
                                          for t in truth]))
    return path, json.loads(truth_path.read_text())


def _timed_runner(extractor, det, device):
    """A ``FeatureRunner`` whose detector (detection + tracking + cropping) is timed and its output kept."""
    from lightning_emo.extractors.runner import FeatureRunner

    runner = FeatureRunner(extractor, det).to(device)
    stats = {"detect_s": 0.0, "frames_detected": 0, "faces": []}
    crop_batch, detect = det.crop_batch, det.detect

    def timed_crop_batch(*args, **kwargs):
        t = time.perf_counter()
        out = crop_batch(*args, **kwargs)
        sync(device)
        stats["detect_s"] += time.perf_counter() - t
        stats["faces"].append(out)
        return out

    def counted_detect(frames):
        stats["frames_detected"] += len(frames)
        return detect(frames)

    det.crop_batch, det.detect = timed_crop_batch, counted_detect
    return runner, stats


def pipeline_pass(name: str, options: dict, clips, device, clips_per_batch: int) -> dict[str, Any]:
    """Detect + crop + embed over ``clips`` (10 s each) through ``FeatureRunner``: seconds, frames detected, boxes."""
    import torch

    from lightning_emo.extractors.extract import build_for_extraction
    from lightning_emo.extractors.face_detect import build_face_detector

    extractor = build_for_extraction(name, None, None, FACE_FPS)
    det = build_face_detector("mtcnn", crop_size=extractor.spec.crop_size, **options)
    runner, stats = _timed_runner(extractor, det, device)
    masks, boxes = [], []
    cpu = time.process_time()
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(clips), clips_per_batch):
            part = clips[i:i + clips_per_batch]
            batch = {"clip_id": [str(i + j) for j in range(len(part))], "frames": [c.to(device) for c in part],
                     "frame_lengths": torch.tensor([len(c) for c in part], device=device)}
            runner(batch)
            faces = stats["faces"].pop()
            masks += [faces.mask[j, :len(c)].cpu() for j, c in enumerate(part)]
            boxes += [faces.boxes[j, :len(c)].cpu() for j, c in enumerate(part)]
    sync(device)
    total = time.perf_counter() - started
    return {"total_s": total, "cpu_s": time.process_time() - cpu, "detect_s": stats["detect_s"],
            "embed_s": total - stats["detect_s"],
            "frames_detected": stats["frames_detected"], "mask": torch.cat(masks), "boxes": torch.cat(boxes)}


def agreement(ref, other) -> dict[str, Any]:
    """Box IoU (frames where both found a face) and mask agreement of ``other`` against ``ref``."""
    from torchvision.ops import box_iou

    both = ref["mask"] & other["mask"]
    ious = box_iou(ref["boxes"][both], other["boxes"][both]).diag() if both.any() else None
    return {"iou_mean": float(ious.mean()) if ious is not None else None,
            "iou_min": float(ious.min()) if ious is not None else None,
            "mask_agreement": float((ref["mask"] == other["mask"]).float().mean()),
            "frames_with_face": [int(ref["mask"].sum()), int(other["mask"].sum())]}


def resolution_study(frames, truth_boxes, cfg: Config, device) -> dict[str, Any]:
    """Per-frame MTCNN at each detection size on every ``face_resolution_every``-th frame: seconds per frame, IoU of
    the crop boxes against full resolution and against the true face (squared the same way)."""
    import torch
    from torchvision.ops import box_iou

    from lightning_emo.extractors.face_detect import build_face_detector, square_boxes

    sub = frames[::cfg.face_resolution_every].to(device)
    truth = truth_boxes[::cfg.face_resolution_every]
    h, w = sub.shape[1:3]
    rows: dict[str, Any] = {}
    outputs = {}
    for size in cfg.face_sizes:
        det = build_face_detector("mtcnn", detect_size=size, detect_every=1).to(device)
        det.crop_batch([sub[:2]], crop_size=160)  # warm-up
        runs = []
        for _ in range(cfg.repeats):
            t = time.perf_counter()
            with torch.inference_mode():
                out = det.crop_batch([sub], crop_size=160)
            sync(device)
            runs.append(time.perf_counter() - t)
        outputs[size] = out
        label = "full" if size is None else str(size)
        rows[label] = {"detect_size": size, "s_per_frame": median(runs) / len(sub), "runs": runs}
        progress(f"  resolution {label}: {1000 * median(runs) / len(sub):.0f} ms/frame")
    full = outputs[None]
    has_truth = torch.tensor([b is not None for b in truth])
    true_sq = torch.zeros(len(truth), 4)
    if has_truth.any():
        true_sq[has_truth] = square_boxes(torch.tensor([b for b in truth if b is not None]), 0.2, h, w)
    for size, out in outputs.items():
        label = "full" if size is None else str(size)
        m, fm = out.mask[0].cpu(), full.mask[0].cpu()
        both = m & fm
        ious = box_iou(out.boxes[0][both].cpu(), full.boxes[0][both].cpu()).diag()
        tb = m & has_truth
        tious = box_iou(out.boxes[0][tb].cpu(), true_sq[tb]).diag()
        rows[label].update(iou_vs_full_mean=float(ious.mean()) if len(ious) else None,
                           iou_vs_full_min=float(ious.min()) if len(ious) else None,
                           iou_vs_truth_mean=float(tious.mean()) if len(tious) else None,
                           iou_vs_truth_min=float(tious.min()) if len(tious) else None,
                           found=int(m.sum()), true_faces=int(has_truth.sum()),
                           recall=float((m & has_truth).sum() / max(1, int(has_truth.sum()))),
                           false_frames=int((m & ~has_truth).sum()))
    return {"frames": int(len(sub)), "frame": f"{w}x{h}", "sizes": rows}


def cold_infer(cfg: Config, work: Path, device) -> dict[str, Any]:
    """Cold `lightning-emo infer` per recognizer on the inference clip (wall time, heavy modules imported) and warm
    `Recognizer.predict` of the light recognizer per-frame vs detect-and-track."""
    import torch

    from lightning_emo.hub import Recognizer

    clip = inference_clip(cfg, work)
    out: dict[str, Any] = {"clip": clip.name, "recognizers": {}, "warm": {}}
    for label, (audio, video, short) in RECOGNIZERS.items():
        export = build_recognizer(work, audio, video, short)
        walls = []
        for r in range(cfg.repeats):
            cmd = cli_command() + ["infer", str(clip), "--model", str(export), "--quiet", "--device", str(device)]
            rc, text, wall = run_child(cmd, work, timeout=1200, log=work / "logs" / f"faces-cold-{short}-{r}.log")
            if rc != 0:
                raise RuntimeError(f"lightning-emo infer failed ({rc}):\n{text[-3000:]}")
            walls.append(wall)
        probe = ("import sys, json, time; t = time.perf_counter(); from lightning_emo.cli import main; "
                 f"rc = main(['infer', {str(clip)!r}, '--model', {str(export)!r}, '--quiet', '--device', "
                 f"{str(device)!r}]); print(json.dumps([rc, time.perf_counter() - t, "
                 f"[m for m in {HEAVY_MODULES!r} if m in sys.modules]]))")
        rc, text, _ = run_child([sys.executable, "-c", probe], work, timeout=1200)
        imported = json.loads(text.strip().splitlines()[-1])[2] if rc == 0 else None
        out["recognizers"][label] = {"cold_s": median(walls), "runs": walls, "imports": imported}
        progress(f"  cold `infer` {label}: {fmt(median(walls))} s; imports {imported}")
    export = build_recognizer(work, "mfcc", "hog", "light")
    for mode, options in MODES.items():
        model = Recognizer.from_pretrained(str(export), map_location=str(device))
        if options:
            model.set_detector_options(**options)
        model.predict(clip)
        runs = []
        for _ in range(cfg.repeats):
            t = time.perf_counter()
            model.predict(clip)
            runs.append(time.perf_counter() - t)
        out["warm"][mode] = {"predict_s": median(runs), "runs": runs}
        progress(f"  warm predict mfcc + hog, {mode}: {fmt(median(runs))} s")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def run(cfg: Config, work: Path, device) -> dict[str, Any]:
    """The section: the pipeline both ways, interleaved, on the talking-head video; resolution; cold/warm infer."""
    from lightning_emo.data.media import load_frames

    import torch

    results: dict[str, Any] = {"load_average_start": load_average(), "repeats": cfg.repeats,
                               "torch_threads": torch.get_num_threads()}
    path, truth = talking_head(cfg, work)
    t = time.perf_counter()
    frames, times = load_frames(path, fps=FACE_FPS)
    results["decode_s"] = time.perf_counter() - t
    step = int(round(cfg.face_video_fps / FACE_FPS))
    truth = truth[::step][:len(frames)]
    truth_boxes = [x["boxes"][0] if x["boxes"] and x["visible"][0] >= 0.999 else None for x in truth]
    per_clip = int(round(cfg.face_clip_seconds * FACE_FPS))
    clips = [frames[i:i + per_clip] for i in range(0, len(frames), per_clip)]
    results["video"] = {"seconds": cfg.face_seconds, "frame": f"{frames.shape[2]}x{frames.shape[1]}",
                        "native_fps": cfg.face_video_fps, "frames": int(len(frames)), "clips": len(clips),
                        "clip_seconds": cfg.face_clip_seconds, "frames_with_true_face": sum(b is not None for b in
                                                                                            truth_boxes)}
    progress(f"faces: {len(frames)} frames at {FACE_FPS:g} fps ({results['video']['frame']}), decoded in "
             f"{results['decode_s']:.1f} s, as {len(clips)} clips of {cfg.face_clip_seconds:g} s")
    results["pipelines"] = {}
    for name in cfg.face_extractors:
        rows: dict[str, Any] = {m: {"runs": []} for m in MODES}
        for m, options in MODES.items():  # warm-up (weights, kernels), untimed
            pipeline_pass(name, options, clips[:1], device, cfg.face_clips_per_batch)
        kept = {}
        for r in range(cfg.repeats):
            for m, options in MODES.items():  # interleaved: both ways see the same machine load
                res = pipeline_pass(name, options, clips, device, cfg.face_clips_per_batch)
                rows[m]["runs"].append({k: v for k, v in res.items() if k not in ("mask", "boxes")})
                kept[m] = res
                progress(f"  {name} {m} {r + 1}/{cfg.repeats}: {res['total_s']:.2f} s "
                         f"(detect + crop {res['detect_s']:.2f} s on {res['frames_detected']} frames)")
        for m in MODES:
            runs = rows[m]["runs"]
            for k in ("total_s", "cpu_s", "detect_s", "embed_s"):
                rows[m][k] = median([x[k] for x in runs])
            rows[m]["frames_detected"] = runs[-1]["frames_detected"]
            rows[m]["frames_per_s"] = ratio(len(frames), rows[m]["total_s"])
        rows["speedup"] = ratio(rows["detect-and-track"]["frames_per_s"], rows["per-frame"]["frames_per_s"])
        rows["speedup_cpu"] = ratio(rows["per-frame"]["cpu_s"], rows["detect-and-track"]["cpu_s"])
        rows["agreement"] = agreement(kept["per-frame"], kept["detect-and-track"])
        results["pipelines"][name] = rows
        progress(f"  {name}: {fmt(rows['per-frame']['frames_per_s'])} -> {fmt(rows['detect-and-track']['frames_per_s'])}"
                 f" face frames/s ({fmt(rows['speedup'])}x); IoU mean {fmt(rows['agreement']['iou_mean'], 3)}, "
                 f"min {fmt(rows['agreement']['iou_min'], 3)}; masks {fmt(rows['agreement']['mask_agreement'], 3)}")
    # the detection interval: HOG (the cheapest network: the detector's share shows most), one run each
    progress("faces: detection interval")
    ref = pipeline_pass("hog", MODES["per-frame"], clips, device, cfg.face_clips_per_batch)
    results["intervals"] = {}
    for k in cfg.face_intervals:
        res = pipeline_pass("hog", {"detect_every": k}, clips, device, cfg.face_clips_per_batch)
        results["intervals"][str(k)] = {"total_s": res["total_s"], "detect_s": res["detect_s"],
                                        "frames_detected": res["frames_detected"], **agreement(ref, res)}
        progress(f"  detect_every={k}: {res['total_s']:.2f} s, {res['frames_detected']} frames detected, IoU "
                 f"{fmt(results['intervals'][str(k)]['iou_mean'], 3)}")
    results["intervals_reference_s"] = ref["total_s"]
    progress("faces: detection resolution")
    results["resolution"] = resolution_study(frames, truth_boxes, cfg, device)
    del frames, clips
    progress("faces: cold and warm `infer`")
    results["infer"] = cold_infer(cfg, work, device)
    results["load_average_end"] = load_average()
    return results


def render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    v = r["video"]
    la0, la1 = r.get("load_average_start"), r.get("load_average_end")
    loaded = any(x and x[0] > 1.5 for x in (la0, la1))
    out = ["## Faces: detect-and-track", "",
           f"A {fmt(v['seconds'])} s {v['frame']} talking-head video at {fmt(v['native_fps'])} fps made from real "
           "face photographs (scikit-image's astronaut and cameraman under a drifting, zooming virtual camera; a cut "
           "to the other person and a 1 s cutaway with no face every 27 s: `lightning_emo.data.face_videos`), "
           f"sampled at {FACE_FPS:g} fps ({v['frames']} frames, {v['frames_with_true_face']} with a face fully in "
           f"view), in {v['clips']} clips of {fmt(v['clip_seconds'])} s through `FeatureRunner` (what `extract`, "
           "`infer` and the timeline run): MTCNN detection + tracking + crop, then the face network. *per-frame*: "
           "MTCNN on every frame (`detect_every=1`, what every frame cost before); *detect-and-track*: the default "
           "(`extractors/face_track.py`: MTCNN on every 5th frame, on both sides of each shot cut and on every "
           "frame of a gap where the track is lost, weak, fast or no longer looks like the face; boxes interpolated "
           f"between). Both ways interleaved in one process, medians of {r['repeats']} runs; decoding "
           f"({fmt(r['decode_s'])} s) not included; {r.get('torch_threads', '?')} torch thread(s). Load average "
           f"{la0} → {la1}"
           + (" — **a loaded machine** (other jobs shared the 2 cores): absolute times are inflated, the ratios "
              "compare runs made side by side." if loaded else "."), "",
           "| face network | way | face frames/s | detect + track + crop s | network s | frames through MTCNN | "
           "**vs per-frame** | CPU s (vs per-frame) | box IoU mean / min | mask agreement |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for name, x in r["pipelines"].items():
        a = x["agreement"]
        for m in MODES:
            y = x[m]
            ref = m == "per-frame"
            vs = "1x" if ref else f"**{fmt(x['speedup'])}x**"
            cpu = fmt(y.get("cpu_s")) + ("" if ref else f" ({fmt(x.get('speedup_cpu'))}x)")
            iou = "–" if ref else f"{fmt(a['iou_mean'], 3)} / {fmt(a['iou_min'], 3)}"
            masks = "–" if ref else fmt(a["mask_agreement"], 3)
            star = " *" if name in RANDOM_WEIGHTS else ""
            out.append(f"| {name}{star} | {m} | {fmt(y['frames_per_s'])} | {fmt(y['detect_s'])} | {fmt(y['embed_s'])} "
                       f"| {y['frames_detected']} | {vs} | {cpu} | {iou} | {masks} |")
    out += ["", "\\* facenet with random weights of the real architecture (same compute).", ""]
    for name, x in r["pipelines"].items():
        pf, dt = x["per-frame"], x["detect-and-track"]
        bound = ratio(pf["total_s"], dt["embed_s"])
        det_gain = ratio(pf["detect_s"], dt["detect_s"])
        line = (f"- {name}: detection + tracking + cropping take {fmt(det_gain)}x less time tracked "
                f"({fmt(pf['detect_s'])} → {fmt(dt['detect_s'])} s; MTCNN on {dt['frames_detected']} of "
                f"{pf['frames_detected']} frames), the network the same ({fmt(pf['embed_s'])} / {fmt(dt['embed_s'])} s)")
        if (x["speedup"] or 0) < 3:
            line += (f". **What bounds it**: the face network runs on every frame with a face either way, so even free "
                     f"detection could not beat {fmt(bound)}x here; past that only a smaller network or a GPU helps")
        out.append(line + ".")
    out.append("")
    iv = r.get("intervals") or {}
    if iv:
        out += ["The detection interval (HOG, one run each, against per-frame detection in "
                f"{fmt(r.get('intervals_reference_s'))} s):", "",
                "| `detect_every` | s | frames through MTCNN | box IoU mean / min | mask agreement |",
                "| ---: | ---: | ---: | --- | ---: |"]
        for k, x in iv.items():
            out.append(f"| {k} | {fmt(x['total_s'])} | {x['frames_detected']} | {fmt(x['iou_mean'], 3)} / "
                       f"{fmt(x['iou_min'], 3)} | {fmt(x['mask_agreement'], 3)} |")
        out.append("")
    res = r["resolution"]
    out += [f"Detection resolution (MTCNN per frame on {res['frames']} of the {res['frame']} frames; frames whose "
            "longer side exceeds the size are scaled down to it for detection, crops always come from the "
            "full-resolution frame). IoU of the crop boxes against detection at full resolution and against the "
            "true face box (where the photograph's face lands, squared with the same margin):", "",
            "| detection size | ms/frame | IoU vs full: mean / min | IoU vs true face: mean / min | faces found / "
            "in view | frames with a face not in view |", "| --- | ---: | --- | --- | --- | ---: |"]
    for label, x in res["sizes"].items():
        out.append(f"| {label} px | {fmt(1000 * x['s_per_frame'])} | {fmt(x['iou_vs_full_mean'], 3)} / "
                   f"{fmt(x['iou_vs_full_min'], 3)} | {fmt(x['iou_vs_truth_mean'], 3)} / {fmt(x['iou_vs_truth_min'], 3)}"
                   f" | {x['found']} / {x['true_faces']} | {x['false_frames']} |")
    sizes = res["sizes"]
    if "640" in sizes and "full" in sizes:
        a, f = sizes["640"], sizes["full"]
        out += ["", f"The default stays 640 px: against the true face it is as accurate as full resolution "
                f"({fmt(a['iou_vs_truth_mean'], 3)} vs {fmt(f['iou_vs_truth_mean'], 3)} mean IoU, the same faces "
                f"found) at {fmt(ratio(f['s_per_frame'], a['s_per_frame']))}x less time per frame; larger sizes buy "
                "nothing measurable here. A smaller size is faster still but raises the smallest face found "
                "(MTCNN's `min_face_size` 40 px is counted in the detection image: 80 px in a 1280-wide frame at "
                "640, 107 px at 480), and these faces are large; `--detector-option detect_size=N` (or `null` "
                "for full resolution) changes it, recorded in the store's key."]
    inf = r["infer"]
    out += ["", f"Inference on the 10 s 720p clip of the inference section ({inf['clip']}): a cold `lightning-emo "
            "infer` per recognizer (a fresh process: imports, loading, one prediction) with the heavy modules that "
            "process imported, and the warm `Recognizer.predict` of mfcc + hog both ways:", "",
            "| recognizer | cold `infer` s | heavy imports |", "| --- | ---: | --- |"]
    for label, x in inf["recognizers"].items():
        imports = ", ".join(x["imports"]) if x.get("imports") else "none of " + ", ".join(HEAVY_MODULES)
        out.append(f"| {label} | {fmt(x['cold_s'])} | {imports} |")
    out += ["", "| mfcc + hog, warm predict | s | target <0.6 s |", "| --- | ---: | --- |"]
    for m, x in inf["warm"].items():
        out.append(f"| {m} | {fmt(x['predict_s'])} | {target_text(x['predict_s'] < 0.6)} |")
    pf, dt = (inf["warm"].get(m, {}).get("predict_s") for m in MODES)
    gemm, quiet = r.get("matmul_gflops"), (results.get("machine") or {}).get("matmul_gflops")
    if dt and dt >= 0.6:
        out += ["", f"**What bounds the warm target here**: the machine. This run saw an fp32 GEMM rate of {gemm} "
                "GFLOP/s (a quiet run of this machine measures about 220): every figure above is inflated by the "
                f"other jobs. Within the run detect-and-track predicts {fmt(ratio(pf, dt))}x faster than per-frame "
                "detection; the 1.0 s per-frame figure measured on a quiet machine before (Inference section) "
                f"divided by that ratio is {fmt(1.0 / ratio(pf, dt) if ratio(pf, dt) else None)} s — a quiet re-run "
                "(`python scripts/benchmark.py --only faces`) settles it." if quiet is not None else ""]
    out.append("")
    return out


def targets(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = []
    for name, x in (r.get("pipelines") or {}).items():
        a = x["agreement"]
        met = (x["speedup"] or 0) >= 3 and (a["iou_mean"] or 0) >= 0.9 and a["mask_agreement"] >= 0.98
        rows.append(f"| face frames/s, detect-and-track vs per-frame, {name}, 2 shared CPU cores "
                    f"({r.get('torch_threads', '?')} torch thread) | ≥3x at IoU ≥0.9, masks "
                    f"≥0.98 | {fmt(x['speedup'])}x, IoU {fmt(a['iou_mean'], 3)}, masks {fmt(a['mask_agreement'], 3)}"
                    f" | {target_text(met)} |")
    warm = ((r.get("infer") or {}).get("warm") or {}).get("detect-and-track")
    if warm:
        rows.append(f"| warm `infer`, 10 s 720p clip, mfcc + hog | <0.6 s | {fmt(warm['predict_s'])} s | "
                    f"{target_text(warm['predict_s'] < 0.6)} |")
    return rows
