"""The ``config.json`` of an exported recognizer: its layout, validation and the names shared by the hub modules.

An exported recognizer is a directory in the Hugging Face Hub layout::

    config.json          this module's format (JSON-able; no local paths, no tokens)
    model.safetensors    heads.<modality>.*         the head weights (float32)
                         selectors.<modality>.indices  int64 (k,): feature-selector columns
                         extractors.<modality>.*    only for extractors whose weights are not
                                                    public: ``file``-sourced (the paper's
                                                    DNN / CNN) or fine-tuned ones
    README.md            the generated model card

``config.json``::

    {
      "format": "lightning_emo.recognizer", "format_version": 1,
      "library": {"name": "lightning-emo", "version": "0.1.0"},
      "name": "synthetic-demo", "description": "...",
      "classes": ["angry", ...],
      "modalities": {                      # "audio" and/or "video" (face)
        "audio": {
          "extractor": {...},              # ExtractorSpec.to_dict(): name, dim, weights source + revision, options
          "embedded": null | {"kind": "file", "filename", "sha256", "metadata": {...}, "keys": [...]}
                                           #   | {"kind": "state_dict", "keys": [...]} (fine-tuned)
          "input": {"sample_rate": 16000}  # audio; video: {"fps": 5.0, "detector": {"name", "options"}}
          "feature_dtype": "float16",      # the feature store's dtype: features are rounded to it
          "selector": null | {"method": "random_forest", "k", "dim", "unit", "params"},
          "head": {"name": "lstm", "input_dim", "num_classes", "hidden_dim", "dropout", "options": {}},
          "temperature": null | float,     # applied to the reported per-modality posteriors only
          "checkpoint": {"file", "sha256", "epoch", "global_step"},
          "metrics": {"val": {"micro_f1", "macro_f1", "recall": {...}}, ...}
        },
        "video": {...}
      },
      "fusion": null | {"inputs": ["video", "audio"], "rule": "prior", "state": {...FusionRule.state_dict()}},
      "metrics": {"val": {...}, "test": {...}},      # free-form: what the card's table shows
      "corpus": {"name": "synthetic", ...}, "split_protocol": "...", "license": "apache-2.0"
    }

The fusion rule sees the raw head posteriors (what it was fitted on, from ``predictions.csv``);
``temperature`` only rescales the per-modality posteriors a prediction reports.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Mapping

from lightning_emo.errors import UserError

FORMAT = "lightning_emo.recognizer"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)

MODALITIES = ("audio", "video")
# recognizer modality -> ExtractorSpec.modality / EmotionModule.modality
SPEC_MODALITY = {"audio": "audio", "video": "face"}
FEATURE_DTYPES = ("float16", "float32")
DEFAULT_FUSION_ORDER = ("video", "audio")  # as `lightning-emo fuse` orders a pair: video wins exact ties (eq. 3)
_COMMIT = re.compile(r"[0-9a-f]{40}")


class RecognizerError(UserError, ValueError):
    """An exported recognizer (or the parts given to build one) that cannot be used; the message says why."""


def modality_name(name: str) -> str:
    """``audio`` -> ``audio``; ``video`` or ``face`` -> ``video`` (the recognizer's names)."""
    key = str(name).strip().lower()
    if key == "face":
        return "video"
    if key not in MODALITIES:
        raise RecognizerError(f"unknown modality {name!r}: expected 'audio' or 'video' (face)")
    return key


def is_commit(revision: str | None) -> bool:
    """True for a full 40-hex commit hash (a pinned revision)."""
    return bool(revision) and bool(_COMMIT.fullmatch(str(revision)))


def _need(d: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise RecognizerError(f"config.json: {where} lacks {key!r}")
    value = d[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecognizerError(f"config.json: {where}.{key} must be {names}, got {type(value).__name__}")
    return value


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a recognizer config (see the module docstring) and return a normalised deep copy.

    Raises:
        RecognizerError: naming the field, e.g. a class list whose length differs from a
            head's output size, an unknown modality, or a fusion rule fitted on another number
            of classes or models.
    """
    if not isinstance(config, Mapping):
        raise RecognizerError(f"config must be a JSON object, got {type(config).__name__}")
    cfg = copy.deepcopy(dict(config))
    if cfg.get("format") != FORMAT:
        raise RecognizerError(f"config.json: format is {cfg.get('format')!r}, expected {FORMAT!r} (not a "
                              "lightning_emo recognizer)")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise RecognizerError(f"config.json: format_version {cfg.get('format_version')!r} is not supported "
                              f"(expected {FORMAT_VERSION}); upgrade lightning-emo")
    classes = _need(cfg, "classes", "config", list)
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise RecognizerError(f"config.json: classes must be at least two distinct non-empty names, got {classes}")
    mods = _need(cfg, "modalities", "config", dict)
    if not mods:
        raise RecognizerError("config.json: modalities is empty (need 'audio' and/or 'video')")
    for m in list(mods):
        if m not in MODALITIES:
            raise RecognizerError(f"config.json: unknown modality {m!r} in modalities (expected {MODALITIES})")
        mods[m] = _validate_modality(m, mods[m], len(classes))
    cfg["modalities"] = {m: mods[m] for m in MODALITIES if m in mods}
    fusion = cfg.get("fusion")
    if fusion is not None:
        _validate_fusion(fusion, cfg["modalities"], len(classes))
    elif len(cfg["modalities"]) > 1:
        raise RecognizerError("config.json: two modalities need a fusion rule ('fusion')")
    for key in ("metrics", "corpus"):
        cfg.setdefault(key, {})
        if not isinstance(cfg[key], dict):
            raise RecognizerError(f"config.json: {key} must be an object, got {type(cfg[key]).__name__}")
    for key in ("name", "description", "split_protocol", "license"):
        cfg.setdefault(key, None)
    return cfg


def _validate_modality(m: str, mc: Any, n_classes: int) -> dict[str, Any]:
    where = f"modalities.{m}"
    if not isinstance(mc, dict):
        raise RecognizerError(f"config.json: {where} must be an object")
    spec = _need(mc, "extractor", where, dict)
    for key in ("name", "modality", "dim"):
        _need(spec, key, f"{where}.extractor", (str, int))
    if spec["modality"] != SPEC_MODALITY[m]:
        raise RecognizerError(f"config.json: {where}.extractor is a {spec['modality']!r} extractor, expected "
                              f"{SPEC_MODALITY[m]!r}")
    head = _need(mc, "head", where, dict)
    for key in ("name", "input_dim", "num_classes"):
        _need(head, key, f"{where}.head", (str, int))
    if int(head["num_classes"]) != n_classes:
        raise RecognizerError(f"config.json: {where}.head outputs {head['num_classes']} classes but the class list "
                              f"has {n_classes}: the class names do not match the head")
    head.setdefault("hidden_dim", 128)
    head.setdefault("dropout", 0.5)
    head.setdefault("options", {})
    sel = mc.get("selector")
    if sel is not None:
        for key in ("k", "dim"):
            _need(sel, key, f"{where}.selector", int)
        if sel["dim"] != int(spec["dim"]):
            raise RecognizerError(f"config.json: {where}.selector selects from {sel['dim']}-d features but the "
                                  f"extractor gives {spec['dim']}-d")
        feature_dim = int(sel["k"])
    else:
        feature_dim = int(spec["dim"])
    layers = (head.get("options") or {}).get("layers")
    if int(head["input_dim"]) != feature_dim:
        raise RecognizerError(f"config.json: {where}.head takes {head['input_dim']}-d input but the extractor"
                              f"{' + selector' if sel else ''} gives {feature_dim}-d features"
                              + (f" (layers={layers})" if layers else ""))
    inp = mc.setdefault("input", {})
    if m == "video":
        fps = inp.get("fps")
        if not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise RecognizerError(f"config.json: {where}.input.fps must be a positive number, got {fps!r}")
        det = inp.get("detector")
        if not isinstance(det, dict) or not isinstance(det.get("name"), str):
            raise RecognizerError(f"config.json: {where}.input.detector must be {{'name': ..., 'options': {{}}}}")
        det.setdefault("options", {})
    else:
        rate = inp.setdefault("sample_rate", spec.get("sample_rate"))
        if not isinstance(rate, int) or rate <= 0:
            raise RecognizerError(f"config.json: {where}.input.sample_rate must be a positive integer, got {rate!r}")
    mc.setdefault("feature_dtype", "float32")
    if mc["feature_dtype"] not in FEATURE_DTYPES:
        raise RecognizerError(f"config.json: {where}.feature_dtype must be one of {FEATURE_DTYPES}")
    emb = mc.setdefault("embedded", None)
    if emb is not None:
        if emb.get("kind") not in ("file", "state_dict") or not isinstance(emb.get("keys"), list):
            raise RecognizerError(f"config.json: {where}.embedded must be {{'kind': 'file'|'state_dict', "
                                  "'keys': [...], ...}")
    t = mc.setdefault("temperature", None)
    if t is not None and (not isinstance(t, (int, float)) or not t > 0):
        raise RecognizerError(f"config.json: {where}.temperature must be a positive number or null, got {t!r}")
    mc.setdefault("metrics", {})
    mc.setdefault("checkpoint", {})
    return mc


def _validate_fusion(fusion: Any, mods: Mapping[str, Any], n_classes: int) -> None:
    if not isinstance(fusion, dict):
        raise RecognizerError("config.json: fusion must be an object or null")
    inputs = _need(fusion, "inputs", "fusion", list)
    state = _need(fusion, "state", "fusion", dict)
    if sorted(inputs) != sorted(mods) or len(set(inputs)) != len(inputs):
        raise RecognizerError(f"config.json: fusion.inputs {inputs} must name each modality {sorted(mods)} once")
    if state.get("n_models") != len(inputs):
        raise RecognizerError(f"config.json: the fusion rule was fitted on {state.get('n_models')} models, "
                              f"the recognizer has {len(inputs)}")
    if state.get("n_classes") != n_classes:
        raise RecognizerError(f"config.json: the fusion rule was fitted on {state.get('n_classes')} classes, the "
                              f"class list has {n_classes}")
    fusion.setdefault("rule", state.get("rule"))
