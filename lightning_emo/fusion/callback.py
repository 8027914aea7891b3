"""``FusionPriorCallback``: per-modality validation micro-F1 (the fusion prior), macro-F1, recall, in the checkpoint."""

from __future__ import annotations

import pickle
import warnings
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassF1Score, MulticlassRecall

STATE_VERSION = 1


class FusionPriorCallback(pl.Callback):
    """Measure each modality's validation micro-F1 and keep it, with the priors, in the checkpoint.

    Contract with the LightningModule: ``validation_step`` returns
    ``{"probs": (B, C) tensor, "label": (B,) long}`` and the module has ``modality: str``; a
    multi-head module may return ``{"probs": {modality: (B, C)}, "label": (B,)}`` instead.
    Rows whose posterior is NaN (that modality missing for the clip) or whose label is negative
    (unknown) are left out of that modality's metrics. Class names, for the per-class recall
    keys, come from the module's ``classes`` attribute when it has one.

    At the end of each validation epoch (not the sanity check) it computes, with torchmetrics,
    per modality: micro-F1 (``= accuracy`` for single-label data), macro-F1 and per-class
    recall; logs them as ``val/<modality>/micro_f1``, ``val/<modality>/macro_f1`` and
    ``val/<modality>/recall/<class>``; and stores them with the micro-F1 priors
    ``prior_m = F1_m - min_k F1_k`` (paper eq. 5; all 0 for a single modality) in
    :meth:`state_dict`, which Lightning saves in every checkpoint.

    Args:
        log_metrics: log the metrics through ``pl_module.log``.
        prog_bar: show the micro-F1 in the progress bar.
    """

    def __init__(self, log_metrics: bool = True, prog_bar: bool = False):
        super().__init__()
        self.log_metrics = log_metrics
        self.prog_bar = prog_bar
        self._metrics: dict[str, MetricCollection] = {}
        self.metrics: dict[str, dict[str, Any]] = {}  # modality -> {"micro_f1", "macro_f1", "recall", "support"}
        self.priors: dict[str, float] = {}
        self.classes: list[str] | None = None
        self.epoch: int | None = None
        self.global_step: int | None = None

    # -- helpers
    @property
    def micro_f1(self) -> dict[str, float]:
        """``modality -> validation micro-F1`` from the last validation epoch."""
        return {m: v["micro_f1"] for m, v in self.metrics.items()}

    @staticmethod
    def _split_outputs(outputs: Any, pl_module: pl.LightningModule) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if not isinstance(outputs, Mapping) or "probs" not in outputs or "label" not in outputs:
            raise TypeError(f"FusionPriorCallback: {type(pl_module).__name__}.validation_step must return a dict "
                            f"with 'probs' and 'label', got {type(outputs).__name__}"
                            + (f" with keys {sorted(outputs)}" if isinstance(outputs, Mapping) else ""))
        probs, label = outputs["probs"], outputs["label"]
        if isinstance(probs, Mapping):
            return dict(probs), label
        modality = getattr(pl_module, "modality", None)
        if not isinstance(modality, str) or not modality:
            raise AttributeError(f"FusionPriorCallback: {type(pl_module).__name__} returns a single 'probs' tensor "
                                 "but has no 'modality' string attribute naming it")
        return {modality: probs}, label

    def _collection(self, modality: str, num_classes: int, device: torch.device) -> MetricCollection:
        if modality not in self._metrics:
            self._metrics[modality] = MetricCollection({
                "micro_f1": MulticlassF1Score(num_classes, average="micro"),
                "macro_f1": MulticlassF1Score(num_classes, average="macro"),
                "recall": MulticlassRecall(num_classes, average="none"),
            }).to(device)
        return self._metrics[modality]

    # -- hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for coll in self._metrics.values():
            coll.reset()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        per_modality, label = self._split_outputs(outputs, pl_module)
        label = label.detach().long().reshape(-1)
        for modality, probs in per_modality.items():
            probs = probs.detach()
            if probs.ndim != 2 or probs.shape[0] != label.shape[0]:
                raise ValueError(f"FusionPriorCallback: probs[{modality!r}] has shape {tuple(probs.shape)}, expected "
                                 f"(B, C) with B = {label.shape[0]} labels")
            keep = ~torch.isnan(probs).any(dim=1) & (label >= 0)
            coll = self._collection(modality, probs.shape[1], probs.device)
            if keep.any():
                coll.update(probs[keep].float(), label[keep].to(probs.device))

    def _agree_across_ranks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
        """The modalities to compute, in the same order on every rank.

        torchmetrics synchronises inside ``compute``: every rank must call it for the same
        modalities, even one that saw no validation clip of a modality (or no batch at all), or
        the others wait for it forever. Ranks exchange ``{modality: (classes, updated)}`` first.
        """
        local = {m: (c["micro_f1"].num_classes, bool(c["micro_f1"].update_called)) for m, c in self._metrics.items()}
        if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return [m for m, (_, updated) in local.items() if updated]
        gathered: list[dict[str, tuple[int, bool]]] = [{} for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(gathered, local)
        agreed: dict[str, tuple[int, bool]] = {}
        for rank_view in gathered:
            for m, (n, updated) in rank_view.items():
                agreed[m] = (n, agreed.get(m, (n, False))[1] or updated)
        for m, (n, _) in agreed.items():
            self._collection(m, n, pl_module.device)  # a rank that never saw the modality joins with zero state
        return sorted(m for m, (_, updated) in agreed.items() if updated)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        classes = getattr(pl_module, "classes", None)
        metrics: dict[str, dict[str, Any]] = {}
        for modality in self._agree_across_ranks(trainer, pl_module):
            coll = self._metrics[modality]
            with warnings.catch_warnings():  # this rank may have no update; the synced state has
                warnings.filterwarnings("ignore", message=r".*compute.*before.*update", category=UserWarning)
                values = coll.compute()
            recall = values["recall"].detach().cpu().tolist()
            names = list(classes) if classes is not None and len(classes) == len(recall) else [str(i) for i in
                                                                                               range(len(recall))]
            metrics[modality] = {"micro_f1": float(values["micro_f1"]), "macro_f1": float(values["macro_f1"]),
                                 "recall": dict(zip(names, map(float, recall)))}
            if self.log_metrics:
                pl_module.log(f"val/{modality}/micro_f1", metrics[modality]["micro_f1"], prog_bar=self.prog_bar)
                pl_module.log(f"val/{modality}/macro_f1", metrics[modality]["macro_f1"])
                for name, r in metrics[modality]["recall"].items():
                    pl_module.log(f"val/{modality}/recall/{name}", r)
            self.classes = names
        if not metrics:
            return
        self.metrics = metrics
        self.priors = priors_from_f1({m: v["micro_f1"] for m, v in metrics.items()})
        self.epoch, self.global_step = trainer.current_epoch, trainer.global_step

    # -- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """``{"version", "metrics": {modality: {...}}, "priors": {modality: float}, "classes", "epoch",
        "global_step"}``."""
        return {"version": STATE_VERSION, "metrics": self.metrics, "priors": self.priors, "classes": self.classes,
                "epoch": self.epoch, "global_step": self.global_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"FusionPriorCallback state version {state_dict.get('version')!r} is not supported "
                             f"(expected {STATE_VERSION})")
        self.metrics = {m: dict(v) for m, v in state_dict["metrics"].items()}
        self.priors = {m: float(p) for m, p in state_dict["priors"].items()}
        self.classes = state_dict.get("classes")
        self.epoch, self.global_step = state_dict.get("epoch"), state_dict.get("global_step")


def priors_from_f1(micro_f1: Mapping[str, float]) -> dict[str, float]:
    """``{modality: F1_m}`` -> ``{modality: F1_m - min_k F1_k}`` (paper eq. 5, generalised to M models)."""
    if not micro_f1:
        return {}
    low = min(micro_f1.values())
    return {m: float(f - low) for m, f in micro_f1.items()}


def fusion_state_from_checkpoint(path: str, modalities: Sequence[str] | None = None) -> dict[str, Any]:
    """Read the :class:`FusionPriorCallback` state from a Lightning checkpoint file (CPU, weights only).

    Returns the state dict (see :meth:`FusionPriorCallback.state_dict`), restricted to
    ``modalities`` when given.

    Raises:
        KeyError: naming the checkpoint when it holds no FusionPriorCallback state.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: the checkpoint holds objects a weights-only load refuses ({e}); if you trust "
                         "the file, read torch.load(path, weights_only=False)['callbacks']['FusionPriorCallback']"
                         ) from None
    states = ckpt.get("callbacks", {})
    key = next((k for k in states if k == FusionPriorCallback.__qualname__ or
                k.startswith(FusionPriorCallback.__qualname__ + "{")), None)
    if key is None:
        raise KeyError(f"{path}: no FusionPriorCallback state in this checkpoint (callbacks saved: "
                       f"{', '.join(states) or 'none'})")
    state = dict(states[key])
    if modalities is not None:
        absent = [m for m in modalities if m not in state["metrics"]]
        if absent:
            raise KeyError(f"{path}: no validation metrics for modality {absent} (have {sorted(state['metrics'])})")
        state["metrics"] = {m: state["metrics"][m] for m in modalities}
        state["priors"] = priors_from_f1({m: state["metrics"][m]["micro_f1"] for m in modalities})
    return state
