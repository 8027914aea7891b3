"""Turn pretraining checkpoints into the weight files the ``speech_dnn``/``speech_bottleneck`` and ``face_cnn`` extractors load.

``python -m lightning_emo.pretrain.export --ckpt CKPT --out FILE.safetensors`` (the kind of
checkpoint is recognised from its hyper-parameters), or from Python
:func:`export_speech_dnn` / :func:`export_face_cnn` / :func:`export_checkpoint`.

What is written:

* speech: ``FILE`` by :func:`~lightning_emo.extractors.speech_dnn.save_speech_dnn` (the whole
  ``SpeechDNN``, its config and the input normalisation; the CTC output layer included) and
  ``FILE`` with suffix ``.vocab.json``: the output units, so the exported network still
  decodes (:class:`~lightning_emo.pretrain.asr_data.Vocabulary`).
* faces: ``FILE`` by :func:`~lightning_emo.extractors.face_cnn.save_face_cnn` and ``FILE``
  with suffix ``.identities.json``: the identity names in output order.

Every export is read back through the extractor registry (``build_extractor(name,
weights=FILE)``) before the function returns, so a file that the extractors cannot load is
never reported as written. The file then works with ``lightning-emo extract --extractor
speech_dnn --weights FILE`` (``speech_bottleneck`` for a bottleneck network, ``face_cnn`` for
faces; ``--select K`` adds the random-forest selection of the paper's v1024/v2048).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_emo import errors
from lightning_emo.errors import debug_enabled, present
from lightning_emo.utils import atomic_write_text, check_outputs

KINDS = ("auto", "speech", "face")


def _load_checkpoint(ckpt: str | os.PathLike) -> dict[str, Any]:
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for files that are not checkpoints
        raise ValueError(f"{path} is not a loadable Lightning checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return dict(checkpoint)


def checkpoint_kind(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> str:
    """``speech`` (a :class:`SpeechDNNPretraining` checkpoint) or ``face`` (:class:`FaceCNNPretraining`)."""
    hparams = checkpoint.get("hyper_parameters", {}) or {}
    if "speech_dnn" in hparams:
        return "speech"
    if "identities" in hparams and any(k.startswith("cnn.") for k in checkpoint.get("state_dict", {})):
        return "face"
    raise ValueError(f"{source}: neither a SpeechDNNPretraining checkpoint (hyper-parameter 'speech_dnn') nor a "
                     f"FaceCNNPretraining one (hyper-parameter 'identities', weights 'cnn.*'); hyper-parameters: "
                     f"{sorted(hparams)}")


def sidecar(out: str | os.PathLike, what: str) -> Path:
    """``model.safetensors`` -> ``model.<what>.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.{what}.json")


def export_speech_dnn(ckpt: str | os.PathLike, out: str | os.PathLike, license: str = "",
                      verify: bool = True) -> Path:
    """Write a :class:`SpeechDNNPretraining` checkpoint's network as a ``speech_dnn``/``speech_bottleneck`` weights file.

    Args:
        ckpt: the Lightning checkpoint.
        out: the safetensors file to write (``FILE.vocab.json`` goes beside it).
        license: the license string stored in the file's metadata (shown in model cards).
        verify: load the written file through the extractor registry before returning.

    Returns:
        ``out``.
    """
    from lightning_emo.extractors.speech_dnn import load_speech_dnn, save_speech_dnn
    from lightning_emo.pretrain.speech import vocabulary_of

    checkpoint = _load_checkpoint(ckpt)
    if checkpoint_kind(checkpoint, str(ckpt)) != "speech":
        raise ValueError(f"{ckpt} is a face CNN checkpoint: use export_face_cnn")
    model = load_speech_dnn(ckpt)  # reads hyper_parameters['speech_dnn'] and the dnn.* weights, strictly
    out = save_speech_dnn(model, out, license=license)
    vocabulary = vocabulary_of(checkpoint)
    vocabulary.save(sidecar(out, "vocab"))
    if verify:
        _verify(out, "speech_bottleneck" if model.bottleneck else "speech_dnn", model.feature_dim)
    return out


def export_face_cnn(ckpt: str | os.PathLike, out: str | os.PathLike, verify: bool = True) -> Path:
    """Write a :class:`FaceCNNPretraining` checkpoint's network as a ``face_cnn`` weights file.

    Args:
        ckpt: the Lightning checkpoint.
        out: the safetensors file to write (``FILE.identities.json`` goes beside it).
        verify: load the written file through the extractor registry before returning.

    Returns:
        ``out``.
    """
    from lightning_emo.extractors.face_cnn import FACE_CNN_POOL5, FaceCNN, save_face_cnn

    checkpoint = _load_checkpoint(ckpt)
    if checkpoint_kind(checkpoint, str(ckpt)) != "face":
        raise ValueError(f"{ckpt} is a speech DNN checkpoint: use export_speech_dnn")
    hp = checkpoint["hyper_parameters"]
    identities = list(hp["identities"])
    config = dict(num_identities=len(identities), fc_dims=tuple(hp.get("fc_dims", (4096, 4096))),
                  norm=hp.get("norm", "batch"), dropout=hp.get("dropout", 0.5),
                  mean=tuple(hp.get("mean", (0.5, 0.5, 0.5))), std=tuple(hp.get("std", (0.5, 0.5, 0.5))))
    model = FaceCNN(**config)
    state = {k[len("cnn."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("cnn.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{ckpt}: the cnn.* weights do not fit FaceCNN({config}): {e}") from None
    out = save_face_cnn(model, out)
    atomic_write_text(sidecar(out, "identities"), json.dumps({"identities": identities}, ensure_ascii=False,
                                                              indent=1) + "\n")
    if verify:
        _verify(out, "face_cnn", FACE_CNN_POOL5)
    return out


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, kind: str = "auto", **kwargs) -> Path:
    """Export either kind of pretraining checkpoint (``kind``: ``auto``, ``speech`` or ``face``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        kind = checkpoint_kind(_load_checkpoint(ckpt), str(ckpt))
    return export_speech_dnn(ckpt, out, **kwargs) if kind == "speech" else export_face_cnn(ckpt, out, **kwargs)


def _verify(path: Path, extractor: str, dim: int) -> None:
    from lightning_emo.extractors import build_extractor
    from lightning_emo.extractors.extract import register_extractors

    register_extractors()
    built = build_extractor(extractor, weights=str(path))
    if built.spec.dim != dim:
        raise RuntimeError(f"{path}: the {extractor} extractor built from the export gives {built.spec.dim}-d "
                           f"features, expected {dim}")


def main(argv: list[str] | None = None) -> int:
    """``python -m lightning_emo.pretrain.export --ckpt CKPT --out FILE``."""
    parser = errors.ArgumentParser(
        prog="python -m lightning_emo.pretrain.export",
        description="Export a SpeechDNNPretraining or FaceCNNPretraining checkpoint as the weights file of the "
        "speech_dnn / speech_bottleneck / face_cnn extractor (safetensors + a JSON of output labels).")
    parser.add_argument("--ckpt", required=True, help="the Lightning checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="the weights file to write (.safetensors)")
    parser.add_argument("--kind", default="auto", choices=KINDS, help="checkpoint kind (default: recognised)")
    parser.add_argument("--license", default="", help="speech: license string stored in the file")
    parser.add_argument("--no-verify", action="store_true", help="skip loading the export back as an extractor")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file and its sidecar")
    args = parser.parse_args(argv)
    try:
        kind = args.kind if args.kind != "auto" else checkpoint_kind(_load_checkpoint(args.ckpt), args.ckpt)
        check_outputs([args.out, sidecar(args.out, "vocab" if kind == "speech" else "identities")], args.overwrite)
        if kind == "speech":
            out = export_speech_dnn(args.ckpt, args.out, license=args.license, verify=not args.no_verify)
            extractor = "speech_bottleneck" if _has_bottleneck(out) else "speech_dnn"
            labels = sidecar(out, "vocab")
        else:
            out = export_face_cnn(args.ckpt, args.out, verify=not args.no_verify)
            extractor, labels = "face_cnn", sidecar(out, "identities")
    except (OSError, ValueError, RuntimeError) as e:  # a checkpoint that is not what --kind/--ckpt says
        if debug_enabled():
            raise
        return present("pretrain.export", e)
    print(f"wrote {out} and {labels}\nuse: lightning-emo extract --extractor {extractor} --weights {out} ...")
    return 0


def _has_bottleneck(path: Path) -> bool:
    from lightning_emo.extractors.speech_dnn import read_speech_dnn_metadata

    return bool(json.loads(read_speech_dnn_metadata(path)["config"]).get("bottleneck"))


if __name__ == "__main__":
    sys.exit(main())
