"""Tiny synthetic source-task corpora: an ASR corpus of tone "words" and an identity folder of drawn faces.

Both are for tests, demos and smoke runs of the pretraining recipes on a laptop; they are
written as real files (16 kHz WAV + an ASR manifest; PNG face crops in ``root/<id>/``), so the
same readers and decoders as for AISHELL-1 or CASIA-WebFace are exercised.

* :func:`synth_asr_corpus`: every unit (by default six Chinese numerals) is a distinct sound:
  its own set of three partials (a "formant pattern") with a small pitch glide, an attack/decay
  envelope, a random duration (+-25 %), random pauses and background noise; speakers differ by
  a frequency scale (vocal-tract length), utterances by loudness. Utterances are 2-5 units.
* :func:`synth_identity_folder`: every identity is a face geometry (head shape, eye spacing
  and size, mouth width, nose length) and a colour scheme (skin, hair, eyes); each image
  moves, scales and rotates it slightly, changes the lighting and adds noise and background
  clutter.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lightning_emo.pretrain.asr_data import ASRManifest, Utterance

DEFAULT_UNITS = "一二三四五六"
# Candidate partial frequencies (Hz): each unit uses three of them, no two units the same three.
_PARTIALS = (250.0, 450.0, 700.0, 1000.0, 1400.0, 1900.0, 2500.0, 3200.0)


def _unit_patterns(n_units: int, seed: int) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng([seed, 7])
    combos = [(a, b, c) for a in range(len(_PARTIALS)) for b in range(a + 1, len(_PARTIALS))
              for c in range(b + 1, len(_PARTIALS))]
    if n_units > len(combos):
        raise ValueError(f"at most {len(combos)} synthetic units, asked for {n_units}")
    # spread the choice: units should differ in at least one low and one high partial
    chosen: list[tuple[int, int, int]] = []
    for i in rng.permutation(len(combos)):
        cand = combos[i]
        if all(len(set(cand) & set(c)) <= 1 for c in chosen):
            chosen.append(cand)
        if len(chosen) == n_units:
            break
    for i in rng.permutation(len(combos)):  # fewer well-separated triples than units asked for
        if len(chosen) == n_units:
            break
        if combos[i] not in chosen:
            chosen.append(combos[i])
    return [tuple(_PARTIALS[j] for j in c) for c in chosen]


def synth_unit(rng: np.random.Generator, partials: Sequence[float], seconds: float, scale: float,
               sample_rate: int) -> np.ndarray:
    """One unit's sound: three partials (scaled by the speaker's ``scale``) with a glide and an envelope."""
    n = max(int(seconds * sample_rate), 1)
    t = np.arange(n) / sample_rate
    glide = 1.0 + rng.uniform(-0.04, 0.04) * t / max(seconds, 1e-3)
    out = np.zeros(n)
    for k, f in enumerate(partials):
        amp = (1.0, 0.7, 0.5)[k] * rng.uniform(0.8, 1.2)
        phase = rng.uniform(0, 2 * math.pi)
        out += amp * np.sin(2 * math.pi * f * scale * np.cumsum(glide) / sample_rate + phase)
    attack, release = min(int(0.015 * sample_rate), n // 3), min(int(0.03 * sample_rate), n // 3)
    env = np.ones(n)
    if attack:
        env[:attack] = np.linspace(0, 1, attack)
    if release:
        env[-release:] = np.linspace(1, 0, release)
    return out * env / 2.2


def synth_asr_corpus(
    out: str | os.PathLike,
    n_utterances: int = 48,
    units: Sequence[str] = DEFAULT_UNITS,
    n_speakers: int = 6,
    min_units: int = 2,
    max_units: int = 5,
    unit_seconds: float = 0.16,
    noise: float = 0.02,
    sample_rate: int = 16000,
    seed: int = 0,
    splits: bool = False,
) -> Path:
    """Write ``out/wav/<speaker>/<utt>.wav`` and ``out/asr.csv`` (an ASR manifest); return the CSV path.

    Transcripts are the units separated by spaces (as AISHELL-1 transcripts are word-segmented).
    With ``splits``, the last speaker's utterances are ``val`` and the others ``train``; without,
    the split column is empty (the datamodule assigns it).
    """
    from lightning_emo.data.media import write_audio

    out = Path(out)
    units = list(units)
    patterns = _unit_patterns(len(units), seed)
    rng = np.random.default_rng([seed, 1])
    scales = rng.uniform(0.97, 1.03, n_speakers)
    utterances = []
    for i in range(n_utterances):
        spk = i % n_speakers
        urng = np.random.default_rng([seed, 2, i])
        k = int(urng.integers(min_units, max_units + 1))
        seq = [int(j) for j in urng.integers(0, len(units), k)]
        pieces = [np.zeros(int(urng.uniform(0.05, 0.15) * sample_rate))]
        for j in seq:
            dur = unit_seconds * urng.uniform(0.75, 1.25)
            pieces.append(synth_unit(urng, patterns[j], dur, scales[spk], sample_rate))
            pieces.append(np.zeros(int(urng.uniform(0.03, 0.09) * sample_rate)))
        pieces.append(np.zeros(int(urng.uniform(0.05, 0.15) * sample_rate)))
        wave = np.concatenate(pieces) * urng.uniform(0.5, 1.0)
        wave = wave + noise * urng.standard_normal(wave.shape[0])
        wave = np.clip(wave, -0.99, 0.99).astype(np.float32)
        speaker = f"S{spk:03d}"
        utt_id = f"{speaker}U{i:04d}"
        rel = f"wav/{speaker}/{utt_id}.wav"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        write_audio(out / rel, wave, sample_rate)
        split = ("val" if spk == n_speakers - 1 else "train") if splits else ""
        utterances.append(Utterance(utt_id, rel, " ".join(units[j] for j in seq), split, speaker))
    return ASRManifest(utterances, out, corpus="synthetic-asr").write(out / "asr.csv")


def draw_face(rng: np.random.Generator, identity: dict, size: int = 112) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of ``identity`` (see :func:`make_identity`) with random pose and lighting."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bg = np.array(identity["background"]) * rng.uniform(0.7, 1.1)
    img = np.ones((size, size, 3), np.float32) * bg
    # background clutter: a few random blobs
    for _ in range(3):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        m = ((xx - cx) ** 2 + (yy - cy) ** 2) < r ** 2
        img[m] = rng.uniform(0, 1, 3)
    dx, dy = rng.uniform(-0.05, 0.05, 2)
    s = rng.uniform(0.9, 1.1)
    a = rng.uniform(-0.15, 0.15)
    # face coordinates: rotate/scale/shift the grid around the image centre
    u, v = (xx - 0.5 - dx) / s, (yy - 0.5 - dy) / s
    u, v = u * math.cos(a) + v * math.sin(a), -u * math.sin(a) + v * math.cos(a)

    def ellipse(cx, cy, rx, ry):
        return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 < 1

    g = identity
    img[ellipse(0, -0.08, g["head_w"] * 1.08, g["head_h"] * 0.75) & (v < -0.05)] = g["hair"]
    img[ellipse(0, 0.02, g["head_w"], g["head_h"])] = g["skin"]
    for side in (-1, 1):
        img[ellipse(side * g["eye_dx"], g["eye_y"], g["eye_r"] * 1.5, g["eye_r"])] = (0.95, 0.95, 0.95)
        img[ellipse(side * g["eye_dx"], g["eye_y"], g["eye_r"] * 0.7, g["eye_r"] * 0.7)] = g["iris"]
        img[ellipse(side * g["eye_dx"], g["eye_y"] - 0.07, g["eye_r"] * 1.8, 0.012)] = g["hair"]
    img[ellipse(0, g["eye_y"] + 0.5 * g["nose_len"], 0.025, g["nose_len"] * 0.5)] = np.array(g["skin"]) * 0.8
    img[ellipse(0, g["mouth_y"], g["mouth_w"], 0.025)] = g["lips"]
    light = rng.uniform(0.75, 1.2) * (1 + rng.uniform(-0.25, 0.25) * (xx - 0.5))
    img = img * light[..., None] + rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_identity(rng: np.random.Generator) -> dict:
    """A random face identity: geometry and colours used by :func:`draw_face`."""
    return {
        "head_w": rng.uniform(0.24, 0.34), "head_h": rng.uniform(0.32, 0.42),
        "eye_dx": rng.uniform(0.08, 0.14), "eye_y": rng.uniform(-0.06, 0.0), "eye_r": rng.uniform(0.022, 0.04),
        "nose_len": rng.uniform(0.06, 0.14), "mouth_w": rng.uniform(0.06, 0.14), "mouth_y": rng.uniform(0.17, 0.23),
        "skin": tuple(rng.uniform(0.35, 0.95, 3)), "hair": tuple(rng.uniform(0.0, 0.6, 3)),
        "iris": tuple(rng.uniform(0.0, 0.7, 3)), "lips": tuple(rng.uniform(0.4, 0.9, 3) * (1.0, 0.5, 0.5)),
        "background": tuple(rng.uniform(0.2, 0.9, 3)),
    }


def synth_identity_folder(out: str | os.PathLike, n_identities: int = 4, per_identity: int = 12, size: int = 112,
                          seed: int = 0, ext: str = ".png") -> Path:
    """Write ``out/<id>/<n>.png`` face crops of ``n_identities`` drawn people; return ``out``."""
    from PIL import Image

    out = Path(out)
    rng = np.random.default_rng([seed, 3])
    for k in range(n_identities):
        identity = make_identity(rng)
        folder = out / f"person_{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            img = draw_face(np.random.default_rng([seed, 4, k, j]), identity, size)
            Image.fromarray(img).save(folder / f"{j:03d}{ext}")
    return out
