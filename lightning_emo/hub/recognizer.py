"""``Recognizer``: a trained multimodal emotion recognizer (extractors, heads, fusion) that loads, saves and predicts.

A recognizer is what ``lightning-emo export`` writes and ``from_pretrained`` reads: per modality
(``audio``, ``video``) an extractor spec (+ face detector and frame rate for video, + the
feature selector when the features were selected), a head and its configuration, and a fitted
fusion rule over the modalities, with the class names. The layout (``config.json``,
``model.safetensors``, ``README.md``) is described in :mod:`lightning_emo.hub.config`.

Inference runs the same code as ``lightning-emo extract`` (decoding with
:mod:`lightning_emo.data.media`, the face pipeline and the extractor through
:class:`~lightning_emo.extractors.runner.FeatureRunner`, without Lightning), then repeats the
trained head's input pipeline in its order: rounding to the feature store's dtype (as its writer
does), the selector's columns, the training set's standardisation (``EmotionModule.normalize``),
the head, then the fusion rule. A clip without an audio track, without a video track or without
any face is predicted from what it has; the prediction says which modality was missing and why.

Loading never unpickles anything: weights are read with safetensors only, every key is checked
(missing and unexpected keys are listed), and a class list that does not fit a head is refused.

Example::

    from lightning_emo.hub import Recognizer

    model = Recognizer.from_pretrained("hf-hub:org/name@<commit>")   # or a zoo name, or a directory
    pred = model.predict("clip.mp4")
    pred.label, pred.fused, pred.probs["audio"], pred.missing
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelHubMixin
from torch import nn

from lightning_emo.hub.config import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    RecognizerError,
    check_weights_digest,
    file_sha256,
    parse_config,
    validate_config,
)
from lightning_emo.hub import zoo as zoo_mod
from lightning_emo.hub.resolve import download, parse_hub_reference, resolve_reference  # noqa: F401
from lightning_emo.utils import atomic_path, atomic_write_text, log

__all__ = ["Prediction", "Recognizer", "RecognizerError", "StrictLoadError"]

# Why a modality has no posterior for a clip.
MISSING_REASONS = {
    "no_audio": "the file has no audio track",
    "no_video": "the file has no video track",
    "no_face": "no face was found in any frame",
    "no_frames": "too short: no feature frame",
    "not_given": "no input was given for it",
}


class StrictLoadError(RecognizerError):
    """``model.safetensors`` does not hold exactly the tensors the config describes.

    Attributes:
        missing: keys the config needs that the file lacks.
        unexpected: keys in the file that the config does not describe.
        mismatched: ``key -> (shape in the file, expected shape)``.
    """

    def __init__(self, source: str, missing: Sequence[str], unexpected: Sequence[str],
                 mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), dict(mismatched)
        parts = []
        if self.missing:
            parts.append(f"missing keys: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys: {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append("shape mismatches: " + ", ".join(f"{k} {tuple(a)} (expected {tuple(b)})"
                                                           for k, (a, b) in self.mismatched.items()))
        super().__init__(f"{source}: the weights do not match config.json — {'; '.join(parts)}")


@dataclass
class Prediction:
    """One clip's (or window's) result.

    Attributes:
        classes: the class names (the order of every probability vector).
        probs: modality -> ``(C,)`` posterior (temperature-scaled when the model has a
            temperature), or ``None`` when that modality was missing.
        fused: ``(C,)`` fused posterior, or ``None`` when no modality was available.
        label: the fused label (``None`` when nothing was available).
        missing: modality -> reason (``no_audio``, ``no_video``, ``no_face``, ``no_frames``,
            ``not_given``) for the modalities without a posterior.
        decided_by: for ensemble rules, the modality that decided (``lr`` for a cascade's LR
            output); ``None`` otherwise.
        frames: modality -> number of feature frames with content that the head saw.
        source: the file (or a caller's name for in-memory input).
    """

    classes: list[str]
    probs: dict[str, np.ndarray | None]
    fused: np.ndarray | None
    label: str | None
    missing: dict[str, str] = field(default_factory=dict)
    decided_by: str | None = None
    frames: dict[str, int] = field(default_factory=dict)
    source: str = ""

    @property
    def confidence(self) -> float | None:
        """The fused posterior of the predicted label (``None`` without a prediction)."""
        return None if self.fused is None else float(np.max(self.fused))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"source", "label", "confidence", "fused": {class: p}, "probs": {modality: {class: p} | None},
        "missing", "decided_by", "frames"}``."""
        def named(p: np.ndarray | None) -> dict[str, float] | None:
            return None if p is None else {c: float(v) for c, v in zip(self.classes, p, strict=True)}

        return {"source": self.source, "label": self.label, "confidence": self.confidence,
                "fused": named(self.fused), "probs": {m: named(p) for m, p in self.probs.items()},
                "missing": dict(self.missing), "decided_by": self.decided_by, "frames": dict(self.frames)}


class _Selection(nn.Module):
    """The columns a fitted feature selector keeps: buffer ``indices`` ``(k,)`` int64."""

    def __init__(self, k: int):
        super().__init__()
        self.register_buffer("indices", torch.zeros(k, dtype=torch.int64))


class _Standardize(nn.Module):
    """The head's input standardisation: buffers ``mean``/``std`` ``(D,)`` float32, ``x -> (x - mean) / std``.

    The same float32 operations as :meth:`lightning_emo.models.module.EmotionModule.normalize`,
    so a head sees exactly the values it saw in training.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return ((x.reshape(*shape[:2], -1) - self.mean) / self.std).reshape(shape)


class _Runtime:
    """What a modality needs at inference, built on first use: the feature runner, selector, fps/rate."""

    def __init__(self, module, selector, device: torch.device):
        self.module, self.selector, self.device = module, selector, device


class Recognizer(nn.Module, ModelHubMixin, library_name="lightning-emo",
                 tags=["emotion-recognition", "multimodal", "audio-classification", "video-classification"]):
    """A trained multimodal emotion recognizer (see the module docstring).

    Build one with :meth:`from_checkpoints` (trained ``EmotionModule`` checkpoints + a fitted
    fusion rule) or :meth:`from_pretrained`; save it with :meth:`save_pretrained`.

    Args:
        config: the recognizer config (:mod:`lightning_emo.hub.config`); validated here.
            Heads and selectors are created with untrained weights: load weights with
            :meth:`load_tensors` (``from_pretrained`` and ``from_checkpoints`` do).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from lightning_emo.models.heads import build_head

        self.config = validate_config(config)
        self.classes: list[str] = list(self.config["classes"])
        self.heads = nn.ModuleDict()
        self.selectors = nn.ModuleDict()
        self.standardize = nn.ModuleDict()
        for m, mc in self.config["modalities"].items():
            h = mc["head"]
            self.heads[m] = build_head(h["name"], int(h["input_dim"]), int(h["num_classes"]), int(h["hidden_dim"]),
                                       float(h["dropout"]), **dict(h.get("options") or {}))
            if mc.get("selector"):
                self.selectors[m] = _Selection(int(mc["selector"]["k"]))
            if mc.get("standardize"):
                self.standardize[m] = _Standardize(int(h["input_dim"]))
        self.eval()
        self.fusion_rule = None
        fusion = self.config.get("fusion")
        if fusion is not None:
            from lightning_emo.fusion.rules import rule_from_state_dict

            try:
                self.fusion_rule = rule_from_state_dict(fusion["state"])
            except (KeyError, ValueError, TypeError) as e:
                raise RecognizerError(f"config.json: the fusion state does not load ({type(e).__name__}: "
                                      f"{e})") from None
        self._embedded: dict[str, dict[str, torch.Tensor]] = {}
        self._runtimes: dict[str, _Runtime] = {}
        self.hub_options: dict[str, Any] = {}  # cache_dir / local_files_only / token for building extractors
        self.source: dict[str, Any] = {}  # where the recognizer was loaded from (repo_id, revision, path)

    # ------------------------------------------------------------------ properties
    @property
    def modalities(self) -> list[str]:
        """The modalities this recognizer has, in ``("audio", "video")`` order."""
        return list(self.config["modalities"])

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def fps(self) -> float | None:
        """Video frames per second the face model was trained at (``None`` without a video modality)."""
        mc = self.config["modalities"].get("video")
        return float(mc["input"]["fps"]) if mc else None

    def set_detector_options(self, **options: Any) -> "Recognizer":
        """Override the face detector's options for inference (e.g. ``detect_every=1``: detect on every frame).

        The options merge into those in ``config.json`` and apply from the next prediction on; a
        recognizer without a video modality raises :class:`RecognizerError`.
        """
        mc = self.config["modalities"].get("video")
        if mc is None:
            raise RecognizerError("this recognizer has no video modality: face detector options do not apply")
        det = mc["input"]["detector"]
        det["options"] = {**dict(det.get("options") or {}), **options}
        self._runtimes.pop("video", None)
        return self

    def sample_rate(self) -> int | None:
        """Audio sample rate of the audio extractor (``None`` without an audio modality)."""
        mc = self.config["modalities"].get("audio")
        return int(mc["input"]["sample_rate"]) if mc else None

    def __repr__(self) -> str:
        parts = [f"{m}={mc['extractor']['name']}+{mc['head']['name']}" for m, mc in self.config["modalities"].items()]
        fusion = self.config.get("fusion")
        return (f"Recognizer({self.config.get('name') or 'unnamed'}: {', '.join(parts)}, "
                f"fusion={fusion['rule'] if fusion else None}, classes={self.classes})")

    # ------------------------------------------------------------------ tensors
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key ``model.safetensors`` must hold -> its shape (``()``: any shape, embedded extractor tensors)."""
        shapes = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        for m, mc in self.config["modalities"].items():
            emb = mc.get("embedded")
            if emb:
                shapes.update({f"extractors.{m}.{k}": () for k in emb["keys"]})
        return shapes

    def tensors(self) -> dict[str, torch.Tensor]:
        """All ``model.safetensors`` holds: heads, selector indices, embedded extractor weights (CPU, contiguous)."""
        out = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        for m, tensors in self._embedded.items():
            out.update({f"extractors.{m}.{k}": v.detach().cpu().contiguous() for k, v in tensors.items()})
        return out

    def load_tensors(self, tensors: Mapping[str, torch.Tensor], source: str = WEIGHTS_NAME) -> "Recognizer":
        """Load ``model.safetensors`` tensors strictly.

        Raises:
            StrictLoadError: listing missing keys, unexpected keys and shape mismatches.
        """
        expected = self.expected_shapes()
        missing = sorted(k for k in expected if k not in tensors)
        unexpected = sorted(k for k in tensors if k not in expected)
        mismatched = {k: (tuple(tensors[k].shape), shape) for k, shape in expected.items()
                      if k in tensors and shape and tuple(tensors[k].shape) != shape}
        if missing or unexpected or mismatched:
            raise StrictLoadError(source, missing, unexpected, mismatched)
        for key, value in tensors.items():  # NaN weights predict confidently: refuse them by name
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise RecognizerError(f"{source}: tensor {key!r} holds {bad} NaN/infinite value(s) of "
                                      f"{value.numel()}: the weights are damaged; export or download them again")
        own = set(self.state_dict())
        self.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=True)
        self._embedded = {}
        for m in self.modalities:
            prefix = f"extractors.{m}."
            part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if part:
                self._embedded[m] = part
        self._runtimes.clear()
        return self

    # ------------------------------------------------------------------ saving
    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``model.safetensors``, ``README.md`` and, last, ``config.json`` (each atomically)."""
        from safetensors.torch import save_file

        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(save_directory / WEIGHTS_NAME) as tmp:
            # the class order the heads were saved in travels inside the weights file too (checked on load)
            save_file(self.tensors(), str(tmp), metadata={"format": "pt", "lightning_emo": "recognizer",
                                                          "classes": json.dumps(self.classes)})
            digest = file_sha256(tmp)
        # config.json names the exact weights file it goes with (checked on load)
        self.config["weights"] = {"file": WEIGHTS_NAME, "sha256": digest}
        atomic_write_text(save_directory / CARD_NAME, str(self.generate_model_card()))
        atomic_write_text(save_directory / CONFIG_NAME, json.dumps(self.config, indent=2, sort_keys=False) + "\n")

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> str | None:
        """Write the Hub layout (``config.json``, ``model.safetensors``, ``README.md``) into ``save_directory``.

        Same arguments as :meth:`huggingface_hub.ModelHubMixin.save_pretrained` (``push_to_hub``,
        ``repo_id``, ...); the config saved is :attr:`config`.
        """
        kwargs.setdefault("config", self.config)
        return super().save_pretrained(save_directory, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The generated model card (:func:`lightning_emo.hub.card.render_card`)."""
        from lightning_emo.hub.card import model_card

        return model_card(self.config, repo_id=kwargs.get("repo_id") or self.source.get("repo_id"))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        zoo: str | os.PathLike | None = None,
        **model_kwargs: Any,
    ) -> "Recognizer":
        """Load a recognizer from a local directory, ``hf-hub:org/name[@revision]``, ``org/name`` or a zoo name.

        Args:
            pretrained_model_name_or_path: a directory holding ``config.json`` and
                ``model.safetensors``; ``hf-hub:org/name`` (``@revision`` pins a commit, tag or
                branch); a bare ``org/name``; or a name listed by ``lightning-emo zoo``.
            revision: the Hub revision (commit hash, tag or branch); conflicts with an ``@revision``
                in the name. Zoo entries pin their own revision.
            cache_dir, local_files_only, token, force_download: passed to huggingface_hub
                (``HF_HUB_OFFLINE=1`` works when the files are in the cache); also used to build
                extractors whose weights come from the Hub.
            map_location: device for the heads.
            zoo: the zoo directory (default: see :func:`lightning_emo.hub.zoo.zoo_dir`).

        Raises:
            RecognizerError: unknown name, files missing (offline and not cached), an invalid
                config, or weights that do not match it (:class:`StrictLoadError`).
        """
        if model_kwargs:
            raise TypeError(f"Recognizer.from_pretrained got unexpected arguments: {', '.join(model_kwargs)}")
        kind, target, rev = resolve_reference(pretrained_model_name_or_path, revision, zoo=zoo)
        model = cls._from_pretrained(model_id=target if kind == "hub" else str(target), revision=rev,
                                     cache_dir=cache_dir, force_download=force_download,
                                     local_files_only=local_files_only, token=token, map_location=map_location)
        name = str(pretrained_model_name_or_path)
        if not os.path.isdir(name) and name in zoo_mod.entry_names(zoo):  # the zoo's listing must tell the truth
            from lightning_emo.data.checks import match_classes

            entry = zoo_mod.get_entry(name, zoo)
            match_classes(entry.classes, model.classes, entry.file or name, model.source.get("path") or
                          model.source.get("repo_id") or name, what=f"zoo entry {name!r} vs its model",
                          error=_ClassesError)
        return model

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | os.PathLike | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str | torch.device = "cpu", **model_kwargs: Any) -> "Recognizer":
        if os.path.isdir(model_id):
            folder = Path(model_id)
            config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
            for f in (config_file, weights_file):
                if not f.is_file():
                    raise RecognizerError(f"{folder}: no {f.name} (an exported recognizer holds {CONFIG_NAME} and "
                                          f"{WEIGHTS_NAME}; write one with `lightning-emo export`)")
            source: dict[str, Any] = {"path": str(folder)}
        else:
            config_file, weights_file, commit = download(model_id, revision, cache_dir, force_download,
                                                          local_files_only, token)
            source = {"repo_id": model_id, "revision": commit or revision}
        config = parse_config(Path(config_file).read_bytes(), config_file)
        model = cls(config)
        model.load_tensors(_read_safetensors(weights_file), source=str(weights_file))  # keys, shapes, finite
        _check_weight_classes(model.classes, weights_file, config_file)
        if not check_weights_digest(model.config, weights_file, config_file):
            log.warning("%s records no digest of %s (exported before configs were bound to their weights): "
                        "nothing checks that the two belong together; re-save it with save_pretrained to bind them",
                        config_file, WEIGHTS_NAME)
        model.source = source
        model.hub_options = {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        return model.to(map_location)

    @classmethod
    def from_checkpoints(cls, checkpoints: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
                         fusion: Any = None, **kwargs: Any) -> "Recognizer":
        """Build a recognizer from trained ``EmotionModule`` checkpoints and a fitted fusion rule.

        See :func:`lightning_emo.hub.export.build_from_checkpoints` for every argument
        (``fusion`` may be a fitted :class:`~lightning_emo.fusion.rules.FusionRule`, its
        ``state_dict()``, or the ``rule.json`` that ``lightning-emo fuse`` writes).
        """
        from lightning_emo.hub.export import build_from_checkpoints

        config, tensors = build_from_checkpoints(checkpoints, fusion=fusion, **kwargs)
        return cls(config).load_tensors(tensors, source="checkpoints")

    # ------------------------------------------------------------------ inference parts
    def _runtime(self, m: str) -> _Runtime:
        device = self.device
        rt = self._runtimes.get(m)
        if rt is not None and rt.device == device:
            return rt
        from lightning_emo.extractors.runner import FeatureRunner

        mc = self.config["modalities"][m]
        extractor = self._build_extractor(m)
        detector = None
        if m == "video":
            from lightning_emo.extractors.face_detect import build_face_detector

            det = mc["input"]["detector"]
            detector = build_face_detector(det["name"], crop_size=extractor.spec.crop_size, **dict(det["options"]))
        selector = None
        if mc.get("selector"):
            from lightning_emo.extractors.selection import FeatureSelector

            s = mc["selector"]
            selector = FeatureSelector(k=int(s["k"]), unit=s.get("unit", "frames"), **dict(s.get("params") or {}))
            selector.indices = self.selectors[m].indices.detach().cpu().numpy().astype(np.int64)
            selector.dim = int(s["dim"])
            if selector.indices.min() < 0 or selector.indices.max() >= selector.dim:
                raise RecognizerError(f"selectors.{m}.indices hold columns outside [0, {selector.dim})")
        module = FeatureRunner(extractor, detector).to(device)
        rt = self._runtimes[m] = _Runtime(module, selector, device)
        return rt

    def _build_extractor(self, m: str):
        """Rebuild modality ``m``'s frozen extractor from its spec (embedded weights materialised privately)."""
        from lightning_emo.extractors.base import EXTRACTORS, ExtractorSpec, WeightsNotFoundError
        from lightning_emo.extractors.runner import build_for_extraction
        from lightning_emo.extractors.weights import WeightsDownloadError

        mc = self.config["modalities"][m]
        spec = ExtractorSpec.from_dict(mc["extractor"])
        if spec.name not in EXTRACTORS:
            raise RecognizerError(f"extractor {spec.name!r} of modality {m!r} is not registered in this version of "
                                  f"lightning-emo (known: {', '.join(EXTRACTORS.names())})")
        builder = EXTRACTORS.get(spec.name)
        options = dict(spec.options)
        for key in ("cache_dir", "local_files_only"):
            value = self.hub_options.get(key)
            if value is not None and _takes(builder, key) and key not in options:
                options[key] = str(value) if key == "cache_dir" else value
        emb = mc.get("embedded")
        fps = float(mc["input"]["fps"]) if m == "video" else None
        try:
            if emb and emb["kind"] == "file":
                from safetensors.torch import save_file

                options.pop("weights", None)
                with tempfile.TemporaryDirectory(prefix="lightning_emo_weights_") as tmp:
                    path = Path(tmp) / (Path(emb.get("filename") or "weights.safetensors").name)
                    save_file({k: v.contiguous() for k, v in self._embedded.get(m, {}).items()}, str(path),
                              metadata=dict(emb.get("metadata") or {}))
                    extractor = build_for_extraction(spec.name, options, weights=path, fps=fps)
            else:
                extractor = build_for_extraction(spec.name, options, fps=fps)
        except (WeightsNotFoundError, WeightsDownloadError) as e:
            raise RecognizerError(f"modality {m!r}: the weights of extractor {spec.name!r} are not available: "
                                  f"{e}") from None
        built = extractor.spec
        if built.dim != spec.dim or built.modality != spec.modality:
            raise RecognizerError(f"modality {m!r}: extractor {spec.name!r} built with this version gives "
                                  f"{built.dim}-d {built.modality} features, the recognizer expects {spec.dim}-d "
                                  f"{spec.modality}")
        if emb and emb["kind"] == "state_dict":
            result = extractor.load_state_dict(self._embedded.get(m, {}), strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise StrictLoadError(f"extractors.{m}", result.missing_keys, result.unexpected_keys, {})
        return extractor.eval().requires_grad_(False)

    def extract(self, m: str, data: Any) -> tuple[np.ndarray, np.ndarray] | str:
        """One clip's features for modality ``m``, as the feature store holds them (after selection).

        Args:
            m: ``audio`` or ``video``.
            data: audio: a waveform ``(S,)`` float at :meth:`sample_rate`; video: frames
                ``(N, H, W, 3)`` uint8 RGB at :meth:`fps`.

        Returns:
            ``(features (T, D) float32, mask (T,) bool)``, or a missing reason (``no_face``,
            ``no_frames``) when nothing usable came out.
        """
        from lightning_emo.extractors.runner import MISSING_NO_AUDIO, MISSING_NO_FRAMES

        rt = self._runtime(m)
        mc = self.config["modalities"][m]
        if m == "audio":
            wave = torch.as_tensor(data, dtype=torch.float32).reshape(-1)
            batch = {"clip_id": ["clip"], "waveform": wave[None].to(rt.device),
                     "waveform_lengths": torch.tensor([len(wave)], device=rt.device),
                     "has_audio": torch.tensor([True], device=rt.device)}
        else:
            frames = torch.as_tensor(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
            if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
                raise ValueError(f"frames must be uint8 (N, H, W, 3) RGB, got {frames.dtype} {tuple(frames.shape)}")
            batch = {"clip_id": ["clip"], "frames": [frames.to(rt.device)],
                     "frame_lengths": torch.tensor([len(frames)], device=rt.device),
                     "has_video": torch.tensor([len(frames) > 0], device=rt.device)}
        with torch.no_grad():
            (result,) = rt.module(batch)
        if result.missing is not None:
            return {MISSING_NO_AUDIO: "no_audio", MISSING_NO_FRAMES: "no_frames"}.get(result.missing, result.missing)
        feats, mask = np.asarray(result.features, dtype=np.float32), np.asarray(result.mask, dtype=bool)
        # what training read back from the store: every column rounded (and range-checked) as the parent
        # store's writer did, then a selected store's columns
        feats = _as_stored(feats, mc["feature_dtype"], m)
        if rt.selector is not None:
            feats = rt.selector.transform(feats)
        if len(feats) == 0:
            return "no_frames"
        if not mask.any():
            return "no_face" if m == "video" else "no_frames"
        return np.ascontiguousarray(feats), mask

    @torch.no_grad()
    def head_posteriors(self, m: str, features: np.ndarray | torch.Tensor,
                        mask: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """Modality ``m``'s raw head posterior ``(C,)`` float64 for features ``(T, D)`` and mask ``(T,)``.

        ``features`` are what the feature store holds (what :meth:`extract` returns): they are
        standardised here with the training-set statistics, as ``EmotionModule.forward`` does.
        """
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(self.device)
        if x.dim() != 2:
            raise ValueError(f"features must be (T, D), got shape {tuple(x.shape)}")
        mk = None if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool)).to(self.device)[None]
        x = x[None]
        if m in self.standardize:
            x = self.standardize[m](x)
        logits = self.heads[m](x, torch.tensor([x.shape[1]], device=self.device), mk)
        return logits.float().softmax(-1)[0].cpu().double().numpy()

    def predict_features(self, features: Mapping[str, tuple[np.ndarray, np.ndarray] | str | None],
                         source: str = "") -> Prediction:
        """Posteriors from per-modality features: ``{modality: (features (T, D), mask (T,)) | missing reason | None}``.

        A modality absent from the mapping (or ``None``) counts as ``not_given``.
        """
        from lightning_emo.fusion.calibration import temperature_scale

        C = len(self.classes)
        raw: dict[str, np.ndarray | None] = {}
        probs: dict[str, np.ndarray | None] = {}
        missing: dict[str, str] = {}
        frames: dict[str, int] = {}
        for m in self.modalities:
            item = features.get(m)
            if item is None or isinstance(item, str):
                raw[m] = probs[m] = None
                missing[m] = item or "not_given"
                continue
            x, mask = item
            mask = np.ones(len(x), bool) if mask is None else np.asarray(mask, dtype=bool)
            if not mask.any():
                raw[m] = probs[m] = None
                missing[m] = "no_face" if m == "video" else "no_frames"
                continue
            p = self.head_posteriors(m, x, mask)
            raw[m] = p
            t = self.config["modalities"][m].get("temperature")
            probs[m] = temperature_scale(p[None], t)[0] if t else p
            frames[m] = int(mask.sum())
        fused, decided = self._fuse(raw, probs, C)
        label = None if fused is None else self.classes[int(np.argmax(fused))]
        return Prediction(list(self.classes), probs, fused, label, missing, decided, frames, source)

    def _fuse(self, raw: Mapping[str, np.ndarray | None], probs: Mapping[str, np.ndarray | None],
              C: int) -> tuple[np.ndarray | None, str | None]:
        if self.fusion_rule is None:
            present = [probs[m] for m in self.modalities if probs[m] is not None]
            return (None, None) if not present else (present[0], None)
        inputs = self.config["fusion"]["inputs"]
        P = [(raw[m] if raw[m] is not None else np.full(C, np.nan))[None] for m in inputs]
        fused = self.fusion_rule.predict_proba(P)[0]
        if np.isnan(fused).all():
            return None, None
        decided = None
        if hasattr(self.fusion_rule, "decide"):
            idx = int(self.fusion_rule.decide(P).decider[0])
            join = getattr(self.fusion_rule, "join", None)
            if join is not None:  # cascade: 0 = the LR output, 1 + k = join[k]
                decided = "lr" if idx == 0 else inputs[join[idx - 1]]
            elif idx >= 0:
                decided = inputs[idx]
        return fused, decided

    # ------------------------------------------------------------------ public inference
    def predict_arrays(self, waveform: np.ndarray | torch.Tensor | None = None, sample_rate: int | None = None,
                       frames: np.ndarray | torch.Tensor | None = None, fps: float | None = None,
                       source: str = "") -> Prediction:
        """Predict from memory.

        Args:
            waveform: mono ``(S,)`` float in [-1, 1] (or ``(C, S)``, averaged to mono).
            sample_rate: its rate; resampled to the audio extractor's when it differs.
            frames: ``(N, H, W, 3)`` uint8 RGB video frames.
            fps: their rate; frames are resampled (nearest in time) to the face model's rate
                when it differs (``None`` = already at that rate).
            source: a name for the result.
        """
        inputs: dict[str, Any] = {}
        if "audio" in self.config["modalities"] and waveform is not None:
            inputs["audio"] = self.extract("audio", _prepare_waveform(waveform, sample_rate, self.sample_rate()))
        if "video" in self.config["modalities"] and frames is not None:
            frames = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
            frames = resample_frames(frames, fps, self.fps())
            inputs["video"] = self.extract("video", frames) if len(frames) else "no_frames"
        return self.predict_features(inputs, source=source)

    def predict(self, path: str | os.PathLike) -> Prediction:
        """Predict one media file (any container PyAV reads); only the tracks the model uses are decoded.

        A file without an audio track, without a video track or without any face is predicted
        from what it has (:attr:`Prediction.missing` says what was missing).

        Raises:
            lightning_emo.data.media.MediaError: a missing, empty or unreadable file.
        """
        from lightning_emo.data.media import MissingStreamError, load_audio, load_frames, probe

        info = probe(path)
        inputs: dict[str, Any] = {}
        if "audio" in self.config["modalities"]:
            if not info.has_audio:
                inputs["audio"] = "no_audio"
            else:
                try:
                    inputs["audio"] = self.extract("audio", load_audio(path, sample_rate=self.sample_rate()))
                except MissingStreamError:
                    inputs["audio"] = "no_audio"
        if "video" in self.config["modalities"]:
            if not info.has_video:
                inputs["video"] = "no_video"
            else:
                try:
                    frames, _ = load_frames(path, fps=self.fps())
                    inputs["video"] = self.extract("video", frames)
                except MissingStreamError:
                    inputs["video"] = "no_video"
        return self.predict_features(inputs, source=str(path))

    def timeline(self, path: str | os.PathLike, window: float = 4.0, hop: float = 2.0):
        """Sliding-window predictions over a long file, streamed (:func:`lightning_emo.hub.timeline.iter_timeline`)."""
        from lightning_emo.hub.timeline import iter_timeline

        return iter_timeline(self, path, window=window, hop=hop)


# ---------------------------------------------------------------------------------------------- helpers


def _as_stored(feats: np.ndarray, dtype: str, m: str) -> np.ndarray:
    """``feats`` rounded to the feature store's dtype as its writer does (float32 out); refused where it refuses.

    The store's writer (``StoreWriter.add``) casts float32 to the store dtype with
    round-to-nearest (``astype``) and refuses non-finite values and values beyond the dtype's
    range: a head never saw such features, so no posterior is made from them.
    """
    if not np.isfinite(feats).all():
        raise RecognizerError(f"modality {m!r}: the extractor produced {int((~np.isfinite(feats)).sum())} NaN/infinite "
                              "feature value(s) from this input (the feature store refuses such clips); check the file")
    if dtype == "float32":
        return feats
    with np.errstate(over="raise"):
        try:
            return feats.astype(np.dtype(dtype)).astype(np.float32)
        except FloatingPointError:
            raise RecognizerError(f"modality {m!r}: feature values beyond the {dtype} range (max |x| = "
                                  f"{np.abs(feats).max():.3g}) of the store the head was trained on: the store "
                                  "would have refused this clip") from None


def _takes(builder, name: str) -> bool:
    """Whether a registry builder accepts keyword ``name``."""
    import inspect

    params = inspect.signature(builder).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _prepare_waveform(waveform: np.ndarray | torch.Tensor, rate: int | None, target: int | None) -> torch.Tensor:
    """``(S,)`` or ``(C, S)`` float -> mono ``(S',)`` float32 at ``target`` Hz."""
    w = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor) else waveform).float()
    if w.dim() == 2:
        w = w.mean(dim=0)
    if w.dim() != 1:
        raise ValueError(f"waveform must be (S,) or (C, S), got shape {tuple(w.shape)}")
    if rate is None:
        raise ValueError("predict_arrays: give sample_rate with the waveform")
    if target and int(rate) != int(target):
        import torchaudio.functional as AF

        w = AF.resample(w, int(rate), int(target))
    return w.contiguous()


def resample_frames(frames: torch.Tensor, fps: float | None, target: float | None) -> torch.Tensor:
    """For each target time ``k / target`` inside the clip, pick the frame nearest in time (as ``iter_frames`` does).

    Shapes: ``(N, H, W, 3)`` at ``fps`` -> ``(N', H, W, 3)`` at ``target``; unchanged when
    either rate is ``None`` or they are equal.
    """
    if fps is None or target is None or math.isclose(float(fps), float(target)) or len(frames) == 0:
        return frames
    duration = len(frames) / float(fps)
    n = max(1, int(math.ceil(duration * float(target) - 1e-6)))
    idx = np.minimum(np.round(np.arange(n) / float(target) * float(fps)).astype(np.int64), len(frames) - 1)
    return frames[torch.as_tensor(idx)]


def _check_weight_classes(classes: list[str], weights_file: Path, config_file: Path) -> None:
    """The class order ``model.safetensors`` was saved with must be ``config.json``'s, name by name."""
    from safetensors import safe_open

    from lightning_emo.data.checks import match_classes

    with safe_open(str(weights_file), "pt") as f:
        meta = f.metadata() or {}
    if "classes" not in meta:
        return  # saved before the class list travelled with the weights
    try:
        saved = json.loads(meta["classes"])
    except json.JSONDecodeError:
        raise RecognizerError(f"{weights_file}: the 'classes' metadata is not a JSON list") from None
    # heads and the fusion state index classes by position: another order cannot be reordered here
    match_classes(saved, classes, weights_file, config_file, reorder=False, error=_ClassesError,
                  what="the heads' class order")


class _ClassesError(RecognizerError):
    def __init__(self, file, message):
        super().__init__(f"{file}: {message}")


def _read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU (never a pickle)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise RecognizerError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
