"""What every frozen feature extractor shares: its spec, where its weights come from, the registry.

An extractor is an ``nn.Module`` with a :class:`ExtractorSpec`; its ``forward`` maps a padded
batch to a padded batch of feature sequences:

* audio (``spec.modality == "audio"``): ``(waveform (B, S) float32 at spec.sample_rate,
  lengths (B,) samples) -> (features (B, T, D), lengths (B,) frames)``
* face (``spec.modality == "face"``): ``(crops (B, N, 3, H, W) float32 in [0, 1] with
  H = W = spec.crop_size, lengths (B,) frames) -> (features (B, N, D), lengths (B,))``

Extractors are frozen (``eval()``, ``requires_grad_(False)``) by :func:`build_extractor`
unless fine-tuning asks otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from lightning_emo.errors import ConfigError, UserError
from lightning_emo.registry import Registry
from lightning_emo.specs import WEIGHT_KINDS, ExtractorSpec, WeightsSource  # noqa: F401 (re-exported)
from lightning_emo.utils import not_a_file, sha256_file  # noqa: F401 (sha256_file re-exported)
from lightning_emo.extractors.weights import WeightsNotFoundError  # noqa: F401 (re-exported)

EXTRACTORS: Registry = Registry("extractor")
# Which module registers which extractors: a recognizer that uses MFCC never imports the face stack
# (torchvision, facenet-pytorch). tests/test_infer.py checks this table against the modules.
for _module, _names in {
    "audio": ("mfcc", "compare"),
    "ssl": ("wav2vec2_base", "wav2vec2_large", "wav2vec2_asr_base", "hubert_base", "hubert_large", "wavlm_base",
            "wavlm_base_plus", "wavlm_large"),
    "speech_dnn": ("speech_dnn", "speech_bottleneck"),
    "face": ("hog", "facenet_vggface2", "facenet_casia", "timm"),
    "face_cnn": ("face_cnn",),
}.items():
    EXTRACTORS.add_lazy(f"lightning_emo.extractors.{_module}", _names)



class Extractor(nn.Module):
    """Base class: holds the spec and checks inputs against it.

    ``store_dtype`` is the feature-store dtype the extractor's values need (the default of
    ``extract --dtype``): float16 (range 6.5e4, 3 significant digits) for normalised network
    features, float32 for raw acoustic descriptors whose energies exceed float16's range.
    """

    spec: ExtractorSpec
    store_dtype: str = "float16"

    def __init__(self, spec: ExtractorSpec):
        super().__init__()
        self.spec = spec

    def check_input(self, x: torch.Tensor, lengths: torch.Tensor, sample_rate: int | None = None) -> None:
        """Fail loudly on a batch that does not fit the spec (shape, sample rate, crop size)."""
        name = self.spec.name
        if self.spec.modality == "audio":
            if x.dim() != 2:
                raise ValueError(f"extractor {name!r} expects waveforms (B, S), got shape {tuple(x.shape)}")
            if sample_rate is not None and sample_rate != self.spec.sample_rate:
                raise ValueError(f"extractor {name!r} expects audio at {self.spec.sample_rate} Hz, got {sample_rate} Hz")
        else:
            size = self.spec.crop_size
            if x.dim() != 5 or x.shape[2] != 3 or (size and tuple(x.shape[-2:]) != (size, size)):
                raise ValueError(f"extractor {name!r} expects face crops (B, N, 3, {size}, {size}), "
                                 f"got shape {tuple(x.shape)}")
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"extractor {name!r}: lengths must have shape ({x.shape[0]},), got {tuple(lengths.shape)}")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class UnknownOptionError(UserError, TypeError):
    """An extractor option its builder does not take (a TypeError, as calling the builder with it would be)."""


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse options extractor ``name``'s builder does not take, naming them and the ones it does."""
    import inspect

    params = inspect.signature(EXTRACTORS.get(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params]
    if unknown:
        known = ", ".join(k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL) or "none"
        raise UnknownOptionError(f"extractor {name!r} has no option {', '.join(map(repr, unknown))} (its options: {known}); "
                          "fix or drop it (`--option KEY=VALUE` on the command line)")


def _shown(options: Mapping[str, Any]) -> str:
    return f" ({', '.join(f'{k}={v!r}' for k, v in options.items())})" if options else ""


def build_extractor(name: str, frozen: bool = True, **options) -> Extractor:
    """Build a registered extractor by name; frozen (eval mode, no gradients) by default."""
    check_options(name, options)
    try:
        extractor = EXTRACTORS.build(name, **options)
    except ValueError as e:  # the builder refused an option's value (cmvn, layer, a weights file that does not fit)
        if isinstance(e, UserError):
            raise
        raise ConfigError(f"extractor {name!r}{_shown(options)}: {e}") from e
    if frozen:
        extractor.eval().requires_grad_(False)
    return extractor


def torch_hub_checkpoint(filename: str) -> Path:
    """Where torch.hub (and so torchaudio) caches a downloaded checkpoint: ``$TORCH_HOME/hub/checkpoints/<file>``.

    facenet-pytorch keeps its files elsewhere (``$TORCH_HOME/checkpoints``): see
    :func:`lightning_emo.extractors.weights.cache_path`.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


# Registered name -> where its default weights come from (``extract --list``); filled by the extractor modules.
DEFAULT_WEIGHTS: dict[str, WeightsSource] = {}
NO_PUBLIC_WEIGHTS = WeightsSource(kind="file", uri="no public weights: a file you trained (--weights PATH) or a Hub "
                                                   "repo (--option repo_id=ORG/NAME)")


def resolve_weights(
    source: WeightsSource,
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Find the weight file for ``source`` on this machine, downloading it on first use.

    Order: an explicit ``path``; for ``hf-hub``/``timm`` sources, huggingface_hub's cache
    (downloading from ``HF_ENDPOINT`` unless offline or ``local_files_only``); for
    ``torchaudio``/``facenet`` sources, the upstream library's own cache, downloading from the
    upstream URL or ``$LIGHTNING_EMO_WEIGHTS_URL`` unless offline
    (:mod:`lightning_emo.extractors.weights`).

    Raises:
        WeightsNotFoundError: not on this machine and not downloadable (offline, no such file);
            the message names the file, where it was looked for and where it would come from.
        WeightsDownloadError: the download failed (refused, timed out, HTTP error, corrupt).
    """
    from lightning_emo.extractors import weights as weights_mod

    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"{p}: {not_a_file(p, 'weights file')}")
        _check_digest(p, source)
        return p
    if source.kind == "none":
        raise ValueError("this extractor has no weights")
    if source.kind == "file":
        raise WeightsNotFoundError(f"{source.uri or 'this extractor'} loads weights from a local file: pass its path "
                                   f"(weights=PATH / --weights PATH)")
    if source.kind in ("hf-hub", "timm"):
        p = weights_mod.hub_file(source, cache_dir=cache_dir,
                                 local_files_only=bool(local_files_only) or weights_mod.is_offline())
    else:
        p = weights_mod.fetch(source)
    _check_digest(p, source)
    return p


def _check_digest(p: Path, source: WeightsSource) -> None:
    if source.sha256 and sha256_file(p) != source.sha256:
        raise ValueError(f"weights file {p} does not match the expected sha256 {source.sha256}")
