"""Decision-level fusion of per-modality posteriors: rules, calibration, the prior callback and the report.

The rules and calibration are imported eagerly (numpy and scipy; scikit-learn loads where a rule
fits or applies LR); the Lightning callback and the report (matplotlib) load on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_emo.fusion.calibration import TemperatureScaling, temperature_scale
from lightning_emo.fusion.rules import (
    RULES,
    CascadeFusion,
    ConfidenceEnsemble,
    EnsembleOutput,
    FusionRule,
    LogisticRegressionFusion,
    PriorEnsemble,
    WeightedSumFusion,
    confidence_ensemble,
    ensemble_with_prior,
    make_rule,
    margins,
    micro_f1_priors,
    micro_f1_scores,
    rule_from_state_dict,
    weighted_sum,
)

_LAZY = {
    "FusionPriorCallback": "lightning_emo.fusion.callback",
    "fusion_state_from_checkpoint": "lightning_emo.fusion.callback",
    "fuse_report": "lightning_emo.fusion.report",
    "Report": "lightning_emo.fusion.report",
}

__all__ = [
    "RULES", "CascadeFusion", "ConfidenceEnsemble", "EnsembleOutput", "FusionRule", "LogisticRegressionFusion",
    "PriorEnsemble", "TemperatureScaling", "WeightedSumFusion", "confidence_ensemble", "ensemble_with_prior",
    "make_rule", "margins", "micro_f1_priors", "micro_f1_scores", "rule_from_state_dict", "temperature_scale",
    "weighted_sum", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_emo.fusion' has no attribute {name!r}")
