"""EmoDB adapter (Berlin Database of Emotional Speech): labels from the file-name code.

Layout: ``root/wav/*.wav`` (16 kHz); the release's other folders (``lablaut/``,
``labsilb/``, ``silb/``) are not read. A file name is ``SSTTTEV.wav``, e.g. ``03a01Fa.wav``:

- ``SS`` speaker: 03, 08, 09, 10, 11, 12, 13, 14, 15, 16 (ten actors; 03 10 11 12 15 male);
- ``TTT`` text: a01 a02 a04 a05 a07 b01 b02 b03 b09 b10 (ten German sentences);
- ``E`` emotion letter (German initial): W Wut/Ärger anger, L Langeweile boredom, E Ekel
  disgust, A Angst fear, F Freude happiness, T Trauer sadness, N neutral;
- ``V`` version: a, b, c, ... (repeated takes).
"""

from __future__ import annotations

import re
from pathlib import Path

from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import Clip, Manifest, ManifestError

EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral"}
CLASSES = list(EMOTIONS.values())
SPEAKERS = {"03": "m", "08": "f", "09": "f", "10": "m", "11": "m", "12": "m", "13": "f", "14": "f", "15": "m", "16": "f"}
TEXTS = {"a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10"}
_NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")


def parse_name(name: str) -> dict[str, str]:
    """Split an EmoDB file name into speaker, text, label and version; ``ValueError`` says what is wrong."""
    stem = Path(name).stem
    m = _NAME.match(stem)
    if m is None:
        raise ValueError(f"expected speaker, text, emotion letter and version like 03a01Fa, got {stem!r}")
    speaker, text, letter, version = m.groups()
    if speaker not in SPEAKERS:
        raise ValueError(f"speaker {speaker!r} is not one of EmoDB's ten ({', '.join(SPEAKERS)})")
    if text not in TEXTS:
        raise ValueError(f"text code {text!r} is not one of {', '.join(sorted(TEXTS))}")
    if letter not in EMOTIONS:
        raise ValueError(f"emotion letter {letter!r} is not one of "
                         + ", ".join(f"{k} ({v})" for k, v in EMOTIONS.items()))
    return {"speaker": speaker, "text": text, "label": EMOTIONS[letter], "version": version,
            "gender": SPEAKERS[speaker]}


@CORPORA.register("emodb")
def prepare(root: str | Path) -> Manifest:
    """Build an EmoDB manifest from ``root/wav/*.wav`` (7 classes, speakers ``spk03`` .. ``spk16``)."""
    root = Path(root)
    files = sorted(p for p in (root / "wav").glob("*.wav") if not p.name.startswith("."))
    if not files:
        raise ManifestError(root / "wav", "no EmoDB files found (expected wav/03a01Fa.wav: speaker, text, "
                            "emotion letter, version)")
    clips = []
    for p in files:
        try:
            f = parse_name(p.name)
        except ValueError as e:
            raise ManifestError(p, str(e), field="file name") from None
        clips.append(Clip(p.stem, p.relative_to(root).as_posix(), f["label"], "", f"spk{f['speaker']}"))
    speakers = {c.speaker for c in clips}
    return Manifest(clips, list(CLASSES), root, corpus="emodb", source=str(root),
                    notes=[f"{len(clips)} files from wav/, {len(speakers)} speakers"])
