"""The model zoo: one YAML entry per published recognizer under ``zoo/``, and the generated ``zoo/README.md`` table.

An entry (``zoo/<name>.yaml``) names a recognizer that exists, either on the Hub at a pinned
commit or as an exported folder inside the repository::

    name: synthetic-demo
    description: MFCC + HOG heads on the built-in synthetic corpus (a smoke-test model)
    corpus: synthetic
    classes: [angry, disgust, fear, happy, sad, surprise, neutral]
    split_protocol: speaker-independent train/val/test ...
    extractors: {audio: mfcc, video: hog}
    head: {audio: lstm, video: lstm}
    fusion: prior
    metrics: {test_accuracy: {audio: 0.41, video: 0.83, fused: 0.86}, test_ua: {...}, test_macro_f1: {...}}
    source: {path: models/synthetic-demo}          # relative to zoo/
    # or: source: {repo_id: org/name, revision: <40-hex commit>}
    license: apache-2.0

:func:`write_entry` writes an entry from an exported folder's config (so the entry and the model
agree) and regenerates the README; :mod:`lightning_emo.hub.publish` loads the model first. The zoo
resolves names to folders and Hub repositories and knows nothing of the recognizer.
``tests/test_zoo.py`` fails when ``zoo/README.md`` differs from :func:`render_readme`. The zoo directory is ``$LIGHTNING_EMO_ZOO`` or the repository's ``zoo/``
(wheels carry it as ``lightning_emo/_zoo``: ``pyproject.toml`` maps it).
"""

from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from lightning_emo.hub.config import CONFIG_NAME, WEIGHTS_NAME, RecognizerError, is_commit, parse_config
from lightning_emo.utils import atomic_write_text

__all__ = ["ZooEntry", "check_name", "entry_names", "get_entry", "list_entries", "render_readme", "write_entry", "write_readme",
           "zoo_dir"]

ZOO_ENV = "LIGHTNING_EMO_ZOO"
README = "README.md"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
REQUIRED = ("name", "corpus", "classes", "split_protocol", "extractors", "head", "metrics", "source", "license")


def zoo_dir(zoo: str | os.PathLike | None = None) -> Path:
    """The zoo directory: ``zoo`` if given, else ``$LIGHTNING_EMO_ZOO``, else the repository's ``zoo/``
    (a source checkout or an editable install), else the copy a wheel installs as ``lightning_emo/_zoo``."""
    if zoo is not None:
        return Path(zoo)
    if os.environ.get(ZOO_ENV):
        return Path(os.environ[ZOO_ENV])
    package = Path(__file__).resolve().parents[1]
    if (package.parent / "pyproject.toml").is_file() and (package.parent / "zoo").is_dir():  # a checkout
        return package.parent / "zoo"
    return package / "_zoo"


@dataclass
class ZooEntry:
    """One zoo entry (see the module docstring); ``file`` is the YAML it was read from."""

    name: str
    corpus: str
    classes: list[str]
    split_protocol: str
    extractors: dict[str, str]
    head: dict[str, str]
    metrics: dict[str, Any]
    license: str
    fusion: str | None = None
    description: str = ""
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    file: Path | None = field(default=None, compare=False)

    @property
    def reference(self) -> str:
        """What ``from_pretrained`` / ``--model`` take to load it directly: ``hf-hub:org/name@commit`` or the folder."""
        if self.path is not None:
            return str(self.local_path())
        return f"hf-hub:{self.repo_id}@{self.revision}"

    def local_path(self) -> Path:
        """The exported folder of a local entry (relative paths are resolved against the zoo directory)."""
        if self.path is None:
            raise RecognizerError(f"zoo entry {self.name!r} is on the Hub ({self.repo_id}), not a local folder")
        base = self.file.parent if self.file is not None else zoo_dir()
        return (base / self.path).resolve()

    def to_dict(self) -> dict[str, Any]:
        source = {"path": self.path} if self.path is not None else {"repo_id": self.repo_id, "revision": self.revision}
        out = {"name": self.name, "description": self.description, "corpus": self.corpus, "classes": self.classes,
               "split_protocol": self.split_protocol, "extractors": self.extractors, "head": self.head,
               "fusion": self.fusion, "metrics": self.metrics, "source": source, "license": self.license}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], file: Path | None = None) -> "ZooEntry":
        where = str(file) if file else "zoo entry"
        if not isinstance(data, Mapping):
            raise RecognizerError(f"{where}: expected a mapping")
        absent = [k for k in REQUIRED if k not in data]
        if absent:
            raise RecognizerError(f"{where}: missing field(s) {', '.join(absent)}")
        name = str(data["name"])
        if not _NAME.fullmatch(name):
            raise RecognizerError(f"{where}: name {name!r} must be lower-case letters, digits, '.', '_', '-'")
        if file is not None and file.stem != name:
            raise RecognizerError(f"{where}: the file must be named {name}.yaml")
        source = data["source"]
        if not isinstance(source, Mapping) or (("path" in source) == ("repo_id" in source)):
            raise RecognizerError(f"{where}: source must be {{path: DIR}} or {{repo_id: ORG/NAME, revision: COMMIT}}")
        if "path" in source:
            rel = str(source["path"]).replace("\\", "/")
            if os.path.isabs(rel) or rel.startswith("/") or ".." in rel.split("/"):
                raise RecognizerError(f"{where}: source path {source['path']!r} leaves the zoo folder; give a path "
                                      "relative to it without '..' (e.g. models/<name>)")
        if "repo_id" in source and not is_commit(source.get("revision")):
            raise RecognizerError(f"{where}: a Hub source needs a pinned revision (a 40-hex commit), got "
                                  f"{source.get('revision')!r}")
        return cls(name=name, corpus=str(data["corpus"]), classes=[str(c) for c in data["classes"]],
                   split_protocol=str(data["split_protocol"]), extractors=dict(data["extractors"]),
                   head=dict(data["head"]), metrics=dict(data["metrics"] or {}), license=str(data["license"]),
                   fusion=data.get("fusion"), description=str(data.get("description") or ""),
                   repo_id=source.get("repo_id"), revision=source.get("revision"), path=source.get("path"), file=file)


def check_name(name: str, what: str = "zoo entry name") -> str:
    """Refuse an entry name that is not one plain file name (``../x``, ``a/b``, ``/abs``): it names files in the zoo."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise RecognizerError(f"{what} {name!r}: expected lower-case letters, digits, '.', '_', '-' (no '/' or '..': "
                              "it names <zoo>/<name>.yaml and <zoo>/models/<name>/)")
    return name


def list_entries(zoo: str | os.PathLike | None = None) -> list[ZooEntry]:
    """Every entry of the zoo, sorted by name; an invalid entry raises :class:`RecognizerError` naming its file.

    A zoo folder that was asked for (``zoo``, ``$LIGHTNING_EMO_ZOO``) and does not exist is an
    error, not an empty zoo.
    """
    d = zoo_dir(zoo)
    if not d.is_dir():
        if zoo is not None or os.environ.get(ZOO_ENV):
            given = f"--zoo {d}" if zoo is not None else f"${ZOO_ENV}={d}"
            raise RecognizerError(f"{given}: no such zoo folder; give the folder holding the zoo's <name>.yaml entries")
        return []
    entries = []
    for f in sorted(d.glob("*.yaml")):
        try:
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise RecognizerError(f"{f}: not valid YAML ({e})") from None
        entries.append(ZooEntry.from_dict(data, file=f))
    return entries


def entry_names(zoo: str | os.PathLike | None = None) -> list[str]:
    """The zoo's model names (file stems; entries are not validated here)."""
    d = zoo_dir(zoo)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def get_entry(name: str, zoo: str | os.PathLike | None = None) -> ZooEntry:
    """The entry called ``name``; an unknown name raises :class:`RecognizerError` listing the known ones."""
    for entry in list_entries(zoo):
        if entry.name == name:
            return entry
    raise RecognizerError(f"no zoo model {name!r}; known: {', '.join(entry_names(zoo)) or 'none'}")


def _metric_cell(entry: ZooEntry, key: str = "test_accuracy") -> str:
    test = (entry.metrics or {}).get(key) or {}
    if not test:
        return "–"
    return ", ".join(f"{k} {float(v):.3f}" for k, v in test.items())


def render_readme(entries: list[ZooEntry]) -> str:
    """The zoo's ``README.md``: how to use it and one table row per entry."""
    lines = ["# Model zoo", "",
             "<!-- Generated by lightning_emo.hub.zoo.write_readme() from the *.yaml entries; do not edit by hand. -->",
             "",
             "Trained recognizers that load by name: `lightning-emo infer clip.mp4 --model NAME` or",
             "`Recognizer.from_pretrained(\"NAME\")`. `lightning-emo zoo` lists them. Hub entries are pinned to a",
             "commit; local entries are exported folders inside this repository.", "",
             "| name | corpus | classes | extractors (audio / video) | head | fusion | test accuracy (WA) | test UA "
             "| test macro-F1 | source | license |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        ex = " / ".join(e.extractors.get(m, "–") for m in ("audio", "video"))
        heads = " / ".join(sorted(set(e.head.values()))) if e.head else "–"
        source = f"[`{e.repo_id}`](https://huggingface.co/{e.repo_id}/tree/{e.revision}) @ `{e.revision[:8]}`" \
            if e.repo_id else f"`zoo/{e.path}`"
        lines.append(f"| `{e.name}` | {e.corpus} | {len(e.classes)} | {ex} | {heads} | {e.fusion or '–'} | "
                     f"{_metric_cell(e)} | {_metric_cell(e, 'test_ua')} | {_metric_cell(e, 'test_macro_f1')} | "
                     f"{source} | {e.license} |")
    if not entries:
        lines.append("| *(no models yet)* | | | | | | | | | | |")
    lines += ["", "Split protocols:", ""]
    lines += [f"- `{e.name}`: {e.split_protocol}" for e in entries] or ["- none yet"]
    lines += ["", "Add a model with `lightning-emo export ... --zoo-entry NAME` (a local folder) or",
              "`lightning-emo zoo --add NAME --model-dir DIR --repo-id ORG/NAME --revision COMMIT` after `push`.", ""]
    return "\n".join(lines)


def write_readme(zoo: str | os.PathLike | None = None) -> Path:
    """Regenerate ``<zoo>/README.md`` from the entries (atomically); returns its path."""
    d = zoo_dir(zoo)
    path = d / README
    atomic_write_text(path, render_readme(list_entries(d)))
    return path


def entry_from_config(name: str, config: Mapping[str, Any], *, path: str | None = None, repo_id: str | None = None,
                      revision: str | None = None, description: str | None = None) -> ZooEntry:
    """A zoo entry describing an exported recognizer's ``config.json``."""
    mods = config["modalities"]
    metrics = config.get("metrics") or {}
    tests = {k: v for k, v in (metrics.get("test") or {}).items() if isinstance(v, Mapping)}
    test = {k: round(float(v["accuracy"]), 4) for k, v in tests.items() if "accuracy" in v}
    # UA is the mean per-class recall over the classes with test clips; exports made before UA was
    # recorded still carry that recall, so UA is derived from it (macro-F1 needs precision: not derivable)
    ua = {k: round(float(v["ua"]) if "ua" in v else statistics.fmean(float(r) for r in v["recall"].values()), 4)
          for k, v in tests.items() if "ua" in v or v.get("recall")}
    macro_f1 = {k: round(float(v["macro_f1"]), 4) for k, v in tests.items() if "macro_f1" in v}
    extractors = {}
    for m, mc in mods.items():
        label = mc["extractor"]["name"]
        if mc.get("selector"):
            label += f" (sel{mc['selector']['k']})"
        extractors[m] = label
    fusion = config.get("fusion")
    data = {"name": name, "description": description or config.get("description") or "",
            "corpus": (config.get("corpus") or {}).get("name") or "unknown", "classes": list(config["classes"]),
            "split_protocol": config.get("split_protocol") or "not recorded", "extractors": extractors,
            "head": {m: mc["head"]["name"] for m, mc in mods.items()}, "fusion": fusion["rule"] if fusion else None,
            "metrics": {key: value for key, value in (("test_accuracy", test), ("test_ua", ua),
                                                      ("test_macro_f1", macro_f1)) if value},
            "source": {"path": path} if path is not None else {"repo_id": repo_id, "revision": revision},
            "license": config.get("license") or "unspecified"}
    return ZooEntry.from_dict(data)


def write_entry(name: str, model_dir: str | os.PathLike, *, zoo: str | os.PathLike | None = None,
                repo_id: str | None = None, revision: str | None = None,
                description: str | None = None) -> ZooEntry:
    """Write ``<zoo>/<name>.yaml`` from an exported folder's ``config.json`` and regenerate the README.

    The zoo only reads the folder's config; :func:`lightning_emo.hub.publish.add_entry` loads the
    recognizer first, so that only a model that loads gets listed (use that one).

    Args:
        name: the zoo name.
        model_dir: the exported folder (``config.json``, ``model.safetensors``); it is the
            entry's source unless ``repo_id`` is given, and must then lie inside the zoo
            directory (so the repository ships it).
        repo_id, revision: the Hub repository and the pinned commit it was pushed as.
        description: one line for the table.
    """
    check_name(name)
    d = zoo_dir(zoo)
    model_dir = Path(model_dir).resolve()
    for f in (CONFIG_NAME, WEIGHTS_NAME):
        if not (model_dir / f).is_file():
            raise RecognizerError(f"{model_dir}: no {f}; export the recognizer there first")
    config = parse_config((model_dir / CONFIG_NAME).read_bytes(), model_dir / CONFIG_NAME)
    path = None
    if repo_id is None:
        try:
            path = model_dir.relative_to(d.resolve()).as_posix()
        except ValueError:
            raise RecognizerError(f"{model_dir} is not inside the zoo directory {d}: export it under {d}/models/ or "
                                  "give the Hub repo_id and revision it was pushed as") from None
    entry = entry_from_config(name, config, path=path, repo_id=repo_id, revision=revision, description=description)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / f"{name}.yaml", yaml.safe_dump(entry.to_dict(), sort_keys=False, allow_unicode=True))
    entry.file = d / f"{name}.yaml"
    write_readme(d)
    return entry


