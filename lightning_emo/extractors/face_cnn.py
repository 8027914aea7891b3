"""The paper's face CNN (AlexNet-like, 100x100 faces, trained on identities), its safetensors format and its pool5 extractor.

Geometry (input 3 x 100 x 100; five convolutions, three fully connected layers)::

    conv1  96 @ 5x5 stride 2 pad 2  -> 96 x 50 x 50    pool1 3x3 stride 2 pad 1 -> 96 x 25 x 25
    conv2 256 @ 5x5 stride 1 pad 2  -> 256 x 25 x 25   pool2 3x3 stride 2 pad 1 -> 256 x 13 x 13
    conv3 384 @ 3x3 pad 1 -> 384 x 13 x 13
    conv4 384 @ 3x3 pad 1 -> 384 x 13 x 13
    conv5 256 @ 3x3 pad 1 -> 256 x 13 x 13             pool5 3x3 stride 2       -> 256 x 6 x 6 = 9216
    fc6 9216 -> fc_dims[0], fc7 -> fc_dims[1] (ReLU, dropout), fc8 -> num_identities

As in AlexNet the pools overlap (3x3, stride 2) and the layer widths are AlexNet's; each
convolution is followed by ReLU (after a normalisation: batch norm by default, AlexNet's local
response normalisation after conv1/conv2 with ``norm="lrn"``). The features are the flattened
pool5 output, 9216 values per face.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lightning_emo.extractors.base import (
    DEFAULT_WEIGHTS,
    EXTRACTORS,
    NO_PUBLIC_WEIGHTS,
    ExtractorSpec,
    WeightsSource,
    resolve_weights,
)
from lightning_emo.extractors.face import FaceExtractor, local_file_source, snapshot_revision

__all__ = ["FACE_CNN_INPUT", "FACE_CNN_POOL5", "FaceCNN", "FaceCNNExtractor", "load_face_cnn", "save_face_cnn"]

FACE_CNN_INPUT = 100
FACE_CNN_POOL5 = 256 * 6 * 6
_FORMAT = "lightning_emo.FaceCNN/1"


class FaceCNN(nn.Module):
    """AlexNet-like face identity CNN on 100x100 RGB crops (geometry in the module docstring).

    Args:
        num_identities: classes of the identity task (the paper: 1032 people).
        fc_dims: widths of fc6 and fc7.
        norm: ``batch`` (BatchNorm after every convolution), ``lrn`` (AlexNet's local response
            normalisation after conv1 and conv2) or ``none``.
        dropout: dropout before fc6 and fc7.
        mean, std: per-channel standardisation of the [0, 1] input, applied inside the model.
    """

    def __init__(self, num_identities: int = 1032, fc_dims: Sequence[int] = (4096, 4096), norm: str = "batch",
                 dropout: float = 0.5, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__()
        if norm not in ("batch", "lrn", "none"):
            raise ValueError(f"FaceCNN norm must be 'batch', 'lrn' or 'none', got {norm!r}")
        if num_identities < 1 or len(fc_dims) != 2 or len(mean) != 3 or len(std) != 3:
            raise ValueError(f"FaceCNN expects num_identities >= 1, two fc_dims, 3 means and stds; got "
                             f"{num_identities}, {list(fc_dims)}, {list(mean)}, {list(std)}")
        self.config = dict(num_identities=int(num_identities), fc_dims=[int(d) for d in fc_dims], norm=norm,
                           dropout=float(dropout), mean=[float(m) for m in mean], std=[float(s) for s in std])

        def conv(cin: int, cout: int, k: int, stride: int, pad: int, lrn: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=norm != "batch")]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            if norm == "lrn" and lrn:
                layers.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0))
            return layers

        self.features = nn.Sequential(
            *conv(3, 96, 5, 2, 2, lrn=True), nn.MaxPool2d(3, stride=2, padding=1),
            *conv(96, 256, 5, 1, 2, lrn=True), nn.MaxPool2d(3, stride=2, padding=1),
            *conv(256, 384, 3, 1, 1, lrn=False),
            *conv(384, 384, 3, 1, 1, lrn=False),
            *conv(384, 256, 3, 1, 1, lrn=False), nn.MaxPool2d(3, stride=2),
        )
        d6, d7 = self.config["fc_dims"]
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(FACE_CNN_POOL5, d6), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(d6, d7), nn.ReLU(inplace=True),
            nn.Linear(d7, num_identities),
        )
        self.register_buffer("mean", torch.tensor(self.config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.config["std"]).view(1, 3, 1, 1), persistent=False)

    def pool5(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 100, 100)`` in [0, 1] -> ``(B, 9216)`` flattened pool5 activations."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, FACE_CNN_INPUT, FACE_CNN_INPUT):
            raise ValueError(f"FaceCNN expects crops (B, 3, {FACE_CNN_INPUT}, {FACE_CNN_INPUT}), got {tuple(x.shape)}")
        return self.features((x - self.mean) / self.std).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 100, 100)`` in [0, 1] -> identity logits ``(B, num_identities)``."""
        return self.classifier(self.pool5(x))


def save_face_cnn(model: FaceCNN, path: str | os.PathLike) -> Path:
    """Write ``model`` as safetensors with its config (JSON) in the file's metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": _FORMAT, "config": json.dumps(model.config)})
    return path


def load_face_cnn(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FaceCNN:
    """Read a :func:`save_face_cnn` file (strict: every tensor must match the config's architecture)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != _FORMAT or "config" not in meta:
        raise ValueError(f"{path} is not a FaceCNN file: expected safetensors metadata format={_FORMAT!r} with a "
                         f"'config', got keys {sorted(meta)} (write it with save_face_cnn)")
    model = FaceCNN(**json.loads(meta["config"]))
    try:
        model.load_state_dict(load_file(str(path), device=str(map_location)), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: tensors do not match the FaceCNN config {meta['config']}: {e}") from None
    return model.to(map_location)


DEFAULT_WEIGHTS["face_cnn"] = NO_PUBLIC_WEIGHTS


@EXTRACTORS.register("face_cnn")
class FaceCNNExtractor(FaceExtractor):
    """Pool5 features (9216-d) of the paper's face CNN on 100x100 face crops.

    Weights: a :func:`save_face_cnn` file, given as ``weights=PATH`` or found in a Hub repo
    (``repo_id`` + pinned ``revision`` + ``filename``) through huggingface_hub's cache. There is
    no public checkpoint of the paper's network: train one on a face-identity corpus and save it
    with :func:`save_face_cnn`.

    Args:
        weights: local weights file.
        repo_id, revision, filename: the Hub location of the weights.
        cache_dir, local_files_only: passed to huggingface_hub.
        fps: frame sampling rate of the video (recorded in the spec).
        batch_size: frames per chunk.
    """

    def __init__(self, weights: str | os.PathLike | None = None, repo_id: str | None = None,
                 revision: str | None = None, filename: str = "model.safetensors",
                 cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                 fps: float | None = None, batch_size: int = 64):
        if repo_id:
            source = WeightsSource(kind="hf-hub", uri=repo_id, filename=filename, revision=revision)
        else:
            source = WeightsSource(kind="file", uri="face_cnn (a save_face_cnn file)", filename=filename)
        path = resolve_weights(source, path=weights, cache_dir=cache_dir, local_files_only=local_files_only)
        net = load_face_cnn(path)
        if weights is not None:
            source = local_file_source(path, uri="face_cnn")
        else:
            revision = revision or snapshot_revision(path)
            source = WeightsSource(kind="hf-hub", uri=repo_id, filename=filename, revision=revision)
        options: dict[str, Any] = dict(weights=str(weights) if weights is not None else None, repo_id=repo_id,
                                       revision=revision, filename=filename, fps=fps, batch_size=batch_size)
        spec = ExtractorSpec(
            name="face_cnn", modality="face", dim=FACE_CNN_POOL5, frame_rate=fps, crop_size=FACE_CNN_INPUT,
            weights=source, options=options,
            description=f"paper face CNN (AlexNet-like, {net.config['num_identities']} identities): pool5, 9216-d")
        super().__init__(spec, batch_size=batch_size)
        # only the convolutional part is needed for pool5 features
        self.features = net.features.eval()
        self.register_buffer("mean", net.mean.clone(), persistent=False)
        self.register_buffer("std", net.std.clone(), persistent=False)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.features((crops - self.mean) / self.std).flatten(1)
