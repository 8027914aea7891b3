"""CREMA-D adapter: ``ActorID_Sentence_Emotion_Level`` file names.

Layout: ``root/AudioWAV/*.wav`` (16 kHz audio) and ``root/VideoFlash/*.flv`` (video with sound).
"""

from __future__ import annotations

from pathlib import Path

from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import Clip, Manifest, ManifestError

EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CLASSES = list(EMOTIONS.values())
SENTENCES = {"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"}
LEVELS = {"LO", "MD", "HI", "XX", "X"}
FOLDERS = {"video": ("VideoFlash", ".flv"), "audio": ("AudioWAV", ".wav")}


def parse_name(name: str) -> dict[str, str]:
    stem = Path(name).stem
    parts = stem.split("_")
    if len(parts) != 4:
        raise ValueError(f"expected ActorID_Sentence_Emotion_Level like 1001_DFA_ANG_XX, got {stem!r}")
    actor, sentence, emotion, level = parts
    if not (actor.isdigit() and len(actor) == 4):
        raise ValueError(f"actor id {actor!r} is not a four-digit number")
    if sentence not in SENTENCES:
        raise ValueError(f"sentence code {sentence!r} is not one of {sorted(SENTENCES)}")
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion code {emotion!r} is not one of {sorted(EMOTIONS)}")
    if level not in LEVELS:
        raise ValueError(f"level code {level!r} is not one of LO, MD, HI, XX")
    return {"actor": actor, "sentence": sentence, "label": EMOTIONS[emotion], "level": level}


@CORPORA.register("cremad")
def prepare(root: str | Path, media: str = "video") -> Manifest:
    """Build a CREMA-D manifest from ``VideoFlash`` (``media='video'``) or ``AudioWAV`` (``'audio'``)."""
    if media not in FOLDERS:
        raise ValueError(f"media must be one of {sorted(FOLDERS)}, got {media!r}")
    root = Path(root)
    folder, ext = FOLDERS[media]
    files = sorted((root / folder).glob(f"*{ext}"))
    if not files:
        raise ManifestError(root / folder, f"no CREMA-D {ext} files found (expected {folder}/1001_DFA_ANG_XX{ext})")
    clips = []
    for p in files:
        try:
            f = parse_name(p.name)
        except ValueError as e:
            raise ManifestError(p, str(e), field="file name") from None
        clips.append(Clip(p.stem, p.relative_to(root).as_posix(), f["label"], "", f["actor"]))
    return Manifest(clips, list(CLASSES), root, corpus="cremad", source=str(root),
                    notes=[f"{len(clips)} {media} files from {folder}/"])
