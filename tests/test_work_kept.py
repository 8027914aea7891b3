"""Nothing computed is lost: extract under SIGTERM, two runs on one store, a full disk, and refused overwrites."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lightning_emo.data.store import FeatureStore, RunLock, StoreBusyError
from lightning_emo.utils import (
    OutputCollisionError,
    OutputExistsError,
    check_outputs,
    distinct_stems,
)

ROOT = Path(__file__).resolve().parents[1]
EXTRACT = ["extract", "--extractor", "mfcc", "--num-workers", "0", "--trainer.accelerator", "cpu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from lightning_emo.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("kept") / "corpus", clips_per_class=2, size=32, max_speech=1.5)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra}


def _cli(args: list[str], cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_emo.cli", *args], cwd=cwd, env=kw.pop("env", _env()),
                          capture_output=True, text=True, timeout=timeout, **kw)


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightning_emo.cli", *args], cwd=cwd, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def _committed(store: Path) -> int:
    return len(FeatureStore.open(store)) if (store / "store.json").is_file() else 0


def _holder(store: Path) -> dict:
    try:
        return json.loads((store / ".run.lock").read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


# ----------------------------------------------------------------------------- extract


@pytest.mark.slow
def test_extract_on_sigterm_commits_exits_143_and_resumes_to_the_same_store(corpus, tmp_path):
    reference = _cli([*EXTRACT, "--manifest", str(corpus), "--out", str(tmp_path / "ref")], tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    store = tmp_path / "features" / "mfcc"
    args = [*EXTRACT, "--manifest", str(corpus), "--out", str(tmp_path / "features"), "--batch-size", "1",
            "--commit-every", "1"]
    run = _start(args, tmp_path, LIGHTNING_EMO_EXTRACT_DELAY="1")
    _wait_for(lambda: _committed(store) >= 2)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    done = _committed(store)
    assert 2 <= done < 14 and f"{done} of 14 clips are committed" in err and "Run the same command again" in err
    again = _cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{14 - done} clips written, {done} skipped" in again.stdout  # nothing done twice
    a, b = FeatureStore.open(tmp_path / "ref" / "mfcc"), FeatureStore.open(store)
    assert sorted(a.clip_ids) == sorted(b.clip_ids)
    for clip in a.clip_ids:
        np.testing.assert_array_equal(a.get(clip)[0], b.get(clip)[0])


@pytest.mark.slow
def test_second_extract_process_is_refused_naming_the_first_then_waits_with_wait(corpus, tmp_path):
    store = tmp_path / "features" / "mfcc"
    args = [*EXTRACT, "--manifest", str(corpus), "--out", str(tmp_path / "features"), "--batch-size", "2",
            "--commit-every", "2"]
    first = _start(args, tmp_path, LIGHTNING_EMO_EXTRACT_DELAY="4")
    try:
        _wait_for(lambda: _holder(store).get("pid") == first.pid)
        second = _cli(args, tmp_path)
        assert second.returncode == 2
        assert f"pid {first.pid} on " in second.stderr and "being written by another run" in second.stderr
        waited = _cli([*args, "--wait"], tmp_path)  # blocks until the first is done, then finds nothing left
        assert waited.returncode == 0, waited.stderr[-2000:]
        assert "0 clips written, 14 skipped" in waited.stdout
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err[-2000:]
        assert "14 clips written, 0 skipped" in out
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()


def test_extract_refuses_a_store_another_run_holds_and_waits_for_it_with_wait(corpus, tmp_path, capsys):
    import threading

    from lightning_emo.extractors.extract import main

    args = [*EXTRACT[1:], "--manifest", str(corpus), "--out", str(tmp_path / "features")]
    (tmp_path / "features" / "mfcc").mkdir(parents=True)
    lock = RunLock(tmp_path / "features" / "mfcc", command="lightning-emo extract (the other run)")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()} on " in err and "lightning-emo extract (the other run)" in err
    assert "nothing was done" in err and "--wait" in err and _committed(tmp_path / "features" / "mfcc") == 0
    threading.Timer(1.0, lock.release).start()  # the other run finishes a second later
    assert main([*args, "--wait"]) == 0
    assert _committed(tmp_path / "features" / "mfcc") == 14


def test_run_lock_in_process_names_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    (tmp_path / "s").mkdir()
    with RunLock(tmp_path / "s", command="lightning-emo extract A"):
        # flock is per open file description: a second open in this process contends like another process
        with pytest.raises(StoreBusyError, match=rf"pid {os.getpid()} on .*lightning-emo extract A"):
            RunLock(tmp_path / "s", command="B")
    RunLock(tmp_path / "s", command="C").release()  # released: free again
    # a holder killed with SIGKILL leaves its file behind; the OS released its lock
    code = ("import sys, os; sys.path.insert(0, %r); from lightning_emo.data.store import RunLock; "
            "RunLock(%r, command='doomed'); os.kill(os.getpid(), 9)") % (str(ROOT), str(tmp_path / "s"))
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert _holder(tmp_path / "s")["command"] == "doomed"
    with RunLock(tmp_path / "s", command="after"):
        assert _holder(tmp_path / "s")["command"] == "after"


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_extract_on_a_full_disk_names_the_file_and_what_was_kept(corpus, tmp_path):
    # RLIMIT_FSIZE makes writes past the limit fail with EFBIG: the real OSError path of a full disk
    args = [*EXTRACT, "--manifest", str(corpus), "--out", str(tmp_path / "features"), "--batch-size", "2",
            "--commit-every", "2"]
    full = _cli(args, tmp_path, preexec_fn=_limit_file_size(40_000))
    assert full.returncode == 2
    err = full.stderr
    assert "file-size limit was reached while writing" in err and "segments" in err and "Traceback" not in err
    assert "keeps every clip committed before" in err and "resumes after the committed clips" in err
    kept = _committed(tmp_path / "features" / "mfcc")
    assert 0 < kept < 14
    again = _cli(args, tmp_path)  # with room again: resumes after the kept clips
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{14 - kept} clips written, {kept} skipped" in again.stdout


# ------------------------------------------------------------------------------ outputs


def test_check_outputs_refuses_existing_and_colliding_outputs(tmp_path):
    (tmp_path / "a.csv").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"a\.csv already exists; nothing was written.*--overwrite"):
        check_outputs([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert check_outputs([tmp_path / "a.csv"], overwrite=True) == [tmp_path / "a.csv"]
    with pytest.raises(OutputCollisionError, match="two outputs would be written to one file"):
        check_outputs([tmp_path / "x" / "c.csv", tmp_path / "x" / ".." / "x" / "c.csv"], overwrite=True)
    assert distinct_stems(["a/clip.mp4", "b/clip.mp4", "x.mp4"]) == ["a-clip", "b-clip", "x"]
    assert distinct_stems(["p/a/c.mp4", "q/a/c.mp4"]) == ["p-a-c", "q-a-c"]
    assert distinct_stems(["same.mp4", "same.mp4"]) == ["same", "same-2"]


def test_synth_refuses_a_folder_with_a_users_manifest(tmp_path):
    from lightning_emo.data.synthetic import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.csv").write_text("clip_id,path,label,split,speaker\nmy,my.wav,happy,train,s1\n")
    assert main(["--out", str(out), "--clips-per-class", "1", "--size", "32", "--quiet"]) == 2
    assert (out / "manifest.csv").read_text().startswith("clip_id,path,label,split,speaker\nmy,")
    assert not (out / "clips").exists()


def test_prepare_refuses_an_existing_csv_or_an_unrelated_sidecar(corpus, tmp_path, capsys):
    from lightning_emo.data.prepare import main

    args = ["--corpus", "manifest", "--manifest", str(corpus), "--root", str(corpus.parent)]
    (tmp_path / "x.json").write_text('{"mine": true}\n')  # someone's file beside the CSV-to-be
    assert main([*args, "--out", str(tmp_path / "x.csv")]) == 2
    assert "x.json already exists" in capsys.readouterr().err
    assert (tmp_path / "x.json").read_text() == '{"mine": true}\n' and not (tmp_path / "x.csv").exists()
    assert main([*args, "--out", str(tmp_path / "y.csv")]) == 0
    assert main([*args, "--out", str(tmp_path / "y.csv")]) == 2  # a second time: refused too
    assert main([*args, "--out", str(tmp_path / "y.csv"), "--overwrite"]) == 0


def test_fuse_refuses_an_earlier_fuse_folder(tmp_path):
    from lightning_emo.data.predictions import write_predictions
    from lightning_emo.fusion.commands import main

    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    ids = [f"c{i}" for i in range(30)]
    splits = ["val"] * 15 + ["test"] * 15
    labels = [classes[i % 3] for i in range(30)]
    for name in ("au", "vi"):
        p = rng.dirichlet(np.ones(3), size=30)
        write_predictions(tmp_path / f"{name}.csv", ids, splits, labels, p, classes)
    args = ["--audio", f"au={tmp_path / 'au.csv'}", "--video", f"vi={tmp_path / 'vi.csv'}", "--out",
            str(tmp_path / "fusion"), "--rules", "ensemble", "--quiet", "--no-png"]
    assert main(args) == 0
    before = (tmp_path / "fusion" / "results.md").read_text()
    assert main(args) == 2
    assert (tmp_path / "fusion" / "results.md").read_text() == before
    assert main([*args, "--overwrite"]) == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lightning_emo.hub._testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny"))


def test_infer_timelines_of_same_named_files_never_collide_and_outputs_are_not_replaced(tiny, tmp_path, capsys):
    from lightning_emo.cli import main
    from lightning_emo.hub._testing import random_clip

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    a = random_clip(tmp_path / "a" / "clip.mp4", seconds=3.0, fps=10.0)
    b = random_clip(tmp_path / "b" / "clip.mp4", seconds=3.0, fps=10.0, seed=5)
    args = ["infer", str(a), str(b), "--model", str(tiny["export"]), "--timeline", "--window", "2", "--hop", "1",
            "--out", str(tmp_path / "tl"), "--quiet", "--no-plot"]
    assert main(args) == 0
    docs = {p.name: json.loads(p.read_text()) for p in (tmp_path / "tl").glob("*.timeline.json")}
    assert sorted(docs) == ["a-clip.timeline.json", "b-clip.timeline.json"]
    assert docs["a-clip.timeline.json"]["file"] == str(a) and docs["b-clip.timeline.json"]["file"] == str(b)
    before = (tmp_path / "tl" / "a-clip.timeline.csv").read_text()
    capsys.readouterr()
    assert main(args) == 2  # a second time: refused before any work, naming the files
    err = capsys.readouterr().err
    assert "a-clip.timeline.csv" in err and "--overwrite" in err
    assert (tmp_path / "tl" / "a-clip.timeline.csv").read_text() == before
    assert main([*args, "--overwrite"]) == 0
    # per-clip outputs: --json / --csv
    (tmp_path / "p.json").write_text("mine")
    assert main(["infer", str(a), "--model", str(tiny["export"]), "--json", str(tmp_path / "p.json"), "--quiet"]) == 2
    assert (tmp_path / "p.json").read_text() == "mine"


def test_export_refuses_a_folder_holding_an_exported_model(tiny, tmp_path, capsys):
    from lightning_emo.cli import main

    args = ["export", "--ckpt", f"audio={tiny['audio']}", "--ckpt", f"video={tiny['video']}", "--fusion",
            str(tiny["rule"]), "--features", f"video={tiny['store']}", "--out", str(tmp_path / "m")]
    assert main(args) == 0
    config = (tmp_path / "m" / "config.json").read_bytes()
    assert main(args) == 2
    assert "config.json" in capsys.readouterr().err and (tmp_path / "m" / "config.json").read_bytes() == config
    assert main([*args, "--overwrite"]) == 0


def test_predict_refuses_an_existing_predictions_csv_before_predicting(tmp_path, monkeypatch, capsys):
    from lightning_emo.cli import main

    try:
        from test_module import make_toy_corpus
        from test_resume import _config
    except ImportError:
        from tests.test_module import make_toy_corpus
        from tests.test_resume import _config
    monkeypatch.chdir(tmp_path)
    make_toy_corpus(tmp_path / "toy")
    config = _config(tmp_path / "toy", tmp_path, max_epochs=1)
    assert main(["fit", "--config", str(config)]) == 0
    run = tmp_path / "runs" / "toy" / "version_0"
    args = ["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    assert main(args) == 0
    before = (run / "predictions.csv").read_text()
    capsys.readouterr()
    assert main(args) == 2
    assert re.search(r"predictions\.csv already exists.*--predictions\.overwrite true", capsys.readouterr().err)
    assert (run / "predictions.csv").read_text() == before
    assert main([*args, "--predictions.overwrite", "true"]) == 0


def test_reproduce_refuses_a_folder_it_did_not_write(tmp_path):
    from lightning_emo.pipeline import MARKER, _claim

    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not written by reproduce"):
        _claim(tmp_path / "theirs", overwrite=False)
    _claim(tmp_path / "ours", overwrite=False)  # new: claimed, then resumed
    assert (tmp_path / "ours" / MARKER).exists()
    (tmp_path / "ours" / "runs").mkdir()
    _claim(tmp_path / "ours", overwrite=False)
    _claim(tmp_path / "theirs", overwrite=True)
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"  # nothing of theirs is deleted


def test_extract_in_process_sigterm_returns_143_with_what_was_committed(corpus, tmp_path, monkeypatch, capsys):
    import threading

    from lightning_emo.extractors.extract import main

    monkeypatch.setenv("LIGHTNING_EMO_EXTRACT_DELAY", "0.5")
    store = tmp_path / "features" / "mfcc"
    args = [*EXTRACT[1:], "--manifest", str(corpus), "--out", str(tmp_path / "features"), "--batch-size", "1",
            "--commit-every", "1"]

    def preempt() -> None:
        _wait_for(lambda: _committed(store) >= 2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt, daemon=True).start()
    assert main(args) == 143
    done = _committed(store)
    assert 2 <= done < 14 and f"{done} of 14 clips are committed" in capsys.readouterr().err
    assert RunLock(store).release() is None  # the run lock was released
    monkeypatch.delenv("LIGHTNING_EMO_EXTRACT_DELAY")
    assert main(args) == 0 and _committed(store) == 14
