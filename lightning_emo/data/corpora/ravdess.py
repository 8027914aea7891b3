"""RAVDESS adapter: labels from the seven two-digit file-name fields.

Layout: ``root/Actor_XX/MM-VV-EE-II-SS-RR-AA.{mp4,wav}`` where the fields are modality
(01 audio-video, 02 video-only, 03 audio-only), vocal channel (01 speech, 02 song), emotion,
intensity, statement, repetition and actor (the speaker).
"""

from __future__ import annotations

from pathlib import Path

from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import Clip, Manifest, ManifestError

CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
CHANNELS = {"01": "speech", "02": "song"}


def parse_name(name: str) -> dict[str, str]:
    """Split a RAVDESS file name into its fields; raises ``ValueError`` naming what is wrong."""
    stem = Path(name).stem
    parts = stem.split("-")
    if len(parts) != 7 or not all(len(p) == 2 and p.isdigit() for p in parts):
        raise ValueError(f"expected seven two-digit fields like 02-01-06-01-02-01-12, got {stem!r}")
    modality, channel, emotion, intensity, statement, repetition, actor = parts
    if modality not in MODALITIES:
        raise ValueError(f"modality field {modality!r} is not one of {sorted(MODALITIES)}")
    if channel not in CHANNELS:
        raise ValueError(f"vocal channel field {channel!r} is not one of {sorted(CHANNELS)}")
    if not 1 <= int(emotion) <= len(CLASSES):
        raise ValueError(f"emotion field {emotion!r} is not in 01..08")
    return {"modality": MODALITIES[modality], "channel": CHANNELS[channel], "label": CLASSES[int(emotion) - 1],
            "intensity": intensity, "statement": statement, "repetition": repetition, "actor": actor}


@CORPORA.register("ravdess")
def prepare(root: str | Path, modality: str = "audio-video", channel: str = "speech") -> Manifest:
    """Build a RAVDESS manifest.

    Args:
        root: the folder holding ``Actor_01`` .. ``Actor_24``.
        modality: ``audio-video`` (01 MP4 files with sound), ``audio-only`` (03 WAV files),
            ``video-only`` (02 files, no sound) or ``all``.
        channel: ``speech``, ``song`` or ``all``.
    """
    root = Path(root)
    files = sorted(p for p in root.glob("Actor_*/*") if p.suffix.lower() in (".mp4", ".wav"))
    if not files:
        raise ManifestError(root, "no RAVDESS files found (expected Actor_XX/NN-NN-NN-NN-NN-NN-NN.mp4|wav)")
    clips, skipped = [], 0
    for p in files:
        try:
            f = parse_name(p.name)
        except ValueError as e:
            raise ManifestError(p, str(e), field="file name") from None
        if (modality != "all" and f["modality"] != modality) or (channel != "all" and f["channel"] != channel):
            skipped += 1
            continue
        clip_id = p.stem if modality != "all" else f"{p.stem}{p.suffix.lower()}"
        clips.append(Clip(clip_id, p.relative_to(root).as_posix(), f["label"], "", f"actor{f['actor']}"))
    notes = [f"kept modality={modality}, channel={channel}: {len(clips)} files; {skipped} other files not listed"]
    if not clips:
        raise ManifestError(root, f"no RAVDESS files with modality={modality} and channel={channel}")
    return Manifest(clips, list(CLASSES), root, corpus="ravdess", source=str(root), notes=notes)
