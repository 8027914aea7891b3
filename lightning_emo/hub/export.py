"""Assemble a recognizer's config and tensors from ``EmotionModule`` checkpoints, feature stores and a fusion rule.

Checkpoints are read with ``torch.load(weights_only=True)`` (no arbitrary objects). What a
checkpoint does not record comes from the feature store its head was trained on
(``store.json``): the face detector, its options and the frame rate, the stored dtype and the
fitted feature selector. Without a store, those are given explicitly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from lightning_emo.data.checks import match_classes
from lightning_emo.hub.config import (
    DEFAULT_FUSION_ORDER,
    FEATURE_DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MODALITIES,
    SPEC_MODALITY,
    RecognizerError,
    modality_name,
)
from lightning_emo.models.heads import reorder_output_rows
from lightning_emo.utils import log, not_a_file

__all__ = ["build_from_checkpoints", "protocol_parts", "read_checkpoint", "read_fusion_file",
           "split_protocol_from_manifest"]

# Builder options that name something on the exporting machine, not the features: never exported.
LOCAL_OPTIONS = ("weights", "cache_dir", "local_files_only")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint of an ``EmotionModule``, loaded weights-only on the CPU.

    Raises:
        RecognizerError: not a file, not loadable without unpickling objects, or not an EmotionModule checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise RecognizerError(f"{path}: {not_a_file(path, 'checkpoint file', 'last.ckpt')}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RecognizerError(f"{path}: holds objects a weights-only load refuses ({e}); export only checkpoints "
                              "written by lightning-emo fit") from None
    except Exception as e:  # torch raises several types for non-checkpoint files
        raise RecognizerError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise RecognizerError(f"{path}: not a Lightning checkpoint with hyper_parameters (an EmotionModule saved by "
                              "`lightning-emo fit`)")
    hp = ckpt["hyper_parameters"]
    for key in ("head", "input_dim", "modality"):
        if key not in hp:
            raise RecognizerError(f"{path}: hyper_parameters lack {key!r}: not an EmotionModule checkpoint")
    if not hp.get("classes"):
        raise RecognizerError(f"{path}: the checkpoint records no class names (train through `lightning-emo fit`, "
                              "which links them from the data)")
    if not hp.get("extractor_spec"):
        raise RecognizerError(f"{path}: the checkpoint does not record which extractor produced its features "
                              "(extractor_spec); train through `lightning-emo fit` with a FeatureDataModule, which "
                              "links it")
    return ckpt


def _checkpoint_metrics(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """Validation metrics the checkpoint's callbacks kept: FusionPriorCallback metrics, ModelCheckpoint best score."""
    out: dict[str, Any] = {}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if not isinstance(state, Mapping):
            continue
        if key.startswith("FusionPriorCallback") and state.get("metrics"):
            for values in state["metrics"].values():
                out.update({"accuracy": float(values["micro_f1"]), "micro_f1": float(values["micro_f1"]),
                            "macro_f1": float(values["macro_f1"]),
                            "recall": {c: float(r) for c, r in values.get("recall", {}).items()}})
        elif key.startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            monitor = str(state.get("monitor") or "score").replace("/", "_")
            out.setdefault("best", {})[monitor] = float(state["best_model_score"])
    return out


def read_fusion_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``rule.json`` of ``lightning-emo fuse`` (``{"group", "inputs", "classes", "state"}``) or a rule state."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RecognizerError(f"fusion file {path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise RecognizerError(f"fusion file {path}: expected a JSON object")
    if "state" not in data:
        if "rule" not in data:
            raise RecognizerError(f"fusion file {path}: neither a rule.json (with 'state') nor a rule state "
                                  "(with 'rule')")
        data = {"state": data}
    data["path"] = str(path)
    return data


def _fusion_inputs(data: Mapping[str, Any], modalities: Sequence[str], given: Sequence[str] | None) -> list[str]:
    """The modality of each fusion input, in the rule's order."""
    n = int(data["state"].get("n_models") or 0)
    if given:
        inputs = [modality_name(m) for m in given]
    elif data.get("modalities"):
        inputs = [modality_name(m) for m in data["modalities"]]
    elif (data.get("inputs") and len(data["inputs"]) == 2
          and data.get("group") == f"{data['inputs'][1]}+{data['inputs'][0]}"):
        # `lightning-emo fuse` names a pair "<audio>+<video>" and gives the rule [video, audio]
        inputs = list(DEFAULT_FUSION_ORDER)
    elif n == 2 and sorted(modalities) == sorted(DEFAULT_FUSION_ORDER):
        inputs = list(DEFAULT_FUSION_ORDER)
    else:
        raise RecognizerError(f"cannot tell which modality each of the fusion rule's {n} inputs is; give "
                              "fusion_inputs (--fusion-inputs video,audio)")
    if len(inputs) != n or sorted(inputs) != sorted(modalities):
        raise RecognizerError(f"the fusion rule takes {n} inputs {inputs}; the checkpoints give modalities "
                              f"{sorted(modalities)}")
    return inputs


def _fuse_results(rule_json: Path, inputs_names: Sequence[str], rule_name: str) -> dict[str, Any] | None:
    """The row of ``results.csv`` (beside ``<group>/<rule>/rule.json``) for this rule, and the single-model rows."""
    results = rule_json.parent.parent.parent / "results.csv"
    if not results.is_file():
        return None
    with open(results, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    wanted = "+".join(inputs_names)
    fused = next((r for r in rows if r.get("kind") != "single" and r.get("rule") == rule_name
                  and r.get("inputs") == wanted), None)
    singles = {r["group"]: r for r in rows if r.get("kind") == "single"}
    return {"fused": fused, "singles": singles}


def _row_metrics(row: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    recall = {k[len("recall_"):]: float(v) for k, v in row.items() if k.startswith("recall_") and v not in ("", None)}
    out: dict[str, dict[str, Any]] = {"val": {"accuracy": float(row["val_accuracy"])},
                                      "test": {"accuracy": float(row["test_accuracy"])}}
    for split in ("val", "test"):  # UA and F1 beside accuracy (results.csv written before them has none)
        for metric in ("ua", "macro_f1", "weighted_f1"):
            if row.get(f"{split}_{metric}") not in ("", None):
                out[split][metric] = float(row[f"{split}_{metric}"])
    if recall:
        out["test"]["recall"] = recall
    return out


def split_protocol_from_manifest(path: str | os.PathLike) -> tuple[dict[str, Any], str, list[str]]:
    """``(corpus, split protocol text, classes)`` from a manifest: clip and speaker counts per split."""
    from lightning_emo.data.manifest import check_speaker_independent, read_manifest

    manifest = read_manifest(path, check_files=False)
    counts = {s: len(manifest.split(s)) for s in ("train", "val", "test")}
    speakers = {s: len({c.speaker for c in manifest.split(s) if c.speaker}) for s in counts}
    independent = all(c.speaker for c in manifest.clips) and not check_speaker_independent(manifest.clips)
    kind = "speaker-independent" if independent else "clip-level (speakers may repeat across splits)"
    text = (f"{kind} train/val/test split: " + ", ".join(f"{counts[s]} {s}" for s in counts) + " clips"
            + (f" ({', '.join(f'{speakers[s]}' for s in counts)} speakers)" if independent else "")
            + "; heads trained on train, fusion fitted on val, scores on test")
    corpus = {"name": manifest.corpus, "clips": len(manifest.clips), "splits": counts}
    return corpus, text, list(manifest.classes)


def build_from_checkpoints(
    checkpoints: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    fusion: Any = None,
    *,
    fusion_inputs: Sequence[str] | None = None,
    features: Mapping[str, str | os.PathLike] | None = None,
    detector: str | None = None,
    detector_options: Mapping[str, Any] | None = None,
    fps: float | None = None,
    weights: Mapping[str, str | os.PathLike] | None = None,
    feature_dtype: str | None = None,
    temperatures: Mapping[str, float] | None = None,
    manifest: str | os.PathLike | None = None,
    corpus: Mapping[str, Any] | str | None = None,
    split_protocol: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    name: str | None = None,
    description: str | None = None,
    license: str | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Build a recognizer's ``(config, tensors)`` (see :mod:`lightning_emo.hub.config`).

    Args:
        checkpoints: ``{"audio": ckpt, "video": ckpt}`` (``face`` is accepted for ``video``) or a
            list of checkpoints whose modality is read from their hyper-parameters.
        fusion: a fitted :class:`~lightning_emo.fusion.rules.FusionRule`, its ``state_dict()``,
            the content of a ``rule.json`` written by ``lightning-emo fuse``, or that file's path.
            Required for two modalities unless you accept the default equal-weight average
            (``None`` then builds it and says so in the log).
        fusion_inputs: the modality of each rule input, in order (default: read from
            ``rule.json``; ``lightning-emo fuse`` orders a pair video, audio).
        features: ``{modality: feature store directory}`` the heads were trained on: the
            detector, frame rate, dtype and feature selector are read from its ``store.json``.
        detector, detector_options, fps: the face detector and frame rate, when no video store
            is given (fps default: the spec's, else 5, as ``extract`` does).
        weights: ``{modality: weights file}`` for extractors with ``file``-sourced weights (the
            paper's speech DNN / face CNN; default: the path recorded in the spec). Those
            weights are embedded in ``model.safetensors``; public backbones are only referenced.
        feature_dtype: the stored feature dtype, without a store (default ``float16``, extract's).
        temperatures: per-modality temperatures for the reported posteriors (default: the
            fusion rule's calibration, when it has one).
        manifest: the corpus manifest: corpus name and the split protocol are read from it.
        corpus, split_protocol, metrics, name, description, license: card and config fields
            (``metrics`` is merged over what the checkpoints and ``results.csv`` give).

    Raises:
        RecognizerError: inconsistent parts (class lists, extractors, dimensions), with what differs.
    """
    from lightning_emo.extractors.base import ExtractorSpec
    from lightning_emo.models.module import stacked_layers

    paths = _normalise_checkpoints(checkpoints)
    features = {modality_name(k): Path(v) for k, v in (features or {}).items()}
    weights = {modality_name(k): Path(v) for k, v in (weights or {}).items()}
    temperatures = {modality_name(k): float(v) for k, v in (temperatures or {}).items()}
    classes: list[str] | None = None
    modalities: dict[str, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for m, path in paths.items():
        ckpt = read_checkpoint(path)
        hp = ckpt["hyper_parameters"]
        if modality_name(hp["modality"]) != m:
            raise RecognizerError(f"{path}: a {hp['modality']} model given as the {m} checkpoint")
        ck_classes = [str(c) for c in hp["classes"]]
        state = ckpt["state_dict"]
        if classes is None:
            classes, first = ck_classes, path
        else:  # the same classes in another order: this head's output rows are put in the first's order
            index = match_classes(ck_classes, classes, path, first, what="checkpoints of one recognizer",
                                  error=_ClassesError)
            if index is not None:
                state = dict(state)
                reorder_output_rows(state, index)
                ck_classes = list(classes)
        spec = ExtractorSpec.from_dict(hp["extractor_spec"]).to_dict()
        head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        if not head_state:
            raise RecognizerError(f"{path}: no head.* weights in the state dict")
        tensors.update({f"heads.{m}.{k}": v.detach().cpu().float().contiguous() if v.is_floating_point()
                        else v.detach().cpu().contiguous() for k, v in head_state.items()})
        options = dict(hp.get("head_options") or {})
        layers = stacked_layers(hp["extractor_spec"], int(hp["input_dim"]))
        if layers and "layers" not in options:  # EmotionModule adds it to the head, not to its hyper-parameters
            options["layers"] = layers
        head = {"name": hp["head"], "input_dim": int(hp["input_dim"]), "num_classes": len(ck_classes),
                "hidden_dim": int(hp.get("hidden_dim", 128)), "dropout": float(hp.get("dropout", 0.5)),
                "options": options}
        end_to_end = bool(hp.get("extractor"))
        standardize = _standardization(m, hp, state, head["input_dim"], tensors, path)
        mc: dict[str, Any] = {"extractor": spec, "embedded": None, "head": head, "selector": None,
                              "standardize": standardize, "temperature": None,
                              "checkpoint": {"file": Path(path).name, "sha256": _sha256(Path(path)),
                                             "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")},
                              "metrics": {}}
        ck_metrics = _checkpoint_metrics(ckpt)
        if ck_metrics:
            mc["metrics"]["val"] = ck_metrics
        _inputs_from_store(m, mc, features.get(m), spec, head, tensors, detector, detector_options, fps,
                           feature_dtype, end_to_end)
        extractor_state = {k[len("extractor."):]: v for k, v in state.items() if k.startswith("extractor.")}
        _embed_extractor(m, mc, spec, weights.get(m), extractor_state, tensors, path)
        modalities[m] = mc
    assert classes is not None

    cfg: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "library": {"name": "lightning-emo", "version": _version()},
        "name": name, "description": description, "classes": classes,
        "modalities": {m: modalities[m] for m in MODALITIES if m in modalities},
        "fusion": None, "metrics": {}, "corpus": {}, "split_protocol": split_protocol, "license": license,
    }
    _attach_fusion(cfg, fusion, fusion_inputs, classes)
    for m, mc in cfg["modalities"].items():
        if m in temperatures:
            mc["temperature"] = temperatures[m]
    _attach_metrics(cfg)
    if manifest is not None:
        man_corpus, text, man_classes = split_protocol_from_manifest(manifest)
        # the manifest gives the split protocol only: its class order does not matter, its class set does
        match_classes(man_classes, classes, manifest, first, what="manifest vs checkpoints", error=_ClassesError)
        cfg["corpus"].update(man_corpus)
        if cfg["split_protocol"] is None:
            cfg["split_protocol"] = text
    if isinstance(corpus, str):
        cfg["corpus"]["name"] = corpus
    elif corpus:
        cfg["corpus"].update(dict(corpus))
    if metrics:
        _merge(cfg["metrics"], json.loads(json.dumps(metrics)))
    return cfg, tensors


class _ClassesError(RecognizerError):
    """A class-list mismatch between the parts of an export (message from :func:`match_classes`)."""

    def __init__(self, file, message):
        super().__init__(f"{file}: {message}")


def _version() -> str:
    from lightning_emo import __version__

    return __version__


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _normalise_checkpoints(checkpoints) -> dict[str, Path]:
    if isinstance(checkpoints, Mapping):
        out = {modality_name(k): Path(v) for k, v in checkpoints.items()}
    else:
        out = {}
        for p in checkpoints:
            hp = read_checkpoint(p)["hyper_parameters"]
            m = modality_name(hp["modality"])
            if m in out:
                raise RecognizerError(f"two {m} checkpoints given ({out[m]}, {p}); a recognizer has one per modality")
            out[m] = Path(p)
    if not out:
        raise RecognizerError("no checkpoint given")
    return out


def _standardization(m: str, hp: Mapping[str, Any], state: Mapping[str, torch.Tensor], dim: int,
                     tensors: dict[str, torch.Tensor], path: Path) -> dict[str, int] | None:
    """The head's input standardisation as ``EmotionModule.normalize`` applies it, or ``None`` when it applies none.

    The statistics (``input_mean``/``input_std`` buffers, measured on the training set when
    ``fit`` starts) go into ``tensors`` as ``standardize.<m>.mean``/``.std``.
    """
    frames = state.get("input_norm_frames")
    if not hp.get("input_norm", True) or frames is None or int(frames) == 0:
        return None  # normalize() is the identity: switched off, end to end, or never measured
    mean, std = state.get("input_mean"), state.get("input_std")
    if mean is None or std is None or tuple(mean.shape) != (dim,) or tuple(std.shape) != (dim,):
        raise RecognizerError(f"{path}: the checkpoint measured its input standardisation on {int(frames)} frames "
                              f"but holds no input_mean/input_std of {dim} values")
    if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise RecognizerError(f"{path}: input_mean/input_std hold non-finite values or a standard deviation <= 0: "
                              "the checkpoint is damaged")
    tensors[f"standardize.{m}.mean"] = mean.detach().cpu().float().contiguous()
    tensors[f"standardize.{m}.std"] = std.detach().cpu().float().contiguous()
    return {"frames": int(frames), "dim": int(dim)}


def _inputs_from_store(m, mc, store_path, spec, head, tensors, detector, detector_options, fps, feature_dtype,
                       end_to_end) -> None:
    """Fill ``input``, ``feature_dtype`` and ``selector`` from the feature store (or the explicit arguments)."""
    from lightning_emo.extractors.extract import DEFAULT_FPS

    if store_path is not None:
        from lightning_emo.data.store import FeatureStore, FeatureStoreError
        from lightning_emo.extractors.selection import FeatureSelector

        try:
            store = FeatureStore.open(store_path)
        except FeatureStoreError as e:
            raise RecognizerError(str(e)) from None
        sspec = store.spec.to_dict()
        if sspec["modality"] != SPEC_MODALITY[m]:
            raise RecognizerError(f"feature store {store_path} holds {sspec['modality']} features, not {m}")
        differs = [k for k in ("name", "dim", "options", "weights") if sspec.get(k) != spec.get(k)]
        if differs:
            raise RecognizerError(f"feature store {store_path} was written by another extractor configuration than the "
                                  f"{m} checkpoint records (differs in: {', '.join(differs)})")
        if store.dim != head["input_dim"]:
            raise RecognizerError(f"feature store {store_path} holds {store.dim}-d features but the {m} head takes "
                                  f"{head['input_dim']}-d")
        key = store.key
        mc["feature_dtype"] = str(store.meta["dtype"])
        if m == "video":
            mc["input"] = {"fps": float(key.get("fps") or spec.get("frame_rate") or DEFAULT_FPS),
                           "detector": {"name": key.get("detector") or "mtcnn",
                                        "options": dict(key.get("detector_options") or {})}}
        else:
            mc["input"] = {"sample_rate": int(key.get("sample_rate") or spec["sample_rate"])}
        if store.selection:
            sel = FeatureSelector.from_store(store)
            mc["selector"] = {"method": store.selection.get("method", "random_forest"), "k": int(sel.k),
                              "dim": int(sel.dim), "unit": sel.unit, "params": dict(sel.params)}
            tensors[f"selectors.{m}.indices"] = torch.as_tensor(np.asarray(sel.indices, dtype=np.int64))
        return
    if m == "video":
        if detector is None:
            raise RecognizerError("the video checkpoint does not record the face detector its features were made "
                                  "with: give the feature store (features={'video': STORE} / --features "
                                  "video=STORE) or the detector (--detector mtcnn|none)")
        mc["input"] = {"fps": float(fps or spec.get("frame_rate") or DEFAULT_FPS),
                       "detector": {"name": detector, "options": dict(detector_options or {})}}
    else:
        mc["input"] = {"sample_rate": int(spec["sample_rate"])}
    dtype = feature_dtype or ("float32" if end_to_end else "float16")
    if dtype not in FEATURE_DTYPES:
        raise RecognizerError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    mc["feature_dtype"] = dtype
    if head["input_dim"] != int(spec["dim"]):
        raise RecognizerError(f"the {m} head takes {head['input_dim']}-d features but extractor {spec['name']!r} "
                              f"gives {spec['dim']}-d: its features were selected; give the selected feature store "
                              f"(features={{'{m}': STORE}} / --features {m}=STORE) so the selector ships with the "
                              "model")


def _embed_extractor(m, mc, spec, weights_path, extractor_state, tensors, ckpt_path) -> None:
    """Embed the extractor weights that are not public: a ``file`` source's file, or fine-tuned weights."""
    kind = spec["weights"]["kind"]
    options = spec["options"]
    if extractor_state and kind == "file":
        raise RecognizerError(f"{ckpt_path}: a fine-tuned extractor with file-sourced weights cannot be exported yet")
    if extractor_state:
        for k, v in extractor_state.items():
            tensors[f"extractors.{m}.{k}"] = v.detach().cpu().contiguous()
        mc["embedded"] = {"kind": "state_dict", "keys": sorted(extractor_state)}
    elif kind == "file":
        path = weights_path or (Path(options["weights"]) if options.get("weights") else None)
        if path is None or not Path(path).is_file():
            raise RecognizerError(f"extractor {spec['name']!r} ({m}) loads its weights from a local file that is not "
                                  f"here ({path}); give it with weights={{'{m}': PATH}} / --weights {m}=PATH so "
                                  "they can be embedded in model.safetensors")
        path = Path(path)
        if path.suffix != ".safetensors":
            raise RecognizerError(f"{path}: only safetensors weight files can be embedded; convert it (e.g. "
                                  "save_speech_dnn / save_face_cnn) and re-extract, or give the .safetensors file")
        digest = _sha256(path)
        expected = spec["weights"].get("sha256")
        if expected and digest != expected:
            raise RecognizerError(f"{path}: sha256 {digest[:12]}... differs from the file the features were "
                                  f"extracted with ({expected[:12]}...)")
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        file_tensors = load_file(str(path), device="cpu")
        for k, v in file_tensors.items():
            tensors[f"extractors.{m}.{k}"] = v.contiguous()
        mc["embedded"] = {"kind": "file", "filename": path.name, "sha256": digest, "metadata": metadata,
                          "keys": sorted(file_tensors)}
        log.info("embedding %s weights of extractor %s (%d tensors) from %s", m, spec["name"], len(file_tensors),
                 path.name)
    for key in LOCAL_OPTIONS:
        if key in options and options[key] is not None and not isinstance(options[key], bool):
            options[key] = None


def _attach_fusion(cfg: dict[str, Any], fusion: Any, fusion_inputs: Sequence[str] | None, classes: list[str]) -> None:
    from lightning_emo.fusion.rules import FusionRule, WeightedSumFusion, rule_from_state_dict

    mods = list(cfg["modalities"])
    if fusion is None:
        if len(mods) < 2:
            return
        rule = WeightedSumFusion()
        rule.n_models_, rule.n_classes_, rule.weights_ = len(mods), len(classes), np.full(len(mods), 1.0 / len(mods))
        log.info("no fusion rule given: the recognizer averages the %s posteriors with equal weights",
                 " and ".join(mods))
        data: dict[str, Any] = {"state": rule.state_dict(), "modalities": list(DEFAULT_FUSION_ORDER)}
    elif isinstance(fusion, FusionRule):
        data = {"state": fusion.state_dict()}
    elif isinstance(fusion, (str, os.PathLike)):
        data = read_fusion_file(fusion)
    elif isinstance(fusion, Mapping):
        data = dict(fusion) if "state" in fusion else {"state": dict(fusion)}
    else:
        raise RecognizerError(f"fusion must be a FusionRule, its state, a rule.json or its path; got "
                              f"{type(fusion).__name__}")
    state = json.loads(json.dumps(data["state"]))
    try:
        rule_from_state_dict(state)
    except (KeyError, ValueError, TypeError) as e:
        raise RecognizerError(f"the fusion state does not load ({type(e).__name__}: {e})") from None
    if data.get("classes") is not None:  # a fitted rule indexes classes by position: same order or refused
        match_classes([str(c) for c in data["classes"]], classes, data.get("path") or "the fusion rule",
                      "the checkpoints", reorder=False, what="fusion rule vs checkpoints", error=_ClassesError)
    if state.get("n_classes") != len(classes):
        raise RecognizerError(f"the fusion rule was fitted on {state.get('n_classes')} classes, the checkpoints have "
                              f"{len(classes)}")
    if len(mods) < 2 and state.get("n_models") != len(mods):
        raise RecognizerError(f"the fusion rule fuses {state.get('n_models')} models; one checkpoint was given")
    inputs = _fusion_inputs(data, mods, fusion_inputs)
    cfg["fusion"] = {"inputs": inputs, "rule": state["rule"], "state": state}
    if data.get("path"):
        cfg["fusion"]["source"] = "/".join(Path(data["path"]).parts[-3:])
        found = _fuse_results(Path(data["path"]), data.get("inputs") or [], Path(data["path"]).parent.name)
        if found:
            if found["fused"]:
                _merge(cfg["metrics"], {split: {"fused": v} for split, v in _row_metrics(found["fused"]).items()})
            for model_name, m in zip(data.get("inputs") or [], inputs, strict=False):
                row = found["singles"].get(model_name)
                if row:
                    _merge(cfg["metrics"], {split: {m: v} for split, v in _row_metrics(row).items()})
    temps = (state.get("temperature") or {}).get("temperatures")
    if temps:
        for m, t in zip(inputs, temps, strict=True):
            cfg["modalities"][m]["temperature"] = float(t)


def _attach_metrics(cfg: dict[str, Any]) -> None:
    """Copy each checkpoint's validation accuracy (and macro-F1) to the top-level table where results.csv gave none."""
    for m, mc in cfg["modalities"].items():
        val = mc["metrics"].get("val") or {}
        table = cfg["metrics"].setdefault("val", {})
        if "accuracy" in val and m not in table:  # one source per row: never mix results.csv and checkpoint values
            table[m] = {k: val[k] for k in ("accuracy", "macro_f1") if k in val}
    if not cfg["metrics"].get("val"):
        cfg["metrics"].pop("val", None)


def protocol_parts(run_dir: str | os.PathLike, audio: str | None, video: str | None,
                   rule: str = "prior") -> dict[str, Any]:
    """The export arguments for feature sets of a ``lightning-emo reproduce`` / ``demo`` output folder.

    Reads ``<run_dir>/protocol.json`` (stores, manifest), the best checkpoint of each set
    (``runs/<set>/fit/checkpoints/best-*.ckpt``, highest ``val_acc`` in its name) and the fitted
    rule ``fusion/<audio>+<video>/<rule>/rule.json``.

    Returns:
        ``{"checkpoints": {modality: path}, "features": {modality: store}, "fusion": path | None,
        "manifest": path}`` for :func:`build_from_checkpoints`.
    """
    import re

    run = Path(run_dir)
    meta_path = run / "protocol.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RecognizerError(f"{meta_path}: not a reproduce/demo output ({e})") from None
    if not audio and not video:
        raise RecognizerError("name the audio and/or video feature set to export (--audio NAME --video NAME)")
    stores = meta.get("stores") or {}
    folds = [run / "folds" / Path(d).name for d in meta.get("runs") or [] if Path(d).name != run.name]
    if folds and not (run / "runs").is_dir():
        raise RecognizerError(f"{run} holds {len(folds)} runs (folds x seeds), each with its own heads: export one of "
                              f"them, e.g. --run {folds[0]}")
    out: dict[str, Any] = {"checkpoints": {}, "features": {}, "fusion": None, "manifest": meta.get("manifest")}
    for modality, name in (("audio", audio), ("video", video)):
        if not name:
            continue
        if name not in stores:
            raise RecognizerError(f"{meta_path}: no feature set {name!r} (have {', '.join(stores) or 'none'})")
        folder = run / "runs" / name / "fit" / "checkpoints"
        found = sorted(folder.glob("best-*.ckpt"))
        if not found:
            raise RecognizerError(f"no best-*.ckpt in {folder}: was {name!r} trained?")

        def score(p: Path) -> float:
            m = re.search(r"val_acc=([0-9.]+?)(?:-v\d+)?\.ckpt$", p.name)
            return float(m.group(1)) if m else -1.0

        out["checkpoints"][modality] = max(found, key=score)
        out["features"][modality] = Path(stores[name])
    if audio and video:
        rule_json = run / "fusion" / f"{audio}+{video}" / rule / "rule.json"
        if not rule_json.is_file():
            raise RecognizerError(f"{rule_json} not found: rules fitted for {audio}+{video} are in "
                                  f"{', '.join(p.name for p in rule_json.parent.parent.glob('*')) or 'none'}")
        out["fusion"] = rule_json
    return out
