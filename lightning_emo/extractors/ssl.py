"""Frozen self-supervised and ASR speech encoders from torchaudio (wav2vec 2.0, HuBERT, WavLM) as audio extractors.

Each registered name is one torchaudio bundle (``torchaudio.pipelines.<BUNDLE>``): its
architecture is rebuilt with the public model builders (``torchaudio.models.wav2vec2_model`` /
``wavlm_model``) from the bundle's parameters, and its weights are the bundle's file
(``bundle._path``), looked up in torch.hub's checkpoint cache where ``bundle.get_model()`` keeps
it (``$TORCH_HOME/hub/checkpoints/<file>``) and downloaded there on first use from torchaudio's
URL or ``$LIGHTNING_EMO_WEIGHTS_URL`` (:mod:`lightning_emo.extractors.weights`), or given as
``weights=PATH``. Both state-dict layouts torchaudio loads are accepted: the positional
convolution's weight norm as ``...conv.weight_g``/``weight_v`` (fairseq/Hugging Face converters,
older torch) or ``...conv.parametrizations.weight.original0``/``original1`` (newer torch).

Output: ``(B, T, D)`` at 50 frames/s (the convolutional front-end's stride is 320 samples,
receptive field 400 samples), ``T_i = conv chain applied to L_i``.

Layers. Index ``0`` is the transformer's input (projected convolutional features plus the
convolutional positional embedding, as the transformer sees them); index ``i`` in ``1..L`` is
the output of transformer block ``i``, as torchaudio's ``Wav2Vec2Model.extract_features``
returns them (so for pre-LN "large" models, block ``L`` is before the final LayerNorm).
Negative indices count from the end (``-1`` = ``L``).

* ``layer=i`` (default: the last): that hidden state, ``D = encoder_embed_dim``; blocks above
  ``i`` are dropped after loading (less memory and compute).
* ``layers=(a, b)``: the mean of hidden states ``a..b`` inclusive, ``D = encoder_embed_dim``.
* ``layers="all"``: every hidden state ``0..L``, stacked layer-major and flattened:
  ``(B, T, L + 1, E)`` viewed as ``(B, T, (L + 1) * E)``, so the feature store and the
  ``(B, T, D)`` contract stay unchanged. ``spec.options["num_layers"] = L + 1`` and
  ``spec.dim = (L + 1) * E``: a head un-flattens with ``x.view(B, T, num_layers, -1)`` and learns
  the layer weights (SUPERB-style weighted sum).

Padding. The batched result equals running each clip alone on its valid frames (up to float
error). torchaudio alone does not give that: the "base" models' first convolution has a
per-channel GroupNorm over time, which would see the padding, the bundles' waveform
normalisation (large models) is a LayerNorm over the whole padded batch, and WavLM's attention
fails when given lengths. Here the GroupNorm and the waveform normalisation are computed over
each clip's valid samples/frames only, padded frames are masked out of the attention (additive
mask for wav2vec 2.0/HuBERT, key padding mask for WavLM), and padded output frames are zero.
On a CPU a batch runs clip by clip (faster there: see :meth:`SSLExtractor._extract_clip_by_clip`);
on a GPU it runs as one padded batch.

Licenses: the fairseq wav2vec 2.0 and HuBERT weights and the WavLM weights are published by
their authors under the MIT License and redistributed by torchaudio under the same license.
Layer drop is not applied (these are frozen feature extractors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn

from lightning_emo.extractors.audio import AudioExtractor, conv_output_lengths, lengths_to_mask, zero_padding
from lightning_emo.extractors.base import DEFAULT_WEIGHTS, EXTRACTORS, ExtractorSpec, WeightsSource, resolve_weights


@dataclass(frozen=True)
class SSLModelInfo:
    """One registered encoder: its torchaudio bundle, weights license and a line for model cards."""

    bundle: str
    license: str
    description: str


SSL_MODELS: dict[str, SSLModelInfo] = {
    "wav2vec2_base": SSLModelInfo("WAV2VEC2_BASE", "MIT", "wav2vec 2.0 Base, self-supervised on LibriSpeech 960 h"),
    "wav2vec2_large": SSLModelInfo("WAV2VEC2_LARGE", "MIT", "wav2vec 2.0 Large, self-supervised on LibriSpeech 960 h"),
    "wav2vec2_asr_base": SSLModelInfo(
        "WAV2VEC2_ASR_BASE_960H", "MIT",
        "wav2vec 2.0 Base fine-tuned for English ASR (CTC) on LibriSpeech 960 h: a deep speech recognition "
        "network, the modern counterpart of the paper's ASR source network"),
    "hubert_base": SSLModelInfo("HUBERT_BASE", "MIT", "HuBERT Base, self-supervised on LibriSpeech 960 h"),
    "hubert_large": SSLModelInfo("HUBERT_LARGE", "MIT", "HuBERT Large, self-supervised on Libri-Light 60k h"),
    "wavlm_base": SSLModelInfo("WAVLM_BASE", "MIT", "WavLM Base, self-supervised on LibriSpeech 960 h"),
    "wavlm_base_plus": SSLModelInfo(
        "WAVLM_BASE_PLUS", "MIT", "WavLM Base+, self-supervised on 94k h (Libri-Light, GigaSpeech, VoxPopuli)"),
    "wavlm_large": SSLModelInfo(
        "WAVLM_LARGE", "MIT", "WavLM Large, self-supervised on 94k h (Libri-Light, GigaSpeech, VoxPopuli)"),
}


def get_bundle(bundle_name: str):
    """The torchaudio pipeline bundle object named ``bundle_name`` (e.g. ``HUBERT_BASE``)."""
    bundle = getattr(torchaudio.pipelines, bundle_name, None)
    if bundle is None or not hasattr(bundle, "_params"):
        raise ValueError(f"torchaudio.pipelines has no wav2vec 2.0-family bundle {bundle_name!r}")
    return bundle


def bundle_params(bundle_name: str, arch: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The bundle's model-builder arguments, without the ASR head, with ``arch`` overrides applied."""
    params = dict(get_bundle(bundle_name)._params)
    params["aux_num_out"] = None  # the CTC head is not a feature; its weights are dropped on load
    for key, value in (arch or {}).items():
        if key not in params:
            raise ValueError(f"arch override {key!r} is not a parameter of {bundle_name}; "
                             f"expected one of {sorted(params)}")
        params[key] = value
    return params


def build_architecture(bundle_name: str, arch: Mapping[str, Any] | None = None) -> torchaudio.models.Wav2Vec2Model:
    """A randomly initialised model of the bundle's architecture (``arch`` overrides its parameters)."""
    params = bundle_params(bundle_name, arch)
    builder = {"Wav2Vec2": torchaudio.models.wav2vec2_model, "WavLM": torchaudio.models.wavlm_model}
    return builder[get_bundle(bundle_name)._model_type](**params)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a torch file (``.pth``/``.pt``, ``weights_only``) or a ``.safetensors`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code, a truncated file, not a torch file
        raise ValueError(f"weights file {path} is not a torch state dict ({type(e).__name__}: {e}); if it is a "
                         "broken download, delete it and run again to download it anew") from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"weights file {path} should hold a state dict (parameter name -> tensor), "
                         f"got {type(sd).__name__}")
    return dict(sd)


def upstream_layout(state: Mapping[str, torch.Tensor], expected: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename weight-norm keys to the layout of ``expected`` (the model's own state-dict keys), both ways.

    ``torch.nn.utils.weight_norm`` (older torch, torchaudio's fairseq converter) writes
    ``<conv>.weight_g``/``weight_v``; ``torch.nn.utils.parametrizations.weight_norm`` (today's
    torchaudio models) writes ``<conv>.parametrizations.weight.original0``/``original1``. torch's
    own loader accepts the first for the second through a load hook; this does the same before
    the strict key check, so every file torchaudio loads is accepted here.
    """
    pairs = (("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1"))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            for old, new in pairs:
                for a, b in ((old, new), (new, old)):
                    if key.endswith("." + a) and key[: -len(a)] + b in expected:
                        key = key[: -len(a)] + b
                        break
        out[key] = value
    return out


def _masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``nn.GroupNorm`` over each clip's valid frames only: ``x`` ``(B, C, T)``, ``lengths`` ``(B,)`` frames."""
    b, c, t = x.shape
    g = norm.num_groups
    xg = x.reshape(b, g, c // g, t)
    mask = lengths_to_mask(lengths, t)[:, None, None, :].to(x.dtype)
    n = (lengths * (c // g)).clamp(min=1).to(x.dtype)[:, None, None, None]
    mean = (xg * mask).sum((2, 3), keepdim=True) / n
    var = (((xg - mean) * mask) ** 2).sum((2, 3), keepdim=True) / n
    x = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(b, c, t)
    if norm.affine:
        x = x * norm.weight[None, :, None] + norm.bias[None, :, None]
    return x


def _masked_waveform_norm(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-clip zero-mean unit-variance waveform over valid samples (the bundles' ``_normalize_waveform``)."""
    mask = lengths_to_mask(lengths, x.shape[1]).to(x.dtype)
    n = lengths.clamp(min=1).to(x.dtype)[:, None]
    mean = (x * mask).sum(1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps) * mask


def _parse_layers(layer: int | None, layers: Any, total: int) -> tuple[str, list[int]]:
    """Normalise the layer options to ``(mode, indices)``; ``total`` = transformer blocks ``L``."""
    def norm(i: Any, what: str) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not -(total + 1) <= i <= total:
            raise ValueError(f"{what} must be an int in [{-(total + 1)}, {total}] (0 = transformer input, "
                             f"{total} = last block), got {i!r}")
        return i % (total + 1)

    if layer is not None and layers is not None:
        raise ValueError(f"give either layer or layers, not both (got layer={layer!r}, layers={layers!r})")
    if layers is None:
        return "layer", [norm(-1 if layer is None else layer, "layer")]
    if layers == "all":
        return "all", list(range(total + 1))
    if isinstance(layers, (list, tuple)) and len(layers) == 2:
        a, b = norm(layers[0], "layers[0]"), norm(layers[1], "layers[1]")
        if a > b:
            raise ValueError(f"layers=(a, b) needs a <= b, got {tuple(layers)}")
        return "mean", list(range(a, b + 1))
    raise ValueError(f"layers must be 'all' or a pair (a, b) of layer indices, got {layers!r}")


class SSLExtractor(AudioExtractor):
    """A torchaudio wav2vec 2.0 / HuBERT / WavLM encoder as a frozen extractor (see the module docstring).

    Args:
        name: a key of :data:`SSL_MODELS`.
        layer, layers: which hidden state(s) to return (module docstring).
        weights: a local weight file (torch state dict or safetensors); default: torch.hub's cache.
        arch: overrides of the bundle's architecture parameters (e.g. ``{"encoder_num_layers": 2}``,
            for tests and experiments); the weights must match.
        num_layers: only with ``layers="all"``: the expected number of stacked hidden states,
            checked (it is recorded in the spec so a head can un-flatten the features).
    """

    def __init__(self, name: str, layer: int | None = None, layers: Any = None,
                 weights: str | os.PathLike | None = None, arch: Mapping[str, Any] | None = None,
                 num_layers: int | None = None):
        if name not in SSL_MODELS:
            raise KeyError(f"unknown SSL encoder {name!r}; known: {', '.join(sorted(SSL_MODELS))}")
        info = SSL_MODELS[name]
        bundle = get_bundle(info.bundle)
        params = bundle_params(info.bundle, arch)
        total = int(params["encoder_num_layers"])
        mode, indices = _parse_layers(layer, list(layers) if isinstance(layers, tuple) else layers, total)
        embed = int(params["encoder_embed_dim"])
        if num_layers is not None and (mode != "all" or num_layers != total + 1):
            raise ValueError(f"num_layers={num_layers} does not fit layers={layers!r} of {name} "
                             f"(layers='all' stacks {total + 1} hidden states)")
        source = WeightsSource(kind="torchaudio", uri=info.bundle, filename=bundle._path, license=info.license)
        # Weights first (downloaded on first use): a missing file fails before a large architecture is built.
        path = resolve_weights(source, path=weights)

        options: dict[str, Any] = {}
        if mode == "layer":
            options["layer"] = indices[0]
        else:
            options["layers"] = "all" if mode == "all" else [indices[0], indices[-1]]
        if mode == "all":
            options["num_layers"] = total + 1
        if weights is not None:
            options["weights"] = str(weights)
        if arch:
            options["arch"] = dict(arch)
        strides = [int(s) for _, _, s in params["extractor_conv_layer_config"]]
        hop = 1
        for s in strides:
            hop *= s
        spec = ExtractorSpec(
            name=name, modality="audio", dim=embed * (len(indices) if mode == "all" else 1),
            sample_rate=int(bundle._sample_rate), frame_rate=bundle._sample_rate / hop, weights=source,
            options=options,
            description=f"{info.description}; " + {"layer": f"hidden state {indices[0]} of 0..{total}",
                                                   "mean": f"mean of hidden states {indices[0]}..{indices[-1]}",
                                                   "all": f"all {total + 1} hidden states, flattened"}[mode])
        super().__init__(spec)
        self.mode, self.indices = mode, indices
        self.normalize_waveform = bool(bundle._normalize_waveform)
        self.is_wavlm = bundle._model_type == "WavLM"

        state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("aux.")}
        # Built on the meta device and filled with the file's tensors: no random init of weights
        # about to be replaced (seconds for large models); a missing key is an error below.
        with torch.device("meta"):
            model = build_architecture(info.bundle, arch)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        state = upstream_layout(state, expected)
        problems = [f"missing {k}" for k in expected if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in expected]
        problems += [f"{k} has shape {tuple(v.shape)}, expected {expected[k]}" for k, v in state.items()
                     if k in expected and tuple(v.shape) != expected[k]]
        if problems:
            raise ValueError(f"weights file {path} does not fit the {name} architecture ({info.bundle}"
                             + (f", arch overrides {dict(arch)}" if arch else "") + f"): {len(problems)} problem(s): "
                             + "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else ""))
        model.load_state_dict(state, strict=True, assign=True)
        # Blocks above the highest requested layer are never run: drop them.
        top = max(indices)
        model.encoder.transformer.layers = model.encoder.transformer.layers[:top]
        self.model = model
        self.weights_path = path
        self.receptive_field = 1  # samples behind one output frame (400 for the 16 kHz models)
        for block in reversed(model.feature_extractor.conv_layers):
            self.receptive_field = (self.receptive_field - 1) * block.stride + block.kernel_size
        # CPU batches run clip by clip (see _extract_clip_by_clip); tests turn it off to check the batch path
        self.clip_by_clip_on_cpu = True

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Sample counts ``(B,)`` -> frame counts ``(B,)`` (the convolutional front-end's arithmetic)."""
        for block in self.model.feature_extractor.conv_layers:
            lengths = conv_output_lengths(lengths, block.kernel_size, block.stride)
        return lengths

    def conv_features(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolutional front-end, padding-safe: ``(B, S)``, ``(B,)`` -> ``(B, T, C)``, ``(B,)``."""
        h = x.unsqueeze(1)
        for block in self.model.feature_extractor.conv_layers:
            h = block.conv(h)
            lengths = conv_output_lengths(lengths, block.kernel_size, block.stride)
            if isinstance(block.layer_norm, nn.GroupNorm):
                h = _masked_group_norm(h, lengths, block.layer_norm)
            elif block.layer_norm is not None:  # per-frame LayerNorm over channels: no mixing over time
                h = block.layer_norm(h)
            h = nn.functional.gelu(h)
        return h.transpose(1, 2), lengths

    def hidden_states(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states ``0..max(indices)``, each ``(B, T, E)``, and frame lengths ``(B,)``."""
        dtype = next(self.model.parameters()).dtype
        x = x.to(dtype)
        if self.normalize_waveform:
            x = _masked_waveform_norm(x, lengths)
        feats, out_lengths = self.conv_features(x, lengths)
        encoder = self.model.encoder
        h, attention_mask = encoder._preprocess(feats, out_lengths)  # projection; padded frames zeroed
        transformer = encoder.transformer
        h = transformer._preprocess(h)  # + convolutional positional embedding (+ LayerNorm for post-LN models)
        # WavLM takes a key padding mask; additive (float) so it matches its float position bias.
        key_padding = torch.zeros(h.shape[:2], dtype=h.dtype, device=h.device).masked_fill(
            ~lengths_to_mask(out_lengths, h.shape[1]), float("-inf"))
        states, position_bias = [h], None
        for block in transformer.layers:
            if self.is_wavlm:
                h, position_bias = block(h, None, position_bias=position_bias, key_padding_mask=key_padding)
            else:
                h, position_bias = block(h, attention_mask, position_bias=position_bias)
            states.append(h)
        return states, out_lengths

    def extract(self, x, lengths):
        if x.device.type == "cpu" and x.shape[0] > 1 and self.clip_by_clip_on_cpu:
            return self._extract_clip_by_clip(x, lengths)
        return self._extract_batch(x, lengths)

    def _extract_clip_by_clip(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each clip alone, cut to its own samples (at least the receptive field), then padded.

        The same values as :meth:`_extract_batch` (the masked batch equals its clips alone), but on
        a CPU a padded batch runs the encoder at ~half its single-clip rate: padding, and the
        front-end's activations (512 channels at a fifth of the sample rate, hundreds of MB for
        a batch) spill out of the caches (BENCHMARKS.md, extraction).
        """
        outs, out_lengths = [], []
        for i in range(x.shape[0]):
            keep = min(max(int(lengths[i]), self.receptive_field), x.shape[1])
            out, n = self._extract_batch(x[i:i + 1, :keep], lengths[i:i + 1])
            outs.append(out[0])
            out_lengths.append(n)
        padded = nn.utils.rnn.pad_sequence(outs, batch_first=True)
        return padded, torch.cat(out_lengths)

    def _extract_batch(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, out_lengths = self.hidden_states(x, lengths)
        if self.mode == "layer":
            out = states[self.indices[0]]
        elif self.mode == "mean":
            out = torch.stack([states[i] for i in self.indices]).mean(0)
        else:
            out = torch.stack(states, dim=2).flatten(2)  # (B, T, L + 1, E) -> (B, T, (L + 1) * E)
        return zero_padding(out.float(), out_lengths), out_lengths


def _register(name: str) -> None:
    info = SSL_MODELS[name]

    def build(layer: int | None = None, layers: Any = None, weights: str | os.PathLike | None = None,
              arch: Mapping[str, Any] | None = None, num_layers: int | None = None) -> SSLExtractor:
        return SSLExtractor(name, layer=layer, layers=layers, weights=weights, arch=arch, num_layers=num_layers)

    build.__name__ = f"build_{name}"
    build.__doc__ = (f"``{name}``: {info.description} (torchaudio ``{info.bundle}``, {info.license} license); "
                     f"see :class:`SSLExtractor` for the options.")
    EXTRACTORS.register(name, build)
    DEFAULT_WEIGHTS[name] = WeightsSource(kind="torchaudio", uri=info.bundle, filename=get_bundle(info.bundle)._path,
                                          license=info.license)


for _name in SSL_MODELS:
    _register(_name)
