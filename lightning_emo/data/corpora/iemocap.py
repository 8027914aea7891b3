"""IEMOCAP adapter: utterance labels from the EmoEvaluation files, one group per session.

Layout of the release (``root`` is ``IEMOCAP_full_release`` or the folder holding it)::

    Session1 .. Session5/
      dialog/EmoEvaluation/<dialog>.txt      labels (the Categorical/, Attribute/ and
                                             Self-evaluation/ subfolders are not read)
      sentences/wav/<dialog>/<utterance>.wav utterance audio (16 kHz)
      dialog/avi/DivX/<dialog>.avi           the dialog's video (media='video')

An EmoEvaluation file holds one summary line per utterance, followed by the annotators'
lines (``C-E1:``, ``A-F2:``, ...) that this adapter does not read::

    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

(start and end in seconds within the dialog, utterance id, majority label, valence /
activation / dominance). Labels: neu hap exc sad ang fru sur fea dis oth xxx (xxx: no
majority). The dialog of an utterance is its id without the last ``_`` part; that part's
letter is the speaker's gender (``Ses01F_impro01_M000`` is session 1's male actor, although
the dialog was led by the female one), so speaker = ``Ses01M``. Both actors of a session
speak in each of its dialogs, so the session is the ``group`` (``Session1``..``Session5``):
``prepare --split-by group`` and the leave-one-session-out folds keep sessions whole.

With ``media='video'`` each clip is the dialog's AVI cut to the utterance's start and end.
The DivX video shows the session's two actors; the face pipeline takes the face it detects.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from lightning_emo.data.corpora import CORPORA
from lightning_emo.data.manifest import Clip, Manifest, ManifestError

CODES = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
         "fru": "frustrated", "sur": "surprised", "fea": "fear", "dis": "disgust"}
UNUSABLE = {"xxx": "no majority (xxx)", "oth": "other (oth)"}
CLASSES_4 = ["neutral", "happy", "sad", "angry"]  # the common protocol's four classes
CLASSES_ALL = ["neutral", "happy", "excited", "sad", "angry", "frustrated", "surprised", "fear", "disgust"]
SESSIONS = [f"Session{i}" for i in range(1, 6)]
_SUMMARY = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+(\S+)\s+\[[^\]]*\]\s*$")
_UTTERANCE = re.compile(r"^(Ses0([1-5])[FM]_(?:impro|script)\w*?)_([FM])\d+$")


def parse_line(line: str) -> tuple[float, float, str, str, str, str] | None:
    """A summary line -> ``(start, end, utterance, code, dialog, speaker)``; ``None`` for other lines.

    Raises ``ValueError`` (saying what was expected) for a line that starts like a summary
    line (``[``) but is not one.
    """
    if not line.startswith("["):
        return None
    m = _SUMMARY.match(line)
    if m is None:
        raise ValueError("expected a summary line like '[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>"
                         f"[2.5000, 2.5000, 2.5000]', got {line.strip()!r}")
    start, end, utt, code = float(m.group(1)), float(m.group(2)), m.group(3), m.group(4)
    u = _UTTERANCE.match(utt)
    if u is None:
        raise ValueError(f"utterance id {utt!r} is not like Ses01F_impro01_F000 or Ses01M_script02_1_M012")
    if start >= end:
        raise ValueError(f"start {start:g} is not before end {end:g}")
    return start, end, utt, code, u.group(1), f"Ses0{u.group(2)}{u.group(3)}"


@CORPORA.register("iemocap")
def prepare(root: str | Path, label_set: str = "4", excited: str = "merge", dialogs: str = "all",
            media: str = "audio") -> Manifest:
    """Build an IEMOCAP manifest; clips labelled xxx/oth or outside the class set are counted and skipped.

    Args:
        root: ``IEMOCAP_full_release`` (or the folder holding it).
        label_set: ``"4"`` (neutral, happy, sad, angry: the common protocol) or ``"all"`` (the
            nine labels other than oth/xxx).
        excited: ``"merge"`` counts exc as happy (the common protocol), ``"drop"`` leaves it
            out (counted), ``"class"`` keeps it as its own class ``excited``.
        dialogs: ``"all"``, ``"improvised"`` (``*_impro*``) or ``"scripted"`` (``*_script*``).
        media: ``"audio"`` (the utterance WAVs) or ``"video"`` (the dialog AVI, cut to the
            utterance).
    """
    for name, value, allowed in (("label_set", label_set, ("4", "all")), ("excited", excited, ("merge", "drop", "class")),
                                 ("dialogs", dialogs, ("all", "improvised", "scripted")),
                                 ("media", media, ("audio", "video"))):
        if value not in allowed:
            raise ValueError(f"iemocap option {name} must be one of {', '.join(allowed)}, got {value!r}")
    root = Path(root)
    base = root / "IEMOCAP_full_release" if (root / "IEMOCAP_full_release").is_dir() else root
    sessions = [s for s in SESSIONS if (base / s / "dialog" / "EmoEvaluation").is_dir()]
    if not sessions:
        raise ManifestError(root, "no IEMOCAP sessions found (expected IEMOCAP_full_release/Session1..5/dialog/"
                            "EmoEvaluation/*.txt)")
    names = list(CLASSES_4 if label_set == "4" else CLASSES_ALL)
    if excited == "class" and "excited" not in names:
        names.insert(names.index("happy") + 1, "excited")
    if excited != "class" and "excited" in names:
        names.remove("excited")
    clips: list[Clip] = []
    skipped: Counter = Counter()
    missing, filtered, seen = 0, 0, {}
    for session in sessions:
        for txt in sorted((base / session / "dialog" / "EmoEvaluation").glob("*.txt")):
            if txt.name.startswith("."):  # macOS resource forks (._Ses01F_impro01.txt) in some copies
                continue
            dialog_name = txt.stem
            for line_no, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
                try:
                    parsed = parse_line(line)
                except ValueError as e:
                    raise ManifestError(txt, str(e), line_no) from None
                if parsed is None:
                    continue
                start, end, utt, code, dialog, speaker = parsed
                if dialog != dialog_name or f"Session{int(utt[4])}" != session:
                    raise ManifestError(txt, f"utterance {utt!r} does not belong to dialog {dialog_name} of {session}",
                                        line_no)
                if utt in seen:
                    raise ManifestError(txt, f"utterance {utt!r} listed twice (first in {seen[utt]})", line_no)
                seen[utt] = f"{txt.name}, line {line_no}"
                if dialogs != "all" and ("_impro" in dialog) != (dialogs == "improvised"):
                    filtered += 1
                    continue
                if code not in CODES and code not in UNUSABLE:
                    raise ManifestError(txt, f"label {code!r} of {utt} is not an IEMOCAP label "
                                        f"({', '.join(list(CODES) + list(UNUSABLE))})", line_no)
                label = CODES.get(code)
                if label == "excited" and excited == "merge":
                    label = "happy"
                if label not in names:
                    skipped[UNUSABLE.get(code, f"{CODES.get(code, code)} ({code})")] += 1
                    continue
                if media == "audio":
                    path = base / session / "sentences" / "wav" / dialog / f"{utt}.wav"
                    times = (None, None)
                else:
                    path = base / session / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
                    times = (start, end)
                if not path.is_file():
                    missing += 1
                    continue
                clips.append(Clip(utt, path.relative_to(root).as_posix(), label, "", speaker, *times, group=session))
    notes = [f"{len(clips)} utterances from {', '.join(sessions)} (label_set={label_set}, excited={excited}, "
             f"dialogs={dialogs}, media={media})"]
    if skipped:
        notes.append(f"left out {sum(skipped.values())} utterances with labels outside the class set: "
                     + ", ".join(f"{k}: {v}" for k, v in skipped.most_common()))
    if filtered:
        other_kind = "scripted" if dialogs == "improvised" else "improvised"
        notes.append(f"left out {filtered} utterances of {other_kind} dialogs")
    if missing:
        kind = "WAV" if media == "audio" else "AVI"
        notes.append(f"left out {missing} labelled utterances whose {kind} file is missing")
    if len(sessions) < len(SESSIONS):
        notes.append(f"sessions found: {', '.join(sessions)} (of Session1..5)")
    if not clips:
        raise ManifestError(root, "no usable IEMOCAP utterances: " + "; ".join(notes))
    return Manifest(clips, names, root, corpus="iemocap", source=str(base), notes=notes)
