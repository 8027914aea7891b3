"""The speech DNN's source task: ASR manifests and AISHELL-1, the vocabulary, CTC training, export to the extractors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from lightning_emo.data.media import write_audio
from lightning_emo.pretrain.asr_data import (
    ASRDataModule,
    ASRManifest,
    ASRManifestError,
    Utterance,
    Vocabulary,
    assign_asr_splits,
    collate_asr,
    main as asr_main,
    prepare_aishell,
    read_asr_manifest,
)
from lightning_emo.pretrain.speech import SpeechDNNPretraining, ctc_greedy_decode
from lightning_emo.pretrain.synthetic import synth_asr_corpus
from helpers import quiet_trainer

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_dim=128, num_hidden=2, context=5, activation="relu", lr=3e-3, frontend={"cmvn": "none"})




@pytest.fixture(scope="module")
def asr_corpus(tmp_path_factory) -> Path:
    """160 utterances of 2-5 tone "characters" by 8 speakers, real WAV files, an ASR manifest without splits."""
    return synth_asr_corpus(tmp_path_factory.mktemp("asr"), n_utterances=160, unit_seconds=0.2, n_speakers=8)


class _Curve(pl.Callback):
    """Epoch-level training loss and validation metrics, in order."""

    def __init__(self):
        self.train_loss: list[float] = []
        self.val: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.train_loss.append(float(trainer.callback_metrics["train/loss_epoch"]))

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})


@pytest.fixture(scope="module")
def trained(asr_corpus, tmp_path_factory):
    """One short CPU fit shared by the tests below: the module, its checkpoint, the curve and the CER before/after."""
    tmp = tmp_path_factory.mktemp("fit")
    pl.seed_everything(0)
    dm = ASRDataModule(str(asr_corpus), batch_size=4, val_fraction=0.2, seed=0)
    model = SpeechDNNPretraining(**TINY)
    curve = _Curve()
    # builds the network from the data's vocabulary; no inference mode: its metric states are reused in fit
    before = quiet_trainer(tmp, inference_mode=False).validate(model, dm, verbose=False)[0]
    trainer = quiet_trainer(tmp, max_epochs=14, callbacks=[curve])
    trainer.fit(model, dm)
    after = trainer.validate(model, dm, verbose=False)[0]
    ckpt = tmp / "speech.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"model": model, "dm": dm, "curve": curve, "before": before, "after": after, "ckpt": ckpt}


# ------------------------------------------------------------------------------ vocabulary and decoding


def test_vocabulary_units_roundtrip_and_error_rate(tmp_path):
    voc = Vocabulary.build(["一 二 三", "二 三", "三"], unit="char")
    assert voc.tokens == ["三", "二", "一"] and len(voc) == 5  # most frequent first; + blank and unk
    assert voc.encode("三 一 四") == [2, 4, 1]  # 四 is unseen: <unk> = 1
    assert voc.decode([0, 2, 1, 4, 0]) == "三一"  # blanks and unknowns are skipped
    assert voc.reference("三 一") == "三一"
    path = voc.save(tmp_path / "vocab.json")
    assert Vocabulary.load(path) == voc and json.loads(path.read_text(encoding="utf-8"))["tokens"][0] == "三"

    words = Vocabulary.build(["yes no", "no  up"], unit="token")
    assert words.split("no   up") == ["no", "up"] and words.decode(words.encode("up yes")) == "up yes"
    spaced = Vocabulary.build(["ab c"], unit="char", keep_spaces=True)
    assert spaced.split("ab c") == ["a", "b", "|", "c"] and spaced.decode(spaced.encode("ab c")) == "ab c"

    cer = voc.error_rate_metric()
    cer.update(["一三"], ["一二三"])  # one deletion in three characters
    assert float(cer.compute()) == pytest.approx(1 / 3)
    ter = words.error_rate_metric()
    ter.update(["yes up"], ["yes no up"])
    assert float(ter.compute()) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not a vocabulary"):
        Vocabulary.from_dict({"unit": "char"})


def test_ctc_greedy_decode_collapses_repeats_and_drops_blanks():
    path = torch.tensor([[0, 3, 3, 0, 3, 2, 2, 0, 2]])
    scores = torch.nn.functional.one_hot(path, 5).float().log_softmax(-1)
    assert ctc_greedy_decode(scores, torch.tensor([9])) == [[3, 3, 2, 2]]
    assert ctc_greedy_decode(scores, torch.tensor([5])) == [[3, 3]]  # only the valid frames count
    assert ctc_greedy_decode(scores, torch.tensor([0])) == [[]]


# ------------------------------------------------------------------------------ manifests and corpora


def _write_csv(path: Path, rows: list[str], header: str = "utt_id,path,transcript,split,speaker") -> Path:
    path.write_text("\n".join([header] + rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("rows, header, line, field, message", [
    (["u1,a.wav,一 二,train,s1", "u2,missing.wav,三,train,s1"], None, 3, "path", "audio file not found"),
    (["u1,a.wav,一 二,train,s1", "u2,a.wav,  ,train,s1"], None, 3, "transcript", "empty transcript"),
    (["u1,a.wav,一 二,train,s1", "u1,a.wav,三,train,s1"], None, 3, "utt_id", "duplicate utt_id"),
    (["u1,a.wav,一,training,s1"], None, 2, "split", "bad split name"),
    (["u1,a.wav"], "utt_id,path", 1, "transcript", "missing column"),
    (["u1,a.wav,一,train"], None, 2, None, "expected 5 fields, found 4"),
])
def test_asr_manifest_errors_name_file_line_field(tmp_path, rows, header, line, field, message):
    write_audio(tmp_path / "a.wav", np.zeros(1600, np.float32))
    csv = _write_csv(tmp_path / "asr.csv", rows, header or "utt_id,path,transcript,split,speaker")
    with pytest.raises(ASRManifestError) as e:
        read_asr_manifest(csv)
    err = e.value
    assert err.file == str(csv) and err.line == line and err.field == field and message in str(err)
    assert str(csv) in str(err) and f"line {line}" in str(err)


def test_asr_manifest_minimal_columns_and_roundtrip(tmp_path):
    write_audio(tmp_path / "a.wav", np.zeros(1600, np.float32))
    csv = _write_csv(tmp_path / "asr.csv", ['u1,a.wav,"一，二"'], "utt_id,path,transcript")
    m = read_asr_manifest(csv)
    assert m.utterances == [Utterance("u1", "a.wav", "一,二")]  # NFKC folds the full-width comma
    out = m.write(tmp_path / "sub" / "copy.csv")
    again = read_asr_manifest(out)  # the sidecar keeps the root
    assert again.utterances == m.utterances and again.root.resolve() == tmp_path.resolve()


def test_assign_asr_splits_by_speaker_is_seeded():
    utts = [Utterance(f"u{i}", f"{i}.wav", "一", "", f"s{i % 5}") for i in range(20)]
    m = ASRManifest(utts, Path("."))
    a, b = assign_asr_splits(m, 0.2, seed=1), assign_asr_splits(m, 0.2, seed=1)
    assert [u.split for u in a] == [u.split for u in b]
    val_speakers = {u.speaker for u in a if u.split == "val"}
    assert len(val_speakers) == 1 and all(u.split == "val" for u in a if u.speaker in val_speakers)
    assert "by speaker" in a.notes[-1]
    nospk = assign_asr_splits(ASRManifest([Utterance(f"u{i}", "x.wav", "一") for i in range(10)], Path(".")), 0.2)
    assert sum(u.split == "val" for u in nospk) == 2 and "NOT speaker-independent" in nospk.notes[-1]


def _aishell(root: Path) -> Path:
    base = root / "data_aishell"
    rng = np.random.default_rng(0)
    layout = {"train": {"S0002": ["BAC009S0002W0122", "BAC009S0002W0123"], "S0003": ["BAC009S0003W0121"]},
              "dev": {"S0724": ["BAC009S0724W0121"]}, "test": {"S0764": ["BAC009S0764W0121"]}}
    for split, speakers in layout.items():
        for spk, utts in speakers.items():
            for utt in utts:
                write_audio(base / "wav" / split / spk / f"{utt}.wav", rng.normal(0, 0.1, 8000).astype(np.float32))
    # BAC009S0003W0121 has no transcript line; BAC009S0999W0001 has no audio
    (base / "transcript").mkdir(parents=True)
    (base / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\n"
        "BAC009S0002W0123 也 成为 地方 政府 的 眼中 钉\n"
        "BAC009S0724W0121 甚至 出现 交易 几乎 停滞 的 情况\n"
        "BAC009S0764W0121 一二 线 城市 虽然 也 处于 调整 中\n"
        "BAC009S0999W0001 没有 音频\n", encoding="utf-8")
    return root


def test_aishell_adapter_reports_missing_transcripts(tmp_path):
    root = _aishell(tmp_path)
    m = prepare_aishell(root)
    assert sorted(u.utt_id for u in m) == ["BAC009S0002W0122", "BAC009S0002W0123", "BAC009S0724W0121",
                                           "BAC009S0764W0121"]
    by_id = {u.utt_id: u for u in m}
    assert by_id["BAC009S0724W0121"].split == "val" and by_id["BAC009S0764W0121"].split == "test"
    assert by_id["BAC009S0002W0122"] == Utterance("BAC009S0002W0122", "wav/train/S0002/BAC009S0002W0122.wav",
                                                  "而 对 楼市 成交 抑制 作用 最 大 的 限 购", "train", "S0002")
    assert m.missing_transcripts == ["BAC009S0003W0121"]
    summary = m.summary()
    assert "1 utterances have audio but no transcript" in summary and "BAC009S0003W0121" in summary
    assert "1 transcript lines have no audio file" in summary
    # the same corpus written as a manifest and read back by the CSV reader
    again = read_asr_manifest(m.write(tmp_path / "asr.csv"))
    assert again.utterances == m.utterances
    # the same from the command line
    assert asr_main(["--corpus", "aishell", "--root", str(root), "--out", str(tmp_path / "cli" / "asr.csv")]) == 0
    assert read_asr_manifest(tmp_path / "cli" / "asr.csv").utterances == m.utterances

    # through the datamodule: AISHELL-1's characters, spaces dropped
    dm = ASRDataModule(str(root), corpus="aishell", batch_size=2)
    dm.setup("fit")
    assert "楼" in dm.vocabulary.tokens and " " not in dm.vocabulary.tokens
    batch = next(iter(dm.val_dataloader()))
    assert batch["transcript"] == ["甚至出现交易几乎停滞的情况"] and batch["waveform"].shape == (1, 8000)
    assert batch["target_lengths"].tolist() == [13] and (batch["targets"] != 1).sum() < 13  # unseen chars: <unk>


def test_aishell_adapter_errors(tmp_path):
    with pytest.raises(ASRManifestError, match="not an AISHELL-1 root"):
        prepare_aishell(tmp_path)
    root = _aishell(tmp_path)
    transcript = root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.write_text(transcript.read_text(encoding="utf-8") + "BAC009S0002W0124\n", encoding="utf-8")
    with pytest.raises(ASRManifestError) as e:
        prepare_aishell(root)
    assert e.value.line == 6 and e.value.field == "transcript" and str(transcript) in str(e.value)
    packed = tmp_path / "packed" / "data_aishell"
    (packed / "wav" / "train").mkdir(parents=True)
    (packed / "wav" / "train" / "S0002.tar.gz").write_bytes(b"")
    (packed / "transcript").mkdir()
    (packed / "transcript" / "aishell_transcript_v0.8.txt").write_text("BAC009S0002W0122 而\n", encoding="utf-8")
    with pytest.raises(ASRManifestError, match="unpack them first"):
        prepare_aishell(packed, splits=("train",))


def test_datamodule_batches_and_train_only_vocabulary(asr_corpus):
    dm = ASRDataModule(str(asr_corpus), batch_size=3, val_fraction=0.25, seed=0)
    dm.setup("fit")
    manifest = dm.manifest
    assert {u.split for u in manifest} == {"train", "val"}
    assert not {u.speaker for u in manifest.split("train")} & {u.speaker for u in manifest.split("val")}
    assert sorted(dm.vocabulary.tokens) == sorted("一二三四五六")
    batch = next(iter(dm.train_dataloader()))
    b = len(batch["utt_id"])
    assert batch["waveform"].shape[0] == b == 3 and batch["waveform"].dtype == torch.float32
    assert batch["waveform_lengths"].max() == batch["waveform"].shape[1]
    for i in range(b):
        n = int(batch["target_lengths"][i])
        assert dm.vocabulary.decode(batch["targets"][i, :n].tolist()) == batch["transcript"][i]
    with pytest.raises(ASRManifestError, match="no utterance in the test split"):
        dm.test_dataloader()
    # collate pads waveforms with zeros and targets with the blank
    items = [{"utt_id": "a", "waveform": torch.ones(5), "targets": torch.tensor([2, 3]), "transcript": "x"},
             {"utt_id": "b", "waveform": torch.ones(3), "targets": torch.tensor([4]), "transcript": "y"}]
    c = collate_asr(items)
    assert c["waveform"][1].tolist() == [1, 1, 1, 0, 0] and c["targets"].tolist() == [[2, 3], [4, 0]]


# ------------------------------------------------------------------------------ training


def test_ctc_fit_lowers_loss_and_error_rate(trained):
    curve, before, after = trained["curve"], trained["before"], trained["after"]
    print(f"\ntrain CTC loss per epoch: {[round(x, 3) for x in curve.train_loss]}")
    print(f"val CER per epoch: {[round(v['val/cer'], 3) for v in curve.val]}")
    print(f"val CER before {before['val/cer']:.3f} -> after {after['val/cer']:.3f}")
    assert len(curve.train_loss) == 14
    assert curve.train_loss[-1] < 0.5 * curve.train_loss[0]
    assert min(curve.train_loss[-3:]) < 1.0
    # an untrained network (or one emitting nothing) has CER >= 1: every reference character is an error
    assert before["val/cer"] >= 0.9
    assert after["val/cer"] < 0.5
    assert after["val/loss"] < before["val/loss"]


def test_trained_model_transcribes_and_checkpoint_rebuilds(trained):
    model, dm = trained["model"], trained["dm"]
    model.eval()
    batch = next(iter(dm.val_dataloader()))
    hyps = model.transcribe([w[:n] for w, n in zip(batch["waveform"], batch["waveform_lengths"])])
    cer = model.vocabulary.error_rate_metric()
    cer.update(hyps, batch["transcript"])
    assert len(hyps) == len(batch["transcript"]) and float(cer.compute()) < 0.6
    again = SpeechDNNPretraining.load_from_checkpoint(trained["ckpt"], map_location="cpu")
    again.eval()
    assert again.vocabulary == model.vocabulary and again.hparams.speech_dnn == model.dnn.config
    w, n = batch["waveform"][:2], batch["waveform_lengths"][:2]
    torch.testing.assert_close(again(w, n)[0], model(w, n)[0])
    # predict: greedy transcripts of the test split, or of val when there is none
    out = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_predict_batches=2).predict(
        again, dm)
    assert len(out) == 2 and set(out[0]) == {"utt_id", "hypothesis", "reference"} and len(out[0]["hypothesis"]) == 4


def test_input_normalization_is_set_from_training_data(trained):
    dnn = trained["model"].dnn
    assert not torch.all(dnn.input_std == 1) and not torch.all(dnn.input_mean == 0)
    width = 2 * dnn.context + 1
    torch.testing.assert_close(dnn.input_mean.view(width, -1), dnn.input_mean[:39].repeat(width, 1))


def test_export_loads_as_speech_dnn_extractor_and_runs_extract(trained, tmp_path):
    from lightning_emo.data.synthetic import synthesize
    from lightning_emo.extractors import build_extractor
    from lightning_emo.extractors.extract import extract, register_extractors
    from lightning_emo.extractors.speech_dnn import load_speech_dnn, stack_context
    from lightning_emo.pretrain.export import export_speech_dnn, main as export_main

    out = export_speech_dnn(trained["ckpt"], tmp_path / "w" / "model.safetensors")
    vocab = Vocabulary.load(tmp_path / "w" / "model.vocab.json")
    assert vocab == trained["model"].vocabulary
    register_extractors()
    ext = build_extractor("speech_dnn", weights=str(out))
    assert ext.spec.dim == 128 and ext.spec.sample_rate == 16000
    with pytest.raises(ValueError, match="bottleneck"):
        build_extractor("speech_bottleneck", weights=str(out))
    # the extractor also reads the training checkpoint itself (hyper-parameter speech_dnn, weights dnn.*)
    from_ckpt = build_extractor("speech_dnn", weights=str(trained["ckpt"]))
    assert from_ckpt.model.config == load_speech_dnn(out).config

    # the extractor's features are the trained network's last hidden layer
    model = trained["model"].eval()
    batch = next(iter(trained["dm"].val_dataloader()))
    w, n = batch["waveform"], batch["waveform_lengths"]
    feats, frames = ext(w, n)
    x, f2 = model.features(w, n)
    assert torch.equal(frames, f2)
    torch.testing.assert_close(feats[0, : frames[0]], model.dnn.hidden(x)[0, : frames[0]])
    # and the exported file still decodes with its vocabulary
    net = load_speech_dnn(out)
    fe = net.make_frontend()
    mf, fr = fe(w, n)
    ids = net(stack_context(mf, fr, net.context)).argmax(-1)
    assert vocab.decode(ids[0, : fr[0]].unique_consecutive().tolist()) == model.decode(*model(w[:1], n[:1]))[0]

    # through `extract` on a few clips of the synthetic emotion corpus
    manifest = synthesize(tmp_path / "emo", clips_per_class=1, seed=0)
    store = extract(manifest, "speech_dnn", tmp_path / "features", weights=out, num_workers=0, batch_size=4,
                    trainer={"accelerator": "cpu"})
    assert store.dim == 128 and len(store.clip_ids) == 7
    x0, _ = store.get(store.clip_ids[0])
    assert x0.shape[1] == 128 and np.isfinite(x0).all()

    # the command-line form, and a checkpoint of the wrong kind
    assert export_main(["--ckpt", str(trained["ckpt"]), "--out", str(tmp_path / "cli.safetensors")]) == 0
    assert (tmp_path / "cli.vocab.json").is_file()
    assert export_main(["--ckpt", str(tmp_path / "nothing.ckpt"), "--out", str(tmp_path / "x.safetensors")]) == 2


def test_bottleneck_variant_exports_to_speech_bottleneck(asr_corpus, tmp_path):
    from lightning_emo.extractors import build_extractor
    from lightning_emo.extractors.extract import register_extractors
    from lightning_emo.pretrain.export import export_checkpoint

    pl.seed_everything(0)
    dm = ASRDataModule(str(asr_corpus), batch_size=8, max_utterances=16)
    model = SpeechDNNPretraining(**{**TINY, "bottleneck": 16, "norm_batches": 2})
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=1)
    trainer.fit(model, dm)
    ckpt = tmp_path / "bn.ckpt"
    trainer.save_checkpoint(ckpt)
    out = export_checkpoint(ckpt, tmp_path / "bn.safetensors")
    register_extractors()
    ext = build_extractor("speech_bottleneck", weights=str(out))
    feats, _ = ext(torch.randn(2, 8000) * 0.1, torch.tensor([8000, 4000]))
    assert ext.spec.dim == 16 and feats.shape == (2, 48, 16)
    with pytest.raises(ValueError, match="speech_bottleneck"):
        build_extractor("speech_dnn", weights=str(out))


def test_vocabulary_mismatch_with_checkpoint_is_an_error(trained, asr_corpus, tmp_path):
    other = Vocabulary(["一", "二", "三", "四", "五", "六", "七"])
    model = SpeechDNNPretraining(vocabulary=other.to_dict(), **TINY)
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="vocabulary"):
        model.on_load_checkpoint(ckpt)
    # the model's own vocabulary decides how the datamodule encodes transcripts
    dm = ASRDataModule(str(asr_corpus), batch_size=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, dm)
    assert dm.vocabulary == other


# ------------------------------------------------------------------------------ CLI and configs


@pytest.mark.parametrize("config, dim", [("speech_dnn.yaml", 32), ("speech_bottleneck.yaml", 60)])
def test_pretrain_cli_fit_with_shipped_config(asr_corpus, tmp_path, monkeypatch, config, dim):
    from lightning_emo.extractors import build_extractor
    from lightning_emo.cli import main as lightning_emo
    from lightning_emo.pretrain.export import main as export_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-emo"])  # as from the console script: arguments come from cli(...)
    lightning_emo(["fit", "--config", str(REPO / "configs" / "pretrain" / config),
         "--data.init_args.manifest", str(asr_corpus), "--data.init_args.corpus", "csv",
         "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
         "--model.init_args.hidden_dim", "32", "--model.init_args.num_hidden", "2",
         "--model.init_args.norm_batches", "2",
         "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu"])
    run = next((tmp_path / "runs").glob("pretrain_*/version_0"))
    assert (run / "config.yaml").is_file()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and next((run / "checkpoints").glob("best-epoch=0-val_cer=*.ckpt"))
    assert export_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "model.safetensors")]) == 0
    name = "speech_bottleneck" if "bottleneck" in config else "speech_dnn"
    assert build_extractor(name, weights=str(tmp_path / "model.safetensors")).spec.dim == dim


# ------------------------------------------------------------------------------ real-ish speech (espeak-ng)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_ctc_on_espeak_words(tmp_path):
    """Words spoken by espeak-ng (several voices and rates): token error rate well below chance."""
    from lightning_emo.data.media import load_audio

    words = ["yes", "no", "up", "down", "left", "right"]
    voices = ["en", "en-us", "en-gb-x-rp", "en+f3", "en+m3", "en+f4"]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        seq = [words[j] for j in rng.integers(0, len(words), rng.integers(2, 5))]
        voice = voices[i % len(voices)]
        wav = tmp_path / "wav" / f"u{i:03d}.wav"
        wav.parent.mkdir(exist_ok=True)
        raw = tmp_path / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(130, 190))), "-g", "4", "-w", str(raw),
                        ", ".join(seq)], check=True, capture_output=True)
        write_audio(wav, load_audio(raw, 16000).numpy())  # espeak writes 22.05 kHz
        split = "val" if voice == voices[-1] else "train"
        rows.append(f"u{i:03d},wav/{wav.name},{' '.join(seq)},{split},{voice}")
    csv = _write_csv(tmp_path / "asr.csv", rows)
    pl.seed_everything(0)
    dm = ASRDataModule(str(csv), unit="token", batch_size=4)
    model = SpeechDNNPretraining(**{**TINY, "hidden_dim": 256})
    curve = _Curve()
    quiet_trainer(tmp_path, max_epochs=20, callbacks=[curve]).fit(model, dm)
    print(f"\nespeak-ng: TER per epoch {[round(v['val/ter'], 3) for v in curve.val]}")
    assert curve.val[-1]["val/ter"] < 0.6
