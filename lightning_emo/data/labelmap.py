"""Label maps: one corpus' labels renamed onto another's class list, for cross-corpus evaluation.

A label map is a small YAML mapping from a corpus' labels to target class names; ``null``
drops the label::

    # ravdess -> cremad
    calm: null          # CREMA-D has no calm: RAVDESS' calm clips are dropped (and counted)
    fearful: fear
    surprised: null
    # labels not named keep their name if the target has that class (angry, sad, ...)

Maps for the supported corpora ship with the package (``configs/labelmap/``:
``ravdess_to_cremad``, ``cremad_to_ravdess``, ``<corpus>_to_iemocap`` for IEMOCAP's four
classes); :func:`load_label_map` finds them by name (``labelmap/ravdess_to_cremad.yaml`` or
just ``ravdess_to_cremad``) when no file of that path exists.

Applying it (:func:`apply_label_map`) gives a manifest over the target classes and a
:class:`LabelMapCounts` saying what was kept, what was dropped (per source label) and which
target classes no clip reached. :func:`align_corpora` does what a cross-corpus run needs:
map the test corpus onto the training corpus' classes, then keep only the classes both
sides have (in the training order), dropping and counting the clips of one-sided classes on
each side, so a head trained on the shared classes is scored on the same classes.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from lightning_emo.data.manifest import Manifest
from lightning_emo.utils import LocatedError


class LabelMapError(LocatedError):
    """A label map file that cannot be used; the message names the file, line and key."""

    kind = "key"


@dataclass(frozen=True)
class LabelMap:
    """``mapping``: source label -> target class name, or ``None`` to drop the label.

    Labels that are not keys keep their own name (and are dropped when the target has no
    class of that name). ``lines`` remembers each key's line in the YAML for error messages.
    """

    mapping: dict[str, str | None]
    source: str = "<memory>"
    lines: dict[str, int] = field(default_factory=dict)

    def target(self, label: str) -> str | None:
        """The target name of ``label`` (before checking it against a class list)."""
        return self.mapping[label] if label in self.mapping else label

    def check_targets(self, classes: Sequence[str]) -> None:
        """Raise :class:`LabelMapError` for a value that is not one of ``classes`` (a typo would drop clips)."""
        for key, value in self.mapping.items():
            if value is not None and value not in classes:
                raise LabelMapError(self.source, f"maps {key!r} to {value!r}, which is not a target class "
                                    f"(target classes: {', '.join(classes)}; null drops the label)",
                                    self.lines.get(key), key)


@dataclass
class LabelMapCounts:
    """What applying a label map did: clips kept per target class, clips dropped per source label."""

    kept: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    empty_classes: list[str] = field(default_factory=list)
    unused_keys: list[str] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        return sum(self.kept.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def notes(self, what: str = "label map") -> list[str]:
        """Short lines for a manifest's notes / a report."""
        out = [f"{what}: kept {self.n_kept} clips"
               + (f", dropped {self.n_dropped}: " + ", ".join(f"{k} ({v})" for k, v in sorted(self.dropped.items()))
                  if self.dropped else "")]
        if self.empty_classes:
            out.append(f"{what}: no clips for target classes {', '.join(self.empty_classes)}")
        if self.unused_keys:
            out.append(f"{what}: keys matching no label of the corpus: {', '.join(self.unused_keys)}")
        return out

    def as_dict(self) -> dict:
        return {"kept": dict(self.kept), "dropped": dict(self.dropped),
                "empty_classes": list(self.empty_classes), "unused_keys": list(self.unused_keys)}


def load_label_map(path: str | os.PathLike) -> LabelMap:
    """Read a label-map YAML (``source_label: target_class`` or ``null``).

    ``path`` is a file, or the name of a shipped map (``ravdess_to_cremad``,
    ``labelmap/ravdess_to_cremad.yaml``); a local file wins.

    Raises:
        LabelMapError: naming the file, line and key of a malformed entry (not a mapping,
            a non-string value, a key written twice).
    """
    path = Path(path)
    if not path.is_file():
        path = _shipped(path) or path
    if not path.is_file():
        raise LabelMapError(path, "label map file not found (expected a YAML mapping like 'fearful: fear', or "
                            f"the name of a shipped one: {', '.join(shipped_label_maps()) or 'none found'})")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise LabelMapError(path, f"not valid YAML ({getattr(e, 'problem', None) or e})",
                            mark.line + 1 if mark else None) from None
    if node is None:
        raise LabelMapError(path, "empty label map (expected a YAML mapping like 'fearful: fear')")
    if not isinstance(node, yaml.MappingNode):
        raise LabelMapError(path, "expected a YAML mapping of labels to target classes ('fearful: fear', "
                            "'calm: null')", node.start_mark.line + 1)
    mapping: dict[str, str | None] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise LabelMapError(path, "a key must be a label name", line)
        key = str(key_node.value)
        if key in mapping:
            raise LabelMapError(path, f"{key!r} is mapped twice (first on line {lines[key]})", line, key)
        if isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null"):
            value = None
        elif isinstance(value_node, yaml.ScalarNode) and str(value_node.value).strip():
            value = str(value_node.value).strip()
        else:
            raise LabelMapError(path, "the value must be one target class name, or null to drop the label",
                                line, key)
        mapping[key.strip()] = value
        lines[key.strip()] = line
    return LabelMap(mapping, str(path), lines)


def shipped_label_maps() -> list[str]:
    """Names of the label maps that ship with the package (``ravdess_to_cremad``, ...)."""
    from lightning_emo.configs import list_configs

    return [Path(n).stem for n in list_configs("labelmap")]


def _shipped(name: Path) -> Path | None:
    from lightning_emo.configs import shipped_config

    rel = name.as_posix()
    return shipped_config(rel if rel.startswith(("labelmap/", "configs/labelmap/")) else f"labelmap/{rel}")


def as_label_map(label_map: LabelMap | Mapping[str, str | None] | str | os.PathLike | None) -> LabelMap:
    """A :class:`LabelMap` from a LabelMap, a dict, a YAML path, or ``None`` (the identity on names)."""
    if label_map is None:
        return LabelMap({})
    if isinstance(label_map, LabelMap):
        return label_map
    if isinstance(label_map, Mapping):
        return LabelMap(dict(label_map))
    return load_label_map(label_map)


def apply_label_map(
    manifest: Manifest,
    label_map: LabelMap | Mapping[str, str | None] | str | os.PathLike | None,
    classes: Sequence[str],
    drop_empty_classes: bool = False,
) -> tuple[Manifest, LabelMapCounts]:
    """Rename a manifest's labels onto ``classes``; clips whose label has no target are dropped.

    Args:
        manifest: the corpus to map (its splits, speakers and groups are kept).
        label_map: the map (LabelMap, dict, YAML path) or ``None`` for names only.
        classes: the target class list, in order.
        drop_empty_classes: also leave out target classes that no clip reached (they are
            counted in ``empty_classes`` either way).

    Returns:
        The mapped manifest (``classes`` as its class list, the counts in its notes) and the
        counts.

    Raises:
        LabelMapError: a value of the map is not one of ``classes``, or nothing is left.
    """
    lm = as_label_map(label_map)
    classes = list(classes)
    lm.check_targets(classes)
    counts = LabelMapCounts()
    present = {c.label for c in manifest.clips} | set(manifest.classes)
    counts.unused_keys = sorted(k for k in lm.mapping if k not in present)
    clips = []
    for c in manifest.clips:
        target = lm.target(c.label)
        if target is None or target not in classes:
            counts.dropped[c.label] += 1
            continue
        counts.kept[target] += 1
        clips.append(c if target == c.label else replace(c, label=target))
    counts.empty_classes = [k for k in classes if not counts.kept[k]]
    if not clips:
        raise LabelMapError(lm.source if lm.source != "<memory>" else manifest.source,
                            f"no clip of {manifest.source} maps onto the target classes ({', '.join(classes)}); "
                            f"its labels are {', '.join(sorted({c.label for c in manifest.clips}))}")
    out_classes = [k for k in classes if counts.kept[k]] if drop_empty_classes else classes
    notes = list(manifest.notes) + counts.notes(f"label map {Path(lm.source).name}" if lm.source != "<memory>"
                                                else "label map")
    return replace(manifest, clips=clips, classes=out_classes, notes=notes), counts


def align_corpora(
    train: Manifest,
    test: Manifest,
    label_map: LabelMap | Mapping[str, str | None] | str | os.PathLike | None = None,
) -> tuple[Manifest, Manifest, dict[str, LabelMapCounts]]:
    """Put a training corpus and a test corpus on one class list for a cross-corpus run.

    ``test``'s labels are mapped onto ``train``'s classes with ``label_map``; the classes both
    sides then have, in ``train``'s order, become the class list of both manifests. Clips of a
    class that exists on one side only are dropped and counted on their side.

    Returns:
        ``(train, test, counts)`` with ``counts = {"train": ..., "test": ...}``.
    """
    mapped_test, test_counts = apply_label_map(test, label_map, train.classes)
    train_labels = {c.label for c in train.clips}
    shared = [k for k in train.classes if test_counts.kept[k] and k in train_labels]
    if not shared:
        raise LabelMapError(test.source, f"the test corpus shares no class with the training corpus "
                            f"({', '.join(train.classes)}) after the label map")
    mapped_test, more = apply_label_map(mapped_test, None, shared)
    test_counts.dropped.update(more.dropped)
    test_counts.kept = more.kept
    test_counts.empty_classes = [k for k in train.classes if k not in shared]
    mapped_train, train_counts = apply_label_map(train, None, shared)
    train_counts.empty_classes = [k for k in train.classes if k not in shared]
    mapped_test = replace(mapped_test, notes=list(test.notes) + test_counts.notes("label map (test corpus)"))
    mapped_train = replace(mapped_train, notes=list(train.notes) + train_counts.notes("shared classes (train corpus)"))
    return mapped_train, mapped_test, {"train": train_counts, "test": test_counts}
