"""The ``config.json`` of an exported recognizer: its layout, validation and the names shared by the hub modules.

An exported recognizer is a directory in the Hugging Face Hub layout::

    config.json          this module's format (JSON-able; no local paths, no tokens)
    model.safetensors    heads.<modality>.*         the head weights (float32)
                         selectors.<modality>.indices  int64 (k,): feature-selector columns
                         standardize.<modality>.mean / .std  float32 (input_dim,): the head's
                                                    input standardisation (training-set
                                                    statistics kept in the checkpoint)
                         extractors.<modality>.*    only for extractors whose weights are not
                                                    public: ``file``-sourced (the paper's
                                                    DNN / CNN) or fine-tuned ones
    README.md            the generated model card

``config.json``::

    {
      "format": "lightning_emo.recognizer", "format_version": 2,
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
          "standardize": null | {"frames": N, "dim": D},  # (x - mean) / std before the head, as
                                           #   EmotionModule.normalize; null: the head had none
          "head": {"name": "lstm", "input_dim", "num_classes", "hidden_dim", "dropout", "options": {}},
          "temperature": null | float,     # applied to the reported per-modality posteriors only
          "checkpoint": {"file", "sha256", "epoch", "global_step"},
          "metrics": {"val": {"micro_f1", "macro_f1", "recall": {...}}, ...}
        },
        "video": {...}
      },
      "fusion": null | {"inputs": ["video", "audio"], "rule": "prior", "state": {...FusionRule.state_dict()}},
      "metrics": {"val": {...}, "test": {...}},      # free-form: what the card's table shows
      "corpus": {"name": "synthetic", ...}, "split_protocol": "...", "license": "apache-2.0",
      "weights": {"file": "model.safetensors", "sha256": "..."}   # binds this config to its weights
    }

Binding and ranges: ``save_pretrained`` records the SHA-256 of the ``model.safetensors`` it
wrote in ``weights``; loading checks it (:func:`check_weights_digest`), so weights from another
export or with flipped bytes are refused. A folder without ``weights`` (exported before the
binding existed) still loads, with a warning that nothing binds its files: re-save it with
``save_pretrained`` to bind them. Every scalar field has a type and a range (:data:`FIELDS`,
:func:`check_fields`): string numbers, booleans for integers, NaN/Infinity and absurd sizes
(``fps: 1e9``) are refused with the field's path, as is JSON nested deeper than
:data:`MAX_DEPTH` (:func:`parse_config`).

Inference repeats the trained head's input pipeline in its order: extractor -> selector
columns -> rounding to ``feature_dtype`` (the store's) -> ``standardize`` -> head (its frame
pooling and masks inside). Version 1 folders carried no standardisation: they are refused with
the command that re-exports them (their heads would see unstandardised features).

The fusion rule sees the raw head posteriors (what it was fitted on, from ``predictions.csv``);
``temperature`` only rescales the per-modality posteriors a prediction reports.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from typing import Any, Mapping

from lightning_emo.errors import UserError

FORMAT = "lightning_emo.recognizer"
FORMAT_VERSION = 2
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


# --------------------------------------------------------------------------- field schema

_INT, _NUM, _STR, _DICT, _LIST, _NONE = "integer", "number", "string", "object", "list", "null"
MAX_DEPTH = 32  # deeper JSON is refused before anything recurses over it
# path (``*`` = any key) -> (allowed kinds, interval or None); absent optional fields pass
FIELDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "format": ((_STR,), None),
    "format_version": ((_INT,), "[1, 1000]"),
    "name": ((_STR, _NONE), None),
    "description": ((_STR, _NONE), None),
    "split_protocol": ((_STR, _NONE), None),
    "license": ((_STR, _NONE), None),
    "classes": ((_LIST,), None),
    "modalities": ((_DICT,), None),
    "metrics": ((_DICT,), None),
    "corpus": ((_DICT,), None),
    "weights": ((_DICT, _NONE), None),
    "weights.file": ((_STR,), None),
    "weights.sha256": ((_STR,), None),
    "modalities.*": ((_DICT,), None),
    "modalities.*.extractor": ((_DICT,), None),
    "modalities.*.extractor.name": ((_STR,), None),
    "modalities.*.extractor.modality": ((_STR,), None),
    "modalities.*.extractor.dim": ((_INT,), "[1, 1_048_576]"),
    "modalities.*.extractor.sample_rate": ((_INT, _NONE), "[1000, 384_000]"),
    "modalities.*.extractor.frame_rate": ((_NUM, _NONE), "(0, 1000]"),
    "modalities.*.extractor.crop_size": ((_INT, _NONE), "[8, 2048]"),
    "modalities.*.extractor.options": ((_DICT, _NONE), None),
    "modalities.*.extractor.options.fps": ((_NUM, _NONE), "(0, 1000]"),
    "modalities.*.extractor.options.crop_size": ((_INT, _NONE), "[8, 2048]"),
    "modalities.*.extractor.options.batch_size": ((_INT, _NONE), "[1, 4096]"),
    "modalities.*.head": ((_DICT,), None),
    "modalities.*.head.name": ((_STR,), None),
    "modalities.*.head.input_dim": ((_INT,), "[1, 1_048_576]"),
    "modalities.*.head.num_classes": ((_INT,), "[2, 10_000]"),
    "modalities.*.head.hidden_dim": ((_INT,), "[1, 65_536]"),
    "modalities.*.head.dropout": ((_NUM,), "[0, 1)"),
    "modalities.*.head.options": ((_DICT, _NONE), None),
    "modalities.*.head.options.layers": ((_INT, _NONE), "[1, 1024]"),
    "modalities.*.head.options.frame_pool": ((_INT,), "[1, 10_000]"),
    "modalities.*.input": ((_DICT,), None),
    "modalities.*.input.fps": ((_NUM,), "(0, 1000]"),
    "modalities.*.input.sample_rate": ((_INT,), "[1000, 384_000]"),
    "modalities.*.input.detector": ((_DICT,), None),
    "modalities.*.input.detector.name": ((_STR,), None),
    "modalities.*.input.detector.options": ((_DICT, _NONE), None),
    "modalities.*.feature_dtype": ((_STR,), None),
    "modalities.*.selector": ((_DICT, _NONE), None),
    "modalities.*.selector.k": ((_INT,), "[1, 1_048_576]"),
    "modalities.*.selector.dim": ((_INT,), "[1, 1_048_576]"),
    "modalities.*.standardize": ((_DICT, _NONE), None),
    "modalities.*.standardize.frames": ((_INT,), "[1, 1e15]"),
    "modalities.*.standardize.dim": ((_INT,), "[1, 1_048_576]"),
    "modalities.*.temperature": ((_NUM, _NONE), "(0, 1000]"),
    "modalities.*.embedded": ((_DICT, _NONE), None),
    "modalities.*.metrics": ((_DICT,), None),
    "modalities.*.checkpoint": ((_DICT,), None),
    "fusion": ((_DICT, _NONE), None),
    "fusion.inputs": ((_LIST,), None),
    "fusion.rule": ((_STR,), None),
    "fusion.state": ((_DICT,), None),
    "fusion.state.n_models": ((_INT,), "[1, 16]"),
    "fusion.state.n_classes": ((_INT,), "[2, 10_000]"),
}
# numbers in free-form option objects (extractor, head, detector, selector params) stay within this
OPTION_LIMIT = 1e7


def _kind(value: Any) -> str:
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return _INT
    if isinstance(value, float):
        return _NUM
    if isinstance(value, str):
        return _STR
    if isinstance(value, dict):
        return _DICT
    if isinstance(value, list):
        return _LIST
    return type(value).__name__


def _resolve(cfg: Any, pattern: str) -> list[tuple[str, Any]]:
    """``(path, value)`` of every field matching ``pattern`` (``*`` = any key of an object)."""
    found = [("", cfg)]
    for part in pattern.split("."):
        nxt = []
        for path, node in found:
            if not isinstance(node, dict):
                continue
            keys = list(node) if part == "*" else [part] if part in node else []
            nxt += [(f"{path}.{k}" if path else str(k), node[k]) for k in keys]
        found = nxt
    return found


def check_fields(cfg: Mapping[str, Any], source: str = "config.json") -> None:
    """Check every field of :data:`FIELDS` (type and interval) and that every number is finite.

    Raises:
        RecognizerError: naming the field's path, what it holds and what is expected.
    """
    _check_depth(cfg, source)
    for pattern, (kinds, interval) in FIELDS.items():
        for path, value in _resolve(cfg, pattern):
            kind = _kind(value)
            if not (kind in kinds or (kind == _INT and _NUM in kinds)):
                hint = " (a number written as a string: drop the quotes)" if kind == _STR and _looks_numeric(value) \
                    else ""
                raise RecognizerError(f"{source}: {path} must be {' or '.join(kinds)}, got {kind} {value!r}{hint}")
            if kind in (_INT, _NUM) and interval is not None and not _inside(value, interval):
                raise RecognizerError(f"{source}: {path} = {value!r} is out of range (expected a value in {interval})")
    for path, value in _numbers(cfg):
        if not math.isfinite(value):
            raise RecognizerError(f"{source}: {path} is {value}: every number must be finite")
        if (".options." in f".{path}." or ".params." in f".{path}.") and abs(value) > OPTION_LIMIT:
            raise RecognizerError(f"{source}: {path} = {value!r} is out of range (|value| <= {OPTION_LIMIT:g})")


def _inside(value: float, interval: str) -> bool:
    """``value`` in an interval written ``"[1, 10]"``, ``"(0, 1000]"``, ``"[0, 1)"``."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    if not math.isfinite(value):
        return False
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _numbers(node: Any, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(node, float) or (isinstance(node, int) and not isinstance(node, bool)):
        yield path, float(node)


def _check_depth(cfg: Any, source: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_DEPTH`, without recursing (a 100k-deep file stays cheap)."""
    stack = [(cfg, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RecognizerError(f"{source}: nested more than {MAX_DEPTH} levels deep: not a recognizer config")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]


def parse_config(text: str | bytes, source: str | os.PathLike = CONFIG_NAME) -> dict[str, Any]:
    """Parse ``config.json`` text: NaN/Infinity refused, nesting bounded before ``json`` recurses.

    Raises:
        RecognizerError: naming the file and what is wrong.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecognizerError(f"{source}: not UTF-8 text ({e})") from None
    depth = 0
    in_string = escaped = False
    for ch in text:  # bracket depth outside strings; json's recursive decoder would overflow first
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise RecognizerError(f"{source}: nested more than {MAX_DEPTH} levels deep: not a recognizer config")
        elif ch in "]}":
            depth -= 1

    def constant(name: str):
        raise RecognizerError(f"{source}: {name} is not a number JSON allows; every number must be finite")

    try:
        data = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise RecognizerError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RecognizerError(f"{source}: expected a JSON object, got {type(data).__name__}")
    return data


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_weights_digest(config: Mapping[str, Any], weights_file: str | os.PathLike,
                         config_file: str | os.PathLike = CONFIG_NAME) -> bool:
    """Check ``model.safetensors`` against the digest ``config.json`` records; False when none is recorded.

    Raises:
        RecognizerError: the digests differ (the files come from different exports, or bytes changed).
    """
    recorded = config.get("weights")
    if not recorded:
        return False
    found = file_sha256(weights_file)
    if found != recorded.get("sha256"):
        raise RecognizerError(f"{weights_file}: its SHA-256 ({found[:16]}...) is not the one {config_file} records "
                              f"({str(recorded.get('sha256'))[:16]}...): these weights are not the ones this config "
                              "was saved with (another export, or damaged bytes). Download or export the folder again")
    return True


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a recognizer config (see the module docstring) and return a normalised deep copy.

    Raises:
        RecognizerError: naming the field, e.g. a class list whose length differs from a
            head's output size, an unknown modality, or a fusion rule fitted on another number
            of classes or models.
    """
    if not isinstance(config, Mapping):
        raise RecognizerError(f"config must be a JSON object, got {type(config).__name__}")
    check_fields(config)
    cfg = copy.deepcopy(dict(config))
    if cfg.get("format") != FORMAT:
        raise RecognizerError(f"config.json: format is {cfg.get('format')!r}, expected {FORMAT!r} (not a "
                              "lightning_emo recognizer)")
    if cfg.get("format_version") == 1:
        raise RecognizerError(
            "config.json: format_version 1: exported before recognizers carried their heads' input "
            "standardisation (the training set's feature mean and standard deviation, kept in each checkpoint); "
            "its heads would see unstandardised features and give wrong posteriors. Re-export it from its "
            "checkpoints with this version: `lightning-emo export --run RUN --audio SET --video SET --rule RULE "
            "--out DIR` (or --ckpt audio=CKPT --ckpt video=CKPT --fusion RULE_JSON --features video=STORE)")
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
    for key in ("name", "description", "split_protocol", "license", "weights"):
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
    if "standardize" not in mc:
        raise RecognizerError(f"config.json: {where} lacks 'standardize' (null when the head standardised "
                              "nothing): without it the head's input pipeline is unknown; re-export the recognizer "
                              "from its checkpoints with `lightning-emo export`")
    norm = mc["standardize"]
    if norm is not None:
        _need(norm, "frames", f"{where}.standardize", int)
        if _need(norm, "dim", f"{where}.standardize", int) != int(head["input_dim"]):
            raise RecognizerError(f"config.json: {where}.standardize has {norm['dim']} features, the head takes "
                                  f"{head['input_dim']}")
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
