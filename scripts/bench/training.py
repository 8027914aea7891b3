"""Training section: epochs of the paper's LSTM head on a CHEAVD-sized store, Lightning against plain loops."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from .harness import Config, fmt, load_average, median, progress, ratio, sync, target_text


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
    from lightning_emo.data.store import FeatureStore, cache_key
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
    from lightning_emo.data.datamodule import FeatureDataModule
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

    from lightning_emo.data.datamodule import collate_features

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


def run(cfg: Config, work: Path, device) -> dict[str, Any]:
    """The section: per feature kind, Lightning epochs against plain loops (packed, padded, one clip at a time)."""
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
                   f"**{fmt(ratio(v['plain_packed']['epoch_s'], light))}x** | {target_text(light < 1.0)}"
                   + (f" (frame_pool=4: {target_text(pool < 1.0)})" if pool else "") + " |")
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



def render(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    return report_training(r, r.get("matmul_gflops", results["machine"]["matmul_gflops"]))


def targets(r: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = []
    for kind, x in (r.get("kinds") or {}).items():
        v = x["variants"]
        light, pool = v["lightning"]["epoch_s"], v.get("lightning_pool4", {}).get("epoch_s")
        extra = f" (frame_pool=4: {fmt(pool)} s, {target_text(pool < 1)})" if pool else ""
        rows.append(f"| training epoch, 1550 clips, {x['description']} | <1 s | {fmt(light)} s{extra} | "
                    f"{target_text(light < 1)} |")
    return rows
