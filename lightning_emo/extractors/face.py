"""Face feature extractors (HOG, facenet-pytorch InceptionResnetV1, any timm backbone) and the frames -> features face pipeline.

Every extractor here maps ``(crops (B, N, 3, S, S) float32 in [0, 1], lengths (B,))`` to
``(features (B, N, D), lengths (B,))`` with ``S = spec.crop_size``. Only valid frames are
computed: frames ``>= lengths`` and, when a ``mask (B, N)`` is passed, frames without a face are
skipped and get zero features; the valid frames of the whole batch are packed into one batch,
run in chunks of ``batch_size`` and scattered back, so a frame's features do not depend on
the other frames of the batch.

Registered names (dims): ``hog`` (1764 with the defaults), ``facenet_vggface2`` (512),
``facenet_casia`` (512), ``timm`` (the backbone's pooled width, e.g. 512 for ``resnet18``).
The paper's face CNN (``face_cnn``, 9216) lives in :mod:`lightning_emo.extractors.face_cnn`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from lightning_emo.extractors.base import (
    DEFAULT_WEIGHTS,
    EXTRACTORS,
    Extractor,
    ExtractorSpec,
    WeightsSource,
    build_extractor,
    resolve_weights,
    sha256_file,
)
from lightning_emo.extractors.face_detect import FaceCrops, build_face_detector

__all__ = ["FACENET_WEIGHTS", "FaceExtractor", "FaceNetExtractor", "FacePipeline", "HOGExtractor", "TimmExtractor",
           "hog_dim"]


def snapshot_revision(path: str | os.PathLike) -> str | None:
    """The commit hash of a file inside a Hugging Face cache snapshot (``.../snapshots/<hash>/...``), else None."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parts[i + 1]):
            return parts[i + 1]
    return None


def local_file_source(path: str | os.PathLike, uri: str, license: str = "") -> WeightsSource:
    """A ``file`` weights source pinned by the file's sha256 (so caches notice a replaced file)."""
    return WeightsSource(kind="file", uri=uri, filename=Path(path).name, sha256=sha256_file(path), license=license)


class FaceExtractor(Extractor):
    """Base class of face extractors: packs the valid frames, runs :meth:`embed` in chunks, scatters back.

    Subclasses implement :meth:`embed` (``(M, 3, S, S)`` crops in [0, 1] -> ``(M, D)``).
    """

    def __init__(self, spec: ExtractorSpec, batch_size: int = 64):
        super().__init__(spec)
        if spec.modality != "face" or not spec.crop_size:
            raise ValueError(f"face extractor {spec.name!r} needs modality 'face' and a crop size, got "
                             f"{spec.modality!r}, crop_size={spec.crop_size}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.batch_size = int(batch_size)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """``(M, 3, S, S)`` float in [0, 1] -> ``(M, D)`` features."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``crops (B, N, 3, S, S)``, ``lengths (B,)``, optional face ``mask (B, N)`` -> ``(features (B, N, D), lengths)``.

        Padding frames and frames whose ``mask`` is False get zero features.
        """
        self.check_input(x, lengths)
        b, n = x.shape[:2]
        valid = torch.arange(n, device=x.device)[None, :] < lengths.to(x.device)[:, None]
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"extractor {self.spec.name!r}: mask must have shape ({b}, {n}), got {tuple(mask.shape)}")
            valid &= mask.to(device=x.device, dtype=torch.bool)
        flat = x[valid]
        out = x.new_zeros(b, n, self.spec.dim, dtype=torch.float32)
        if len(flat):
            with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
                feats = torch.cat([self.embed(flat[i:i + self.batch_size].float())
                                   for i in range(0, len(flat), self.batch_size)])
            if feats.shape[1] != self.spec.dim:
                raise RuntimeError(f"extractor {self.spec.name!r} produced {feats.shape[1]}-d features, spec says "
                                   f"{self.spec.dim}")
            out[valid] = feats.to(out.dtype)
        return out, lengths


# ----------------------------------------------------------------------------------------------
# HOG


def hog_dim(crop_size: int, orientations: int, pixels_per_cell: int, cells_per_block: int) -> int:
    """Length of scikit-image's ``hog(..., feature_vector=True)`` on a ``crop_size`` square image."""
    cells = crop_size // pixels_per_cell
    blocks = cells - cells_per_block + 1
    return blocks * blocks * cells_per_block * cells_per_block * orientations


@EXTRACTORS.register("hog")
class HOGExtractor(FaceExtractor):
    """Histogram of oriented gradients of the grey face crop (scikit-image ``hog``), no weights.

    Config (defaults): grey = ``0.2125 R + 0.7154 G + 0.0721 B`` (scikit-image's ``rgb2gray``) of a
    64x64 crop; 9 unsigned orientations; 8x8-pixel cells (8x8 cells); blocks of 2x2 cells moved one
    cell at a time (7x7 blocks), each L2-Hys normalised: ``7 * 7 * 2 * 2 * 9 = 1764`` values.
    In general ``dim = (S // ppc - cpb + 1)^2 * cpb^2 * orientations``.

    Args:
        crop_size: side ``S`` of the input crops.
        orientations, pixels_per_cell, cells_per_block: scikit-image ``hog`` parameters (square cells/blocks).
        fps: frame sampling rate of the video (recorded in the spec).
        batch_size: frames per chunk.
    """

    def __init__(self, crop_size: int = 64, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2,
                 fps: float | None = None, batch_size: int = 64):
        if crop_size < pixels_per_cell * cells_per_block:
            raise ValueError(f"hog: crop_size must be at least pixels_per_cell * cells_per_block = "
                             f"{pixels_per_cell * cells_per_block}, got {crop_size}")
        options = dict(crop_size=crop_size, orientations=orientations, pixels_per_cell=pixels_per_cell,
                       cells_per_block=cells_per_block, fps=fps, batch_size=batch_size)
        spec = ExtractorSpec(
            name="hog", modality="face", dim=hog_dim(crop_size, orientations, pixels_per_cell, cells_per_block),
            frame_rate=fps, crop_size=crop_size, weights=WeightsSource(kind="none"), options=options,
            description=f"HOG of {crop_size}x{crop_size} grey face crops ({orientations} orientations, "
                        f"{pixels_per_cell}px cells, {cells_per_block}x{cells_per_block} blocks, L2-Hys)")
        super().__init__(spec, batch_size=batch_size)
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.register_buffer("gray_weights", torch.tensor([0.2125, 0.7154, 0.0721]).view(1, 3, 1, 1), persistent=False)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        from skimage.feature import hog

        gray = (crops * self.gray_weights).sum(1).detach().cpu().double().numpy()
        feats = np.stack([
            hog(g, orientations=self.orientations, pixels_per_cell=(self.pixels_per_cell,) * 2,
                cells_per_block=(self.cells_per_block,) * 2, block_norm="L2-Hys", feature_vector=True)
            for g in gray])
        return torch.from_numpy(feats).float().to(crops.device)


# ----------------------------------------------------------------------------------------------
# facenet-pytorch InceptionResnetV1

_FACENET_LICENSE = ("MIT (facenet-pytorch, ported from davidsandberg/facenet); the weights were trained on {data}: "
                    "check that data set's terms before commercial use")

FACENET_WEIGHTS: dict[str, WeightsSource] = {
    "vggface2": WeightsSource(kind="facenet", uri="vggface2", filename="20180402-114759-vggface2.pt",
                              license=_FACENET_LICENSE.format(data="VGGFace2")),
    "casia-webface": WeightsSource(kind="facenet", uri="casia-webface", filename="20180408-102900-casia-webface.pt",
                                   license=_FACENET_LICENSE.format(data="CASIA-WebFace (non-commercial research use)")),
}


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a (weights-only) torch file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code, a truncated file, not a torch file
        raise ValueError(f"weights file {path} is not a torch state dict ({type(e).__name__}); if it is a broken "
                         "download, delete it and run again to download it anew") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"weights file {path} holds a {type(sd).__name__}, expected a state dict")
    return sd


class FaceNetExtractor(FaceExtractor):
    """facenet-pytorch ``InceptionResnetV1`` face embeddings: 512-d, L2-normalised, from 160x160 crops.

    Input standardisation is facenet-pytorch's fixed one, ``(x * 255 - 127.5) / 128``. Weights come
    from facenet-pytorch's own cache folder under its own file names
    (``$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt`` or ``20180408-102900-casia-webface.pt``),
    downloaded there on first use from facenet-pytorch's release URL or
    ``$LIGHTNING_EMO_WEIGHTS_URL``, or from ``weights=PATH`` (a ``.pt`` state dict or
    ``.safetensors``). The identity classifier (``logits.*``) is dropped; every other tensor must
    match, except BatchNorm's ``num_batches_tracked`` counters, which files may carry or not
    (torch's loader fills them for files saved without them; unused in eval).

    Args:
        dataset: ``vggface2`` or ``casia-webface``.
        weights: an explicit weights file, instead of the torch.hub cache.
        pretrained: False builds a randomly initialised network (smoke tests only; its spec says so).
        fps: frame sampling rate of the video (recorded in the spec).
        batch_size: frames per chunk.
    """

    def __init__(self, dataset: str = "vggface2", weights: str | os.PathLike | None = None, pretrained: bool = True,
                 fps: float | None = None, batch_size: int = 64):
        from facenet_pytorch import InceptionResnetV1

        if dataset not in FACENET_WEIGHTS:
            raise ValueError(f"facenet dataset must be one of {sorted(FACENET_WEIGHTS)}, got {dataset!r}")
        name = "facenet_vggface2" if dataset == "vggface2" else "facenet_casia"
        source = FACENET_WEIGHTS[dataset]
        net = InceptionResnetV1(pretrained=None, classify=False)
        if pretrained:
            path = resolve_weights(source, path=weights)
            state = {k: v for k, v in _load_state_dict(path).items() if not k.startswith("logits.")}
            for key, value in net.state_dict().items():
                if key.endswith(".num_batches_tracked"):
                    state.setdefault(key, torch.zeros_like(value))
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ValueError(f"weights file {path} does not fit facenet-pytorch's InceptionResnetV1 "
                                 f"({dataset}): {e}") from None
            if weights is not None:
                source = local_file_source(path, uri=f"facenet {dataset}", license=source.license)
        else:
            source = WeightsSource(kind="none", uri="random-init", license="")
        options = dict(weights=str(weights) if weights is not None else None, pretrained=pretrained, fps=fps,
                       batch_size=batch_size)
        spec = ExtractorSpec(
            name=name, modality="face", dim=512, frame_rate=fps, crop_size=160, weights=source, options=options,
            description=f"facenet-pytorch InceptionResnetV1 trained on {dataset} (512-d, L2-normalised)"
                        + ("" if pretrained else " -- RANDOM weights"))
        super().__init__(spec, batch_size=batch_size)
        self.net = net.eval()

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net((crops * 255.0 - 127.5) / 128.0)


DEFAULT_WEIGHTS["facenet_vggface2"] = FACENET_WEIGHTS["vggface2"]
DEFAULT_WEIGHTS["facenet_casia"] = FACENET_WEIGHTS["casia-webface"]


@EXTRACTORS.register("facenet_vggface2")
def build_facenet_vggface2(weights: str | os.PathLike | None = None, pretrained: bool = True,
                           fps: float | None = None, batch_size: int = 64) -> FaceNetExtractor:
    """InceptionResnetV1 trained on VGGFace2 (``20180402-114759-vggface2.pt``); arguments of :class:`FaceNetExtractor`."""
    return FaceNetExtractor("vggface2", weights=weights, pretrained=pretrained, fps=fps, batch_size=batch_size)


@EXTRACTORS.register("facenet_casia")
def build_facenet_casia(weights: str | os.PathLike | None = None, pretrained: bool = True,
                        fps: float | None = None, batch_size: int = 64) -> FaceNetExtractor:
    """InceptionResnetV1 trained on CASIA-WebFace (``20180408-102900-casia-webface.pt``); arguments of :class:`FaceNetExtractor`."""
    return FaceNetExtractor("casia-webface", weights=weights, pretrained=pretrained, fps=fps, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------
# timm


DEFAULT_WEIGHTS["timm"] = WeightsSource(kind="timm", uri="timm/resnet18.a1_in1k", filename="model.safetensors",
                                        license="apache-2.0")


@EXTRACTORS.register("timm")
class TimmExtractor(FaceExtractor):
    """Pooled features of any timm backbone (classifier removed) from face crops.

    ``model_name`` is a timm name, optionally with its pretrained tag (``resnet18.a1_in1k``), or a
    Hub model ``hf-hub:org/name[@revision]`` (its ``config.json`` and weights come from that repo).
    Weights: the Hub repo (``timm/<name>.<tag>`` for timm names) at a pinned ``revision`` through
    :func:`resolve_weights` (huggingface_hub's cache; offline works when it is there), or
    ``weights=PATH``; they are loaded by timm itself (``pretrained_cfg_overlay=dict(file=...)``,
    strict, at the checkpoint's own class count) and the classifier is then reset. Without a
    ``revision`` the cached/current ``main`` is used and the commit found is recorded in the spec.

    Input: crops of ``crop_size`` (default: the pretrained config's input size) standardised with
    its mean/std (``timm.data.resolve_model_data_config``). ``dim``: the pooled pre-logits width
    (``head_hidden_size``, else ``num_features``).

    Args:
        model_name: timm model name or ``hf-hub:org/name[@revision]``.
        revision: pinned Hub revision (commit hash or tag) of the weights.
        weights: an explicit weights file (safetensors or torch state dict) instead of the Hub.
        filename: the weights file in the Hub repo.
        cache_dir, local_files_only: passed to huggingface_hub.
        pretrained: False builds random weights (smoke tests only; its spec says so).
        crop_size: input side, if not the pretrained config's (only for models without a fixed input size).
        fps, batch_size: see :class:`HOGExtractor`.
    """

    def __init__(self, model_name: str = "resnet18.a1_in1k", revision: str | None = None,
                 weights: str | os.PathLike | None = None, filename: str = "model.safetensors",
                 cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                 pretrained: bool = True, crop_size: int | None = None, fps: float | None = None,
                 batch_size: int = 64):
        import timm

        hub = model_name.startswith("hf-hub:")
        if hub:
            repo_id, _, rev = model_name[len("hf-hub:"):].partition("@")
            if rev and revision and rev != revision:
                raise ValueError(f"timm: model_name {model_name!r} pins revision {rev!r} but revision={revision!r}")
            revision = revision or rev or None
            if not repo_id or repo_id.count("/") != 1:
                raise ValueError(f"timm: expected 'hf-hub:org/name[@revision]', got {model_name!r}")
        else:
            if not timm.is_model(model_name):
                raise ValueError(f"timm: unknown model {model_name!r} (see timm.list_models())")
            try:
                cfg = timm.models.get_pretrained_cfg(model_name)
            except RuntimeError as e:  # a tag the architecture does not have
                raise ValueError(f"timm: {e} (see timm.list_pretrained({model_name.split('.')[0]!r} + '*'))") from None
            repo_id = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None
            if pretrained and repo_id is None and weights is None:
                raise ValueError(f"timm: {model_name!r} has no Hub weights; pass weights=PATH or pretrained=False")
            weights_license = (cfg.license or "") if cfg is not None else ""

        overlay: dict[str, Any] = {}
        if hub:
            # the model's config.json at the same pinned revision, read by timm as a local directory
            cfg_file = resolve_weights(WeightsSource(kind="hf-hub", uri=repo_id, filename="config.json",
                                                     revision=revision), cache_dir=cache_dir,
                                       local_files_only=local_files_only)
            revision = revision or snapshot_revision(cfg_file)
            hub_cfg = json.loads(cfg_file.read_text())
            weights_license = str(hub_cfg.get("pretrained_cfg", hub_cfg).get("license", "") or "")
            create_name = f"local-dir:{cfg_file.parent}"
            overlay["source"] = ""  # load the weights from `file` below, not from the directory
        else:
            create_name = model_name
        source = WeightsSource(kind="hf-hub" if hub else "timm", uri=repo_id or model_name, filename=filename,
                               revision=revision, license=weights_license)
        if pretrained:
            path = resolve_weights(source, path=weights, cache_dir=cache_dir, local_files_only=local_files_only)
            if weights is None:
                revision = revision or snapshot_revision(path)
                source = WeightsSource(kind=source.kind, uri=source.uri, filename=filename, revision=revision,
                                       license=weights_license)
            else:
                source = local_file_source(path, uri=f"timm {model_name}", license=weights_license)
            overlay["file"] = str(path)
            try:
                net = timm.create_model(create_name, pretrained=True, pretrained_cfg_overlay=overlay)
            except RuntimeError as e:
                raise ValueError(f"weights file {path} does not fit timm model {model_name!r}: {e}") from None
        else:
            net = timm.create_model(create_name, pretrained=False)
            source = WeightsSource(kind="none", uri="random-init")
        net.reset_classifier(0)
        data_cfg = timm.data.resolve_model_data_config(net)
        _, h, w = data_cfg["input_size"]
        if crop_size is None:
            if h != w:
                raise ValueError(f"timm: {model_name!r} expects {h}x{w} inputs; face crops are square, pass crop_size")
            crop_size = h
        elif crop_size != h and net.pretrained_cfg.get("fixed_input_size", False):
            raise ValueError(f"timm: {model_name!r} has a fixed input size {h}x{w}, got crop_size={crop_size}")
        dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
        options = dict(model_name=model_name, revision=revision if pretrained and weights is None else None,
                       weights=str(weights) if weights is not None else None, filename=filename,
                       pretrained=pretrained, crop_size=crop_size, fps=fps, batch_size=batch_size)
        spec = ExtractorSpec(
            name="timm", modality="face", dim=dim, frame_rate=fps, crop_size=crop_size, weights=source,
            options=options, description=f"timm {model_name} pooled features ({dim}-d)"
                                         + ("" if pretrained else " -- RANDOM weights"))
        super().__init__(spec, batch_size=batch_size)
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(data_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net((crops - self.mean) / self.std)


# ----------------------------------------------------------------------------------------------
# frames -> features


class FacePipeline(nn.Module):
    """Frames -> main-face crops -> features, with the per-frame face mask.

    Both parts are named (registry names plus options), so the pipeline's configuration is JSON.
    The detector crops at the extractor's ``spec.crop_size``.

    Args:
        extractor: a registered face extractor name (``hog``, ``facenet_vggface2``, ``face_cnn``, ...).
        detector: ``mtcnn`` or ``none``.
        extractor_options, detector_options: their keyword arguments.
    """

    def __init__(self, extractor: str = "facenet_vggface2", detector: str = "mtcnn",
                 extractor_options: dict[str, Any] | None = None, detector_options: dict[str, Any] | None = None):
        super().__init__()
        self.extractor = build_extractor(extractor, **(extractor_options or {}))
        if self.extractor.spec.modality != "face":
            raise ValueError(f"FacePipeline needs a face extractor, {extractor!r} is {self.extractor.spec.modality}")
        self.detector = build_face_detector(detector, crop_size=self.extractor.spec.crop_size,
                                            **(detector_options or {}))
        self.config = dict(extractor=extractor, detector=detector, extractor_options=dict(extractor_options or {}),
                           detector_options=dict(detector_options or {}))

    @property
    def spec(self) -> ExtractorSpec:
        return self.extractor.spec

    @torch.no_grad()
    def forward(self, frames: torch.Tensor | Sequence[torch.Tensor],
                lengths: torch.Tensor | Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """``frames (B, N, H, W, 3) uint8`` (or a list of ``(N_i, H_i, W_i, 3)``), ``lengths (B,)`` ->
        ``{"x": (B, N, D), "lengths": (B,), "mask": (B, N) bool, "boxes": (B, N, 4), "scores": (B, N)}``.

        ``mask`` is False for padding frames and frames without a face; their features are zeros.
        """
        faces: FaceCrops = self.detector.crop_batch(frames, lengths, crop_size=self.extractor.spec.crop_size)
        n_len = faces.mask.new_tensor([len(f) for f in frames] if lengths is None else
                                      (lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)),
                                      dtype=torch.long)
        x, out_lengths = self.extractor(faces.crops, n_len, mask=faces.mask)
        return {"x": x, "lengths": out_lengths, "mask": faces.mask, "boxes": faces.boxes, "scores": faces.scores}
