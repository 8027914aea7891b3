"""FusionPriorCallback: metrics against sklearn, both output contracts, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import f1_score, recall_score
from torch.utils.data import DataLoader, TensorDataset

from lightning_emo.fusion.callback import FusionPriorCallback, fusion_state_from_checkpoint, priors_from_f1

C = 3
CLASSES = ["angry", "happy", "sad"]


def _data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    x = torch.randn(n, 4, generator=g)
    x[torch.arange(n), y] += 1.5  # learnable, but not perfectly
    return TensorDataset(x, y)


class TinyModule(pl.LightningModule):
    """One linear layer per modality; returns the contract's dict from validation_step."""

    def __init__(self, multi: bool = False, missing_video: int = 0):
        super().__init__()
        self.modality = "audio"
        self.classes = CLASSES
        self.multi = multi
        self.missing_video = missing_video  # the first k clips of every batch have no video posterior
        self.audio = torch.nn.Linear(4, C)
        self.video = torch.nn.Linear(4, C)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.audio(x), y)
        if self.multi:
            loss = loss + torch.nn.functional.cross_entropy(self.video(x * 0.5), y)
        return loss

    def forward_probs(self, x):
        audio = self.audio(x).softmax(-1)
        if not self.multi:
            return audio
        video = self.video(x * 0.5).softmax(-1).clone()
        video[: self.missing_video] = float("nan")
        return {"audio": audio, "video": video}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"probs": self.forward_probs(x), "label": y}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    kw.setdefault("num_sanity_val_steps", 1)  # the sanity check must not count as a validation epoch
    return pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **kw)


def _loaders():
    return DataLoader(_data(64, 0), batch_size=16), DataLoader(_data(40, 1), batch_size=8)


def _reference(model: TinyModule, modality: str) -> dict:
    x, y = _data(40, 1).tensors
    model.eval()
    with torch.no_grad():
        probs = [model.forward_probs(x[i:i + 8]) for i in range(0, 40, 8)]
    p = torch.cat([b[modality] if isinstance(b, dict) else b for b in probs]).numpy()
    keep = ~np.isnan(p).any(axis=1)
    pred, yk = p[keep].argmax(1), y.numpy()[keep]
    return {"micro_f1": f1_score(yk, pred, average="micro"), "macro_f1": f1_score(yk, pred, average="macro"),
            "recall": recall_score(yk, pred, average=None, labels=range(C), zero_division=0), "n": keep.sum()}


def test_single_modality_metrics_match_sklearn_and_are_logged(tmp_path):
    torch.manual_seed(0)
    cb = FusionPriorCallback()
    model = TinyModule()
    trainer = _trainer(tmp_path, [cb], enable_checkpointing=False)
    trainer.fit(model, *_loaders())
    ref = _reference(model, "audio")
    assert set(cb.metrics) == {"audio"}
    assert cb.metrics["audio"]["micro_f1"] == pytest.approx(ref["micro_f1"], abs=1e-6)
    assert cb.metrics["audio"]["macro_f1"] == pytest.approx(ref["macro_f1"], abs=1e-6)
    assert list(cb.metrics["audio"]["recall"]) == CLASSES
    np.testing.assert_allclose(list(cb.metrics["audio"]["recall"].values()), ref["recall"], atol=1e-6)
    assert cb.priors == {"audio": 0.0}
    logged = trainer.callback_metrics
    assert float(logged["val/audio/micro_f1"]) == pytest.approx(ref["micro_f1"], abs=1e-6)
    assert "val/audio/macro_f1" in logged and "val/audio/recall/happy" in logged
    assert cb.epoch == 0


def test_multi_head_outputs_priors_and_missing_rows(tmp_path):
    torch.manual_seed(1)
    cb = FusionPriorCallback()
    model = TinyModule(multi=True, missing_video=2)
    trainer = _trainer(tmp_path, [cb], enable_checkpointing=False)
    trainer.fit(model, *_loaders())
    ref_a, ref_v = _reference(model, "audio"), _reference(model, "video")
    assert ref_v["n"] == 40 - 5 * 2  # NaN rows were left out of video's metrics only
    assert cb.micro_f1 == pytest.approx({"audio": ref_a["micro_f1"], "video": ref_v["micro_f1"]}, abs=1e-6)
    low = min(ref_a["micro_f1"], ref_v["micro_f1"])
    assert cb.priors == pytest.approx({"audio": ref_a["micro_f1"] - low, "video": ref_v["micro_f1"] - low}, abs=1e-6)
    assert "val/video/micro_f1" in trainer.callback_metrics


def test_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(2)
    cb = FusionPriorCallback()
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, [cb, ckpt_cb], enable_checkpointing=True)
    trainer.fit(TinyModule(multi=True), *_loaders())
    path = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(path, map_location="cpu", weights_only=True)["callbacks"]["FusionPriorCallback"]
    assert saved == cb.state_dict()
    assert saved["metrics"]["audio"]["micro_f1"] == cb.metrics["audio"]["micro_f1"]

    # Resuming a finished run restores the callback's state without validating again.
    fresh = FusionPriorCallback()
    trainer2 = _trainer(tmp_path, [fresh, pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer2.fit(TinyModule(multi=True), *_loaders(), ckpt_path=path)
    assert fresh.state_dict() == cb.state_dict()
    assert fresh.priors == cb.priors

    state = fusion_state_from_checkpoint(str(path), modalities=["video"])
    assert set(state["metrics"]) == {"video"} and state["priors"] == {"video": 0.0}
    with pytest.raises(KeyError, match="modality"):
        fusion_state_from_checkpoint(str(path), modalities=["face"])


def test_contract_violations_are_named(tmp_path):
    class NoModality(TinyModule):
        def __init__(self):
            super().__init__()
            del self.modality

    class BadOutput(TinyModule):
        def validation_step(self, batch, batch_idx):
            return self.audio(batch[0])

    for module, err in [(NoModality(), "modality"), (BadOutput(), "probs")]:
        trainer = _trainer(tmp_path, [FusionPriorCallback()], enable_checkpointing=False, num_sanity_val_steps=0)
        with pytest.raises((AttributeError, TypeError), match=err):
            trainer.fit(module, *_loaders())


def test_load_rejects_unknown_version_and_priors_helper():
    with pytest.raises(ValueError, match="version"):
        FusionPriorCallback().load_state_dict({"version": 99, "metrics": {}, "priors": {}})
    assert priors_from_f1({"audio": 0.4, "video": 0.46}) == pytest.approx({"audio": 0.0, "video": 0.06})
    assert priors_from_f1({}) == {}


_TWO_RANKS = r"""
import os, sys, json
from types import SimpleNamespace
import torch
import torch.distributed as dist
from lightning_emo.fusion.callback import FusionPriorCallback

dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
rank = dist.get_rank()
cb = FusionPriorCallback(log_metrics=False)
trainer = SimpleNamespace(sanity_checking=False, world_size=2, current_epoch=0, global_step=5)
module = SimpleNamespace(modality="audio", classes=["a", "b", "c"], device=torch.device("cpu"))
cb.on_validation_epoch_start(trainer, module)
if rank == 0:  # rank 1 gets no validation batch at all; rank 0 sees video for no clip
    probs = torch.eye(3)[[0, 1, 2, 0]]
    video = torch.full((4, 3), float("nan"))
    out = {"probs": {"audio": probs, "video": video}, "label": torch.tensor([0, 1, 1, 0])}
    cb.on_validation_batch_end(trainer, module, out, None, 0)
cb.on_validation_epoch_end(trainer, module)
print(json.dumps({"rank": rank, "metrics": cb.metrics}))
dist.destroy_process_group()
"""


def test_ranks_without_validation_updates_do_not_hang_ddp(tmp_path):
    """A rank with no validation batch must still join the metric sync (else the other waits forever)."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    procs = []
    for rank in range(2):
        env = {**__import__("os").environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            p.kill()
    assert results[0]["metrics"] == results[1]["metrics"]  # both computed the synced values
    assert set(results[0]["metrics"]) == {"audio"}  # no rank saw video: no video metrics, no hang
    assert results[0]["metrics"]["audio"]["micro_f1"] == pytest.approx(0.75)
