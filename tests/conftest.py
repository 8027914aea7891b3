"""Shared fixtures: no test touches the network, the user's caches, or a logger service."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
# Tests that need offline mode set it themselves; an inherited HF_HUB_OFFLINE=1 would change
# what huggingface_hub reads at import for every other test.
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Tiny models on 2 shared cores: one intra-op thread is 10x faster than two competing ones.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Point torch.hub and huggingface_hub at empty per-test caches (tests fill them on purpose)."""
    home = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    # No test downloads from the internet: weight files not cached come from a loopback address
    # nothing listens on (refused) unless the test starts its own mirror.
    monkeypatch.setenv("LIGHTNING_EMO_WEIGHTS_URL", "http://127.0.0.1:1/no-downloads-in-tests")
    yield
