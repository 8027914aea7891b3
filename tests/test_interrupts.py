"""Ctrl-C during `extract`: what was committed stays, the command says so and exits 130, a re-run finishes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from lightning_emo.data.store import FeatureStore
from lightning_emo.errors import DEBUG_ENV

EXTRACT = ["--extractor", "mfcc", "--num-workers", "0", "--trainer.accelerator", "cpu"]


def _committed(store: Path) -> int:
    return len(FeatureStore.open(store)) if (store / "store.json").is_file() else 0


def test_ctrl_c_during_extract_keeps_the_committed_clips_and_exits_130(tmp_path, monkeypatch, capsys):
    from lightning_emo.data.synthetic import synthesize
    from lightning_emo.extractors.extract import SIGINT_EXIT, main

    manifest = synthesize(tmp_path / "corpus", clips_per_class=2, size=32, max_speech=1.0)
    monkeypatch.setenv(DEBUG_ENV, "0")
    monkeypatch.setenv("LIGHTNING_EMO_EXTRACT_DELAY", "0.3")
    store = tmp_path / "features" / "mfcc"
    args = [*EXTRACT, "--manifest", str(manifest), "--out", str(tmp_path / "features"), "--batch-size", "1",
            "--commit-every", "1"]

    def press_ctrl_c() -> None:
        end = time.monotonic() + 60
        while _committed(store) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    try:
        assert main(args) == SIGINT_EXIT
    finally:
        signal.signal(signal.SIGINT, before)  # Lightning leaves Ctrl-C ignored after handling one
    done = _committed(store)
    err = capsys.readouterr().err
    assert 2 <= done < 14 and f"extract mfcc: stopped by Ctrl-C; {done} of 14 clips are committed to {store}" in err
    assert "Traceback" not in err
    monkeypatch.delenv("LIGHTNING_EMO_EXTRACT_DELAY")
    assert main(args) == 0 and _committed(store) == 14
    assert f"{14 - done} clips written, {done} skipped" in capsys.readouterr().out
