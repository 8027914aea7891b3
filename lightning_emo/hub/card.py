"""The generated model card (``README.md``) of an exported recognizer: metadata, metrics, extractors and usage."""

from __future__ import annotations

import re
from typing import Any, Mapping

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["model_card", "render_card"]

DETECTORS = {
    "mtcnn": "MTCNN (facenet-pytorch; its P/R/O-net weights ship inside the package, MIT licence) + main-face tracking",
    "none": "none: the frames are face crops (centre square; near-uniform frames count as no face)",
}
WEIGHT_KINDS = {
    "none": "no weights (handcrafted)",
    "file": "embedded in model.safetensors (from a local file)",
    "hf-hub": "Hugging Face Hub",
    "timm": "timm on the Hugging Face Hub",
    "torchaudio": "torchaudio pipeline bundle",
    "facenet": "facenet-pytorch release",
}
TITLES = {"audio": "audio", "video": "video (face)", "fused": "fused"}


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{float(x):.3f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _weights(spec: Mapping[str, Any], embedded: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """``(source, revision, license)`` cells of an extractor."""
    w = spec.get("weights") or {}
    kind = w.get("kind", "none")
    if embedded and embedded.get("kind") == "state_dict":
        source = f"fine-tuned, embedded in model.safetensors (base: {WEIGHT_KINDS.get(kind, kind)} {w.get('uri', '')})"
    else:
        source = WEIGHT_KINDS.get(kind, kind)
        if w.get("uri") and kind not in ("none", "file"):
            source += f": `{w['uri']}`" + (f" / `{w['filename']}`" if w.get("filename") else "")
    revision = w.get("revision") or (f"sha256 `{w['sha256'][:12]}…`" if w.get("sha256") else "–")
    if kind not in ("none", "file") and w.get("revision"):
        revision = f"`{w['revision']}`"
    license_ = w.get("license") or ("n/a (no weights)" if kind == "none" else "see source")
    return source, revision, license_


def render_card(config: Mapping[str, Any], repo_id: str | None = None) -> str:
    """Markdown body (without the YAML header) of a recognizer's model card."""
    name = config.get("name") or (repo_id.split("/")[-1] if repo_id else "lightning-emo recognizer")
    classes = list(config["classes"])
    mods = config["modalities"]
    fusion = config.get("fusion")
    corpus = config.get("corpus") or {}
    lines = [f"# {name}", ""]
    summary = " + ".join(f"{TITLES[m]}: {mc['extractor']['name']} → {mc['head']['name']} head"
                         for m, mc in mods.items())
    lines += [config.get("description") or f"Multimodal emotion recognition ({summary}), made with "
              "lightning-emo.", ""]
    lines += ["## Model", "",
              f"- **Classes** ({len(classes)}): {', '.join(f'`{c}`' for c in classes)}",
              f"- **Corpus**: {corpus.get('name') or 'not recorded'}"
              + (f" ({corpus['clips']} clips)" if corpus.get("clips") else ""),
              f"- **Split protocol**: {config.get('split_protocol') or 'not recorded'}"]
    for m, mc in mods.items():
        h = mc["head"]
        opts = ", ".join(f"{k}={v}" for k, v in (h.get("options") or {}).items())
        lines.append(f"- **{TITLES[m]} head**: `{h['name']}` ({h['input_dim']}-d input, hidden {h['hidden_dim']}, "
                     f"dropout {h['dropout']}{', ' + opts if opts else ''})"
                     + (f", temperature {mc['temperature']:.3f}" if mc.get("temperature") else ""))
    if fusion:
        lines.append(f"- **Fusion**: `{fusion['rule']}` over {', '.join(fusion['inputs'])} (fitted on the validation "
                     "split; a missing modality is handled by the rule)")
    lines += ["- **License**: " + (config.get("license") or "not specified"), ""]

    metrics = config.get("metrics") or {}
    rows = [r for r in (*mods, "fused") if any(r in (metrics.get(s) or {}) for s in ("val", "test"))]
    lines += ["## Metrics", ""]
    if rows:
        lines += ["| model | val accuracy (WA) | test accuracy (WA) | test UA | test macro-F1 |",
                  "| --- | --- | --- | --- | --- |"]
        for r in rows:
            val, test = (metrics.get("val") or {}).get(r, {}), (metrics.get("test") or {}).get(r, {})
            label = TITLES.get(r, r) + (f" ({mods[r]['extractor']['name']})" if r in mods else
                                        f" ({fusion['rule']})" if fusion else "")
            lines.append(f"| {label} | {_fmt(val.get('accuracy'))} | {_fmt(test.get('accuracy'))} | "
                         f"{_fmt(test.get('ua'))} | {_fmt(test.get('macro_f1'))} |")
        lines += ["", "WA: accuracy; UA: unweighted average recall (mean of the per-class recalls); macro-F1: the "
                  "unweighted mean of the per-class F1 scores."]
        recall = ((metrics.get("test") or {}).get("fused") or {}).get("recall")
        if recall:
            lines += ["", "Per-class test recall (fused): "
                      + ", ".join(f"{c} {float(v):.3f}" for c, v in recall.items())]
    else:
        lines.append("No metrics were recorded with this export.")
    lines.append("")

    lines += ["## Extractors", "",
              "| modality | extractor | features | input | weights | revision / digest | license |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, mc in mods.items():
        spec = mc["extractor"]
        source, revision, license_ = _weights(spec, mc.get("embedded"))
        sel = mc.get("selector")
        feats = f"{spec['dim']}-d" + (f", {sel['k']} selected by {sel.get('method', 'random forest')}" if sel else "")
        if mc.get("standardize"):
            feats += f", standardised (training-set mean/std over {mc['standardize']['frames']} frames)"
        if m == "video":
            det = mc["input"]["detector"]
            inp = f"{mc['input']['fps']:g} fps, detector `{det['name']}`, {spec.get('crop_size')} px crops"
        else:
            inp = f"{mc['input']['sample_rate']} Hz mono"
        lines.append(f"| {TITLES[m]} | `{spec['name']}` — {_cell(spec.get('description', ''))} | {feats} | {inp} | "
                     f"{_cell(source)} | {revision} | {_cell(license_)} |")
    if "video" in mods:
        det = mods["video"]["input"]["detector"]["name"]
        lines += ["", f"Face detector: {DETECTORS.get(det, det)}."]
    lines.append("")

    ref = f"hf-hub:{repo_id}" if repo_id else (f"{config['name']}" if config.get("name") else "path/to/this/folder")
    lines += ["## Usage", "", "```bash", "pip install lightning-emo",
              f"lightning-emo infer clip.mp4 --model {ref}",
              f"lightning-emo infer long_video.mp4 --model {ref} --timeline --window 4 --hop 2 --out timeline/",
              "```", "", "```python", "from lightning_emo.hub import Recognizer", "",
              f'model = Recognizer.from_pretrained("{ref}")  # add @<commit> to pin a revision',
              'pred = model.predict("clip.mp4")',
              "print(pred.label, pred.confidence, pred.missing)  # per-modality posteriors: pred.probs",
              "```", "",
              "Only safetensors weights are read (never pickles). A clip without an audio track or without a visible "
              "face is predicted from the modality it has; `pred.missing` says which one was missing.", ""]
    return "\n".join(lines)


def model_card(config: Mapping[str, Any], repo_id: str | None = None) -> ModelCard:
    """The :class:`huggingface_hub.ModelCard` (YAML metadata + :func:`render_card`) of a recognizer config."""
    mods = config["modalities"]
    tags = ["lightning-emo", "emotion-recognition", "multimodal", "model_hub_mixin"]
    tags += [f"{m}-{mc['extractor']['name']}" for m, mc in mods.items()]
    license_ = config.get("license") or None
    extra: dict[str, Any] = {}
    if license_ and not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", license_):
        # the Hub takes license identifiers (apache-2.0, cc-by-nc-4.0, ...); anything else is "other"
        extra["license_name"] = re.sub(r"[^a-z0-9.\-]+", "-", license_.lower()).strip("-") or "custom"
        license_ = "other"
    data = ModelCardData(library_name="lightning-emo", license=license_, tags=sorted(set(tags)),
                         model_name=config.get("name") or None, **extra)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{render_card(config, repo_id)}")
