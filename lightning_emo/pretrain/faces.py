"""``FaceCNNPretraining``: the paper's face CNN trained to recognise identities (its source task).

The network is :class:`lightning_emo.extractors.face_cnn.FaceCNN` itself (5 convolutions, 3
fully connected layers, 100x100 input); after training, :func:`lightning_emo.pretrain.export.
export_face_cnn` writes it with :func:`~lightning_emo.extractors.face_cnn.save_face_cnn`, and
the ``face_cnn`` extractor reads its pool5 (9216-d) features from that file.

The number of identities comes from the data: leave ``identities`` unset and the module takes
them from the datamodule (:class:`~lightning_emo.pretrain.face_data.IdentityFolderDataModule`)
when training starts, and stores them in its hyper-parameters, so a checkpoint alone rebuilds
the network (``FaceCNNPretraining.load_from_checkpoint(path)``).

Logged (``{split}/{name}``): ``loss`` (cross-entropy), ``acc`` (top-1) and ``acc5`` (top-5,
when there are more than 5 identities).
"""

from __future__ import annotations

from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_emo.extractors.face_cnn import FaceCNN
from lightning_emo.pretrain import _optim


class FaceCNNPretraining(pl.LightningModule):
    """Identity classification with :class:`FaceCNN` on ``(B, 3, 100, 100)`` crops in [0, 1].

    Batches: ``{"image": (B, 3, 100, 100) float32 in [0, 1], "label": (B,) long}``.

    Args:
        identities: the identity names in label order (default: the datamodule's).
        fc_dims, norm, dropout, mean, std: :class:`FaceCNN`'s (fc6/fc7 widths, normalisation,
            dropout, input standardisation); they travel into the exported file.
        optimizer: ``sgd`` (momentum ``momentum``, AlexNet's), ``adamw`` or ``adam``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 decay of the weights (biases and norm parameters are not decayed).
        scheduler: ``None``, ``cosine`` (to 0 over ``max_epochs``) or ``step`` (x0.1 every
            third of ``max_epochs``).
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        identities: list[str] | None = None,
        fc_dims: Sequence[int] = (4096, 4096),
        norm: str = "batch",
        dropout: float = 0.5,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: str | None = "cosine",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        _optim.check_choices(optimizer, scheduler)
        self.save_hyperparameters()
        self.cnn: FaceCNN | None = None
        if identities is not None:
            self._build(list(identities))

    # ------------------------------------------------------------------ building
    def _build(self, identities: list[str]) -> None:
        identities = [str(i) for i in identities]
        if len(identities) < 2:
            raise ValueError(f"identity classification needs at least 2 identities, got {identities}")
        if len(set(identities)) != len(identities):
            raise ValueError("identity names must be unique")
        hp = self.hparams
        self.cnn = FaceCNN(num_identities=len(identities), fc_dims=tuple(hp.fc_dims), norm=hp.norm,
                           dropout=hp.dropout, mean=tuple(hp.mean), std=tuple(hp.std))
        self.identities = identities
        # stored so that the checkpoint alone rebuilds the network
        self.hparams["identities"] = identities
        n = len(identities)
        self.train_acc = MulticlassAccuracy(n, average="micro")
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.test_acc = MulticlassAccuracy(n, average="micro")
        self.top5 = n > 5
        if self.top5:
            self.val_acc5 = MulticlassAccuracy(n, top_k=5, average="micro")
            self.test_acc5 = MulticlassAccuracy(n, top_k=5, average="micro")

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        found = getattr(dm, "identities", None)
        if self.cnn is None:
            if found is None:
                raise ValueError("FaceCNNPretraining needs its identities: give identities=[...] or train with a "
                                 "datamodule that has an `identities` list (IdentityFolderDataModule)")
            self._build(list(found))
        elif found is not None and list(found) != self.identities:
            raise ValueError(f"the data has {len(found)} identities ({_preview(found)}) but the model was built "
                             f"for {len(self.identities)} ({_preview(self.identities)})")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("identities")
        if saved is not None and self.cnn is not None and list(saved) != self.identities:
            raise ValueError(f"checkpoint was trained on {len(saved)} identities ({_preview(saved)}), this model "
                             f"has {len(self.identities)} ({_preview(self.identities)}): the data must be the same "
                             "identity folder")

    # ------------------------------------------------------------------ steps
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 100, 100)`` in [0, 1] -> identity logits ``(B, num_identities)``."""
        if self.cnn is None:
            raise RuntimeError("FaceCNNPretraining is not built yet: give identities=[...] or call trainer.fit")
        return self.cnn(images)

    def _step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        n = labels.shape[0]
        self.log(f"{split}/loss", loss, on_step=split == "train", on_epoch=True, prog_bar=True, batch_size=n,
                 sync_dist=True)
        acc = {"train": self.train_acc, "val": self.val_acc, "test": self.test_acc}[split]
        acc(logits.detach(), labels)
        self.log(f"{split}/acc", acc, on_step=False, on_epoch=True, prog_bar=split != "train", batch_size=n)
        if self.top5 and split != "train":
            acc5 = self.val_acc5 if split == "val" else self.test_acc5
            acc5(logits.detach(), labels)
            self.log(f"{split}/acc5", acc5, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Identity posteriors ``(B, num_identities)`` with the image paths."""
        return {"path": batch.get("path"), "probs": self(batch["image"]).softmax(-1)}

    def configure_optimizers(self):
        hp = self.hparams
        return _optim.configure(self, hp.optimizer, hp.lr, hp.weight_decay, hp.momentum, hp.scheduler)


def _preview(names: Sequence[str], n: int = 4) -> str:
    names = list(names)
    return ", ".join(map(str, names[:n])) + (", ..." if len(names) > n else "")


__all__ = ["FaceCNNPretraining"]
