"""Bad input to every command: one paragraph naming the file/field/value, exit status 2, no traceback, nothing written.

Each case runs the real command line (``lightning_emo.cli.main`` in this process, a few through
the console script in a subprocess) on one small synthetic corpus shared by the module. Most
cases are refused before any work, so the suite stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_emo.cli import main
from lightning_emo.errors import DEBUG_ENV, UserError, find_user_error

REPO = Path(__file__).resolve().parents[1]
AUDIO_CONFIG = REPO / "configs" / "experiment" / "synthetic_audio.yaml"
FAST_EXTRACT = ["--num-workers", "0", "--trainer.accelerator", "cpu"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """Tracebacks off; ``--traceback`` sets the variable process-wide, and setenv (unlike delenv of an
    absent variable) makes monkeypatch remove it again after the test."""
    monkeypatch.setenv(DEBUG_ENV, "0")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Seven clips (one per class) of the synthetic corpus and their MFCC store."""
    from lightning_emo.data.synthetic import synthesize
    from lightning_emo.extractors.extract import main as extract_main

    root = tmp_path_factory.mktemp("bad-input")
    manifest = synthesize(root / "corpus", clips_per_class=3, size=32, max_speech=1.0)
    assert extract_main(["--manifest", str(manifest), "--extractor", "mfcc", "--out", str(root / "features"),
                         *FAST_EXTRACT]) == 0
    return {"root": root, "manifest": manifest, "mfcc": root / "features" / "mfcc"}


def refused(capsys, argv: list[str], *expected: str) -> str:
    """Run ``lightning-emo ARGV``; assert exit 2, one ``lightning-emo CMD: error:`` paragraph holding ``expected``."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"lightning-emo {argv[0]}: error: ")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


# ------------------------------------------------------------------------------------- the mechanism


def test_user_error_found_through_wrappers():
    from lightning_emo.data.manifest import ManifestError

    inner = ManifestError("m.csv", "bad", 3, "label")
    try:
        try:
            raise inner
        except ManifestError as e:
            raise ValueError("Does not validate against any of the Union subtypes") from e
    except ValueError as wrapped:
        assert find_user_error(wrapped) is inner
    # an unrelated bug raised while handling a bad input is not hidden behind it
    try:
        try:
            raise inner
        except ManifestError:
            raise TypeError("a bug")
    except TypeError as bug:
        assert find_user_error(bug) is None
    assert isinstance(inner, UserError) and isinstance(inner, ValueError)  # existing except clauses keep working


def test_package_errors_share_the_base():
    from lightning_emo.configs import ConfigNotFoundError
    from lightning_emo.data.media import MediaError
    from lightning_emo.data.predictions import PredictionsError
    from lightning_emo.data.store import FeatureStoreError
    from lightning_emo.extractors.base import WeightsNotFoundError
    from lightning_emo.hub.config import RecognizerError
    from lightning_emo.hub.push import PushError
    from lightning_emo.registry import UnknownNameError
    from lightning_emo.utils import LocatedError

    for cls in (LocatedError, PredictionsError, MediaError, FeatureStoreError, WeightsNotFoundError, RecognizerError,
                PushError, UnknownNameError, ConfigNotFoundError):
        assert issubclass(cls, UserError), cls


def test_debug_switches_show_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["fuse", "--audio", f"a={tmp_path / 'none.csv'}", "--video", f"v={tmp_path / 'none.csv'}",
            "--out", tmp_path / "o"]
    refused(capsys, argv, "none.csv")
    from lightning_emo.data.predictions import PredictionsError

    with pytest.raises(PredictionsError):
        main([*map(str, argv), "--traceback"])
    monkeypatch.setenv(DEBUG_ENV, "0")
    refused(capsys, argv, "none.csv")
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(PredictionsError):
        main([str(a) for a in argv])


def test_console_script_exit_status_and_debug_variable(tmp_path):
    """The real console entry in a fresh process (a light command): exit 2 and one paragraph; the traceback with
    LIGHTNING_EMO_DEBUG=1 (exit 1, Python's own)."""
    missing = tmp_path / "none.csv"
    cmd = [sys.executable, "-m", "lightning_emo.cli", "zoo", "--zoo", str(missing)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop(DEBUG_ENV, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"lightning-emo zoo: error: --zoo {missing}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, DEBUG_ENV: "1"}, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RecognizerError" in proc.stderr


@pytest.mark.slow
def test_console_script_prints_one_paragraph_and_traceback_on_request(corpus, tmp_path):
    cmd = [sys.executable, "-m", "lightning_emo.cli", "fit", "--config", str(AUDIO_CONFIG),
           "--data.init_args.manifest", str(corpus["manifest"]), "--data.init_args.features", str(tmp_path / "nope")]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop(DEBUG_ENV, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Does not validate" not in proc.stderr
    assert f"lightning-emo fit: error: no feature store at {tmp_path / 'nope'}" in proc.stderr
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, DEBUG_ENV: "1"}, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "FeatureStoreError" in proc.stderr


# ------------------------------------------------------------------------------ fit/validate/test/predict


def _fit(corpus, *extra) -> list:
    return ["fit", "--config", AUDIO_CONFIG, "--data.init_args.manifest", corpus["manifest"],
            "--data.init_args.features", corpus["mfcc"], "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu", *extra]


@pytest.mark.parametrize("extra, expected", [
    (["--data.init_args.batch_size", "abc"], ["--data.init_args.batch_size", "expected int", "abc"]),
    (["--data.init_args.bogus", "3"], ["--data.init_args", "'bogus' is not accepted"]),
    (["--model.init_args.hiddn_dim", "3"], ["hiddn_dim", "did you mean 'hidden_dim'"]),
    (["--trainer.bogus", "3"], ["--trainer.bogus"]),
    (["--model.init_args.head", "lstmm"], ["model (EmotionModule)", "unknown head 'lstmm'", "lstm"]),
    (["--trainer.max_epochs", "-5"], ["trainer", "max_epochs", "-5"]),
    (["--ckpt_path", "nope.ckpt"], ["--ckpt_path nope.ckpt", "no such checkpoint file"]),
    (["--config", "nope.yaml"], ["nope.yaml"]),
])
def test_fit_config_errors_name_the_key(corpus, capsys, tmp_path, monkeypatch, extra, expected):
    monkeypatch.chdir(tmp_path)
    refused(capsys, _fit(corpus, *extra), *expected)
    assert not (tmp_path / "runs").exists()


def test_fit_yaml_errors_name_the_file(corpus, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  init_args:\n    hidden_dim: [1\n")
    refused(capsys, _fit(corpus, "--config", broken), str(broken), "line 3")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  init_args:\n    hiddn_dim: 3\n")
    refused(capsys, _fit(corpus, "--config", unknown), str(unknown), "hiddn_dim")


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_lightning_commands_bad_data(corpus, capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    argv = _fit(corpus, "--data.init_args.features", tmp_path / "missing")
    argv[0] = command
    refused(capsys, argv, f"no feature store at {tmp_path / 'missing'}")
    bad = tmp_path / "bad.csv"
    bad.write_text("clip_id,path,label,split,speaker\na,x.mp4,happy,train\n")
    argv = _fit(corpus, "--data.init_args.manifest", bad)
    argv[0] = command
    refused(capsys, argv, str(bad), "line 2")
    assert not (tmp_path / "runs").exists()


def test_trainer_device_without_cuda(corpus, capsys, tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    refused(capsys, _fit(corpus, "--trainer.accelerator", "cuda"), "trainer", "CUDA")


# ------------------------------------------------------------------------------------------- prepare


def test_prepare_bad_inputs(corpus, capsys, tmp_path):
    src = corpus["manifest"]
    root = src.parent
    base = ["prepare", "--corpus", "manifest", "--root", root, "--manifest", src]
    latin = tmp_path / "latin.csv"
    header, first = src.read_text().splitlines()[:2]
    renamed = first.replace("synth_", "caf\u00e9_", 1)
    latin.write_bytes(f"{header}\n{renamed}\n".encode("latin-1"))
    refused(capsys, ["prepare", "--corpus", "manifest", "--root", root, "--manifest", latin, "--out",
                     tmp_path / "o.csv"], str(latin), "line 2", "not UTF-8", "iconv")
    for ratios in (["0", "0", "0"], ["-1", "0.5", "0.5"], ["0.7", "nan", "0.2"]):
        refused(capsys, [*base, "--out", tmp_path / "o.csv", "--ratios", *ratios], "--ratios")
    (tmp_path / "folder").mkdir()
    refused(capsys, [*base, "--out", tmp_path / "folder"], "--out", "is a folder")
    refused(capsys, [*base, "--out", tmp_path / "o.json"], "--out", ".csv")
    refused(capsys, [*base, "--out", src / "x.csv"], "is a file")
    assert tree(tmp_path) == {"latin.csv", "folder"}


# --------------------------------------------------------------------------------------------- synth


@pytest.mark.parametrize("extra, expected", [
    (["--fps", "0"], "--fps"), (["--fps", "nan"], "--fps"), (["--sample-rate", "0"], "--sample-rate"),
    (["--sample-rate", "12345"], "--sample-rate"), (["--clips-per-class", "1000000000"], "--clips-per-class"),
    (["--clips-per-class", "0"], "--clips-per-class"), (["--num-speakers", "0"], "--num-speakers"),
    (["--size", "33"], "--size"), (["--size", "100000"], "--size"),
])
def test_synth_bounds_before_any_work(capsys, tmp_path, extra, expected):
    refused(capsys, ["synth", "--out", tmp_path / "c", "--quiet", *extra], expected, extra[1])
    assert not (tmp_path / "c").exists()


def test_synth_out_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("mine")
    refused(capsys, ["synth", "--out", tmp_path / "file", "--quiet"], "--out", "is a file")
    assert (tmp_path / "file").read_text() == "mine"


# ------------------------------------------------------------------------------------------- extract


@pytest.mark.parametrize("extra, expected", [
    (["--extractor", "mfcc", "--option", "unknown=1"], ["'mfcc'", "no option 'unknown'", "n_mfcc"]),
    (["--extractor", "mfcc", "--option", "n_mfcc=999"], ["'mfcc'", "n_mfcc=999"]),
    (["--extractor", "mfcc", "--option", "novalue"], ["--option", "KEY=VALUE"]),
    (["--extractor", "mfcc", "--select", "0"], ["--select 0"]),
    (["--extractor", "mfcc", "--select", "-3"], ["--select -3"]),
    (["--extractor", "nope"], ["unknown extractor 'nope'", "mfcc"]),
    (["--extractor", "mfcc", "--bogus"], ["--bogus"]),
    (["--extractor", "mfcc", "--batch-size", "x"], ["--batch-size", "x"]),
    (["--extractor", "mfcc", "--batch-size", "0"], ["--batch-size 0"]),
    (["--extractor", "mfcc", "--commit-every", "0"], ["--commit-every 0"]),
    (["--extractor", "mfcc", "--num-workers", "-1"], ["--num-workers -1"]),
    (["--extractor", "hog", "--fps", "0"], ["--fps 0", "above 0"]),
    (["--extractor", "hog", "--fps", "-2"], ["--fps -2"]),
    (["--extractor", "hog", "--detector-option", "bogus=1"], ["face detector 'mtcnn'", "bogus"]),
    (["--extractor", "hog", "--detector-option", "min_face_size=-3"], ["min_face_size=-3", ">= 12"]),
    (["--extractor", "hog", "--detector", "nope"], ["unknown face detector 'nope'", "mtcnn"]),
])
def test_extract_bad_options(corpus, capsys, tmp_path, extra, expected):
    refused(capsys, ["extract", "--manifest", corpus["manifest"], "--out", tmp_path / "f", *FAST_EXTRACT, *extra],
            *expected)
    assert not (tmp_path / "f").exists()


def test_extract_device_without_cuda(corpus, capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(capsys, ["extract", "--manifest", corpus["manifest"], "--out", tmp_path / "f", "--extractor", "mfcc",
                     "--num-workers", "0", "--trainer.accelerator", "cuda"], "--trainer.accelerator cuda", "CUDA")
    assert not list((tmp_path / "f").rglob("*.json"))


def test_extract_bad_manifest_and_out(corpus, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    refused(capsys, ["extract", "--manifest", corpus["manifest"], "--out", tmp_path / "file", "--extractor", "mfcc",
                     *FAST_EXTRACT], "--out", "is a file")
    refused(capsys, ["extract", "--manifest", tmp_path / "none.csv", "--out", tmp_path / "f", "--extractor", "mfcc",
                     *FAST_EXTRACT], "none.csv", "not found")
    assert tree(tmp_path) == {"file"}


# ---------------------------------------------------------------------------------------------- fuse


def test_fuse_out_is_a_file(corpus, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    p = tmp_path / "p.csv"
    p.write_text("clip_id,split,label,a\n")
    refused(capsys, ["fuse", "--audio", f"a={p}", "--video", f"v={p}", "--out", tmp_path / "file"], "--out",
            "is a file")
    assert (tmp_path / "file").read_text() == "x"


# --------------------------------------------------------------------------------------- hub commands


def test_infer_outputs_and_device_checked_before_loading(capsys, tmp_path):
    import torch

    (tmp_path / "dir").mkdir()
    media = tmp_path / "a.wav"
    refused(capsys, ["infer", media, "--model", tmp_path / "nomodel", "--json", tmp_path / "dir"], "--json",
            "is a folder")
    refused(capsys, ["infer", media, "--model", tmp_path / "nomodel", "--csv", tmp_path / "x.json"], "--csv", ".csv")
    refused(capsys, ["infer", media, "--model", tmp_path / "nomodel", "--device", "gpu7"], "--device", "gpu7")
    if not torch.cuda.is_available():
        refused(capsys, ["infer", media, "--model", tmp_path / "nomodel", "--device", "cuda"], "--device cuda",
                "CUDA is not available", "--device cpu")
    assert tree(tmp_path) == {"dir"}


def test_zoo_missing_folder(capsys, tmp_path):
    refused(capsys, ["zoo", "--zoo", tmp_path / "nonexistent"], str(tmp_path / "nonexistent"))


def test_export_zoo_entry_cannot_leave_the_zoo(capsys, tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "models").mkdir(parents=True)
    before = tree(tmp_path)
    for name in ("../escape", "a/../../escape", "/abs", ".."):
        refused(capsys, ["export", "--ckpt", tmp_path / "x.ckpt", "--zoo", zoo, "--zoo-entry", name], "--zoo-entry",
                name)
    assert tree(tmp_path) == before
    refused(capsys, ["zoo", "--zoo", zoo, "--add", "../escape", "--model-dir", tmp_path], "../escape")
    assert tree(tmp_path) == before


def test_reproduce_bad_config(capsys, tmp_path):
    bad = tmp_path / "protocol.yaml"
    bad.write_text(json.dumps({"out": str(tmp_path / "out"), "audo": {"a": {"extractor": "mfcc"}}}))
    refused(capsys, ["reproduce", "--config", bad], "'audo.a.extractor' is not accepted", str(bad))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ extract: data-dependent


def _one_clip_manifest(corpus, tmp_path, end: str) -> Path:
    clip = sorted((corpus["manifest"].parent / "clips").glob("*.mp4"))[0]
    m = tmp_path / "m.csv"
    m.write_text(f"clip_id,path,label,split,speaker,start,end\nc0,clips/{clip.name},angry,train,s1,0,{end}\n")
    return m


@pytest.mark.parametrize("workers", ["0", "1"])
def test_extract_end_beyond_the_duration_names_clip_duration_and_line(corpus, capsys, tmp_path, workers):
    from lightning_emo.data.media import probe

    m = _one_clip_manifest(corpus, tmp_path, "99")
    duration = probe(sorted((corpus["manifest"].parent / "clips").glob("*.mp4"))[0]).duration
    refused(capsys, ["extract", "--manifest", m, "--root", corpus["manifest"].parent, "--extractor", "mfcc",
                     "--out", tmp_path / "f",
                     "--num-workers", workers, "--trainer.accelerator", "cpu"],
            f"{m}, line 2, field 'end'", "clip 'c0'", "end 99 s", f"({duration:.3f} s)")
    assert not list((tmp_path / "f" / "mfcc" / "segments").glob("*.json"))  # no clip committed


def test_extract_dtype_follows_the_extractor_and_a_change_says_what_to_do(corpus, capsys, tmp_path):
    from lightning_emo.data.store import FeatureStore
    from lightning_emo.extractors.audio import ComParEExtractor
    from lightning_emo.extractors.base import Extractor

    assert ComParEExtractor.store_dtype == "float32" and Extractor.store_dtype == "float16"
    base = ["extract", "--manifest", corpus["manifest"], "--extractor", "mfcc", "--out", tmp_path, *FAST_EXTRACT]
    assert main([str(a) for a in [*base, "--dtype", "float32"]]) == 0
    assert FeatureStore.open(tmp_path / "mfcc").dtype == "float32"
    refused(capsys, base, "float32", "--dtype float32 to keep", "--overwrite")
    assert FeatureStore.open(tmp_path / "mfcc").dtype == "float32"  # untouched


def test_mtcnn_on_frames_smaller_than_a_face_finds_none_and_keeps_the_other_clip(corpus, capsys, tmp_path):
    import numpy as np

    from lightning_emo.data.media import write_video
    from lightning_emo.data.store import FeatureStore

    tiny = tmp_path / "tiny.mp4"
    write_video(tiny, (np.random.default_rng(0).random((6, 16, 16, 3)) * 255).astype("uint8"), 5.0, None, 16000)
    shutil.copy(sorted((corpus["manifest"].parent / "clips").glob("*.mp4"))[0], tmp_path / "other.mp4")
    m = tmp_path / "m.csv"
    m.write_text("clip_id,path,label,split,speaker\ntiny,tiny.mp4,angry,train,s1\nother,other.mp4,sad,train,s2\n")
    for on_error in ("raise", "warn"):
        out = tmp_path / on_error
        assert main(["extract", "--manifest", str(m), "--root", str(tmp_path), "--extractor", "hog",
                     "--detector", "mtcnn", "--out", str(out), "--on-error", on_error, *FAST_EXTRACT]) == 0, \
            capsys.readouterr().err
        store = FeatureStore.open(out / "hog")
        assert "tiny" in store and "other" in store and store.n_valid("tiny") == 0


def test_worker_errors_are_recovered_from_torch_text():
    import torch
    from torch.utils.data import DataLoader, Dataset

    from lightning_emo.data.media import MediaError

    class Broken(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise MediaError("x.mp4", "not a media file")

    with pytest.raises(Exception) as info:
        list(DataLoader(Broken(), num_workers=1))
    assert str(find_user_error(info.value)) == "x.mp4: not a media file"
    assert find_user_error(RuntimeError("Caught TypeError in DataLoader worker process 0.\nOriginal Traceback\n"
                                        "TypeError: a bug")) is None
    del torch


# ---------------------------------------------------------------------------------------------- push


class _BadHub:
    """A stand-in endpoint on 127.0.0.1 answering every request with HTML (``garbage``) or a redirect to itself."""

    def __init__(self, mode: str):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self):
                if mode == "garbage":
                    body = b"<html>a captive portal, not the Hub</html>"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            do_GET = do_POST = do_HEAD = do_PUT = answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("mode, expected", [("garbage", "answered something that is not the Hugging Face Hub API"),
                                            ("loop", "TooManyRedirects")])
def test_push_to_an_endpoint_that_is_not_the_hub(mode, expected, capsys, monkeypatch):
    import huggingface_hub.constants as c

    hub = _BadHub(mode)
    # what a process started with HF_ENDPOINT sees (huggingface_hub reads it when imported)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(c, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("LIGHTNING_EMO_HUB_TIMEOUT", "5")
    try:
        line = refused(capsys, ["push", REPO / "zoo" / "models" / "synthetic-demo", "--repo-id", "org/x"], expected,
                       hub.url)
    finally:
        hub.server.shutdown()
    assert "hf_not_a_real_token" not in line


def test_a_bad_decoding_setting_is_not_blamed_on_the_media_file(corpus):
    from lightning_emo.data.media import DecodeSettingError, MediaError, load_audio, load_frames

    clip = sorted((corpus["manifest"].parent / "clips").glob("*.mp4"))[0]
    for call, setting in ((lambda: load_frames(clip, fps=0), "fps"), (lambda: load_frames(clip, size=(0, 4)), "size"),
                          (lambda: load_audio(clip, sample_rate=0), "sample_rate")):
        with pytest.raises(DecodeSettingError) as info:
            call()
        assert not isinstance(info.value, MediaError)  # --on-error warn must not skip every file over it
        assert f"decoding setting {setting}" in str(info.value) and clip.name not in str(info.value)


def test_extract_select_beyond_the_dimension_keeps_the_store(corpus, capsys, tmp_path):
    from lightning_emo.data.store import FeatureStore

    shutil.copytree(corpus["mfcc"], tmp_path / "mfcc")
    refused(capsys, ["extract", "--manifest", corpus["manifest"], "--out", tmp_path, "--extractor", "mfcc",
                     "--select", "100", *FAST_EXTRACT], "--select 100", "only 39 features", "kept")
    assert len(FeatureStore.open(tmp_path / "mfcc").clip_ids) == 21 and not (tmp_path / "mfcc-sel100").exists()


@pytest.mark.parametrize("argv, expected", [
    (["prepare", "--corpus", "manifest"], "the following arguments are required: --root, --out"),
    (["synth", "--fps", "fast", "--out", "x"], "argument --fps: invalid float value: 'fast'"),
    (["fuse", "--audio", "noequals", "--out", "x"], "expected NAME=PATH"),
    (["infer", "a.wav"], "--model"),
    (["zoo", "--bogus"], "unrecognized arguments: --bogus"),
    (["export", "--feature-dtype", "float8"], "invalid choice: 'float8'"),
])
def test_usage_errors_are_one_paragraph_too(capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage:" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"lightning-emo {argv[0]}: error: ") and expected in err and f"{argv[0]} --help" in err
