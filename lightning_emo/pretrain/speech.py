"""``SpeechDNNPretraining``: the paper's speech DNN trained as a CTC acoustic model (its source task, ASR).

The network is :class:`lightning_emo.extractors.speech_dnn.SpeechDNN` itself: waveforms go
through its own MFCC front-end (13 MFCC + deltas + delta-deltas,
:class:`~lightning_emo.extractors.audio.MFCCFrontEnd`, the ``mfcc`` extractor's code), frames
are spliced with +-``context`` neighbours
(:func:`~lightning_emo.extractors.speech_dnn.stack_context`), and the six hidden layers feed
an output layer over the vocabulary plus the CTC blank. Training uses ``nn.CTCLoss`` over
characters or tokens, so no frame alignment (no HMM system) is needed; evaluation decodes
greedily (best path, repeats collapsed, blanks removed) and reports the character error rate
(``char`` units) or token error rate (``token`` units) with torchmetrics.

The global input normalisation the network stores (``input_mean``/``input_std``) is estimated
from the first ``norm_batches`` training batches when training starts (summed over all
ranks, so every process gets the same statistics).

Checkpoints carry the ``SpeechDNN`` config as hyper-parameter ``speech_dnn`` and the network
under ``dnn.*``: :func:`~lightning_emo.extractors.speech_dnn.load_speech_dnn` reads them
directly, and :func:`lightning_emo.pretrain.export.export_speech_dnn` writes the extractor's
safetensors file. The vocabulary (JSON) is the hyper-parameter ``vocabulary``.

Logged: ``train/loss``, ``val/loss``, ``val/cer`` (``char``) or ``val/ter`` (``token``), and
the same under ``test/``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from lightning_emo.extractors.speech_dnn import SpeechDNN, stack_context
from lightning_emo.pretrain import _optim
from lightning_emo.pretrain.asr_data import Vocabulary
from lightning_emo.utils import log



def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: per-frame argmax, repeats collapsed, blanks removed.

    Args:
        log_probs: ``(B, T, V)`` frame scores (log-probabilities or logits).
        lengths: ``(B,)`` valid frames per sequence.
        blank: the blank index.

    Returns:
        ``B`` lists of unit indices.
    """
    best = log_probs.argmax(-1).cpu()  # (B, T)
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = best[b, :n]
        if n == 0:
            out.append([])
            continue
        keep = torch.ones(n, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]
        out.append([int(i) for i in path[keep & (path != blank)]])
    return out


class SpeechDNNPretraining(pl.LightningModule):
    """CTC training of :class:`SpeechDNN` on batches of :class:`~lightning_emo.pretrain.asr_data.ASRDataModule`.

    Batches: ``{"waveform": (B, S) float32 at 16 kHz, "waveform_lengths": (B,), "targets":
    (B, L) long, "target_lengths": (B,), "transcript": list[str]}``.

    Args:
        vocabulary: the output units (``Vocabulary.to_dict()``, or the path of a vocabulary
            JSON); default: the datamodule's, taken when training starts and stored in the
            hyper-parameters.
        context: frames spliced on each side (paper-era default 5: 11 frames).
        hidden_dim: units per hidden layer (paper: 1024).
        num_hidden: hidden layers (paper: 6).
        bottleneck: units of the last hidden layer for the bottleneck variant (paper: 60).
        activation: ``sigmoid`` or ``relu``.
        linear_bottleneck: no activation after the bottleneck.
        frontend: :class:`~lightning_emo.extractors.audio.MFCCFrontEnd` options (default: 13
            MFCC + 2 derivative orders, per-utterance mean normalisation).
        optimizer: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9).
        lr: learning rate.
        weight_decay: L2 decay of the weight matrices.
        scheduler: ``None``, ``cosine`` or ``step`` (per epoch over ``max_epochs``).
        norm_batches: training batches used to estimate the input normalisation (0: none).
        log_examples: decoded validation examples written to the log each epoch.
    """

    def __init__(
        self,
        vocabulary: dict[str, Any] | str | None = None,
        context: int = 5,
        hidden_dim: int = 1024,
        num_hidden: int = 6,
        bottleneck: int | None = None,
        activation: str = "sigmoid",
        linear_bottleneck: bool = False,
        frontend: dict[str, Any] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str | None = None,
        norm_batches: int = 20,
        log_examples: int = 3,
    ):
        super().__init__()
        _optim.check_choices(optimizer, scheduler)
        self.save_hyperparameters()
        self.dnn: SpeechDNN | None = None
        self.vocabulary: Vocabulary | None = None
        self.ctc = nn.CTCLoss(blank=0, reduction="mean", zero_infinity=True)
        self._examples: list[tuple[str, str]] = []
        self._too_short = 0
        if vocabulary is not None:
            self._build(Vocabulary.load(vocabulary) if isinstance(vocabulary, str)
                        else Vocabulary.from_dict(vocabulary, "vocabulary"))

    # ------------------------------------------------------------------ building
    def _build(self, vocabulary: Vocabulary) -> None:
        hp = self.hparams
        self.vocabulary = vocabulary
        self.dnn = SpeechDNN(num_outputs=len(vocabulary), context=hp.context, hidden_dim=hp.hidden_dim,
                             num_hidden=hp.num_hidden, bottleneck=hp.bottleneck, activation=hp.activation,
                             linear_bottleneck=hp.linear_bottleneck, frontend=hp.frontend)
        self.frontend = self.dnn.make_frontend()
        # The checkpoint alone rebuilds the network (load_speech_dnn reads `speech_dnn`) and decodes its outputs.
        self.hparams["vocabulary"] = vocabulary.to_dict()
        self.hparams["speech_dnn"] = self.dnn.config
        self.metric_name = "ter" if vocabulary.unit == "token" else "cer"
        self.val_error = vocabulary.error_rate_metric()
        self.test_error = vocabulary.error_rate_metric()

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        found: Vocabulary | None = getattr(dm, "vocabulary", None)
        if self.vocabulary is None:
            if found is None:
                raise ValueError("SpeechDNNPretraining needs its vocabulary: give vocabulary=FILE.json or train with "
                                 "a datamodule that has a `vocabulary` (ASRDataModule)")
            self._build(found)
        elif dm is not None and found is not None and found.to_dict() != self.vocabulary.to_dict():
            # The model's units decide how transcripts are encoded: datasets are built after setup.
            log.info("SpeechDNNPretraining: using the model's vocabulary (%d units) instead of the one built from "
                     "the data (%d units)", len(self.vocabulary), len(found))
            dm.vocabulary = self.vocabulary

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("vocabulary")
        if saved is not None and self.vocabulary is not None and saved != self.vocabulary.to_dict():
            raise ValueError(f"the checkpoint's vocabulary ({len(saved.get('tokens', [])) + 2} units) differs from "
                             f"this model's ({len(self.vocabulary)} units, built from the data): pass the "
                             "checkpoint's vocabulary (export it with python -m lightning_emo.pretrain.export) as "
                             "data.vocabulary or model.vocabulary")

    # ------------------------------------------------------------------ forward
    def features(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` waveforms -> spliced MFCC frames ``(B, T, input_dim)`` and frame counts ``(B,)``."""
        self._check_built()
        # Mel energies and their logs in float32 even under mixed precision.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            feats, frames = self.frontend(waveform.float(), lengths)
        return stack_context(feats, frames, self.dnn.context), frames

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` waveforms at 16 kHz, ``(B,)`` sample counts -> log-probabilities ``(B, T, V)``, frames ``(B,)``.

        ``V = len(vocabulary)`` (blank = 0, unknown = 1, then the units).
        """
        x, frames = self.features(waveform, lengths)
        return self.dnn(x).float().log_softmax(-1), frames

    def _check_built(self) -> None:
        if self.dnn is None:
            raise RuntimeError("SpeechDNNPretraining is not built yet: give vocabulary=... or call trainer.fit")

    # ------------------------------------------------------------------ input statistics
    def on_train_start(self) -> None:
        # here, not in on_fit_start: the train dataloader (with its distributed sampler) exists now
        untouched = bool((self.dnn.input_mean == 0).all() and (self.dnn.input_std == 1).all())
        if self.hparams.norm_batches > 0 and untouched:
            self.estimate_input_normalization(self.trainer.train_dataloader, self.hparams.norm_batches)

    @torch.no_grad()
    def estimate_input_normalization(self, loader, max_batches: int) -> None:
        """Set the network's global input mean/std from up to ``max_batches`` batches of ``loader``.

        Statistics are taken over the valid MFCC frames (``(D,)``, tiled over the context
        window) and summed over all processes before dividing.
        """
        self._check_built()
        dim = self.frontend.dim
        # float64 sums: millions of frames; MPS has no float64
        acc = torch.float32 if self.device.type == "mps" else torch.float64
        total = torch.zeros(2 * dim + 1, dtype=acc, device=self.device)
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            wave = batch["waveform"].to(self.device)
            lengths = batch["waveform_lengths"].to(self.device)
            feats, frames = self.frontend(wave.float(), lengths)
            mask = (torch.arange(feats.shape[1], device=self.device)[None] < frames[:, None])
            valid = feats[mask].to(acc)
            total += torch.cat([valid.sum(0), (valid ** 2).sum(0), valid.new_tensor([valid.shape[0]])])
        total = self.trainer.strategy.reduce(total, reduce_op="sum") if self._trainer is not None else total
        n = float(total[-1])
        if n < 2:
            log.warning("SpeechDNNPretraining: too few frames to estimate the input normalisation; left at 0/1")
            return
        mean = total[:dim] / n
        std = (total[dim:2 * dim] / n - mean ** 2).clamp(min=1e-10).sqrt()
        width = 2 * self.dnn.context + 1
        self.dnn.set_input_normalization(mean.float().repeat(width), std.float().repeat(width))
        log.info("SpeechDNNPretraining: input normalisation from %d frames", int(n))

    # ------------------------------------------------------------------ steps
    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_probs, frames = self(batch["waveform"], batch["waveform_lengths"])
        # zero_infinity: an utterance with fewer frames than CTC needs contributes nothing (counted, not hidden)
        self._too_short += int((frames < batch["target_lengths"].to(frames.device)).sum())
        loss = self.ctc(log_probs.transpose(0, 1), batch["targets"], frames, batch["target_lengths"])
        return loss, log_probs, frames

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["transcript"]),
                 sync_dist=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self._too_short = 0

    def on_train_epoch_end(self) -> None:
        if self._too_short:
            log.warning("epoch %d: %d training utterances are shorter (in 10 ms frames) than their transcripts "
                        "and were left out of the CTC loss", self.current_epoch, self._too_short)

    def _eval_step(self, batch: dict[str, Any], split: str) -> dict[str, Any]:
        loss, log_probs, frames = self._loss(batch)
        n = len(batch["transcript"])
        hyps = self.decode(log_probs, frames)
        refs = list(batch["transcript"])
        metric = self.val_error if split == "val" else self.test_error
        metric.update(hyps, refs)
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"{split}/{self.metric_name}", metric, on_epoch=True, prog_bar=True, batch_size=n)
        if split == "val" and len(self._examples) < self.hparams.log_examples:
            self._examples += list(zip(refs, hyps))[: self.hparams.log_examples - len(self._examples)]
        return {"loss": loss, "hypotheses": hyps}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._examples = []

    def on_validation_epoch_end(self) -> None:
        if self._examples and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            lines = "\n".join(f"  ref: {r}\n  hyp: {h}" for r, h in self._examples)
            log.info("epoch %d, validation examples:\n%s", self.current_epoch, lines)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Greedy transcripts of a batch: ``{"utt_id": [...], "hypothesis": [...], "reference": [...]}``."""
        log_probs, frames = self(batch["waveform"], batch["waveform_lengths"])
        return {"utt_id": batch.get("utt_id"), "hypothesis": self.decode(log_probs, frames),
                "reference": batch.get("transcript")}

    def decode(self, log_probs: torch.Tensor, frames: torch.Tensor) -> list[str]:
        """``(B, T, V)`` log-probabilities, ``(B,)`` frames -> ``B`` greedy transcripts (the metric's form)."""
        self._check_built()
        return [self.vocabulary.decode(ids) for ids in ctc_greedy_decode(log_probs, frames, blank=0)]

    @torch.no_grad()
    def transcribe(self, waveforms: Sequence[torch.Tensor] | torch.Tensor) -> list[str]:
        """Greedy transcripts of 16 kHz mono waveforms (a list of ``(S_i,)`` or a ``(B, S)`` batch)."""
        if isinstance(waveforms, torch.Tensor) and waveforms.dim() == 2:
            waveforms = list(waveforms)
        lengths = torch.tensor([w.shape[0] for w in waveforms], device=self.device)
        batch = torch.zeros(len(waveforms), int(lengths.max()), device=self.device)
        for i, w in enumerate(waveforms):
            batch[i, : w.shape[0]] = w.to(self.device)
        log_probs, frames = self(batch, lengths)
        return self.decode(log_probs, frames)

    def configure_optimizers(self):
        hp = self.hparams
        return _optim.configure(self, hp.optimizer, hp.lr, hp.weight_decay, 0.9, hp.scheduler)


def vocabulary_of(checkpoint: Mapping[str, Any]) -> Vocabulary:
    """The vocabulary stored in a :class:`SpeechDNNPretraining` checkpoint dict."""
    saved = checkpoint.get("hyper_parameters", {}).get("vocabulary")
    if saved is None:
        raise ValueError("not a SpeechDNNPretraining checkpoint: no hyper_parameters['vocabulary']")
    return Vocabulary.from_dict(saved, "checkpoint")


__all__ = ["SpeechDNNPretraining", "ctc_greedy_decode", "vocabulary_of"]
