"""Audio extractors: MFCC, openSMILE ComParE, torchaudio SSL encoders, the paper's speech DNN."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from lightning_emo.extractors import EXTRACTORS, WeightsNotFoundError, build_extractor
from lightning_emo.extractors.weights import WeightsDownloadError
from lightning_emo.extractors import ssl as ssl_mod
from lightning_emo.extractors.audio import MFCCFrontEnd, replicate_pad
from lightning_emo.extractors.base import ExtractorSpec, torch_hub_checkpoint
from lightning_emo.extractors.speech_dnn import (
    SpeechDNN,
    load_speech_dnn,
    save_speech_dnn,
    stack_context,
)

try:  # tests/ on sys.path (pytest's default rootdir-less import) or the repo root (tests as a package)
    from hf_cache import make_hf_cache
except ImportError:
    from tests.hf_cache import make_hf_cache

SR = 16000
# A tiny architecture for every bundle: same structure (conv norm mode, pre/post LN, WavLM
# attention, waveform normalisation), few parameters.
TINY = {"encoder_num_layers": 3, "encoder_embed_dim": 32, "encoder_num_heads": 4, "encoder_ff_interm_features": 64,
        "encoder_pos_conv_groups": 4, "encoder_pos_conv_kernel": 16,
        "extractor_conv_layer_config": [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2}


# --------------------------------------------------------------------------- test audio


def _speech_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding pitch, syllable-like envelope, pauses and noise: float32 (S,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t) + 15 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) * (0.8 ** k) for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    x = 0.3 * voiced * envelope + 0.01 * rng.standard_normal(len(t))
    return (x / np.abs(x).max() * 0.8).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[torch.Tensor]:
    """Real audio read back from files: a 3 s WAV written at 22.05 kHz and a 1.3 s MP4 (AAC), both at 16 kHz."""
    try:
        from lightning_emo.data import media
    except ImportError:  # media decoding not available: the same signals, built directly
        return [torch.from_numpy(_speech_like(3.0, SR, 0)), torch.from_numpy(_speech_like(1.3, SR, 1))]
    d = tmp_path_factory.mktemp("audio")
    wav = media.write_audio(d / "clip.wav", _speech_like(3.0, 22050, 0), sample_rate=22050)
    frames = np.zeros((13, 32, 32, 3), np.uint8)
    mp4 = media.write_video(d / "clip.mp4", frames, fps=10, audio=_speech_like(1.3, 44100, 1), sample_rate=44100)
    out = [media.load_audio(wav, sample_rate=SR), media.load_audio(mp4, sample_rate=SR)]
    assert abs(len(out[0]) - 3 * SR) < 200 and abs(len(out[1]) - 1.3 * SR) < 2000
    return out


def _batch(waves: list[torch.Tensor], garbage: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to a common length; the padding is noise (``garbage``) so any leak shows."""
    lengths = torch.tensor([len(w) for w in waves])
    x = torch.randn(len(waves), int(lengths.max()) + 123) if garbage else torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        x[i, : len(w)] = w
    return x, lengths


def _check_padding_invariance(extractor, waves, atol=1e-4):
    """Padded batch == clip by clip on valid frames; padded frames are zero; shapes fit the spec."""
    x, lengths = _batch(waves)
    with torch.no_grad():
        feats, out_lengths = extractor(x, lengths)
        assert feats.dim() == 3 and feats.shape[0] == len(waves) and feats.shape[2] == extractor.spec.dim
        assert feats.shape[1] == int(out_lengths.max())
        for i, w in enumerate(waves):
            single, single_len = extractor(w[None], torch.tensor([len(w)]))
            n = int(out_lengths[i])
            assert int(single_len[0]) == n and single.shape[1] == n
            torch.testing.assert_close(feats[i, :n], single[0], atol=atol, rtol=1e-4)
            assert torch.all(feats[i, n:] == 0)
    assert torch.isfinite(feats).all()
    return feats, out_lengths


def test_registered_names():
    for name in ["mfcc", "compare", "speech_dnn", "speech_bottleneck", "wav2vec2_base", "wav2vec2_large",
                 "wav2vec2_asr_base", "hubert_base", "hubert_large", "wavlm_base", "wavlm_base_plus", "wavlm_large"]:
        assert name in EXTRACTORS


# --------------------------------------------------------------------------- mfcc


def test_mfcc_spec_shapes_and_reference(clips):
    e = build_extractor("mfcc")
    assert (e.spec.modality, e.spec.dim, e.spec.sample_rate, e.spec.frame_rate) == ("audio", 39, SR, 100.0)
    assert e.spec.weights.kind == "none"
    assert ExtractorSpec.from_dict(json.loads(json.dumps(e.spec.to_dict()))) == e.spec
    w = clips[0]
    feats, lengths = e(w[None], torch.tensor([len(w)]), sample_rate=SR)
    assert feats.shape == (1, (len(w) - 400) // 160 + 1, 39) and lengths.tolist() == [feats.shape[1]]
    # Reference: torchaudio's transforms applied to the clip alone.
    mfcc = torchaudio.transforms.MFCC(SR, n_mfcc=13, log_mels=True, melkwargs={
        "n_fft": 400, "win_length": 400, "hop_length": 160, "n_mels": 40, "f_min": 20.0, "center": False})(w)
    d1 = torchaudio.functional.compute_deltas(mfcc)
    d2 = torchaudio.functional.compute_deltas(d1)
    torch.testing.assert_close(feats[0], torch.cat([mfcc, d1, d2]).T)
    # Rebuilds from its spec.
    again = build_extractor(e.spec.name, **e.spec.options)
    torch.testing.assert_close(again(w[None])[0], feats)


@pytest.mark.parametrize("cmvn", ["none", "meanvar"])
def test_mfcc_padding_invariance(clips, cmvn):
    e = build_extractor("mfcc", cmvn=cmvn)
    waves = [clips[0], clips[1], clips[0][:5000], clips[1][:300]]  # the last is shorter than one window
    feats, lengths = _check_padding_invariance(e, waves)
    assert lengths.tolist()[-1] == 0
    if cmvn == "meanvar":
        valid = feats[0, : lengths[0]]
        torch.testing.assert_close(valid.mean(0), torch.zeros(39), atol=1e-4, rtol=0)
        torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(39), atol=1e-3, rtol=0)


def test_replicate_pad():
    x = torch.arange(12.0).reshape(2, 1, 6)
    out = replicate_pad(x, torch.tensor([4, 0]))
    assert out[0, 0].tolist() == [0, 1, 2, 3, 3, 3] and out[1, 0].tolist() == [6] * 6


# --------------------------------------------------------------------------- compare


def _smile_delta(x: np.ndarray, in_segments: bool) -> np.ndarray:
    """openSMILE's cDeltaRegression (deltawin 2) on ``x`` ``(T, E)``, re-implemented from its source.

    Clip edges are replicated. With ``onlyInSegments`` a pair of frames counts only when neither
    value is 0 or NaN, and each counted pair adds ``i * i`` to a normaliser that openSMILE keeps
    for the whole run (never reset), frame by frame and element by element.
    """
    x = x.astype(np.float64)
    pad = np.concatenate([x[:1], x[:1], x, x[-1:], x[-1:]])
    if not in_segments:
        return (pad[3:-1] - pad[1:-3] + 2 * (pad[4:] - pad[:-4])) / 10
    y, norm = np.zeros_like(x), 10.0
    for t in range(x.shape[0]):
        for k in range(x.shape[1]):
            num = 0.0
            for i in (1, 2):
                a, b = pad[t + 2 - i, k], pad[t + 2 + i, k]
                if a != 0 and b != 0 and np.isfinite(a) and np.isfinite(b):
                    num += i * (b - a)
                    norm += i * i
            y[t, k] = num / norm
    return y


MFCC_0_14_CONF = """
[componentInstances:cComponentManager]
instance[dataMemory].type=cDataMemory
\\{\\cm[source{?}:source]}
\\{\\cm[compareLldConf{?}:ComParE_2016_core.lld.conf.inc]}
[componentInstances:cComponentManager]
instance[t_mfcc].type=cMfcc
instance[t_smo].type=cContourSmoother
[t_mfcc:cMfcc]
reader.dmLevel=is13_melspecMfcc
writer.dmLevel=t_mfcc
copyInputName = 0
processArrayFields = 1
firstMfcc = 0
lastMfcc  = 14
cepLifter = 22.0
htkcompatible = 1
[t_smo:cContourSmoother]
reader.dmLevel = t_mfcc
writer.dmLevel = t_mfcc_smo
\\{\\cm[bufferModeConf]}
nameAppend = sma
copyInputName = 1
noPostEOIprocessing = 0
smaWin = 3
\\{\\cm[sink{?}:sink]}
"""


def test_compare_equals_opensmile_on_all_198_dims(clips, tmp_path):
    import opensmile

    e = build_extractor("compare")
    assert (e.spec.dim, e.spec.frame_rate, e.spec.sample_rate) == (198, 100.0, SR)
    names = e.feature_names
    assert len(names) == 198 and names[:2] == ["F0final_sma", "voicingFinalUnclipped_sma"]
    assert names[65] == "mfcc_sma[0]" and names[66] == "F0final_sma_de" and names[-1] == "mfcc_sma[0]_de_de"
    feats, lengths = _check_padding_invariance(e, [clips[0], clips[1], clips[1][:2400], clips[1][:600]], atol=0)
    assert lengths.tolist()[2:] == [11, 0]  # 0.15 s: 11 frames; 600 samples: too short for openSMILE's 60 ms frames
    w, n = clips[0].numpy(), int(lengths[0])
    ours = feats[0, :n].double().numpy()

    # 0-64 and 66-130: openSMILE's ComParE_2016 LLDs and LLD deltas, called directly.
    lld = opensmile.Smile(opensmile.FeatureSet.ComParE_2016, opensmile.FeatureLevel.LowLevelDescriptors)
    de = opensmile.Smile(opensmile.FeatureSet.ComParE_2016, opensmile.FeatureLevel.LowLevelDescriptors_Deltas)
    ref_lld, ref_de = lld.process_signal(w, SR), de.process_signal(w, SR)
    assert n == len(ref_lld) > 250 and names[:65] == list(ref_lld.columns) and names[66:131] == list(ref_de.columns)
    np.testing.assert_array_equal(ours[:, :65], ref_lld.to_numpy())
    np.testing.assert_array_equal(ours[:, 66:131], ref_de.to_numpy()[:n])

    # 65: MFCC 0 of ComParE's own MFCC chain: openSMILE run with firstMfcc=0 gives MFCC 1-14 equal
    # to ComParE's (the same front end) and MFCC 0 equal to ours (HTK order: c0 comes last).
    shipped = Path(opensmile.__file__).parent / "core" / "config"
    conf = tmp_path / "mfcc_0_14.conf"
    conf.write_text(MFCC_0_14_CONF)
    mfcc = opensmile.Smile(str(conf), "t_mfcc_smo", options={
        "compareLldConf": str(shipped / "compare" / "ComParE_2016_core.lld.conf.inc"),
        "bufferModeConf": str(shipped / "shared" / "BufferMode.conf.inc")}).process_signal(w, SR).to_numpy()[:n]
    np.testing.assert_array_equal(mfcc[:, :14], ref_lld[[f"mfcc_sma[{i}]" for i in range(1, 15)]].to_numpy())
    np.testing.assert_array_equal(ours[:, 65], mfcc[:, 14])

    # The six voicing deltas are openSMILE's in-segment regression, not a plain one over the contour.
    plain = _smile_delta(ours[:, :6], in_segments=False)
    assert np.abs(plain - ours[:, 66:72]).max() > 10 * np.abs(ours[:, 66:72]).max()
    np.testing.assert_allclose(_smile_delta(ours[:, :6], True), ours[:, 66:72],
                               atol=5e-3 * np.abs(ours[:, 66:72]).max())
    # (The 20 ms descriptors run two frames past the last row, which the 60 ms voicing ones end: their
    # regression at the last two rows sees those frames, so the plain reference stops before them.)
    m = n - 2
    np.testing.assert_allclose(_smile_delta(ours[:, 65:66], False)[:m, 0], ours[:m, 131], rtol=1e-4, atol=1e-4)
    # 132-197: the same rules once more on the first derivatives.
    np.testing.assert_allclose(_smile_delta(ours[:, 66:72], True), ours[:, 132:138], rtol=1e-4,
                               atol=1e-5 * np.abs(ours[:, 132:138]).max())
    scale = np.abs(ours[:, 138:]).max(0)  # per dim: the descriptors range from ~1e-2 to ~1e6
    np.testing.assert_allclose(_smile_delta(ours[:, 72:132], False)[:m] / scale, ours[:m, 138:] / scale, atol=1e-5)

    # deltas=1 / 0 keep the leading dims; the extractor survives pickling (openSMILE rebuilt on use).
    first = build_extractor("compare", deltas=1)
    assert first.spec.dim == 132 and first.feature_names == names[:132]
    torch.testing.assert_close(first(clips[0][None])[0][0], feats[0, :n, :132], rtol=0, atol=0)
    import pickle

    clone = pickle.loads(pickle.dumps(e))
    torch.testing.assert_close(clone(clips[1][None])[0], feats[1:2, : lengths[1]])


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("name", ["mfcc", "compare"])
def test_input_rejected_with_clear_errors(name, clips):
    e = build_extractor(name)
    w = clips[1][:8000]
    with pytest.raises(ValueError, match="expects audio at 16000 Hz, got 44100 Hz"):
        e(w[None], torch.tensor([8000]), sample_rate=44100)
    with pytest.raises(ValueError, match=r"expects waveforms \(B, S\), got shape \(8000,\)"):
        e(w, torch.tensor([8000]))
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 8000\]"):
        e(w[None], torch.tensor([9000]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(1,\)"):
        e(w[None], torch.tensor([8000, 8000]))
    with pytest.raises(ValueError, match="float waveforms"):
        e((w[None] * 32767).to(torch.int16), torch.tensor([8000]))


# --------------------------------------------------------------------------- SSL encoders


def _save_tiny(name: str, path: Path | None = None, seed: int = 0) -> torch.nn.Module:
    """A random TINY model of ``name``'s bundle, saved where torchaudio caches the bundle (or at ``path``)."""
    torch.manual_seed(seed)
    bundle = ssl_mod.SSL_MODELS[name].bundle
    model = ssl_mod.build_architecture(bundle, TINY).eval()
    path = path or torch_hub_checkpoint(ssl_mod.get_bundle(bundle)._path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def _reference_states(model, bundle: str, wave: torch.Tensor, num_layers: int | None = None) -> list[torch.Tensor]:
    """Hidden states 1..L (or 1..num_layers) of one unpadded clip through torchaudio's public API."""
    x = wave[None]
    if ssl_mod.get_bundle(bundle)._normalize_waveform:
        x = torch.nn.functional.layer_norm(x, x.shape)  # what the bundle's get_model() wrapper does
    with torch.no_grad():
        states, _ = model.extract_features(x, num_layers=num_layers)
    return [s[0] for s in states]


@pytest.mark.parametrize("name", sorted(ssl_mod.SSL_MODELS))
def test_ssl_tiny_layers_padding_and_reference(name, clips):
    model = _save_tiny(name)
    info = ssl_mod.SSL_MODELS[name]
    e = build_extractor(name, arch=TINY, layers="all")
    spec = e.spec
    assert (spec.sample_rate, spec.frame_rate, spec.dim, spec.options["num_layers"]) == (SR, 50.0, 4 * 32, 4)
    assert (spec.weights.kind, spec.weights.uri, spec.weights.license) == ("torchaudio", info.bundle, "MIT")
    assert spec.weights.filename == ssl_mod.get_bundle(info.bundle)._path
    waves = [clips[1], clips[1][:9000], clips[0][:3000]]
    feats, lengths = _check_padding_invariance(e, waves)  # on the CPU: clip by clip
    # The masked padded batch (the GPU path) gives the same, also with a clip shorter than one frame.
    x, lens = _batch(waves + [clips[0][:250]])
    with torch.no_grad():
        by_clip = e(x, lens)
        e.clip_by_clip_on_cpu = False
        batched = e(x, lens)
        _check_padding_invariance(e, waves)
        e.clip_by_clip_on_cpu = True
    assert e.receptive_field == 400 and by_clip[1].tolist() == batched[1].tolist() == lengths.tolist() + [0]
    torch.testing.assert_close(by_clip[0], batched[0], atol=1e-4, rtol=1e-4)
    assert lengths.tolist() == e.output_lengths(torch.tensor([len(w) for w in waves])).tolist()
    assert lengths[1] == (9000 - 400) // 320 + 1
    # Blocks 1..L equal torchaudio's extract_features on the clip alone.
    n = int(lengths[1])
    stacked = feats[1, :n].view(n, 4, 32)
    for i, ref in enumerate(_reference_states(model, info.bundle, waves[1]), start=1):
        torch.testing.assert_close(stacked[:, i], ref, atol=1e-4, rtol=1e-4)
    # layer=k and layers=(a, b) agree with the stacked output; the spec rebuilds the extractor.
    x, lens = _batch(waves)
    with torch.no_grad():
        one = build_extractor(name, arch=TINY, layer=-2)
        assert one.spec.options["layer"] == 2 and one.spec.dim == 32 and len(one.model.encoder.transformer.layers) == 2
        torch.testing.assert_close(one(x, lens)[0], feats.view(*feats.shape[:2], 4, 32)[:, :, 2], atol=1e-5, rtol=1e-5)
        avg = build_extractor(name, arch=TINY, layers=(1, 3))
        assert avg.spec.options["layers"] == [1, 3]
        torch.testing.assert_close(avg(x, lens)[0], feats.view(*feats.shape[:2], 4, 32)[:, :, 1:].mean(2),
                                   atol=1e-5, rtol=1e-5)
        spec2 = ExtractorSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        torch.testing.assert_close(build_extractor(name, **spec2.options)(x, lens)[0], feats)


def test_ssl_layer_options_rejected():
    with pytest.raises(ValueError, match=r"layer must be an int in \[-13, 12\]"):
        build_extractor("hubert_base", layer=13)
    with pytest.raises(ValueError, match="either layer or layers"):
        build_extractor("hubert_base", layer=1, layers="all")
    with pytest.raises(ValueError, match="a <= b"):
        build_extractor("hubert_base", layers=(5, 2))
    with pytest.raises(ValueError, match="num_layers=12 does not fit"):
        build_extractor("hubert_base", layers="all", num_layers=12)
    with pytest.raises(ValueError, match="not a parameter of HUBERT_BASE"):
        build_extractor("hubert_base", arch={"encoder_depth": 2})


def test_ssl_missing_and_mismatched_weights(tmp_path, monkeypatch):
    expected = torch_hub_checkpoint("hubert_fairseq_base_ls960.pth")
    assert str(expected).startswith(os.environ["TORCH_HOME"])
    # not cached: downloaded on first use; here the (conftest) mirror refuses the connection
    with pytest.raises(WeightsDownloadError, match=r"127\.0\.0\.1:1/.*hubert_fairseq_base_ls960\.pth.*connection refused"):
        build_extractor("hubert_base")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=re.escape(str(expected)) + ".*offline"):
        build_extractor("hubert_base")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsNotFoundError, match=re.escape(str(tmp_path / "nope.pth"))):
        build_extractor("wavlm_base", weights=tmp_path / "nope.pth")
    _save_tiny("wav2vec2_base", tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="does not fit the wavlm_base architecture"):
        build_extractor("wavlm_base", weights=tmp_path / "tiny.pth", arch=TINY)
    with pytest.raises(ValueError, match=r"does not fit the wav2vec2_base .*has shape \(32, 16\), expected \(48, 16\)"):
        build_extractor("wav2vec2_base", weights=tmp_path / "tiny.pth", arch={**TINY, "encoder_embed_dim": 48})
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a torch state dict"):
        build_extractor("wav2vec2_base", weights=tmp_path / "junk.pth", arch=TINY)


def test_ssl_downloads_from_a_file_mirror_into_the_torch_hub_cache(tmp_path, monkeypatch, clips):
    model = _save_tiny("wavlm_base", tmp_path / "mirror" / "wavlm_base.pth")
    monkeypatch.setenv("LIGHTNING_EMO_WEIGHTS_URL", (tmp_path / "mirror").as_uri())
    e = build_extractor("wavlm_base", arch=TINY)
    assert torch_hub_checkpoint("wavlm_base.pth").is_file() and e.weights_path == torch_hub_checkpoint("wavlm_base.pth")
    assert not [p for p in torch_hub_checkpoint("x").parent.iterdir() if p.name.startswith(".")]  # no temp files
    with torch.no_grad():
        torch.testing.assert_close(e(clips[1][None])[0][0], _reference_states(model, "WAVLM_BASE", clips[1])[-1],
                                   atol=1e-4, rtol=1e-4)
    with pytest.raises(TypeError):
        build_extractor("wavlm_base", arch=TINY, download=True)  # the old option is gone: downloading is the default


def _weight_norm_layouts(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The same weights in both layouts torchaudio loads: parametrizations (today) and weight_g/weight_v (older torch,
    torchaudio's fairseq converter)."""
    import copy

    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    new = model.state_dict()
    old_model = copy.deepcopy(model)
    conv = old_model.encoder.transformer.pos_conv_embed.conv
    torch.nn.utils.parametrize.remove_parametrizations(conv, "weight")
    torch.nn.utils.weight_norm(conv, name="weight", dim=2)  # what torchaudio's models used before torch's parametrizations
    old = old_model.state_dict()
    assert "encoder.transformer.pos_conv_embed.conv.weight_g" in old
    # torchaudio's fairseq converter maps fairseq's names to the same weight_g/weight_v keys
    fairseq = _convert_state_dict({"encoder.pos_conv.0.weight_g": old["encoder.transformer.pos_conv_embed.conv.weight_g"],
                                   "encoder.pos_conv.0.weight_v": old["encoder.transformer.pos_conv_embed.conv.weight_v"]})
    assert set(fairseq) == {"encoder.transformer.pos_conv_embed.conv.weight_g",
                            "encoder.transformer.pos_conv_embed.conv.weight_v"}
    return {"parametrizations": new, "weight_g": old}


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("name", ["hubert_base", "wavlm_base"])
def test_ssl_loads_both_weight_norm_layouts(name, tmp_path, clips):
    torch.manual_seed(0)
    bundle = ssl_mod.SSL_MODELS[name].bundle
    model = ssl_mod.build_architecture(bundle, TINY).eval()
    wave = clips[1][:8000]
    ref = _reference_states(model, bundle, wave)[-1]
    for layout, state in _weight_norm_layouts(model).items():
        # torchaudio's own model class loads this file (torch's weight-norm compat hook) ...
        check = ssl_mod.build_architecture(bundle, TINY)
        check.load_state_dict(state, strict=True)
        path = tmp_path / f"{layout}.pth"
        torch.save(state, path)
        # ... and so does the extractor, with the same features
        e = build_extractor(name, weights=path, arch=TINY)
        with torch.no_grad():
            torch.testing.assert_close(e(wave[None])[0][0], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["wav2vec2_asr_base", "wavlm_base"])
def test_ssl_base_random_weights_through_real_loading(name, tmp_path, clips):
    """The real BASE architecture, random weights saved as torchaudio ships them, loaded from the cache and a file."""
    torch.manual_seed(0)
    info = ssl_mod.SSL_MODELS[name]
    bundle = ssl_mod.get_bundle(info.bundle)
    model = ssl_mod.build_architecture(info.bundle).eval()
    state = model.state_dict()
    if bundle._params["aux_num_out"]:
        # torchaudio's ASR files carry fairseq's CTC head (3 unused rows included): loading drops it.
        state["aux.weight"] = torch.randn(bundle._params["aux_num_out"] + 3, 768)
        state["aux.bias"] = torch.randn(bundle._params["aux_num_out"] + 3)
    cached = torch_hub_checkpoint(bundle._path)
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    if name == "wav2vec2_asr_base":  # the explicit file as safetensors
        from safetensors.torch import save_file

        explicit = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(explicit))
    else:  # the explicit file as torchaudio ships it, elsewhere
        explicit = tmp_path / "weights.pth"
        os.link(cached, explicit)
    wave = clips[1][:16000]
    ref = _reference_states(model, info.bundle, wave, num_layers=4)
    for kwargs in ({}, {"weights": explicit}):
        e = build_extractor(name, layer=4, **kwargs)
        assert e.spec.dim == 768 and e.weights_path == (explicit if kwargs else cached)
        with torch.no_grad():
            feats, lengths = e(wave[None], torch.tensor([len(wave)]))
        assert feats.shape == (1, 49, 768) and lengths.tolist() == [49]
        torch.testing.assert_close(feats[0], ref[3], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- speech DNN


def test_stack_context_reference():
    x = torch.randn(2, 7, 3)
    lengths = torch.tensor([7, 4])
    out = stack_context(x, lengths, 2)
    assert out.shape == (2, 7, 15)
    for b in range(2):
        for t in range(int(lengths[b])):
            ref = torch.cat([x[b, min(max(t + o, 0), int(lengths[b]) - 1)] for o in range(-2, 3)])
            torch.testing.assert_close(out[b, t], ref)


def test_speech_dnn_architecture():
    dnn = SpeechDNN(num_outputs=100)
    assert dnn.input_dim == 429 and dnn.feature_dim == 1024
    assert [tuple(layer.weight.shape) for layer in dnn.hidden_layers] == [(1024, 429)] + [(1024, 1024)] * 5
    assert dnn.output.weight.shape == (100, 1024)
    bn = SpeechDNN(num_outputs=100, bottleneck=60, activation="relu", linear_bottleneck=True)
    assert bn.hidden_layers[-1].weight.shape == (60, 1024) and bn.output.weight.shape == (100, 60)
    x = torch.randn(5, 429)
    assert dnn.hidden(x).min() >= 0 and dnn.hidden(x).max() <= 1 and dnn(x).shape == (5, 100)
    assert bn.hidden(x).min() < 0  # linear bottleneck
    assert SpeechDNN(**json.loads(json.dumps(bn.config))).config == bn.config
    with pytest.raises(ValueError, match="429 values"):
        dnn.hidden(torch.randn(5, 39))
    with pytest.raises(ValueError, match="activation must be one of"):
        SpeechDNN(num_outputs=10, activation="tanh")


def _random_dnn(bottleneck: int | None, seed: int = 0) -> SpeechDNN:
    torch.manual_seed(seed)
    dnn = SpeechDNN(num_outputs=40, bottleneck=bottleneck).eval()
    dnn.set_input_normalization(torch.randn(429), torch.rand(429) + 0.5)
    return dnn


def _expected_features(dnn: SpeechDNN, wave: torch.Tensor) -> torch.Tensor:
    feats, lengths = MFCCFrontEnd(n_mfcc=13, deltas=2, cmvn="mean")(wave[None], torch.tensor([len(wave)]))
    with torch.no_grad():
        return dnn.hidden(stack_context(feats, lengths, 5))[0]


@pytest.mark.parametrize("name,bottleneck,dim", [("speech_dnn", None, 1024), ("speech_bottleneck", 60, 60)])
def test_speech_dnn_file_round_trip(name, bottleneck, dim, tmp_path, clips):
    dnn = _random_dnn(bottleneck)
    path = save_speech_dnn(dnn, tmp_path / "dnn.safetensors", license="CC-BY-4.0")
    loaded = load_speech_dnn(path)
    assert loaded.config == dnn.config
    for k, v in dnn.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    e = build_extractor(name, weights=path)
    spec = e.spec
    assert (spec.dim, spec.frame_rate, spec.sample_rate, spec.options) == (dim, 100.0, SR, {"weights": str(path)})
    assert (spec.weights.kind, spec.weights.license) == ("file", "CC-BY-4.0") and len(spec.weights.sha256) == 64
    with torch.no_grad():
        feats, lengths = e(clips[1][None], sample_rate=SR)
    torch.testing.assert_close(feats[0], _expected_features(dnn, clips[1]))
    _check_padding_invariance(e, [clips[1], clips[1][:4000], clips[0][:200]])
    other = "speech_bottleneck" if name == "speech_dnn" else "speech_dnn"
    with pytest.raises(ValueError, match=f"use {name}"):
        build_extractor(other, weights=path)


def test_speech_dnn_from_hf_cache(tmp_path, monkeypatch, clips):
    import huggingface_hub.constants

    dnn = _random_dnn(60, seed=1)
    path = save_speech_dnn(dnn, tmp_path / "model.safetensors")
    cache = tmp_path / "hub"
    commit = make_hf_cache(cache, "lightning-emo/speech-dnn-a60", {"model.safetensors": path,
                                                                  "README.md": "a60 speech DNN"}, refs=("main", "v1"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    expected = _expected_features(dnn, clips[1])
    for revision in (commit, "v1", None):
        e = build_extractor("speech_bottleneck", repo_id="lightning-emo/speech-dnn-a60", revision=revision,
                            cache_dir=cache)
        assert e.spec.weights.kind == "hf-hub" and e.spec.weights.revision == commit
        assert e.spec.options == {"repo_id": "lightning-emo/speech-dnn-a60", "revision": revision,
                                  "filename": "model.safetensors"}
        with torch.no_grad():
            torch.testing.assert_close(e(clips[1][None])[0][0], expected)
    with pytest.raises(WeightsNotFoundError, match="lightning-emo/other"):
        build_extractor("speech_bottleneck", repo_id="lightning-emo/other", cache_dir=cache)
    with pytest.raises(WeightsNotFoundError, match="@" + "0" * 40):
        build_extractor("speech_bottleneck", repo_id="lightning-emo/speech-dnn-a60", revision="0" * 40,
                        cache_dir=cache)


def test_speech_dnn_lightning_checkpoint_and_bad_files(tmp_path):
    dnn = _random_dnn(None)
    ckpt = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": {"dnn." + k: v for k, v in dnn.state_dict().items()} | {"loss.weight": torch.ones(1)},
                "hyper_parameters": {"speech_dnn": dnn.config, "lr": 0.1}, "epoch": 3}, ckpt)
    loaded = load_speech_dnn(ckpt)
    x = torch.randn(3, 429)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), dnn(x))
    assert build_extractor("speech_dnn", weights=ckpt).spec.weights.license == ""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a speech DNN file"):
        load_speech_dnn(tmp_path / "other.safetensors")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match=r"hyper_parameters\['speech_dnn'\]"):
        load_speech_dnn(tmp_path / "bare.ckpt")
    with pytest.raises(WeightsNotFoundError, match="weights=PATH"):
        build_extractor("speech_dnn")
