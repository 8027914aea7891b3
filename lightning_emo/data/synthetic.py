"""The synthetic audio-visual corpus: drawn talking faces with speech-like audio, as MP4 + a manifest.

``lightning-emo synth --out DIR`` (or :func:`synthesize`) writes ``DIR/clips/*.mp4`` (H.264
video of a drawn face, AAC audio), ``DIR/manifest.csv`` (+ ``manifest.json``) with the seven
CHEAVD classes and speaker-independent 7:1:2 splits, and ``DIR/synth.json`` with the
generation parameters.

Each modality is informative only in part, as in real data. The voice carries arousal-like
cues (pitch level and range, speaking rate, loudness, breathiness, spectral tilt, pitch
contour); the face carries valence-like cues (mouth curvature and opening, brow raise and
furrow, eye opening). The class design makes pairs confusable in one modality and separable
in the other::

    close in the voice: {angry, happy}  {neutral, disgust}   (fear/surprise: high pitch, told
                                                               apart by contour and breathiness)
    close in the face:  {angry, disgust}  {sad, neutral}  {fear, surprise}

so fusing the two resolves what each alone confuses (``tests/test_synthetic.py`` checks this
on the cue values and on crude statistics of the generated media). Speakers differ (gender,
base pitch, vocal-tract length, face geometry, skin tone, resting expression), intensity
varies per clip, every cue is noisy, and some clips lose the face (blank frames) or have it
occluded for part or all of the clip. Everything is drawn from ``numpy.random.default_rng([seed, ...])`` per clip, so a
seed always gives the same media.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_emo import errors
from lightning_emo.console import track
from lightning_emo.data.corpora.cheavd import CLASSES
from lightning_emo.data.manifest import Clip, Manifest, assign_splits, read_manifest
from lightning_emo.data.media import write_video
from lightning_emo.errors import UsageError, command
from lightning_emo.utils import atomic_write_text, check_outputs, output_dir

SYNTH_VERSION = 1  # bump whenever the same parameters would give different media
CORPUS_NAME = "synthetic"

# Voice: semitone shift of the mean pitch, accent range (semitones), syllables per second,
# loudness (dB), breath noise ratio, spectral tilt exponent (higher = darker, softer voice),
# jitter (relative f0 perturbation), final contour (+1 rising, -1 falling).
VOICE_KEYS = ("pitch", "range", "rate", "loud", "breath", "tilt", "jitter", "contour")
VOICE = {
    "angry":    (4.5, 6.0, 5.4, 6.0, 0.06, 0.90, 0.020, 0.0),
    "happy":    (5.0, 7.0, 5.2, 5.0, 0.08, 1.00, 0.015, 0.0),
    "fear":     (7.0, 4.0, 5.8, 1.5, 0.30, 1.35, 0.045, 0.0),
    "surprise": (6.5, 7.5, 4.8, 3.0, 0.15, 1.20, 0.015, 1.0),
    "neutral":  (0.0, 2.5, 4.2, 0.0, 0.10, 1.50, 0.010, 0.0),
    "disgust":  (-0.5, 3.0, 3.9, -0.5, 0.14, 1.60, 0.015, -0.3),
    "sad":      (-2.5, 1.2, 2.9, -6.0, 0.35, 2.00, 0.015, -1.0),
}
# Voice cue noise per clip (same units), on top of speaker differences.
VOICE_NOISE = (1.5, 1.5, 0.5, 2.0, 0.05, 0.15, 0.006, 0.35)

# Face: mouth curvature (+ corners up), mouth opening, mouth width, brow raise, brow furrow
# (+ inner ends down, - inner ends up), eye opening (1 = rest), sneer (one-sided upper lip).
FACE_KEYS = ("smile", "open", "width", "brow", "furrow", "eyes", "sneer")
FACE = {
    "angry":    (-0.55, 0.10, 0.95, -0.60, 0.90, 0.75, 0.00),
    "disgust":  (-0.60, 0.15, 0.95, -0.45, 0.70, 0.70, 0.25),
    "fear":     (-0.30, 0.50, 1.10, 0.80, -0.50, 1.35, 0.00),
    "surprise": (0.00, 0.75, 0.90, 1.00, 0.00, 1.40, 0.00),
    "sad":      (-0.35, 0.00, 1.00, 0.05, -0.45, 0.85, 0.00),
    "neutral":  (0.00, 0.00, 1.00, 0.00, 0.00, 1.00, 0.00),
    "happy":    (1.00, 0.30, 1.15, 0.10, 0.00, 0.80, 0.00),
}
FACE_NOISE = (0.25, 0.12, 0.06, 0.25, 0.25, 0.12, 0.08)

# Rates of clips whose face is missing (blank frames) or occluded for part or all of the clip.
P_FACE_MISSING_ALL = 0.03
P_FACE_MISSING_PART = 0.07
P_OCCLUDED = 0.10

VOWELS = np.array([  # F1, F2, F3 (Hz) of an adult male voice: a, e, i, o, u, schwa
    [730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010],
    [570, 840, 2410], [300, 870, 2240], [500, 1500, 2500],
], dtype=np.float32)
BANDWIDTHS = np.array([90, 110, 160], dtype=np.float32)


@dataclass(frozen=True)
class SynthConfig:
    """Generation parameters; all of them go to ``synth.json``."""

    clips_per_class: int = 30
    seed: int = 0
    num_speakers: int = 10
    fps: float = 15.0
    size: int = 112
    sample_rate: int = 16000
    min_speech: float = 0.8
    max_speech: float = 4.8

    def to_dict(self) -> dict:
        return {"version": SYNTH_VERSION, "corpus": CORPUS_NAME, "classes": list(CLASSES),
                "clips_per_class": self.clips_per_class, "seed": self.seed, "num_speakers": self.num_speakers,
                "fps": self.fps, "size": self.size, "sample_rate": self.sample_rate,
                "min_speech": self.min_speech, "max_speech": self.max_speech,
                "voice": {k: dict(zip(VOICE_KEYS, v)) for k, v in VOICE.items()},
                "face": {k: dict(zip(FACE_KEYS, v)) for k, v in FACE.items()}}


# --------------------------------------------------------------------------------------------
# Speakers


@dataclass(frozen=True)
class Speaker:
    """One synthetic person: voice and face traits that hold across all their clips."""

    name: str
    female: bool
    f0: float  # Hz
    formant_scale: float
    rate_scale: float
    loud_db: float
    breath: float
    tilt: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    face_w: float
    face_h: float
    eye_dx: float
    eye_y: float
    mouth_y: float
    mouth_w: float
    rest_smile: float
    rest_brow: float


def make_speaker(seed: int, index: int) -> Speaker:
    """Speaker ``index`` of a corpus generated with ``seed`` (alternating gender)."""
    rng = np.random.default_rng([seed, 7_000_000 + index])
    female = index % 2 == 1
    tone = rng.uniform(0, 1)
    light, dark = np.array([238, 204, 178]), np.array([112, 74, 52])
    skin = (light * (1 - tone) + dark * tone) * rng.uniform(0.95, 1.05, 3)
    hair = rng.choice([[30, 22, 18], [70, 48, 30], [120, 90, 50], [20, 20, 25], [150, 110, 70]]) * rng.uniform(0.8, 1.2)
    iris = rng.choice([[60, 40, 25], [40, 70, 110], [60, 90, 60], [30, 25, 20]])
    return Speaker(
        name=f"spk{index:02d}", female=female,
        f0=float((205.0 if female else 118.0) * math.exp(rng.normal(0, 0.10))),
        formant_scale=float((1.16 if female else 1.0) * math.exp(rng.normal(0, 0.03))),
        rate_scale=float(math.exp(rng.normal(0, 0.12))),
        loud_db=float(rng.normal(0, 2.0)), breath=float(rng.normal(0, 0.04)), tilt=float(rng.normal(0, 0.12)),
        skin=tuple(float(c) for c in np.clip(skin, 0, 255)), hair=tuple(float(c) for c in np.clip(hair, 0, 255)),
        iris=tuple(float(c) for c in iris),
        face_w=float(rng.uniform(0.64, 0.76)), face_h=float(rng.uniform(0.84, 0.95)),
        eye_dx=float(rng.uniform(0.26, 0.33)), eye_y=float(rng.uniform(-0.22, -0.12)),
        mouth_y=float(rng.uniform(0.42, 0.52)), mouth_w=float(rng.uniform(0.24, 0.31)),
        rest_smile=float(rng.normal(0, 0.2)), rest_brow=float(rng.normal(0, 0.2)),
    )


# --------------------------------------------------------------------------------------------
# Audio


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1:
        return x
    k = np.hanning(n + 2)[1:-1].astype(np.float32)
    return np.convolve(x, k / k.sum(), mode="same").astype(np.float32)


def synth_voice(rng: np.random.Generator, speaker: Speaker, voice: dict[str, float], speech_seconds: float,
                sample_rate: int, lead: float, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like audio: harmonic voiced syllables through vowel formants, consonant noise, pauses.

    Returns:
        ``wave``: float32 ``(S,)`` in [-1, 1]; ``envelope``: float32 ``(S,)`` in [0, 1], the
        syllable loudness over time (it drives the mouth).
    """
    sr = sample_rate
    total = lead + speech_seconds + tail
    n = int(round(total * sr))
    hop = sr // 200  # 5 ms control rate
    n_ctl = n // hop + 2

    rate = max(1.5, voice["rate"] * speaker.rate_scale)
    # Syllables grouped into words, words separated by short pauses.
    syllables = []  # (start, duration, vowel index, stress)
    t = lead
    end_speech = lead + speech_seconds
    while t < end_speech - 0.12:
        for _ in range(int(rng.integers(1, 4))):
            dur = float(rng.uniform(0.65, 1.35) / rate)
            if t + dur > end_speech:
                break
            syllables.append((t, dur, int(rng.integers(0, len(VOWELS))), bool(rng.random() < 0.35)))
            t += dur
        t += float(rng.uniform(0.04, 0.18) * 4.0 / rate)
    if not syllables:
        syllables.append((lead, min(speech_seconds, 0.3), 0, True))

    # Loudness envelope and per-syllable targets at the control rate.
    ctl_t = np.arange(n_ctl, dtype=np.float32) * hop / sr
    env = np.zeros(n_ctl, np.float32)
    formants = np.tile(VOWELS[5], (n_ctl, 1))
    accent = np.zeros(n_ctl, np.float32)
    onsets = []
    for start, dur, vowel, stress in syllables:
        a, b = int(start * sr / hop), int((start + dur) * sr / hop)
        if b <= a:
            continue
        x = np.linspace(0, 1, b - a, dtype=np.float32)
        shape = np.maximum(np.sin(np.pi * np.clip(x * 1.15, 0, 1)), 0) ** 0.6
        env[a:b] = np.maximum(env[a:b], shape * (1.0 if stress else rng.uniform(0.55, 0.85)))
        formants[a:b] = VOWELS[vowel] * rng.uniform(0.93, 1.07, 3)
        if stress:
            accent[a:b] += np.sin(np.pi * x) * rng.uniform(0.5, 1.0)
        onsets.append(start)
    formants = np.stack([_smooth(formants[:, j], 9) for j in range(3)], axis=1) * speaker.formant_scale

    # Pitch contour (semitones around the speaker's base), declination, accents, final contour.
    pos = np.clip((ctl_t - lead) / max(speech_seconds, 1e-3), 0, 1)
    semis = voice["pitch"] - 2.0 * pos + voice["range"] * accent
    semis += voice["contour"] * max(voice["range"], 2.0) * np.clip((pos - 0.7) / 0.3, 0, 1) ** 2
    walk = np.cumsum(rng.normal(0, 1, n_ctl)).astype(np.float32)
    walk = _smooth(walk - np.linspace(walk[0], walk[-1], n_ctl, dtype=np.float32), 21)
    semis += 0.6 * walk / max(1e-6, float(np.abs(walk).max()))
    f0_ctl = speaker.f0 * 2.0 ** (semis / 12.0)

    # Upsample the control tracks to samples (linear interpolation).
    idx = np.arange(n, dtype=np.float32) / hop
    i0 = idx.astype(np.int64)
    frac = idx - i0

    def up(track: np.ndarray) -> np.ndarray:
        return track[i0] * (1 - frac) + track[i0 + 1] * frac

    jitter = 1.0 + voice["jitter"] * rng.normal(0, 1, n // 40 + 2).astype(np.float32).repeat(40)[:n]
    f0 = up(f0_ctl) * jitter
    phase = np.cumsum(2 * np.pi * f0 / sr, dtype=np.float64)
    phase = np.mod(phase, 2 * np.pi).astype(np.float32)

    # Harmonic amplitudes at the control rate: tilt x formant resonances, none above 5 kHz.
    k_max = int(min(36, 5000 // max(60.0, float(f0_ctl.max()))))
    k = np.arange(1, k_max + 1, dtype=np.float32)[:, None]  # (K, 1)
    freqs = k * f0_ctl[None, :]  # (K, C)
    resonance = sum(1.0 / (1.0 + ((freqs - formants[None, :, j]) / BANDWIDTHS[j]) ** 2) * (0.8 ** j)
                    for j in range(3))
    tilt = max(0.4, voice["tilt"] + speaker.tilt)
    amp = (k ** -tilt) * (0.08 + resonance)  # (K, C)
    amp /= np.sqrt((amp ** 2).sum(axis=0, keepdims=True)) + 1e-8
    amp = amp.astype(np.float32)
    # sin((h+1) p) by the Chebyshev recurrence (three multiply-adds per harmonic, no sin calls);
    # amplitudes are held over each 5 ms control step.
    two_cos = 2 * np.cos(phase)
    s_prev, s_cur = np.zeros(n, np.float32), np.sin(phase)
    voiced = np.zeros(n, np.float32)
    for h in range(k_max):
        voiced += np.repeat(amp[h], hop)[:n] * s_cur
        s_prev, s_cur = s_cur, two_cos * s_cur - s_prev

    env_s = up(env)
    breath = float(np.clip(voice["breath"] + speaker.breath, 0.0, 0.8))
    noise = rng.normal(0, 1, n).astype(np.float32)
    aspir = np.diff(noise, prepend=0.0).astype(np.float32) * 0.5
    wave = env_s * ((1 - breath) * voiced + breath * 1.2 * aspir)
    # Consonant bursts at syllable onsets (fricative-like high-passed noise).
    for start in onsets:
        if rng.random() < 0.6:
            a = int(start * sr)
            m = int(rng.uniform(0.02, 0.05) * sr)
            if a + m <= n:
                burst = np.diff(rng.normal(0, 1, m + 1)).astype(np.float32)
                wave[a:a + m] += burst * np.hanning(m).astype(np.float32) * rng.uniform(0.15, 0.35)

    gain = 0.08 * 10 ** ((voice["loud"] + speaker.loud_db) / 20.0)
    wave *= gain
    rms = float(np.sqrt(np.mean(wave[env_s > 0.3] ** 2))) if np.any(env_s > 0.3) else gain
    snr_db = rng.uniform(18, 40)
    wave += rng.normal(0, 1, n).astype(np.float32) * rms * 10 ** (-snr_db / 20)
    wave = np.tanh(wave * 1.1) / 1.1  # soft limit, never clips
    return wave.astype(np.float32), env_s.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Video


def _soft(d: np.ndarray, aa: float) -> np.ndarray:
    """Coverage from a signed distance (negative inside), anti-aliased over ``aa``."""
    return np.clip(0.5 - d / aa, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, color) -> None:
    """Blend ``color`` (3,) or per-pixel colours over ``img`` (..., 3) in place with coverage ``alpha``."""
    tmp = np.subtract(np.asarray(color, np.float32), img, dtype=np.float32)
    tmp *= alpha[..., None]
    img += tmp


def draw_faces(rng: np.random.Generator, speaker: Speaker, face: dict[str, float], times: np.ndarray,
               mouth_env: np.ndarray, size: int, visible: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """Draw a talking face in every frame at once (vectorised over frames and pixels).

    Each facial feature is drawn only inside its bounding box over all frames (a view of the
    frame stack), so the cost is dominated by the full-frame head and background.

    Args:
        times: ``(N,)`` frame times (s); ``mouth_env``: ``(N,)`` speech loudness at those times.
        visible: ``(N,)`` bool, False = background only; occluded: ``(N,)`` bool, a block over the face.

    Returns:
        uint8 ``(N, size, size, 3)`` RGB frames.
    """
    n = len(times)
    aa = 2.5 / size  # anti-aliasing width in normalised units (~1.25 px)
    line = np.linspace(-1, 1, size, dtype=np.float32)
    ys, xs = np.meshgrid(line, line, indexing="ij")
    # Background: a muted colour with a gentle gradient.
    bg = rng.uniform(60, 200, 3).astype(np.float32)
    grad = rng.normal(0, 18, 3).astype(np.float32)
    background = bg + grad * ys[..., None] + 0.5 * grad * xs[..., None]
    img = np.empty((n, size, size, 3), np.float32)
    img[:] = background

    # Small head motion: slow sway + nodding, plus a small random walk.
    ph = rng.uniform(0, 2 * np.pi, 4)
    t = times.astype(np.float32)
    walk = np.cumsum(rng.normal(0, 0.004, (n, 3)), axis=0).astype(np.float32)
    cx = (0.04 * np.sin(2 * np.pi * 0.35 * t + ph[0]) + walk[:, 0] + rng.normal(0, 0.03)).astype(np.float32)
    cy = (0.03 * np.sin(2 * np.pi * 0.5 * t + ph[1]) + walk[:, 1] + rng.normal(0.03, 0.02)).astype(np.float32)
    ang = (0.06 * np.sin(2 * np.pi * 0.3 * t + ph[2]) + walk[:, 2]).astype(np.float32)
    scale = float(rng.uniform(0.95, 1.08))
    ca, sa = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    u = (dx * ca + dy * sa) / scale  # face-local coordinates, (N, H, W)
    v = (-dx * sa + dy * ca) / scale

    def region(u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice]:
        """Pixel rows/cols covering the local box [u0, u1] x [v0, v1] in every frame."""
        cu = np.array([u0, u1, u0, u1], np.float32)[None]
        cv = np.array([v0, v0, v1, v1], np.float32)[None]
        c, s_ = ca[:, :, 0], sa[:, :, 0]
        x = cx[:, None] + scale * (cu * c - cv * s_)
        y = cy[:, None] + scale * (cu * s_ + cv * c)
        to_px = lambda z: (z + 1) / 2 * (size - 1)  # noqa: E731
        c0, c1 = int(np.floor(to_px(x.min()))) - 2, int(np.ceil(to_px(x.max()))) + 3
        r0, r1 = int(np.floor(to_px(y.min()))) - 2, int(np.ceil(to_px(y.max()))) + 3
        return slice(max(0, r0), max(0, min(size, r1))), slice(max(0, c0), max(0, min(size, c1)))

    fw, fh = speaker.face_w, speaker.face_h
    skin = np.asarray(speaker.skin, np.float32) * rng.uniform(0.9, 1.1)  # per-clip lighting
    r_face = np.sqrt((u / fw) ** 2 + (v / fh) ** 2)
    # Hair behind the head, then the face with shading towards the rim.
    r_hair = np.sqrt((u / (fw * 1.08)) ** 2 + ((v + 0.06) / (fh * 1.04)) ** 2)
    _paint(img, _soft(r_hair - 1, aa * 2) * (v < 0.05 * fh), speaker.hair)
    a_face = _soft((r_face - 1) * min(fw, fh), aa)
    shade = 1.0 - 0.22 * np.minimum(r_face, 1.2) ** 2
    _paint(img, a_face, skin * shade[..., None])

    # Expression over time: the clip's expression, blinks, speech moving the mouth.
    smile = face["smile"] + speaker.rest_smile
    brow = face["brow"] + speaker.rest_brow
    eyes = np.full(n, max(0.3, face["eyes"]), np.float32)
    t_blink = rng.uniform(0.5, 4.0)
    while t_blink < t[-1] + 1:
        eyes[np.abs(t - t_blink) < 0.09] *= 0.12
        t_blink += rng.uniform(1.5, 4.5)
    eyes = eyes[:, None, None]

    for side in (-1.0, 1.0):
        ex, ey = side * speaker.eye_dx, speaker.eye_y
        # Eye: sclera ellipse opening with ``eyes``, iris, pupil.
        sy, sx = region(ex - 0.15, ex + 0.15, ey - 0.14, ey + 0.14)
        uu, vv, fa, im = u[:, sy, sx], v[:, sy, sx], a_face[:, sy, sx], img[:, sy, sx]
        rx, ry = 0.13, 0.065 * eyes
        r_eye = np.sqrt(((uu - ex) / rx) ** 2 + ((vv - ey) / ry) ** 2)
        a_eye = _soft((r_eye - 1) * 0.065, aa) * fa
        _paint(im, a_eye, (240, 240, 236))
        r_iris = np.sqrt((uu - ex) ** 2 + (vv - ey) ** 2)
        _paint(im, _soft(r_iris - 0.055, aa) * a_eye, speaker.iris)
        _paint(im, _soft(r_iris - 0.022, aa) * a_eye, (15, 15, 15))
        # Brow: an arched band above the eye; ``brow`` lifts it, ``furrow`` lowers the inner end.
        top = ey - 0.17 - 0.085 * max(brow, -1.5)
        sy, sx = region(ex - 0.2, ex + 0.2, top - 0.25, top + 0.2)
        uu, vv, fa, im = u[:, sy, sx], v[:, sy, sx], a_face[:, sy, sx], img[:, sy, sx]
        w = (np.abs(uu) - abs(ex)) / 0.16  # -1 inner end, +1 outer end
        band = ey - 0.17 - 0.085 * brow - 0.05 * face["furrow"] * w + 0.035 * w ** 2
        inside_u = _soft((np.abs(w) - 1) * 0.16, aa) * (uu * side > 0)
        _paint(im, _soft(np.abs(vv - band) - 0.028, aa) * inside_u * fa, speaker.hair)

    # Nose: a soft shadow.
    sy, sx = region(-0.12, 0.12, 0.08, 0.24)
    uu, vv, fa, im = u[:, sy, sx], v[:, sy, sx], a_face[:, sy, sx], img[:, sy, sx]
    r_nose = np.sqrt((uu / 0.07) ** 2 + ((vv - 0.16) / 0.05) ** 2)
    im *= (1 - 0.18 * _soft((r_nose - 1) * 0.05, aa * 3) * fa)[..., None]

    # Mouth: centre line bent by ``smile``; lips open with the expression and the speech.
    mw = speaker.mouth_w * face["width"]
    my = speaker.mouth_y
    sy, sx = region(-mw - 0.05, mw + 0.05, my - 0.35, my + 0.35)
    uu, vv, fa, im = u[:, sy, sx], v[:, sy, sx], a_face[:, sy, sx], img[:, sy, sx]
    q = np.clip(uu / mw, -1.5, 1.5)
    centre = my - 0.11 * smile * q ** 2 + 0.05 * smile - 0.05 * face["sneer"] * np.clip(q, 0, 1)
    opening = (0.012 + 0.10 * max(0.0, face["open"]) + 0.07 * mouth_env)[:, None, None]
    half = opening * np.clip(1 - q ** 2, 0, 1)
    inside_w = _soft((np.abs(q) - 1) * mw, aa)
    dist = np.abs(vv - centre) - half
    _paint(im, _soft(dist - 0.028, aa) * inside_w * fa, skin * np.array([0.85, 0.52, 0.52], np.float32))
    _paint(im, _soft(dist, aa) * inside_w * fa, (55, 22, 28))

    # Missing face (background only) and occlusion (a block over the face).
    if not visible.all():
        img[~visible] = background
    if occluded.any():
        bx, by = rng.uniform(-0.5, 0.2), rng.uniform(-0.5, 0.2)
        bw, bh = rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.9)
        rows = slice(int((by + 1) / 2 * size), int((by + bh + 1) / 2 * size))
        cols = slice(int((bx + 1) / 2 * size), int((bx + bw + 1) / 2 * size))
        color = rng.uniform(40, 220, 3).astype(np.float32)
        for i in np.flatnonzero(occluded):
            img[i, rows, cols] = color

    # Sensor noise: one noise field, shifted at random for every frame (cheaper than fresh noise).
    pad = 16
    field = rng.standard_normal((size + pad, size + pad, 3), dtype=np.float32) * 3.0
    offsets = rng.integers(0, pad, (n, 2))
    for i, (oy, ox) in enumerate(offsets):
        img[i] += field[oy:oy + size, ox:ox + size]
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Clips and the corpus


def _draw_params(rng, table: dict, noise: tuple, keys: tuple, label: str, intensity: float) -> dict[str, float]:
    base = np.asarray(table["neutral"], np.float64)
    target = np.asarray(table[label], np.float64)
    values = base + intensity * (target - base) + rng.normal(0, 1, len(keys)) * np.asarray(noise)
    return dict(zip(keys, (float(x) for x in values)))


def _intervals(rng, n: int, p_all: float, p_part: float) -> np.ndarray:
    """A per-frame bool mask: True over all frames (p_all), over one stretch (p_part), else none."""
    mask = np.zeros(n, bool)
    r = rng.random()
    if r < p_all:
        mask[:] = True
    elif r < p_all + p_part:
        length = max(1, int(n * rng.uniform(0.2, 0.7)))
        a = int(rng.integers(0, max(1, n - length + 1)))
        mask[a:a + length] = True
    return mask


def clip_cues(config: SynthConfig, label: str, index: int) -> tuple[np.random.Generator, dict]:
    """Draw what clip ``index`` of ``label`` expresses, before any media is made.

    Returns:
        the clip's generator (positioned for the media draws that follow) and a dict:
        ``intensity``; ``voice`` and ``face`` cue values (:data:`VOICE_KEYS`, :data:`FACE_KEYS`;
        the class's cues scaled by a per-modality intensity, plus noise); ``speech``, ``lead``,
        ``tail`` (seconds of speech and of silence before and after).
    """
    rng = np.random.default_rng([config.seed, CLASSES.index(label), index])
    intensity = float(rng.uniform(0.45, 1.0))
    voice = _draw_params(rng, VOICE, VOICE_NOISE, VOICE_KEYS, label,
                         float(np.clip(intensity + rng.normal(0, 0.15), 0.2, 1.1)))
    face = _draw_params(rng, FACE, FACE_NOISE, FACE_KEYS, label,
                        float(np.clip(intensity + rng.normal(0, 0.15), 0.2, 1.1)))
    speech = float(rng.uniform(config.min_speech, config.max_speech))
    lead, tail = float(rng.uniform(0.15, 0.6)), float(rng.uniform(0.15, 0.6))
    return rng, {"label": label, "intensity": intensity, "voice": voice, "face": face,
                 "speech": speech, "lead": lead, "tail": tail}


def observed_cues(cues: dict, speaker: Speaker) -> tuple[np.ndarray, np.ndarray]:
    """The cue values the media carries once the speaker's traits are added.

    Returns:
        ``voice`` ``(8,)``: log mean f0, pitch range, syllable rate, loudness (dB), breathiness,
        spectral tilt, jitter, final contour; ``face`` ``(7,)``: mouth curvature, opening, width,
        brow raise, furrow, eye opening, sneer. What a perfect observer of one modality could use.
    """
    v, f = cues["voice"], cues["face"]
    voice = np.array([math.log(speaker.f0) + v["pitch"] / 12 * math.log(2), v["range"],
                      v["rate"] * speaker.rate_scale, v["loud"] + speaker.loud_db, v["breath"] + speaker.breath,
                      v["tilt"] + speaker.tilt, v["jitter"], v["contour"]])
    face = np.array([f["smile"] + speaker.rest_smile, f["open"], f["width"] * speaker.mouth_w,
                     f["brow"] + speaker.rest_brow, f["furrow"], f["eyes"], f["sneer"]])
    return voice, face


def make_clip(config: SynthConfig, label: str, index: int, speaker: Speaker) -> tuple[np.ndarray, np.ndarray, dict]:
    """Generate one clip's media.

    Returns:
        ``frames`` uint8 ``(N, size, size, 3)``, ``audio`` float32 ``(S,)`` and a dict of what was
        drawn (:func:`clip_cues` plus duration and face missing/occluded shares).
    """
    rng, cues = clip_cues(config, label, index)
    audio, env = synth_voice(rng, speaker, cues["voice"], cues["speech"], config.sample_rate,
                             cues["lead"], cues["tail"])
    duration = len(audio) / config.sample_rate
    n_frames = max(1, int(round(duration * config.fps)))
    times = np.arange(n_frames) / config.fps
    mouth = env[np.minimum((times * config.sample_rate).astype(np.int64), len(env) - 1)]
    missing = _intervals(rng, n_frames, P_FACE_MISSING_ALL, P_FACE_MISSING_PART)
    occluded = _intervals(rng, n_frames, 0.0, P_OCCLUDED) & ~missing
    frames = draw_faces(rng, speaker, cues["face"], times, mouth, config.size, ~missing, occluded)
    info = dict(cues, speaker=speaker.name, duration=duration, face_missing=float(missing.mean()),
                face_occluded=float(occluded.mean()))
    return frames, audio, info


def speaker_index(class_index: int, clip_index: int, num_speakers: int) -> int:
    """Who speaks clip ``clip_index`` of class ``class_index``: round-robin, offset per class.

    Independent of the corpus size, so a clip is the same media in a smaller or larger corpus
    made with the same seed, and every speaker gets clips of several classes.
    """
    return (clip_index + 3 * class_index) % num_speakers


def _up_to_date(out: Path, config: SynthConfig) -> bool:
    meta, manifest = out / "synth.json", out / "manifest.csv"
    if not (meta.is_file() and manifest.is_file()):
        return False
    try:
        if json.loads(meta.read_text()).get("parameters") != config.to_dict():
            return False
        read_manifest(manifest)  # checks every media file exists
    except (OSError, ValueError):  # unreadable JSON or manifest, a missing clip: regenerate
        return False
    return True


# Bounds checked before any work (a billion clips per class was an out-of-memory kill, not an error).
MAX_CLIPS_PER_CLASS = 10_000
MAX_SPEAKERS = 10_000
FPS_RANGE = (1.0, 120.0)
SIZE_RANGE = (16, 1024)
SPEECH_RANGE = (0.1, 60.0)  # seconds of speech per clip
DEFAULT_SPEECH = (0.8, 4.8)
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def check_parameters(clips_per_class: int, num_speakers: int, fps: float, size: int, sample_rate: int,
                     min_speech: float, max_speech: float) -> None:
    """Refuse generation parameters outside what the corpus can be made with, naming the option and its range."""
    def bad(name: str, value, expected: str) -> UsageError:
        flag = "" if "," in name else f" (--{name.replace('_', '-')})"
        return UsageError(f"{name}={value!r}{flag}: expected {expected}")

    if not isinstance(clips_per_class, int) or not 1 <= clips_per_class <= MAX_CLIPS_PER_CLASS:
        raise bad("clips_per_class", clips_per_class, f"a whole number from 1 to {MAX_CLIPS_PER_CLASS}")
    if not isinstance(num_speakers, int) or not 1 <= num_speakers <= MAX_SPEAKERS:
        raise bad("num_speakers", num_speakers, f"a whole number from 1 to {MAX_SPEAKERS}")
    if not (math.isfinite(fps) and FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
        raise bad("fps", fps, f"frames per second from {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g}")
    if not isinstance(size, int) or not SIZE_RANGE[0] <= size <= SIZE_RANGE[1] or size % 2:
        raise bad("size", size, f"an even number of pixels from {SIZE_RANGE[0]} to {SIZE_RANGE[1]} (H.264 "
                  "needs even sizes)")
    if sample_rate not in AAC_SAMPLE_RATES:
        raise bad("sample_rate", sample_rate, f"one of the AAC rates {', '.join(map(str, AAC_SAMPLE_RATES))} Hz")
    if not (math.isfinite(min_speech) and math.isfinite(max_speech)
            and SPEECH_RANGE[0] <= min_speech <= max_speech <= SPEECH_RANGE[1]):
        raise bad("min_speech, max_speech", (min_speech, max_speech),
                  f"seconds with {SPEECH_RANGE[0]:g} <= min_speech <= max_speech <= {SPEECH_RANGE[1]:g}")


def synthesize(
    out: str | Path,
    clips_per_class: int = 30,
    seed: int = 0,
    num_speakers: int = 10,
    fps: float = 15.0,
    size: int = 112,
    sample_rate: int = 16000,
    min_speech: float = DEFAULT_SPEECH[0],
    max_speech: float = DEFAULT_SPEECH[1],
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the synthetic corpus under ``out`` and return the manifest CSV path.

    ``7 * clips_per_class`` MP4 clips (``size`` x ``size`` at ``fps``, mono AAC at
    ``sample_rate``), 1-6 s long. Speakers are dealt round-robin (:func:`speaker_index`) so each
    speaker has clips of several classes; splits are speaker-independent 7:1:2 (:func:`assign_splits` with ``seed``).
    A directory already holding a corpus made with the same parameters is left as it is
    unless ``overwrite``. A clip depends only on the seed, its class and index and the media
    settings, so a larger corpus extends a smaller one. A directory holding files of the same
    names that this function did not write (no ``synth.json``: someone's ``manifest.csv``) is
    refused (:class:`~lightning_emo.utils.OutputExistsError`) unless ``overwrite``.
    """
    check_parameters(clips_per_class, num_speakers, fps, size, sample_rate, min_speech, max_speech)
    config = SynthConfig(clips_per_class, seed, num_speakers, float(fps), size, sample_rate, min_speech, max_speech)
    out = Path(out)
    if not overwrite and _up_to_date(out, config):
        return out / "manifest.csv"
    if not (out / "synth.json").is_file():  # not a synthetic corpus: what would be replaced is someone else's
        mine = [out / "manifest.csv", out / "manifest.json", out / "synth.json"]
        mine += sorted((out / "clips").glob("synth_*.mp4")) if (out / "clips").is_dir() else []
        check_outputs(mine, overwrite, what="the folder holds files synth did not write:")
    clip_dir = out / "clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    speakers = [make_speaker(seed, i) for i in range(num_speakers)]

    clips, stats = [], []
    started = time.perf_counter()
    todo = [(c, label, j) for c, label in enumerate(CLASSES) for j in range(clips_per_class)]
    for c, label, j in track(todo, desc="synth", unit="clip", enabled=progress):
        speaker = speakers[speaker_index(c, j, num_speakers)]
        frames, audio, info = make_clip(config, label, j, speaker)
        clip_id = f"synth_{label}_{j:03d}"
        write_video(clip_dir / f"{clip_id}.mp4", frames, config.fps, audio, sample_rate, threads=1,
                    audio_options={"aac_coder": "fast"})
        clips.append(Clip(clip_id, f"clips/{clip_id}.mp4", label, "", speaker.name))
        stats.append(info)
    keep = {f"{c.clip_id}.mp4" for c in clips}
    for stale in clip_dir.glob("synth_*.mp4"):  # left over from a larger earlier run
        if stale.name not in keep:
            stale.unlink()
    manifest = Manifest(clips, list(CLASSES), out, corpus=CORPUS_NAME)
    manifest = assign_splits(manifest, seed=seed)
    path = manifest.write(out / "manifest.csv")
    durations = [s["duration"] for s in stats]
    meta = {
        "parameters": config.to_dict(),
        "clips": len(clips),
        "seconds": round(float(sum(durations)), 3),
        "duration_range": [round(min(durations), 3), round(max(durations), 3)],
        "clips_face_missing_all": sum(s["face_missing"] == 1.0 for s in stats),
        "clips_face_missing_part": sum(0 < s["face_missing"] < 1.0 for s in stats),
        "clips_face_occluded": sum(s["face_occluded"] > 0 for s in stats),
        "generation_seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_text(out / "synth.json", json.dumps(meta, indent=2) + "\n")
    return path


@command("synth")
def main(argv: list[str] | None = None) -> int:
    """``lightning-emo synth``: write the synthetic corpus and print its manifest summary."""
    parser = errors.ArgumentParser(
        prog="lightning-emo synth",
        description="Write a synthetic audio-visual emotion corpus (MP4 clips of drawn talking faces with "
        "speech-like audio, the seven CHEAVD classes) and its manifest with speaker-independent splits.",
    )
    parser.add_argument("--out", required=True, help="output folder (clips/, manifest.csv, synth.json)")
    parser.add_argument("--clips-per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-speakers", type=int, default=10)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--size", type=int, default=112, help="frame width and height in pixels (even)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if DIR is up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    check_parameters(args.clips_per_class, args.num_speakers, args.fps, args.size, args.sample_rate,
                     *DEFAULT_SPEECH)
    output_dir(args.out, "--out")
    path = synthesize(args.out, args.clips_per_class, args.seed, args.num_speakers, args.fps, args.size,
                      args.sample_rate, overwrite=args.overwrite, progress=not args.quiet)
    print(read_manifest(path).summary())
    print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
