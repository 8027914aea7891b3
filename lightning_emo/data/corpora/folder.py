"""Folder-per-label adapter: ``root/<label>/<file>``, one folder per class.

Speakers come from the file names through ``speaker_pattern`` (``lightning-emo prepare --corpus
folder --root DIR --option speaker_pattern='^([^_]+)_'`` reads ``spk01`` from ``spk01_0003.wav``).
Without it no clip has a speaker: splits are then dealt clip by clip (stratified by label), so one
speaker's clips can land in train and test, and a small corpus may get no validation clips
(``prepare`` refuses that and says so).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from lightning_emo.data.corpora import CORPORA, MEDIA_EXTENSIONS
from lightning_emo.data.manifest import Clip, Manifest, ManifestError


@CORPORA.register("folder")
def prepare(root: str | Path, classes: Sequence[str] | None = None, speaker_pattern: str | None = None) -> Manifest:
    """Build a manifest from ``root/<label>/<file>``.

    Args:
        root: the corpus root.
        classes: the class order; default: the sorted folder names. A folder not in the list is
            an error, so nothing is silently dropped.
        speaker_pattern: a regular expression whose first group, searched in the file name,
            is the speaker id (e.g. ``'^([^_]+)_'`` for ``spk01_0003.wav``, ``'^(\\d+)-'`` for
            ``03-happy.wav``); without it speakers are unknown and splits are dealt clip by clip.
    """
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise ManifestError(root, "no label folders found (expected root/<label>/<file>)")
    names = [p.name for p in folders]
    if classes is None:
        classes = names
    classes = list(classes)
    for name in names:
        if name not in classes:
            raise ManifestError(root / name, f"folder is not one of the classes ({', '.join(classes)})")
    regex = re.compile(speaker_pattern) if speaker_pattern else None
    clips, ids, skipped = [], set(), []
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if not (p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS):
                if p.is_file():
                    skipped.append(p.relative_to(root).as_posix())
                continue
            speaker = ""
            if regex is not None:
                m = regex.search(p.name)
                if m is None or not m.groups():
                    raise ManifestError(p, f"speaker pattern {speaker_pattern!r} does not match", field="file name")
                speaker = m.group(1)
            clip_id = f"{folder.name}/{p.relative_to(folder).with_suffix('').as_posix()}"
            if clip_id in ids:
                raise ManifestError(p, f"two media files give the clip id {clip_id!r}", field="file name")
            ids.add(clip_id)
            clips.append(Clip(clip_id, p.relative_to(root).as_posix(), folder.name, "", speaker))
    if not clips:
        raise ManifestError(root, f"no media files ({', '.join(MEDIA_EXTENSIONS)}) under the label folders")
    notes = [f"skipped {len(skipped)} file(s) that are not media by their extension: "
             f"{', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}"] if skipped else []
    return Manifest(clips, classes, root, corpus="folder", source=str(root), notes=notes)
