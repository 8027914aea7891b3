"""Optimiser and learning-rate schedule shared by the pretraining modules (weights decayed, biases and norms not)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = (None, "cosine", "step")


def check_choices(optimizer: str, scheduler: str | None) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(map(str, SCHEDULERS))}")


def configure(module: pl.LightningModule, optimizer: str, lr: float, weight_decay: float, momentum: float = 0.9,
              scheduler: str | None = None) -> Any:
    """What ``configure_optimizers`` returns for ``module``.

    Matrices and convolution kernels get ``weight_decay``; biases and normalisation parameters
    (one-dimensional) none. ``sgd`` uses Nesterov momentum ``momentum``. Schedules step per
    epoch over the trainer's ``max_epochs`` (100 when unbounded): ``cosine`` anneals to 0,
    ``step`` multiplies by 0.1 every third of the epochs.
    """
    check_choices(optimizer, scheduler)
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    else:
        opt = torch.optim.Adam(groups, lr=lr)
    if scheduler is None:
        return opt
    epochs = 100
    if module._trainer is not None and module.trainer.max_epochs not in (None, -1):
        epochs = module.trainer.max_epochs
    if scheduler == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(epochs // 3, 1), gamma=0.1)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
