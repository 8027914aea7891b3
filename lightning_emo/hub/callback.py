"""``HubPushCallback``: when ``fit`` ends, export the best checkpoint as a recognizer (with its card) and push it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from lightning_emo.hub.config import modality_name
from lightning_emo.utils import log

__all__ = ["HubPushCallback"]

STATE_VERSION = 1


class HubPushCallback(pl.Callback):
    """Export the best checkpoint of a single-modality ``EmotionModule`` run and push it, on rank 0, when ``fit`` ends.

    The checkpoint is the ``ModelCheckpoint`` callback's best (else its last, else one saved
    now). When the datamodule is a ``FeatureDataModule``, its feature store gives the detector,
    frame rate, dtype and selector, and its manifest the corpus and split protocol.

    Args:
        repo_id: the Hub repository ``org/name``.
        private: create it private.
        branch: push to this branch (default ``main``).
        export_dir: where the exported folder is written (default: ``<log_dir>/hub_export``,
            else a temporary folder).
        push: False only exports (no upload), e.g. to inspect the card.
        name, description, license, corpus, split_protocol: card fields.
        detector, fps: the face detector and rate when no feature store tells them.
        commit_message: the Hub commit message.

    Use from the CLI: ``--trainer.callbacks+=lightning_emo.hub.callback.HubPushCallback
    --trainer.callbacks.repo_id=org/name``.
    """

    def __init__(self, repo_id: str, private: bool = False, branch: str | None = None,
                 export_dir: str | None = None, push: bool = True, name: str | None = None,
                 description: str | None = None, license: str | None = None, corpus: str | None = None,
                 split_protocol: str | None = None, detector: str | None = None, fps: float | None = None,
                 commit_message: str | None = None):
        super().__init__()
        self.repo_id, self.private, self.branch, self.export_dir, self.push = repo_id, private, branch, export_dir, push
        self.card = {"name": name, "description": description, "license": license, "corpus": corpus,
                     "split_protocol": split_protocol}
        self.detector, self.fps, self.commit_message = detector, fps, commit_message
        self.exported: str | None = None
        self.pushed: dict[str, Any] | None = None

    def _checkpoint(self, trainer: pl.Trainer) -> str:
        cb = trainer.checkpoint_callback
        for attr in ("best_model_path", "last_model_path"):
            path = getattr(cb, attr, "") if cb is not None else ""
            if path and Path(path).is_file():
                return path
        root = Path(trainer.log_dir or trainer.default_root_dir)
        path = root / "checkpoints" / "hub_push.ckpt"
        trainer.save_checkpoint(path)
        return str(path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from lightning_emo.hub.recognizer import Recognizer

        ckpt = self._checkpoint(trainer)
        modality = modality_name(getattr(pl_module, "modality", "audio"))
        kwargs: dict[str, Any] = {k: v for k, v in self.card.items() if v is not None}
        dm = getattr(trainer, "datamodule", None)
        stores = getattr(dm, "stores", None)
        if stores and len(stores) == 1:
            kwargs["features"] = {modality: next(iter(stores.values())).path}
        manifest = getattr(getattr(dm, "manifest", None), "source", None)
        if manifest and Path(manifest).is_file():
            kwargs["manifest"] = manifest
        if self.detector is not None:
            kwargs.update(detector=self.detector, fps=self.fps)
        model = Recognizer.from_checkpoints({modality: ckpt}, **kwargs)
        if self.export_dir:
            out = Path(self.export_dir)
        elif trainer.log_dir:
            out = Path(trainer.log_dir) / "hub_export"
        else:
            out = Path(tempfile.mkdtemp(prefix="lightning_emo_hub_"))
        model.source = {"repo_id": self.repo_id}  # the card's usage snippet names the repository
        model.save_pretrained(out)
        self.exported = str(out)
        log.info("HubPushCallback: exported %s to %s", Path(ckpt).name, out)
        if not self.push:
            return
        from lightning_emo.hub.push import push_folder

        result = push_folder(out, self.repo_id, private=self.private, branch=self.branch,
                             commit_message=self.commit_message)
        self.pushed = {"repo_id": result.repo_id, "commit": result.commit, "revision": result.revision}
        log.info("HubPushCallback: pushed to %s (commit %s, revision %s)", result.url, result.commit, result.revision)

    def state_dict(self) -> dict[str, Any]:
        """``{"version", "exported", "pushed"}``: where the last export went and what was pushed."""
        return {"version": STATE_VERSION, "exported": self.exported, "pushed": self.pushed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"HubPushCallback state version {state_dict.get('version')!r} is not supported")
        self.exported, self.pushed = state_dict.get("exported"), state_dict.get("pushed")
