"""Scores, bootstrap intervals and paired tests against reference implementations (torchmetrics, sklearn, scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from lightning_emo.fusion.metrics import (bootstrap_clips, bootstrap_runs, mcnemar, mean_std, paired_bootstrap,
                                              score, scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    C = 5
    y = np.concatenate([np.arange(C), rng.integers(0, C, 60)])
    pred = np.where(rng.random(len(y)) < 0.5, y, rng.integers(0, C, len(y)))
    pred[:C] = (y[:C] + 1) % C  # every class predicted and present
    yt, pt = torch.as_tensor(y), torch.as_tensor(pred)
    s = scores(y, pred)
    assert s["wa"] == pytest.approx(MulticlassAccuracy(C, average="micro")(pt, yt).item())
    assert s["ua"] == pytest.approx(MulticlassRecall(C, average="macro")(pt, yt).item())
    assert s["macro_f1"] == pytest.approx(MulticlassF1Score(C, average="macro")(pt, yt).item())
    assert s["weighted_f1"] == pytest.approx(MulticlassF1Score(C, average="weighted")(pt, yt).item())


def test_missing_prediction_counts_as_an_error_and_ua_uses_present_classes():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, -1, 1, 1])
    assert score(y, pred, "wa") == 0.75
    assert score(y, pred, "ua") == pytest.approx((0.5 + 1.0) / 2)  # class 2 absent from y: not averaged
    with pytest.raises(KeyError, match="unknown metric"):
        score(y, pred, "auc")


def test_bootstrap_intervals_bracket_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.6, y, (y + 1) % 3)
    lo, hi = bootstrap_clips([(y, pred)], "wa", n_boot=300)
    acc = score(y, pred, "wa")
    assert lo < acc < hi and hi - lo < 0.2
    vals = [0.5, 0.55, 0.6, 0.52, 0.58]
    lo, hi = bootstrap_runs(vals, n_boot=500)
    assert lo <= np.mean(vals) <= hi and lo >= min(vals) and hi <= max(vals)
    assert mean_std([0.5]) == (0.5, 0.0)


def test_paired_tests():
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    good = np.where(rng.random(300) < 0.8, y, (y + 1) % 4)
    bad = np.where(rng.random(300) < 0.4, y, (y + 2) % 4)
    mc = mcnemar(y, good, bad)
    a, b = mc["a_only"], mc["b_only"]
    assert a == int(((good == y) & (bad != y)).sum())
    assert mc["p_value"] == pytest.approx(binomtest(a, a + b, 0.5).pvalue) and mc["p_value"] < 1e-6
    boot = paired_bootstrap([(y, good, bad)], n_boot=300)
    assert boot["diff"] > 0.3 and boot["ci_low"] > 0 and boot["p_value"] < 0.01
    same = paired_bootstrap([(y, good, good)], n_boot=100)
    assert same["diff"] == 0 and same["p_value"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_equal_sklearn_with_missing_predictions_and_absent_classes(seed):
    from sklearn.metrics import f1_score, recall_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 80)  # classes 4 and 5 never true; 5 sometimes predicted
    pred = np.where(rng.random(80) < 0.5, y, rng.integers(-1, 6, 80))
    labels = np.union1d(np.unique(y), np.unique(pred[pred >= 0]))
    assert score(y, pred, "wa") == pytest.approx(np.mean(y == pred))
    assert score(y, pred, "ua") == pytest.approx(recall_score(y, pred, labels=np.unique(y), average="macro"))
    for avg in ("macro", "weighted"):
        ref = f1_score(y, pred, labels=labels, average=avg, zero_division=0)
        assert score(y, pred, f"{avg}_f1") == pytest.approx(ref)
