"""Handcrafted audio extractors (``mfcc``, ``compare``) and the masked-batch helpers all audio extractors share.

Every audio extractor maps ``(waveform (B, S) float32 at 16 kHz, lengths (B,) samples)`` to
``(features (B, T, D), lengths (B,) frames)``; samples past a clip's length never change its
valid frames (frames are computed without centring, deltas and normalisation statistics are
taken per clip), and frames past a clip's length are zero.

``mfcc``
    13 MFCCs (c0..c12) with first and second derivatives: 39 values per frame, 25 ms Hann
    windows, 10 ms hop (100 frames/s), 40 mel bands from 20 Hz, natural-log mel energies and an
    orthonormal DCT (``torchaudio.transforms.MFCC``), deltas over +-2 frames
    (``torchaudio.transforms.ComputeDeltas``, edges replicated at each clip's own ends). Optional
    per-utterance cepstral mean (``cmvn="mean"``) or mean and variance (``cmvn="meanvar"``)
    normalisation of all 39 dimensions, over the clip's valid frames. This is the input of the
    paper's speech network (:mod:`lightning_emo.extractors.speech_dnn` reuses
    :class:`MFCCFrontEnd`). A clip shorter than one window (400 samples) has 0 frames.

``compare``
    openSMILE ComParE 2016 low-level descriptors plus MFCC 0, each with first and second
    derivatives: **198 = (65 + 1) x 3** values per frame at 10 ms hop, every one computed by
    openSMILE in one run of ``compare_2016_lld_dd.conf`` (beside this module), which includes
    opensmile's own ``ComParE_2016_core.lld.conf.inc`` unchanged and adds three things:

    - MFCC 0 from ComParE's own MFCC chain (its ``cMfcc`` settings with ``firstMfcc = 0``:
      the same 20 ms Hamming frames, 26-band HTK mel spectrum and liftering as its MFCC 1-14,
      smoothed the same way), named ``mfcc_sma[0]``;
    - its first derivative with ComParE's delta component;
    - the second derivatives: ComParE's delta components applied once more to the first.

    So dims 0-64 equal ``opensmile.Smile(ComParE_2016, LowLevelDescriptors)``, dims 66-130
    equal ``LowLevelDescriptors_Deltas`` (the six voicing-based deltas -- F0, voicing
    probability, jitter x2, shimmer, log HNR -- are computed only inside voiced segments and
    zero at their bounds, as openSMILE computes them: a plain regression over the whole contour,
    as this extractor once did, differs there), and the second derivatives follow the same rules.
    Beware what parity brings: in that in-segment mode openSMILE's ``cDeltaRegression`` adds to
    its normaliser for every frame pair it uses and never resets it (``deltaRegression.cpp``),
    so these six deltas shrink with the frame's position in the clip -- measured on 10 s of
    synthetic speech, about 1 % of the usual regression in the first second and 0.06 % after
    9 s. The values are openSMILE's as distributed (its ComParE functionals see the same).
    Order: ``[65 LLDs, mfcc0, their deltas, their delta-deltas]``; names in
    :attr:`ComParEExtractor.feature_names`; ``deltas=1``/``0`` keep the first 132/66 dims.

    The paper's handcrafted baseline has 147 = 49 x 3 values ("ComParE LLDs plus MFCC 0 with
    first and second derivatives"). ComParE 2016 has 65 LLDs: 4 energy related (loudness as
    ``audspec_lengthL1norm``, RASTA loudness, RMS energy, zero-crossing rate), 26 RASTA auditory
    bands, 6 voicing related, 15 spectral descriptors and MFCC 1-14 -- MFCC 0 is not among
    them, hence "plus MFCC 0". 49 would be 48 of these 65 plus MFCC 0, and the paper does not
    say which 48, so that subset cannot be recovered; we keep all 65 instead of guessing, and
    say so here and in the spec.

    Frames: openSMILE's row ``i`` is the frame starting at ``10 i`` ms; a clip gets as many
    frames as openSMILE returns LLD rows (its voicing descriptors use 60 ms windows: two fewer
    than there are 25 ms windows), and 0 for a clip openSMILE finds too short. openSMILE is not
    batched: clips go through it one at a time (about 30 ms per 3 s clip). Values openSMILE
    leaves undefined (NaN) are set to 0. The values are not small (spectral variance reaches
    ~6e6 on speech-like audio, its delta ~1.5e6): they do not fit float16; store them as float32.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import nn

from lightning_emo.extractors.base import EXTRACTORS, Extractor, ExtractorSpec, WeightsSource

SAMPLE_RATE = 16000
CMVN_MODES = ("none", "mean", "meanvar")
COMPARE_NUM_LLDS = 65


# --------------------------------------------------------------------------- masked-batch helpers


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` bool mask, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def conv_output_lengths(lengths: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Frames of an unpadded (``center=False``) framing: ``max(0, (L - kernel) // stride + 1)``."""
    return torch.clamp(torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, min=0)


def replicate_pad(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Replace frames past each clip's length by its last valid frame.

    ``x`` is ``(B, C, T)`` (time last, as ``compute_deltas`` wants it); a clip of length 0 keeps
    frame 0. After this, ``compute_deltas(..., mode="replicate")`` on the batch equals it on
    each clip alone over the clip's valid frames.
    """
    t = torch.arange(x.shape[-1], device=x.device)
    last = torch.clamp(lengths - 1, min=0)
    index = torch.minimum(t[None, :], last[:, None])  # (B, T)
    return torch.gather(x, -1, index[:, None, :].expand_as(x))


def masked_mean_std(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip mean and standard deviation of ``x`` ``(B, T, D)`` over valid frames -> two ``(B, 1, D)``.

    The variance is the biased one; ``std = sqrt(var + eps)``. A clip with no frames gets mean 0, std 1.
    """
    mask = lengths_to_mask(lengths, x.shape[1])[..., None].to(x.dtype)
    n = mask.sum(1, keepdim=True)
    mean = (x * mask).sum(1, keepdim=True) / n.clamp(min=1)
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n.clamp(min=1)
    std = torch.where(n > 0, torch.sqrt(var + eps), torch.ones_like(var))
    return mean, std


def append_deltas(static: torch.Tensor, lengths: torch.Tensor, orders: int, compute_deltas: nn.Module) -> torch.Tensor:
    """``(B, C, T)`` -> ``(B, C * (orders + 1), T)``: the input then its derivatives, each clip's edges replicated."""
    if static.shape[-1] == 0:  # no frames at all: nothing to differentiate
        return static.new_zeros((static.shape[0], static.shape[1] * (orders + 1), 0))
    parts = [static]
    for _ in range(orders):
        parts.append(compute_deltas(replicate_pad(parts[-1], lengths)))
    return torch.cat(parts, dim=1)


def zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero the frames of ``x`` ``(B, T, ...)`` past each clip's length."""
    mask = lengths_to_mask(lengths, x.shape[1])
    # where, not a product: a NaN or inf in a padded frame must not survive.
    mask = mask.reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------- shared base


class AudioExtractor(Extractor):
    """Base of the audio extractors: checks the batch, then calls :meth:`extract`.

    ``forward(x (B, S), lengths (B,) or None = all full, sample_rate=None)``; give
    ``sample_rate`` to have it checked against ``spec.sample_rate``. The output has
    ``T = max(lengths_out)`` frames.
    """

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                sample_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = self.check_audio(x, lengths, sample_rate)
        # Padding past the longest clip holds nothing: drop it, so T = the longest clip's frame count.
        return self.extract(x[:, : int(lengths.max()) if len(lengths) else 0], lengths)

    def check_audio(self, x: torch.Tensor, lengths: torch.Tensor | None,
                    sample_rate: int | None = None) -> torch.Tensor:
        """Validate a waveform batch against the spec; return the lengths as a long tensor on ``x``'s device."""
        name = self.spec.name
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"extractor {name!r} expects a waveform tensor (B, S), got {type(x).__name__}")
        if lengths is None and x.dim() == 2:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(lengths)
        self.check_input(x, lengths, sample_rate)
        if not x.is_floating_point():
            raise ValueError(f"extractor {name!r} expects float waveforms in [-1, 1], got dtype {x.dtype}")
        if lengths.is_floating_point() or lengths.is_complex():
            raise ValueError(f"extractor {name!r}: lengths must be integer sample counts, got dtype {lengths.dtype}")
        if len(lengths) and (int(lengths.min()) < 0 or int(lengths.max()) > x.shape[1]):
            raise ValueError(f"extractor {name!r}: lengths must be in [0, {x.shape[1]}] (the padded length), "
                             f"got {lengths.tolist()}")
        return lengths.to(device=x.device, dtype=torch.long)

    def extract(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` waveforms, ``(B,)`` long lengths (already checked) -> ``(B, T, D)``, ``(B,)``."""
        raise NotImplementedError


# --------------------------------------------------------------------------- MFCC


class MFCCFrontEnd(nn.Module):
    """MFCCs with derivatives, batched and padding-safe (a plain module, shared by ``mfcc`` and the speech DNN).

    Args:
        n_mfcc: cepstral coefficients c0..c{n_mfcc-1}.
        deltas: derivative orders appended (0, 1 or 2); output dim ``n_mfcc * (deltas + 1)``.
        cmvn: per-utterance normalisation over valid frames of the whole output:
            ``none``, ``mean`` or ``meanvar``.
        n_mels: mel bands.
        f_min: lowest mel band edge in Hz.
        sample_rate, win_length, hop_length: in Hz / samples (25 ms and 10 ms at 16 kHz).
        delta_window: frames in the delta regression window (odd, >= 3).

    ``forward(waveform (B, S), lengths (B,)) -> (features (B, T, D), lengths (B,))`` with
    ``T = max(lengths_out)`` and ``lengths_out = max(0, (L - win_length) // hop_length + 1)``.
    """

    def __init__(self, n_mfcc: int = 13, deltas: int = 2, cmvn: str = "none", n_mels: int = 40, f_min: float = 20.0,
                 sample_rate: int = SAMPLE_RATE, win_length: int = 400, hop_length: int = 160, delta_window: int = 5):
        super().__init__()
        if cmvn not in CMVN_MODES:
            raise ValueError(f"cmvn must be one of {CMVN_MODES}, got {cmvn!r}")
        if deltas not in (0, 1, 2):
            raise ValueError(f"deltas must be 0, 1 or 2, got {deltas!r}")
        if not 1 <= n_mfcc <= n_mels:
            raise ValueError(f"n_mfcc must be in [1, n_mels={n_mels}], got {n_mfcc}")
        self.n_mfcc, self.deltas, self.cmvn = n_mfcc, deltas, cmvn
        self.win_length, self.hop_length, self.sample_rate = win_length, hop_length, sample_rate
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=sample_rate, n_mfcc=n_mfcc, log_mels=True,
            # center=False: a frame only sees its own 25 ms, so padding never reaches a valid frame.
            melkwargs={"n_fft": win_length, "win_length": win_length, "hop_length": hop_length, "n_mels": n_mels,
                       "f_min": f_min, "center": False})
        self.compute_deltas = torchaudio.transforms.ComputeDeltas(win_length=delta_window, mode="replicate")

    @property
    def dim(self) -> int:
        return self.n_mfcc * (self.deltas + 1)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Sample counts ``(B,)`` -> frame counts ``(B,)``."""
        return conv_output_lengths(lengths, self.win_length, self.hop_length)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_lengths = self.output_lengths(lengths)
        # Zero the padding (its content is arbitrary) so padded frames stay finite and harmless.
        waveform = waveform * lengths_to_mask(lengths, waveform.shape[1]).to(waveform.dtype)
        if waveform.shape[1] < self.win_length:
            waveform = nn.functional.pad(waveform, (0, self.win_length - waveform.shape[1]))
        static = self.mfcc(waveform.float())  # (B, n_mfcc, T)
        t_max = int(out_lengths.max()) if len(out_lengths) else 0
        static = static[..., :t_max]
        feats = append_deltas(static, out_lengths, self.deltas, self.compute_deltas).transpose(1, 2)  # (B, T, D)
        if self.cmvn != "none":
            mean, std = masked_mean_std(feats, out_lengths)
            feats = feats - mean
            if self.cmvn == "meanvar":
                feats = feats / std
        return zero_padding(feats, out_lengths), out_lengths


class MFCCExtractor(AudioExtractor):
    """The ``mfcc`` extractor: :class:`MFCCFrontEnd` with a spec (39-d at 100 frames/s by default)."""

    def __init__(self, n_mfcc: int = 13, deltas: int = 2, cmvn: str = "none", n_mels: int = 40):
        frontend = MFCCFrontEnd(n_mfcc=n_mfcc, deltas=deltas, cmvn=cmvn, n_mels=n_mels)
        spec = ExtractorSpec(
            name="mfcc", modality="audio", dim=frontend.dim, sample_rate=SAMPLE_RATE, frame_rate=frontend.frame_rate,
            weights=WeightsSource(kind="none"),
            options={"n_mfcc": n_mfcc, "deltas": deltas, "cmvn": cmvn, "n_mels": n_mels},
            description=f"{n_mfcc} MFCCs" + (f" + {deltas} derivative order(s)" if deltas else "")
                        + f", 25 ms / 10 ms, cmvn={cmvn} (the paper's speech-network input)")
        super().__init__(spec)
        self.frontend = frontend

    def extract(self, x, lengths):
        return self.frontend(x, lengths)


@EXTRACTORS.register("mfcc")
def build_mfcc(n_mfcc: int = 13, deltas: int = 2, cmvn: str = "none", n_mels: int = 40) -> MFCCExtractor:
    """``mfcc``: 13 MFCC + deltas + delta-deltas (39-d), 25 ms windows, 10 ms hop, 16 kHz."""
    return MFCCExtractor(n_mfcc=n_mfcc, deltas=deltas, cmvn=cmvn, n_mels=n_mels)


# --------------------------------------------------------------------------- openSMILE ComParE


COMPARE_CONFIG = Path(__file__).with_name("compare_2016_lld_dd.conf")


class ComParEExtractor(AudioExtractor):
    """The ``compare`` extractor: openSMILE ComParE 2016 LLDs + MFCC 0, with derivatives (see the module docstring).

    Output ``(B, T, 66 * (deltas + 1))`` at 100 frames/s; 198-d by default.
    """

    store_dtype = "float32"  # raw LLDs (energies, spectral flux) on real speech exceed float16's 6.5e4

    def __init__(self, deltas: int = 2):
        if deltas not in (0, 1, 2):
            raise ValueError(f"deltas must be 0, 1 or 2, got {deltas!r}")
        dim = (COMPARE_NUM_LLDS + 1) * (deltas + 1)
        spec = ExtractorSpec(
            name="compare", modality="audio", dim=dim, sample_rate=SAMPLE_RATE, frame_rate=100.0,
            weights=WeightsSource(kind="none"), options={"deltas": deltas},
            description=f"openSMILE ComParE 2016 LLDs (65) + MFCC 0, {deltas} derivative order(s), all from "
                        f"openSMILE: {dim}-d (the paper's handcrafted baseline had 147 = 49 x 3; its 48-LLD "
                        "subset is unknown)")
        super().__init__(spec)
        self.deltas = deltas
        self.dim = dim
        self._smile_obj = None

    @property
    def _smile(self):
        # Built on first use, not in __init__ (no I/O at construction) and not pickled (see __getstate__).
        if self._smile_obj is None:
            import opensmile

            shipped = Path(opensmile.__file__).parent / "core" / "config"
            lld_conf = shipped / "compare" / "ComParE_2016_core.lld.conf.inc"
            if not lld_conf.is_file():
                raise RuntimeError(f"opensmile {opensmile.__version__} ships no {lld_conf}: an unsupported opensmile "
                                   "version for the compare extractor")
            self._smile_obj = opensmile.Smile(
                feature_set=str(COMPARE_CONFIG), feature_level="lld_all",
                options={"compareLldConf": str(lld_conf),
                         "bufferModeConf": str(shipped / "shared" / "BufferMode.conf.inc")})
            n = len(self._smile_obj.feature_names)
            if n != 3 * (COMPARE_NUM_LLDS + 1):
                raise RuntimeError(f"openSMILE gave {n} ComParE values per frame, expected "
                                   f"{3 * (COMPARE_NUM_LLDS + 1)}: an unsupported opensmile version")
        return self._smile_obj

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_smile_obj"] = None
        return state

    @property
    def feature_names(self) -> list[str]:
        """The ``spec.dim`` names of the output dimensions, in order (openSMILE's, MFCC 0 as ``mfcc_sma[0]``)."""
        # openSMILE names a one-element MFCC field without its index: give MFCC 0 its index back.
        names = [re.sub(r"^mfcc_sma((?:_de)*)$", r"mfcc_sma[0]\1", n) for n in self._smile.feature_names]
        return names[: self.dim]

    def frames(self, wave: np.ndarray) -> np.ndarray:
        """One clip ``(S,)`` float32 at 16 kHz -> ``(N, 198)`` float32 from openSMILE, NaN set to 0.

        ``N = 0`` when openSMILE finds the clip too short for one frame.
        """
        if len(wave) == 0:
            return np.zeros((0, 3 * (COMPARE_NUM_LLDS + 1)), np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = self._smile.process_signal(wave, SAMPLE_RATE)
        values = df.to_numpy(dtype=np.float32)
        if any("Segment too short" in str(w.message) for w in caught):  # openSMILE's NaN stand-in row
            return np.zeros((0, values.shape[1]), np.float32)
        return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)

    def extract(self, x, lengths):
        wave = x.detach().float().cpu().numpy()
        per_clip = [self.frames(np.ascontiguousarray(wave[i, : int(n)]))[:, : self.dim]
                    for i, n in enumerate(lengths.tolist())]
        out_lengths = torch.tensor([len(f) for f in per_clip], dtype=torch.long, device=x.device)
        t_max = int(out_lengths.max()) if len(out_lengths) else 0
        feats = x.new_zeros((x.shape[0], t_max, self.dim), dtype=torch.float32)
        for i, f in enumerate(per_clip):
            feats[i, : len(f)] = torch.from_numpy(f).to(feats.device)
        return feats, out_lengths


@EXTRACTORS.register("compare")
def build_compare(deltas: int = 2) -> ComParEExtractor:
    """``compare``: openSMILE ComParE 2016 LLDs + MFCC 0 and their derivatives, all from openSMILE, 198-d.

    (Not the paper's 147: see the module docstring.)
    """
    return ComParEExtractor(deltas=deltas)
