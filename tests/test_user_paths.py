"""Paths a new user gets wrong: a folder given where a file is expected is said to be a folder, not "not found".

Each case runs the real command line on one small synthetic corpus shared by the module; every one
is refused before any work, with exit status 2, one paragraph and no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_emo.cli import main
from lightning_emo.errors import DEBUG_ENV

REPO = Path(__file__).resolve().parents[1]
FAST_EXTRACT = ["--num-workers", "0", "--trainer.accelerator", "cpu"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "0")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    from lightning_emo.data.synthetic import synthesize
    from lightning_emo.extractors.extract import main as extract_main

    root = tmp_path_factory.mktemp("user-paths")
    manifest = synthesize(root / "corpus", clips_per_class=3, size=32, max_speech=1.0)
    assert extract_main(["--manifest", str(manifest), "--extractor", "mfcc", "--out", str(root / "features"),
                         *FAST_EXTRACT]) == 0
    return {"root": root, "manifest": manifest, "mfcc": root / "features" / "mfcc"}


def refused(capsys, argv, *expected: str) -> str:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"lightning-emo {argv[0]}: error: ")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert "not found" not in lines[0], lines[0]
    return lines[0]


def test_a_folder_for_a_manifest(corpus, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = corpus["manifest"].parent  # holds manifest.csv: named
    refused(capsys, ["extract", "--manifest", folder, "--extractor", "mfcc", "--out", tmp_path / "f", *FAST_EXTRACT],
            f"{folder}: is a folder, not a manifest file: did you mean {corpus['manifest']}?")
    refused(capsys, ["fit", "--config", "experiment/synthetic_audio.yaml", "--data.init_args.manifest", folder,
                     "--data.init_args.features", corpus["mfcc"]], "is a folder, not a manifest file")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, ["prepare", "--corpus", "manifest", "--root", folder, "--manifest", empty, "--out",
                     tmp_path / "m.csv"], f"{empty}: is a folder, not a manifest file; give the path of the file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_folder_for_predictions_checkpoints_and_weights(corpus, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes(b"")
    refused(capsys, ["fuse", "--audio", f"a={tmp_path}", "--video", f"v={tmp_path}", "--out", tmp_path / "fz"],
            "is a folder, not a predictions file")
    refused(capsys, ["export", "--ckpt", run, "--out", tmp_path / "ex"],
            f"{run}: is a folder, not a checkpoint file: did you mean {run / 'last.ckpt'}?")
    refused(capsys, ["predict", "--config", "experiment/synthetic_audio.yaml", "--data.init_args.manifest",
                     corpus["manifest"], "--data.init_args.features", corpus["mfcc"], "--ckpt_path", run.parent],
            "is a folder, not a checkpoint file", str(run / "last.ckpt"))
    refused(capsys, ["extract", "--manifest", corpus["manifest"], "--extractor", "hubert_base", "--weights", tmp_path,
                     "--out", tmp_path / "f", *FAST_EXTRACT], f"{tmp_path}: is a folder, not a weights file")
    assert not (tmp_path / "fz").exists() and not (tmp_path / "ex").exists() and not (tmp_path / "f").exists()


def test_the_corpus_root_is_shown_as_it_is(corpus, capsys, tmp_path, monkeypatch):
    """A manifest written in a nested relative folder: its root reads back as the folder, not a/b/../../../x."""
    from lightning_emo.data.manifest import read_manifest

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    root = corpus["manifest"].parent
    assert main(["prepare", "--corpus", "manifest", "--root", str(root), "--manifest", str(corpus["manifest"]),
                 "--out", "data/mine/manifest.csv"]) == 0
    out = capsys.readouterr().out
    assert f"root {root.resolve()} " in out and ".." not in out
    manifest = read_manifest("data/mine/manifest.csv")
    assert manifest.root == root.resolve() and manifest.media_path(manifest.clips[0]).is_file()
    # a missing media file is named by its real path
    first = manifest.clips[0]
    (root / first.path).rename(root / (first.path + ".away"))
    try:
        with pytest.raises(Exception, match=f"media file not found: {root.resolve() / first.path}$"):
            read_manifest("data/mine/manifest.csv", check_files=True)
    finally:
        (root / (first.path + ".away")).rename(root / first.path)
