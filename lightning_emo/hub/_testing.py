"""Fast stand-ins for trained parts (head checkpoints, feature stores, fused rules, clips) for tests and examples.

Nothing here is needed at inference. The checkpoints are real ``EmotionModule`` checkpoints in
Lightning's layout (``state_dict``, ``hyper_parameters``, callback states), trained for a few
optimizer steps on random features whose mean depends on the class, so they are cheap and
still not constant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["CLASSES", "fused_rule_files", "random_clip", "tiny_model", "train_head_checkpoint", "write_feature_store"]


def train_head_checkpoint(path: str | os.PathLike, spec: Mapping[str, Any], classes: Sequence[str], *,
                          input_dim: int | None = None, head: str = "lstm", hidden_dim: int = 16, steps: int = 15,
                          frames: int = 12, seed: int = 0, head_options: Mapping[str, Any] | None = None,
                          input_norm: bool = True) -> Path:
    """Train an ``EmotionModule`` head for ``steps`` Adam steps on class-shifted random features; save its checkpoint.

    Args:
        spec: the extractor spec dict (``ExtractorSpec.to_dict()``) the head claims to read.
        input_dim: feature dimension (default ``spec["dim"]``; smaller after selection).
        frames: frames per training sequence.
        input_norm: measure the input standardisation first, as ``fit`` does (the features are
            shifted and scaled per dimension, so it is far from the identity).

    Returns:
        ``path``, a Lightning-format checkpoint with a ``FusionPriorCallback`` state.
    """
    import pytorch_lightning as pl
    from torch.nn import functional as F

    from lightning_emo.models.module import EmotionModule

    torch.manual_seed(seed)
    dim = int(input_dim or spec["dim"])
    module = EmotionModule(input_dim=dim, classes=list(classes), modality=spec["modality"], extractor_spec=dict(spec),
                           head=head, hidden_dim=hidden_dim, head_options=dict(head_options or {}) or None,
                           input_norm=input_norm)
    C = len(classes)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, dim, generator=g)
    offset, scale = 2.0 * torch.randn(dim, generator=g), 0.2 + 3.0 * torch.rand(dim, generator=g)

    def sample(y: torch.Tensor) -> torch.Tensor:
        return (centres[y][:, None, :] + torch.randn(len(y), frames, dim, generator=g)) * scale + offset

    if input_norm:
        module.fit_input_norm([{"x": sample(torch.randint(0, C, (16,), generator=g))} for _ in range(2)])
    opt = torch.optim.Adam(module.head.parameters(), lr=1e-2)
    module.train()
    for _ in range(steps):
        y = torch.randint(0, C, (16,), generator=g)
        loss = F.cross_entropy(module(sample(y), torch.full((16,), frames)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        y = torch.arange(C).repeat(8)
        acc = float((module(sample(y), torch.full((len(y),), frames)).argmax(-1) == y).float().mean())
    fusion_state = {"version": 1, "metrics": {spec["modality"]: {"micro_f1": acc, "macro_f1": acc,
                                                                 "recall": {c: acc for c in classes}}},
                    "priors": {spec["modality"]: 0.0}, "classes": list(classes), "epoch": 0, "global_step": steps}
    ckpt = {"epoch": 0, "global_step": steps, "pytorch-lightning_version": pl.__version__,
            "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "hparams_name": "kwargs",
            "callbacks": {"FusionPriorCallback": fusion_state}, "loops": {}, "optimizer_states": [],
            "lr_schedulers": []}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def write_feature_store(path: str | os.PathLike, spec, clips: Mapping[str, tuple[np.ndarray, np.ndarray | None]], *,
                        detector: str | None = None, fps: float | None = None, dtype: str = "float16"):
    """A feature store as ``lightning-emo extract`` writes it (same cache key), holding ``clips``.

    Args:
        spec: an :class:`~lightning_emo.extractors.base.ExtractorSpec`.
        clips: ``clip_id -> (features (T, D), mask (T,) or None)``.
        detector, fps: the face detector and frame rate (face extractors).
    """
    from lightning_emo.data.store import FeatureStore, cache_key

    extra = {"detector_options": {}} if spec.modality == "face" else None
    key = cache_key(spec, dtype=dtype, detector=detector if spec.modality == "face" else None,
                    fps=fps if spec.modality == "face" else None, extra=extra)
    store = FeatureStore.create(path, spec, key, dtype=dtype)
    with store.writer() as w:
        for cid, (feats, mask) in clips.items():
            w.add(cid, feats, mask)
    store.merge()
    return FeatureStore.open(path)


def fused_rule_files(out: str | os.PathLike, classes: Sequence[str], audio: str = "mfcc", video: str = "hog",
                     rules: Sequence[str] = ("prior", "lr"), n_val: int = 60, n_test: int = 60, seed: int = 0) -> Path:
    """Run the real ``fuse`` report on random, informative audio/video predictions; returns ``out``.

    Writes ``out/<audio>+<video>/<rule>/rule.json`` and ``out/results.csv`` as ``lightning-emo fuse`` does.
    """
    from lightning_emo.data.predictions import write_predictions
    from lightning_emo.fusion.report import fuse_report

    rng = np.random.default_rng(seed)
    C = len(classes)
    y = rng.integers(0, C, n_val + n_test)
    ids = [f"clip{i:04d}" for i in range(len(y))]
    splits = ["val"] * n_val + ["test"] * n_test
    labels = [classes[i] for i in y]
    out = Path(out)
    paths = {}
    for name, strength in ((audio, 1.5), (video, 2.5)):
        z = rng.normal(size=(len(y), C))
        z[np.arange(len(y)), y] += strength
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        paths[name] = write_predictions(out / "preds" / name / "predictions.csv", ids, splits, labels, p, list(classes))
    report = fuse_report(paths, {audio: "audio", video: "video"}, rules=list(rules))
    report.write(out, png=False)
    return out


def random_clip(path: str | os.PathLike, seconds: float = 2.0, fps: float = 10.0, size: int = 64, *,
                audio: bool = True, blank: bool = False, sample_rate: int = 16000, seed: int = 0) -> Path:
    """Write a short MP4: moving random-texture frames (or blank ones) and, optionally, a noisy tone."""
    from lightning_emo.data.media import write_video

    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * fps)))
    if blank:
        frames = np.zeros((n, size, size, 3), dtype=np.uint8)
    else:
        base = rng.integers(0, 256, (size * 2, size * 2, 3), dtype=np.uint8)
        frames = np.stack([np.roll(base, (i, 2 * i), axis=(0, 1))[:size, :size] for i in range(n)])
    wave = None
    if audio:
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        wave = (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.1 * np.sin(2 * np.pi * t)))
                + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    return write_video(path, frames, fps, wave, sample_rate, threads=1)


CLASSES = ["angry", "happy", "sad", "neutral"]


def tiny_model(out: str | os.PathLike, classes: Sequence[str] = CLASSES, rule: str = "prior",
               hog_crop: int = 32, fps: float = 5.0) -> dict[str, Path]:
    """A complete small audio+video recognizer: MFCC and HOG (``none`` detector) heads, a fitted fusion rule.

    Writes under ``out``: ``audio.ckpt``, ``video.ckpt``, ``features/hog`` (the video store that
    tells the detector and frame rate), ``fusion/`` (a real ``fuse`` output) and the exported
    recognizer in ``export/``. Returns those paths (keys ``audio``, ``video``, ``store``,
    ``rule``, ``fusion``, ``export``).
    """
    from lightning_emo.extractors.audio import build_mfcc
    from lightning_emo.extractors.face import HOGExtractor
    from lightning_emo.hub.recognizer import Recognizer

    out = Path(out)
    mfcc, hog = build_mfcc().spec, HOGExtractor(crop_size=hog_crop, fps=fps).spec
    paths = {"audio": train_head_checkpoint(out / "audio.ckpt", mfcc.to_dict(), classes, seed=1),
             "video": train_head_checkpoint(out / "video.ckpt", hog.to_dict(), classes, seed=2)}
    rng = np.random.default_rng(0)
    clips = {f"c{i}": (rng.random((6, hog.dim), dtype=np.float32), None) for i in range(3)}
    paths["store"] = write_feature_store(out / "features" / "hog", hog, clips, detector="none", fps=fps).path
    paths["fusion"] = fused_rule_files(out / "fusion", classes, audio="mfcc", video="hog", rules=(rule,))
    paths["rule"] = paths["fusion"] / "mfcc+hog" / rule / "rule.json"
    model = Recognizer.from_checkpoints({"audio": paths["audio"], "video": paths["video"]}, fusion=paths["rule"],
                                        features={"video": paths["store"]}, name="tiny", license="apache-2.0",
                                        corpus="random", split_protocol="random features (a plumbing test)")
    model.save_pretrained(out / "export")
    paths["export"] = out / "export"
    return paths
