"""``EmotionModule``: one modality's emotion classifier (a head over features, or over a frozen extractor).

Two ways in:

* **feature store** (the paper's protocol): batches from ``FeatureDataModule``,
  ``{"x": (B, T, D), "lengths": (B,), "mask": (B, T), "label": (B,), "clip_id", "split"}``.
* **end to end** (``extractor="hubert_base"`` etc.): batches of raw clips from
  ``ClipDataModule`` (``waveform (B, S)``, ``waveform_lengths (B,)`` for audio extractors;
  raw ``frames``/``frame_lengths`` for face extractors, which first go through the face detector
  named in ``extractor_options["detector"]``) go through the frozen extractor, then the head.
  With ``unfreeze_after_epochs=N`` the top ``unfreeze_layers`` blocks of the extractor start
  training after ``N`` epochs (:class:`ExtractorFinetuning`, a Lightning ``BaseFinetuning``
  callback): fine-tuning on a new corpus.

Every constructor argument is a plain JSON-able value and ``save_hyperparameters()`` stores
them all: a checkpoint alone rebuilds the model with its class names, head configuration and
extractor spec (``EmotionModule.load_from_checkpoint(path)``).

Metrics (torchmetrics) on every split, logged as ``{split}/{name}``: ``acc`` (micro accuracy =
micro-F1 for single-label data), ``uar`` (macro recall), ``f1_micro``, ``f1_macro``,
``f1_weighted``, ``recall/{class}`` (the paper's per-class accuracy) and the confusion matrix
(an image for TensorBoard / wandb loggers; its values appended to
``{log_dir}/confusion_{split}.jsonl``).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from lightning_emo.models.heads import Head, build_head, reorder_output_rows, valid_frames
from lightning_emo.models.guards import NonFiniteError, non_finite_error  # noqa: F401 (NonFiniteError: re-exported)
from lightning_emo.utils import log

SPLITS = ("train", "val", "test")

# Our epoch metrics are already reduced over processes (torchmetrics) and logged without
# sync_dist on purpose (see EmotionModule._log_metrics); Lightning's advice to add it is moot.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(train|val|test)/",
                        category=PossibleUserWarning)
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = (None, "plateau", "cosine")


def balanced_class_weights(class_counts: list[int] | torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights ``w_c = N / (C * n_c)`` (sklearn's ``"balanced"``); absent classes get 0.

    Args:
        class_counts: ``(C,)`` number of training clips per class.

    Returns:
        ``(C,)`` float32 weights; a perfectly balanced set gives all ones.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class_counts must be C non-negative counts with a positive total, got {class_counts}")
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.float()


def stacked_layers(extractor_spec: dict[str, Any] | None, input_dim: int | None) -> int | None:
    """The number of stacked hidden states in features from an extractor run with ``layers="all"``, else None.

    ``ExtractorSpec.options`` then holds ``layers="all"`` and ``num_layers = L`` and the features
    are ``(B, T, L * H)`` (:mod:`lightning_emo.extractors.ssl`); a store whose dimension differs
    from the spec's (a feature selection) is not stacked any more.
    """
    if not isinstance(extractor_spec, dict) or not isinstance(extractor_spec.get("options"), dict):
        return None
    options = extractor_spec["options"]
    if options.get("layers") != "all" or not options.get("num_layers"):
        return None
    if input_dim is not None and extractor_spec.get("dim") not in (None, input_dim):
        return None
    return int(options["num_layers"])


def _metric_collection(num_classes: int) -> MetricCollection:
    c = num_classes
    return MetricCollection({
        "acc": MulticlassAccuracy(c, average="micro"),
        "uar": MulticlassRecall(c, average="macro"),
        "f1_micro": MulticlassF1Score(c, average="micro"),
        "f1_macro": MulticlassF1Score(c, average="macro"),
        "f1_weighted": MulticlassF1Score(c, average="weighted"),
        "recall": MulticlassRecall(c, average=None),
        "confusion": MulticlassConfusionMatrix(c),
    }, compute_groups=False)


class EmotionModule(pl.LightningModule):
    """A per-modality emotion classifier: ``[frozen extractor ->] head -> logits (B, C)``.

    Args:
        input_dim: feature dimension ``D`` (linked from the data; for end-to-end training it
            comes from the extractor's spec).
        num_classes: ``C`` (linked from the data; default ``len(classes)``).
        classes: the class names in label-index order (linked from the data).
        modality: ``audio`` or ``face`` (linked from the data; the fusion callback reads it).
        extractor_spec: the spec (``ExtractorSpec.to_dict()``) of the extractor that produced
            the features (linked from the data), kept so a checkpoint says what it expects.
        head: a name in :data:`lightning_emo.models.heads.HEADS` (``lstm`` = the paper's).
        hidden_dim: the head's width (paper: 128).
        dropout: before the output layer (paper: 0.5).
        head_options: extra keyword arguments of the head (e.g. ``{"layers": 13}`` for a
            learned weighted sum over stacked SSL layers, ``{"activation": "tanh"}``).
        lr: learning rate.
        weight_decay: L2 weight decay of the output (softmax) layer only (paper: 1e-4).
        optimizer: ``adam`` (default), ``adamw`` or ``sgd`` (momentum 0.9).
        scheduler: ``None``, ``plateau`` (halve the lr when ``val/acc`` stalls) or ``cosine``.
        class_weights: cross-entropy class weights: a list of ``C`` floats, ``"balanced"``
            (inverse training-set frequency, from ``class_counts`` or the datamodule), or ``None``.
        class_counts: training clips per class (linked from the data; used by ``"balanced"``).
        extractor: train end to end on raw clips through this registered extractor.
        extractor_options: its builder's keyword arguments (layer choice, weights path, ...); for
            face extractors also ``detector`` (``mtcnn``, default, or ``none``) and ``detector_options``.
        unfreeze_after_epochs: unfreeze the extractor's top blocks at this epoch (``None`` =
            always frozen).
        unfreeze_layers: how many top blocks to unfreeze (``None`` = the whole extractor).
        extractor_lr: learning rate of the unfrozen extractor blocks (default ``lr / 10``).
        input_norm: standardise each input feature with the training set's mean and standard
            deviation over frames with content, measured once when ``fit`` starts (over at most
            ``input_norm_batches`` training batches) and kept in the checkpoint. Handcrafted
            features (MFCC energies, openSMILE LLDs) span very different scales; without this the
            LSTM saturates. Not applied to end-to-end training (the extractor's output).
        input_norm_batches: how many training batches the statistics are measured on.
    """

    def __init__(
        self,
        input_dim: int | None = None,
        num_classes: int | None = None,
        classes: list[str] | None = None,
        modality: str = "audio",
        extractor_spec: dict[str, Any] | None = None,
        head: str = "lstm",
        hidden_dim: int = 128,
        dropout: float = 0.5,
        head_options: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adam",
        scheduler: str | None = None,
        class_weights: list[float] | str | None = None,
        class_counts: list[int] | None = None,
        extractor: str | None = None,
        extractor_options: dict[str, Any] | None = None,
        unfreeze_after_epochs: int | None = None,
        unfreeze_layers: int | None = None,
        extractor_lr: float | None = None,
        input_norm: bool = True,
        input_norm_batches: int = 200,
    ):
        super().__init__()
        self.save_hyperparameters()
        if classes is not None:
            classes = [str(c) for c in classes]
            if num_classes is not None and num_classes != len(classes):
                raise ValueError(f"num_classes={num_classes} but {len(classes)} class names: {classes}")
            num_classes = len(classes)
        if num_classes is None:
            raise ValueError("EmotionModule needs num_classes or classes (the CLI links them from the data)")
        self.num_classes = int(num_classes)
        self.classes = classes or [str(i) for i in range(self.num_classes)]
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(map(str, SCHEDULERS))}")

        self.extractor: nn.Module | None = None
        self.face_detector: nn.Module | None = None
        if extractor is not None:
            from lightning_emo.extractors.extract import build_for_extraction

            options = dict(extractor_options or {})
            detector = options.pop("detector", "mtcnn")
            detector_options = dict(options.pop("detector_options", None) or {})
            self.extractor = build_for_extraction(extractor, options)  # frozen: eval, no gradients
            spec = self.extractor.spec
            if spec.modality == "face":
                from lightning_emo.extractors.face_detect import build_face_detector

                self.face_detector = build_face_detector(detector, crop_size=spec.crop_size, **detector_options)
                self.face_detector.requires_grad_(False)
            modality = spec.modality
            extractor_spec = spec.to_dict()
            if input_dim is not None and input_dim != spec.dim:
                raise ValueError(f"input_dim={input_dim} but extractor {extractor!r} gives {spec.dim}-d features")
            input_dim = spec.dim
        elif unfreeze_after_epochs is not None:
            raise ValueError("unfreeze_after_epochs needs an extractor (end-to-end training on raw clips)")
        if input_dim is None:
            raise ValueError("EmotionModule needs input_dim (the CLI links it from the data) or an extractor")
        self.input_dim = int(input_dim)
        self.modality = modality
        self.extractor_spec = extractor_spec

        head_options = dict(head_options or {})
        layers = stacked_layers(extractor_spec, self.input_dim)
        if layers and "layers" not in head_options:
            head_options["layers"] = layers  # learned weighted sum over the stacked SSL layers
        self.head: Head = build_head(head, self.input_dim, self.num_classes, hidden_dim, dropout, **head_options)

        weights = torch.ones(self.num_classes)
        if isinstance(class_weights, str):
            if class_weights != "balanced":
                raise ValueError(f"class_weights must be a list of {self.num_classes} floats, 'balanced' or None; "
                                 f"got {class_weights!r}")
            if class_counts is not None:
                weights = self._check_counts_weights(class_counts)
        elif class_weights is not None:
            if len(class_weights) != self.num_classes:
                raise ValueError(f"class_weights has {len(class_weights)} values for {self.num_classes} classes")
            weights = torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weight", weights)
        # feature standardisation (identity until measured on the training set; saved in checkpoints)
        self.register_buffer("input_mean", torch.zeros(self.input_dim))
        self.register_buffer("input_std", torch.ones(self.input_dim))
        self.register_buffer("input_norm_frames", torch.zeros((), dtype=torch.long))

        # attribute names, not a ModuleDict keyed "train": nn.Module.train would clash
        self.train_metrics = _metric_collection(self.num_classes)
        self.val_metrics = _metric_collection(self.num_classes)
        self.test_metrics = _metric_collection(self.num_classes)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()

    def _check_counts_weights(self, class_counts) -> torch.Tensor:
        if len(class_counts) != self.num_classes:
            raise ValueError(f"class_counts has {len(class_counts)} values for {self.num_classes} classes")
        return balanced_class_weights(class_counts)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self._match_data_classes(dm)
        if stage == "fit" and self.hparams.class_weights == "balanced" and self.hparams.class_counts is None:
            counts = _class_counts(dm, self.classes)
            if counts is None:
                raise ValueError("class_weights='balanced' needs class counts: the datamodule has no class_counts "
                                 "(nor a manifest); pass class_weights as a list instead")
            self.class_weight.copy_(self._check_counts_weights(counts))
        if (stage == "fit" and self.hparams.input_norm and self.extractor is None and dm is not None
                and int(self.input_norm_frames) == 0):
            self.fit_input_norm(dm.train_dataloader(), self.hparams.input_norm_batches)
        if self.extractor is not None and dm is not None:
            spec = self.extractor.spec
            rate = getattr(dm, "sample_rate", None) or getattr(dm, "dataset_options", {}).get("sample_rate")
            if spec.modality == "audio" and rate is not None and spec.sample_rate and int(rate) != spec.sample_rate:
                raise ValueError(f"extractor {spec.name!r} expects audio at {spec.sample_rate} Hz but the datamodule "
                                 f"gives {rate} Hz: set the datamodule's sample_rate to {spec.sample_rate}")

    def _match_data_classes(self, dm: Any) -> None:
        """Put the outputs in the datamodule's class order (labels index it), or refuse other classes.

        A model loaded from a checkpoint (``load_from_checkpoint``) keeps its own class order; a
        datamodule whose manifest lists the same classes in another order gets the output layer
        reordered by name, never probabilities written under the wrong names.
        """
        data_classes = getattr(dm, "classes", None)
        if not data_classes or self._trainer is None:
            return
        from lightning_emo.data.checks import match_classes

        manifest = getattr(getattr(dm, "manifest", None), "source", None) or type(dm).__name__
        index = match_classes(self.classes, data_classes, _model_source(self), manifest, what="model vs data")
        if index is not None:
            self._reorder_classes(index)
            log.info("model classes reordered by name to the data's order: %s", ", ".join(self.classes))

    @torch.no_grad()
    def _reorder_classes(self, index: list[int]) -> None:
        state = {k: v for k, v in self.state_dict().items() if k.startswith("head.output.")}
        reorder_output_rows(state, index)
        self.load_state_dict(state, strict=False)
        self.class_weight.copy_(self.class_weight[torch.as_tensor(index)])
        self.classes = [self.classes[i] for i in index]
        self.hparams["classes"] = list(self.classes)
        if self.hparams.get("class_counts") is not None:
            self.hparams["class_counts"] = [self.hparams["class_counts"][i] for i in index]

    @torch.no_grad()
    def fit_input_norm(self, batches, max_batches: int | None = None) -> None:
        """Measure the per-feature mean and standard deviation over the frames with content of ``batches``.

        Args:
            batches: an iterable of batches (a training DataLoader); ``x (B, T, D)`` with ``lengths``/``mask``.
            max_batches: stop after this many batches (``None`` = all).

        Constant features get a standard deviation of 1 (they are only centred).
        """
        total = torch.zeros(self.input_dim, dtype=torch.float64)
        squares = torch.zeros(self.input_dim, dtype=torch.float64)
        count = 0
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, lengths, mask = self.features(batch)
            if x.dim() == 4:
                x = x.flatten(2)
            frames = x[valid_frames(x, lengths, mask)].detach().to("cpu", torch.float64)
            total += frames.sum(0)
            squares += (frames * frames).sum(0)
            count += frames.shape[0]
        if count == 0:
            raise ValueError("input_norm: the training batches hold no frame with content")
        mean = total / count
        std = (squares / count - mean * mean).clamp(min=0).sqrt()
        std = torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))
        self.input_mean.copy_(mean.float())
        self.input_std.copy_(std.float())
        self.input_norm_frames.fill_(count)

    def configure_callbacks(self):
        if self.extractor is None or self.hparams.unfreeze_after_epochs is None:
            return []
        return [ExtractorFinetuning(self.hparams.unfreeze_after_epochs, self.hparams.unfreeze_layers,
                                    self.hparams.extractor_lr)]

    def train(self, mode: bool = True):
        """Train mode everywhere except the frozen parts of the extractor (no dropout / BN updates there)."""
        super().train(mode)
        if self.extractor is not None:
            _set_train_where_trainable(self.extractor, mode, parent_trainable=False)
        return self

    # ---------------------------------------------------------------- forward
    def features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A batch -> ``(x (B, T, D), lengths (B,), mask (B, T) | None)``, running the extractor if any."""
        if self.extractor is not None:
            return self._extract(batch)
        part = batch
        if "x" not in part and isinstance(part.get(self.modality), dict):
            part = part[self.modality]  # multi-modality batch: {"audio": {...}, "face": {...}}
        if "x" not in part:
            raise KeyError(f"batch has no features 'x' (keys: {sorted(batch)}); a feature-store batch is expected "
                           "(FeatureDataModule), or set extractor=... to train on raw clips")
        x = part["x"]
        lengths = part.get("lengths")
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return x, lengths, part.get("mask")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``x (B, T, D)`` (or ``(B, T, L, H)``) with the training-set statistics (identity before)."""
        if not self.hparams.input_norm or int(self.input_norm_frames) == 0:
            return x
        shape = x.shape
        return ((x.reshape(*shape[:2], -1) - self.input_mean) / self.input_std).reshape(shape)

    def _extract(self, batch: dict[str, Any]):
        spec = self.extractor.spec
        if spec.modality == "audio":
            if "waveform" not in batch:
                raise KeyError(f"extractor {spec.name!r} needs raw audio: batch key 'waveform' (B, S) missing "
                               f"(keys: {sorted(batch)})")
            wav = batch["waveform"]
            lengths = batch.get("waveform_lengths")
            if lengths is None:
                lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
            x, lengths = self.extractor(wav, lengths)
            return x, lengths, None
        if "crops" in batch:  # already cropped faces (B, N, 3, S, S) with their face mask
            crops, mask = batch["crops"], batch.get("face")
            lengths = batch.get("crop_lengths", batch.get("frame_lengths"))
        elif "frames" in batch:  # raw frames: detect and track the main face first (never trained)
            lengths = batch.get("frame_lengths")
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                faces = self.face_detector.crop_batch(batch["frames"], lengths, crop_size=spec.crop_size)
            crops, mask = faces.crops, faces.mask
            if lengths is None:
                lengths = mask.new_tensor([mask.shape[1]] * mask.shape[0], dtype=torch.long)
        else:
            raise KeyError(f"face extractor {spec.name!r} needs 'frames' (raw clips) or 'crops' (face crops) in "
                           f"the batch (keys: {sorted(batch)})")
        if lengths is None:
            lengths = torch.full((crops.shape[0],), crops.shape[1], dtype=torch.long, device=crops.device)
        lengths = lengths.to(crops.device)
        x, lengths = self.extractor(crops, lengths, mask=mask)
        return x, lengths, mask

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Features ``x (B, T, D)``, ``lengths (B,)``, ``mask (B, T)`` -> logits ``(B, C)`` (standardised first)."""
        return self.head(self.normalize(x), lengths, mask)

    def _logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``(logits (B, C), seen (B,) bool)``; ``seen`` False = the clip had no valid frame."""
        x, lengths, mask = self.features(batch)
        seen = valid_frames(x, lengths, mask).any(dim=1)
        return self(x, lengths, mask), seen

    def _labels(self, batch: dict[str, Any]) -> torch.Tensor:
        label = batch["label"]
        return label if torch.is_tensor(label) else torch.as_tensor(label, device=self.device)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, Any], split: str) -> dict[str, torch.Tensor]:
        logits, seen = self._logits(batch)
        label = self._labels(batch)
        use = seen & (label >= 0)
        n = int(use.sum())
        if n:
            loss = F.cross_entropy(logits[use], label[use], weight=self.class_weight)
            getattr(self, f"{split}_metrics").update(logits[use].detach(), label[use])
            getattr(self, f"{split}_loss").update(loss.detach(), weight=n)
        else:  # keeps the graph (DDP needs every rank to backward) without a NaN
            loss = logits.sum() * 0.0
        if not torch.isfinite(loss):  # checked on every split: a model that outputs NaN is never checkpointed
            self._non_finite(batch, f"the {'training' if split == 'train' else split} loss", float(loss.detach()))
        if split == "train":  # this process's loss, for the progress bar (the epoch mean is synchronised)
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=max(n, 1))
        return {"loss": loss, "probs": logits[use].detach().softmax(-1), "label": label[use]}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """-> ``{"probs": (B', C), "label": (B',)}`` over the clips with frames (what fusion callbacks read)."""
        out = self._step(batch, "val")
        return {"probs": out["probs"], "label": out["label"]}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        out = self._step(batch, "test")
        return {"probs": out["probs"], "label": out["label"]}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """-> ``{"clip_id": [B], "split": [B], "label": (B,), "probs": (B, C)}``, NaN rows for unseen clips."""
        logits, seen = self._logits(batch)
        probs = logits.float().softmax(-1)
        bad = seen & ~torch.isfinite(probs).all(dim=1)
        if bad.any():  # a NaN row would be written as "no input", a wrong result
            self._non_finite(batch, "the posteriors", float("nan"), rows=bad)
        probs = torch.where(seen[:, None], probs, torch.full_like(probs, float("nan")))
        b = probs.shape[0]
        return {"clip_id": list(batch.get("clip_id", [""] * b)), "split": list(batch.get("split", [""] * b)),
                "label": self._labels(batch).detach().cpu() if "label" in batch else torch.full((b,), -1),
                "probs": probs.detach().cpu()}

    def _non_finite(self, batch: dict[str, Any], what: str, value: float, rows: torch.Tensor | None = None) -> None:
        """Stop with a :class:`NonFiniteError` (raised inside the step: no checkpoint callback saves that epoch)."""
        with torch.no_grad():
            x = self.features(batch)[0]
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        at = f"epoch {self.current_epoch}, step {self.global_step}" if self._trainer is not None else "a batch"
        raise non_finite_error(batch, x, what, value, at, getattr(getattr(dm, "manifest", None), "source", None),
                               rows)

    # --------------------------------------------------------------- metrics
    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        """Compute the split's metrics over all processes and log them.

        Every collective operation of the epoch end happens here, in the same order on every rank
        (torchmetrics' own synchronisation); the values are then logged without ``sync_dist``.
        Lightning would otherwise reduce ``sync_dist`` values lazily whenever a callback asks for
        metrics, and a progress bar asks on rank 0 only: the ranks' collectives would interleave
        differently and DDP would hang.
        """
        metrics: MetricCollection = getattr(self, f"{split}_metrics")
        loss_metric: MeanMetric = getattr(self, f"{split}_loss")
        updated = torch.tensor(float(metrics["acc"].update_called), device=self.device)
        if self.trainer.world_size > 1:  # agree on whether any rank saw a clip (no rank skips a collective)
            updated = self.trainer.strategy.reduce(updated, reduce_op="sum")
        if float(updated) == 0:  # e.g. no validation clips
            metrics.reset()
            loss_metric.reset()
            return
        values = metrics.compute()  # synchronised across processes by torchmetrics
        loss = loss_metric.compute()
        metrics.reset()
        loss_metric.reset()
        scalars = {f"{split}/{k}": v for k, v in values.items() if k not in ("acc", "recall", "confusion")}
        scalars.update({f"{split}/recall/{c}": v for c, v in zip(self.classes, values["recall"])})
        self.log_dict(scalars, sync_dist=False)
        self.log(f"{split}/loss", loss, prog_bar=split == "val", sync_dist=False)
        self.log(f"{split}/acc", values["acc"], prog_bar=split != "train", sync_dist=False)
        if split != "train" and not self.trainer.sanity_checking:
            self._save_confusion(split, values["confusion"])

    def _save_confusion(self, split: str, matrix: torch.Tensor) -> None:
        """Append the matrix to ``{log_dir}/confusion_{split}.jsonl`` and log it as an image where possible."""
        trainer = self.trainer
        if trainer.fast_dev_run:
            return
        log_dir = trainer.log_dir  # a collective: called on every rank
        if not trainer.is_global_zero:
            return
        cm = matrix.detach().cpu().long().numpy()
        if isinstance(log_dir, (str, os.PathLike)) and self.loggers:  # no logger, no run directory to write in
            os.makedirs(log_dir, exist_ok=True)
            record = {"epoch": self.current_epoch, "step": self.global_step, "classes": self.classes,
                      "rows": "true", "cols": "predicted", "matrix": cm.tolist()}
            with open(os.path.join(log_dir, f"confusion_{split}.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        image_loggers = [lg for lg in self.loggers
                         if isinstance(lg, TensorBoardLogger) or hasattr(type(lg), "log_image")]
        if not image_loggers:
            return
        image = confusion_image(matrix, self.classes, f"{split} confusion (epoch {self.current_epoch})")
        for lg in image_loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_image(f"{split}/confusion", image, self.global_step, dataformats="HWC")
            else:  # wandb (and any logger with log_image(key, images))
                lg.log_image(key=f"{split}/confusion", images=[image])

    # ------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        """Adam over the head; the output layer alone gets ``weight_decay`` (the paper's softmax-layer decay).

        The extractor's parameters are left out: :class:`ExtractorFinetuning` adds its unfrozen
        blocks as a new parameter group when their epoch comes.
        """
        hp = self.hparams
        output = self.head.output_parameters()
        output_ids = {id(p) for p in output}
        extractor_ids = {id(p) for p in self.extractor.parameters()} if self.extractor is not None else set()
        rest = [p for p in self.parameters()
                if p.requires_grad and id(p) not in output_ids and id(p) not in extractor_ids]
        groups = [{"params": rest, "weight_decay": 0.0, "name": "head"},
                  {"params": output, "weight_decay": hp.weight_decay, "name": "output"}]
        kwargs = {"lr": hp.lr}
        if hp.optimizer == "sgd":
            kwargs["momentum"] = 0.9
        opt = OPTIMIZERS[hp.optimizer](groups, **kwargs)
        if hp.scheduler is None:
            return opt
        if hp.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/acc"}}
        epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 100
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)}

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave a never-unfrozen extractor's weights out of the checkpoint (its spec rebuilds it)."""
        if self.extractor is not None and self.hparams.unfreeze_after_epochs is None:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("extractor.")]:
                del state[key]
            checkpoint["extractor_weights_omitted"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Match the checkpoint's classes to this module's by name (reordering its output rows), or refuse."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("classes")
        if saved is not None:
            from lightning_emo.data.checks import match_classes

            fitting = self._trainer is not None and self.trainer.state.fn == "fit"
            ckpt = (self.trainer.ckpt_path if self._trainer is not None else None) or "the checkpoint"
            index = match_classes(saved, self.classes, ckpt, _model_source(self, data=True),
                                  reorder=not fitting, what="resuming training" if fitting else "checkpoint vs data")
            if index is not None:
                reorder_output_rows(checkpoint["state_dict"], index)
                if "class_weight" in checkpoint["state_dict"]:
                    checkpoint["state_dict"]["class_weight"] = checkpoint["state_dict"]["class_weight"][
                        torch.as_tensor(index)]
                checkpoint["hyper_parameters"]["classes"] = list(self.classes)
                log.info("checkpoint %s: output classes reordered by name to %s", ckpt, ", ".join(self.classes))
        if checkpoint.get("extractor_weights_omitted") and self.extractor is not None:
            checkpoint["state_dict"].update({f"extractor.{k}": v for k, v in self.extractor.state_dict().items()})


def _model_source(module: EmotionModule, data: bool = False) -> str:
    """Where a module's class list came from, for messages: its checkpoint, else the data it was linked to."""
    trainer = module._trainer
    if not data:
        return "the model's classes (its checkpoint, or model.init_args.classes)"
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    source = getattr(getattr(dm, "manifest", None), "source", None)
    return str(source) if source else "the model's class list (model.classes)"


def _class_counts(dm: Any, classes: list[str]) -> list[int] | None:
    """Training clips per class from a datamodule: its ``class_counts``, else its manifest's train split."""
    counts = getattr(dm, "class_counts", None)
    if counts is not None:
        return [int(c) for c in counts]
    manifest = getattr(dm, "manifest", None)
    clips = getattr(manifest, "clips", None)
    if not clips:
        return None
    train = [c.label for c in clips if c.split == "train"]
    return [train.count(c) for c in classes]


def _set_train_where_trainable(module: nn.Module, mode: bool, parent_trainable: bool) -> None:
    """Train mode only for submodules with trainable parameters (parameter-less ones follow their parent)."""
    params = list(module.parameters())
    trainable = any(p.requires_grad for p in params) if params else parent_trainable
    module.training = mode and trainable
    for child in module.children():
        _set_train_where_trainable(child, mode, trainable)


def top_blocks(extractor: nn.Module, n: int | None) -> list[nn.Module]:
    """The extractor's top ``n`` blocks, nearest the output (``None`` = the whole extractor).

    An extractor may say what its blocks are with a ``finetune_blocks()`` method (bottom to top).
    Otherwise the blocks are the entries of its last outermost ``nn.ModuleList``/``nn.Sequential``
    with several parameterised entries and at least a quarter of the largest such container's
    parameters, in registration order: the transformer layers of a
    wav2vec 2.0 / HuBERT encoder (after its convolutional front end), the stages of a timm CNN,
    the last repeated block group of facenet's InceptionResnetV1.
    """
    if n is None:
        return [extractor]
    if n < 1:
        raise ValueError(f"unfreeze_layers must be >= 1 or None (all), got {n}")
    if hasattr(extractor, "finetune_blocks"):
        blocks = list(extractor.finetune_blocks())
    else:
        candidates: list[tuple[str, nn.Module]] = []
        for name, module in extractor.named_modules():
            if not isinstance(module, (nn.ModuleList, nn.Sequential)):
                continue
            if sum(1 for child in module.children() if any(True for _ in child.parameters())) < 2:
                continue
            if any(name.startswith(outer + ".") for outer, _ in candidates):
                continue  # nested inside a container already found
            candidates.append((name, module))
        if not candidates:
            raise ValueError(f"cannot find the blocks of extractor {type(extractor).__name__}; give it a "
                             "finetune_blocks() method or use unfreeze_layers=None to unfreeze all of it")
        sizes = [sum(p.numel() for p in module.parameters()) for _, module in candidates]
        # the last one that holds a real share of the network (not a small branch inside a block)
        blocks = list([m for (_, m), size in zip(candidates, sizes) if size >= 0.25 * max(sizes)][-1])
    return blocks[-n:]


class ExtractorFinetuning(BaseFinetuning):
    """Keep the extractor frozen, then unfreeze its top blocks at a given epoch.

    Args:
        unfreeze_at_epoch: the epoch (0-based) at which the blocks start training.
        layers: how many top blocks (``None`` = the whole extractor), see :func:`top_blocks`.
        lr: their learning rate (default: the head's lr / 10).
    """

    def __init__(self, unfreeze_at_epoch: int, layers: int | None = None, lr: float | None = None):
        super().__init__()
        if unfreeze_at_epoch < 0:
            raise ValueError(f"unfreeze_after_epochs must be >= 0, got {unfreeze_at_epoch}")
        self.unfreeze_at_epoch, self.layers, self.lr = unfreeze_at_epoch, layers, lr

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.extractor, train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        if epoch < self.unfreeze_at_epoch:
            return
        blocks = top_blocks(pl_module.extractor, self.layers)
        if epoch > self.unfreeze_at_epoch:
            if not any(p.requires_grad for b in blocks for p in b.parameters()):
                # a run resumed after the unfreezing epoch: Lightning restored the blocks' parameter group
                # (BaseFinetuning.on_fit_start) but setup() froze them again
                self.make_trainable(blocks)
                pl_module.train(pl_module.training)
            return
        lr = self.lr if self.lr is not None else optimizer.param_groups[0]["lr"] / 10
        self.unfreeze_and_add_param_group(blocks, optimizer, lr=lr, train_bn=True)
        pl_module.train(pl_module.training)  # unfrozen blocks leave eval mode
        n = sum(p.numel() for b in blocks for p in b.parameters())
        log.info("epoch %d: unfroze %d extractor block(s) (%d parameters), lr %g", epoch, len(blocks), n, lr)


def confusion_image(matrix: torch.Tensor, classes: list[str], title: str = "") -> np.ndarray:
    """Render a confusion matrix (rows true, columns predicted) -> ``(H, W, 3)`` uint8 RGB.

    Drawn with torchmetrics' ``MulticlassConfusionMatrix.plot`` on a pyplot-free figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = 2.5 + 0.6 * len(classes)
    fig = Figure(figsize=(size, size), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    MulticlassConfusionMatrix(len(classes)).plot(val=matrix.detach().cpu(), ax=ax, labels=list(classes))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
