"""The paper's speech DNN, its weight file format, and the ``speech_dnn`` / ``speech_bottleneck`` extractors.

Network (:class:`SpeechDNN`). Input: 39-d MFCC frames (13 MFCC + deltas + delta-deltas from
:class:`~lightning_emo.extractors.audio.MFCCFrontEnd`, the same code as the ``mfcc`` extractor)
with +-``context`` neighbouring frames spliced (default 5: 11 x 39 = 429 values), normalised
by a global mean and standard deviation stored with the weights (``input_mean``,
``input_std``, set from the training data by the pretraining recipe). Then ``num_hidden`` (6)
fully connected hidden layers of ``hidden_dim`` (1024) units and an output layer over the ASR
units (senones, phones or characters: ``num_outputs``, read from the weights file). With
``bottleneck=60`` the last hidden layer has 60 units. Hidden units are sigmoid by default: the
paper only says "six hidden layers of 1024 units" trained for speech recognition, and the
DNN-HMM acoustic models of its time (Kaldi nnet1, RBM-pretrained) used sigmoids; ``relu`` is
an option. ``linear_bottleneck=True`` leaves the bottleneck without a non-linearity (as in
Kaldi bottleneck-feature recipes); the default applies the activation like any hidden layer.
Extractor features are the last hidden layer's activations: 1024-d (``speech_dnn``, "a1024")
or 60-d (``speech_bottleneck``, "a60"), at 100 frames/s.

Weight file format (:func:`save_speech_dnn` / :func:`load_speech_dnn`): one safetensors file
(``model.safetensors`` on the Hub) holding the state dict, with string metadata
``format = "lightning_emo.speech_dnn"``, ``format_version = "1"``, ``config`` = the JSON of
:attr:`SpeechDNN.config` (the constructor's arguments, including the MFCC front-end options),
and ``license``. One file is self-contained, so a ``file`` or ``hf-hub`` weights source names
exactly one file. A Lightning checkpoint (``.ckpt``) from a pretraining module also loads when
that module stored the config as hyper-parameter ``speech_dnn`` (``save_hyperparameters``) and
holds the network as attribute ``dnn`` (state-dict keys ``dnn.*``).

Context frames at a clip's ends repeat its first/last valid frame (Kaldi's splicing), per clip,
so padding never reaches a valid frame.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_emo.extractors.audio import SAMPLE_RATE, AudioExtractor, MFCCFrontEnd, zero_padding
from lightning_emo.extractors.base import (
    DEFAULT_WEIGHTS,
    EXTRACTORS,
    NO_PUBLIC_WEIGHTS,
    ExtractorSpec,
    WeightsSource,
    resolve_weights,
    sha256_file,
)
from lightning_emo.utils import atomic_path

FORMAT = "lightning_emo.speech_dnn"
FORMAT_VERSION = "1"
CHECKPOINT_HPARAM = "speech_dnn"
CHECKPOINT_PREFIX = "dnn."
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
DEFAULT_FRONTEND = {"n_mfcc": 13, "deltas": 2, "cmvn": "mean", "n_mels": 40}


def stack_context(x: torch.Tensor, lengths: torch.Tensor, context: int) -> torch.Tensor:
    """Splice each frame with its +-``context`` neighbours: ``(B, T, D)`` -> ``(B, T, (2 context + 1) D)``.

    Frame ``t`` gets frames ``t - context .. t + context`` in that order, indices clamped to the
    clip's own valid range ``[0, lengths[b] - 1]`` (edge frames repeated).
    """
    b, t, d = x.shape
    width = 2 * context + 1
    offsets = torch.arange(-context, context + 1, device=x.device)
    index = torch.arange(t, device=x.device)[:, None] + offsets[None, :]  # (T, width)
    last = torch.clamp(lengths.to(x.device) - 1, min=0)
    index = torch.minimum(index.clamp(min=0)[None], last[:, None, None])  # (B, T, width)
    out = torch.gather(x, 1, index.reshape(b, t * width, 1).expand(-1, -1, d))
    return out.reshape(b, t, width * d)


class SpeechDNN(nn.Module):
    """The paper's speech recognition DNN (see the module docstring).

    Args:
        num_outputs: ASR output units (the output layer's size).
        context: neighbouring frames spliced on each side.
        hidden_dim: units per hidden layer.
        num_hidden: hidden layers.
        bottleneck: units of the last hidden layer, if it is a bottleneck (e.g. 60).
        activation: ``sigmoid`` or ``relu``.
        linear_bottleneck: no activation after the bottleneck layer.
        frontend: :class:`MFCCFrontEnd` arguments of the input features (default: 13 MFCC + 2
            derivative orders, per-utterance mean normalisation).

    Shapes: :meth:`forward` ``(..., input_dim) -> (..., num_outputs)`` logits; :meth:`hidden`
    ``(..., input_dim) -> (..., feature_dim)``; ``input_dim = frontend dim x (2 context + 1)``.
    """

    def __init__(self, num_outputs: int, context: int = 5, hidden_dim: int = 1024, num_hidden: int = 6,
                 bottleneck: int | None = None, activation: str = "sigmoid", linear_bottleneck: bool = False,
                 frontend: Mapping[str, Any] | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if num_hidden < 1 or num_outputs < 1 or hidden_dim < 1 or context < 0:
            raise ValueError(f"SpeechDNN needs num_hidden >= 1, num_outputs >= 1, hidden_dim >= 1, context >= 0; "
                             f"got {num_hidden}, {num_outputs}, {hidden_dim}, {context}")
        if bottleneck is not None and bottleneck < 1:
            raise ValueError(f"bottleneck must be a positive number of units or None, got {bottleneck!r}")
        self.frontend_options = {**DEFAULT_FRONTEND, **dict(frontend or {})}
        feat_dim = MFCCFrontEnd(**self.frontend_options).dim  # also validates the options
        self.num_outputs, self.context, self.hidden_dim, self.num_hidden = num_outputs, context, hidden_dim, num_hidden
        self.bottleneck, self.activation, self.linear_bottleneck = bottleneck, activation, linear_bottleneck
        self.input_dim = feat_dim * (2 * context + 1)
        sizes = [self.input_dim] + [hidden_dim] * (num_hidden - 1) + [bottleneck or hidden_dim]
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]()
        self.output = nn.Linear(sizes[-1], num_outputs)
        self.register_buffer("input_mean", torch.zeros(self.input_dim))
        self.register_buffer("input_std", torch.ones(self.input_dim))

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-able: ``SpeechDNN(**model.config)`` rebuilds the architecture."""
        return {"num_outputs": self.num_outputs, "context": self.context, "hidden_dim": self.hidden_dim,
                "num_hidden": self.num_hidden, "bottleneck": self.bottleneck, "activation": self.activation,
                "linear_bottleneck": self.linear_bottleneck, "frontend": dict(self.frontend_options)}

    @property
    def feature_dim(self) -> int:
        """Size of the last hidden layer (the extracted features)."""
        return self.bottleneck or self.hidden_dim

    def make_frontend(self) -> MFCCFrontEnd:
        """A new MFCC front-end computing this network's input frames."""
        return MFCCFrontEnd(**self.frontend_options)

    def set_input_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the global input statistics ``(input_dim,)`` (from training data) used by :meth:`hidden`."""
        if mean.shape != (self.input_dim,) or std.shape != (self.input_dim,):
            raise ValueError(f"input statistics must have shape ({self.input_dim},), "
                             f"got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp(min=1e-5))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Spliced frames ``(..., input_dim)`` -> last hidden layer ``(..., feature_dim)``."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"SpeechDNN expects spliced frames of {self.input_dim} values, got shape {tuple(x.shape)}")
        h = (x - self.input_mean) / self.input_std
        last = len(self.hidden_layers) - 1
        for i, layer in enumerate(self.hidden_layers):
            h = layer(h)
            if not (i == last and self.bottleneck and self.linear_bottleneck):
                h = self.act(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spliced frames ``(..., input_dim)`` -> ASR logits ``(..., num_outputs)``."""
        return self.output(self.hidden(x))


# --------------------------------------------------------------------------- weight files


def save_speech_dnn(model: SpeechDNN, path: str | os.PathLike, license: str = "") -> Path:
    """Write ``model`` as one safetensors file with its config in the metadata (module docstring); returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(model.config),
                "license": license}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def speech_dnn_from_state(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str = "") -> SpeechDNN:
    """Build a :class:`SpeechDNN` from its config and load ``state`` strictly; errors name ``source``."""
    try:
        model = SpeechDNN(**config)
    except TypeError as e:
        raise ValueError(f"{source}: speech DNN config {dict(config)} is not valid ({e})") from None
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit the speech DNN config {dict(config)}: "
                         f"missing {missing}, unexpected {unexpected}")
    return model


def read_speech_dnn_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a speech DNN safetensors file; a file of another kind raises ``ValueError``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{path} is not a safetensors file ({type(e).__name__}: {e})") from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"{path} is not a speech DNN file: expected safetensors metadata format={FORMAT!r} "
                         f"with a config (written by save_speech_dnn), got metadata keys {sorted(metadata)}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: speech DNN format version {metadata.get('format_version')!r} is not supported "
                         f"(expected {FORMAT_VERSION!r})")
    return metadata


def load_speech_dnn(path: str | os.PathLike) -> SpeechDNN:
    """Read a speech DNN from a safetensors file written by :func:`save_speech_dnn` or a Lightning checkpoint."""
    path = Path(path)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} is not a loadable checkpoint ({type(e).__name__}: {e})") from None
        hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, Mapping) else {}
        if CHECKPOINT_HPARAM not in hparams or "state_dict" not in ckpt:
            raise ValueError(f"{path}: a speech DNN checkpoint needs hyper_parameters[{CHECKPOINT_HPARAM!r}] (the "
                             f"SpeechDNN config) and a state_dict with keys {CHECKPOINT_PREFIX}*")
        state = {k[len(CHECKPOINT_PREFIX):]: v for k, v in ckpt["state_dict"].items()
                 if k.startswith(CHECKPOINT_PREFIX)}
        return speech_dnn_from_state(hparams[CHECKPOINT_HPARAM], state, str(path))
    from safetensors.torch import load_file

    metadata = read_speech_dnn_metadata(path)
    return speech_dnn_from_state(json.loads(metadata["config"]), load_file(str(path)), str(path))


# --------------------------------------------------------------------------- extractors


class SpeechDNNExtractor(AudioExtractor):
    """Waveforms -> MFCC front-end -> spliced frames -> :meth:`SpeechDNN.hidden`: ``(B, S) -> (B, T, feature_dim)``."""

    def __init__(self, model: SpeechDNN, name: str = "speech_dnn", weights: WeightsSource | None = None,
                 options: dict[str, Any] | None = None):
        frontend = model.make_frontend()
        what = (f"bottleneck ({model.bottleneck} units)" if model.bottleneck
                else f"last hidden layer ({model.hidden_dim})")
        spec = ExtractorSpec(
            name=name, modality="audio", dim=model.feature_dim, sample_rate=SAMPLE_RATE,
            frame_rate=frontend.frame_rate, weights=weights or WeightsSource(kind="file", uri=name),
            options=dict(options or {}),
            description=f"the paper's speech DNN ({model.num_hidden} x {model.hidden_dim} {model.activation}, "
                        f"+-{model.context} MFCC frames): {what}")
        super().__init__(spec)
        self.frontend = frontend
        self.model = model

    def extract(self, x, lengths):
        feats, out_lengths = self.frontend(x, lengths)
        spliced = stack_context(feats, out_lengths, self.model.context)
        return zero_padding(self.model.hidden(spliced), out_lengths), out_lengths


def _hub_commit(path: Path) -> str | None:
    """The snapshot commit of a file inside a huggingface_hub cache tree, if it is one."""
    parts = path.parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _build(name: str, bottleneck: bool, weights, repo_id, revision, filename, cache_dir, local_files_only):
    if weights is not None and repo_id is not None:
        raise ValueError(f"{name}: give either weights=PATH or repo_id (a Hub repo), not both")
    if repo_id is not None:
        source = WeightsSource(kind="hf-hub", uri=repo_id, filename=filename, revision=revision)
        options = {"repo_id": repo_id, "revision": revision, "filename": filename}
    else:
        source = WeightsSource(kind="file", uri=name)
        options = {"weights": str(weights)} if weights is not None else {}
    path = resolve_weights(source, path=weights, cache_dir=cache_dir, local_files_only=local_files_only)
    model = load_speech_dnn(path)
    if bottleneck and not model.bottleneck:
        raise ValueError(f"{name} needs a speech DNN with a bottleneck layer; {path} has none (use speech_dnn)")
    if not bottleneck and model.bottleneck:
        raise ValueError(f"speech_dnn needs a speech DNN without a bottleneck; {path} has a {model.bottleneck}-unit "
                         f"bottleneck (use speech_bottleneck)")
    license = ""
    if path.suffix == ".safetensors":
        license = read_speech_dnn_metadata(path).get("license", "")
    if repo_id is not None:
        source = WeightsSource(kind="hf-hub", uri=repo_id, filename=filename,
                               revision=_hub_commit(path) or revision, license=license)
    else:
        # The digest identifies a local file in feature-cache keys.
        source = WeightsSource(kind="file", uri=name, filename=path.name, sha256=sha256_file(path), license=license)
    extractor = SpeechDNNExtractor(model, name=name, weights=source, options=options)
    extractor.weights_path = path
    return extractor


DEFAULT_WEIGHTS["speech_dnn"] = NO_PUBLIC_WEIGHTS


@EXTRACTORS.register("speech_dnn")
def build_speech_dnn(weights: str | os.PathLike | None = None, repo_id: str | None = None, revision: str | None = None,
                     filename: str = "model.safetensors", cache_dir: str | os.PathLike | None = None,
                     local_files_only: bool | None = None) -> SpeechDNNExtractor:
    """``speech_dnn`` ("a1024"): the speech DNN's last hidden layer, 1024-d, from ``weights=PATH`` or a Hub repo.

    ``repo_id``/``revision``/``filename`` name a file on the Hugging Face Hub (``revision`` pinned:
    a commit hash or tag); ``cache_dir``/``local_files_only`` go to huggingface_hub.
    """
    return _build("speech_dnn", False, weights, repo_id, revision, filename, cache_dir, local_files_only)


DEFAULT_WEIGHTS["speech_bottleneck"] = NO_PUBLIC_WEIGHTS


@EXTRACTORS.register("speech_bottleneck")
def build_speech_bottleneck(weights: str | os.PathLike | None = None, repo_id: str | None = None,
                            revision: str | None = None, filename: str = "model.safetensors",
                            cache_dir: str | os.PathLike | None = None,
                            local_files_only: bool | None = None) -> SpeechDNNExtractor:
    """``speech_bottleneck`` ("a60"): the bottleneck DNN's 60-unit layer (options as for ``speech_dnn``)."""
    return _build("speech_bottleneck", True, weights, repo_id, revision, filename, cache_dir, local_files_only)
