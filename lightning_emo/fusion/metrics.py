"""Classification scores (WA, UA, macro-F1, weighted-F1), bootstrap confidence intervals and paired tests.

Conventions (the same everywhere in the package):

* ``pred`` holds class indices, ``-1`` where no model gave an answer (no face, no audio): such
  a clip counts as an error in every metric, never as a skipped clip;
* **WA** (weighted accuracy) is plain accuracy; **UA** (unweighted average recall) is the mean
  of the per-class recalls over the classes present in ``y`` (scikit-learn's
  ``balanced_accuracy_score`` for predictions without ``-1``);
* **macro-F1** / **weighted-F1** equal scikit-learn's ``f1_score`` over the classes present in
  ``y`` or predicted (``-1`` is never a class), ``zero_division=0``.

They are computed from confusion counts in numpy (:func:`confusions`, :func:`from_confusion`),
vectorised over bootstrap resamples; ``tests/test_metrics.py`` checks them against torchmetrics
and scikit-learn.

Confidence intervals are percentile bootstraps (95 % by default): over clips for one run
(:func:`bootstrap_clips`, resampling the test clips of each run and averaging over runs), or
over runs for several folds x seeds (:func:`bootstrap_runs`, resampling the per-run values).
The paired comparison of two methods on the same clips is a paired bootstrap of the
difference (:func:`paired_bootstrap`) and McNemar's exact test (:func:`mcnemar`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("wa", "ua", "macro_f1", "weighted_f1")
TITLES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1"}
N_BOOT = 2000


def confusions(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion counts ``(..., C + 1, C + 1)`` (rows: true class; the last column: no prediction).

    ``y`` and ``pred`` are ``(N,)`` or ``(B, N)`` (B resamples at once, for the bootstrap).
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    K = n_classes + 1
    p = np.where(pred < 0, n_classes, pred)
    flat = y * K + p
    if flat.ndim == 1:
        return np.bincount(flat, minlength=K * K).reshape(K, K)
    B = flat.shape[0]
    offsets = (np.arange(B) * K * K)[:, None]
    return np.bincount((flat + offsets).ravel(), minlength=B * K * K).reshape(B, K, K)


def from_confusion(cm: np.ndarray, metric: str) -> np.ndarray:
    """A metric from :func:`confusions` counts (any leading shape); see the module docstring for the definitions."""
    C = cm.shape[-1] - 1
    tp = np.diagonal(cm, axis1=-2, axis2=-1)[..., :C].astype(np.float64)
    support = cm.sum(axis=-1)[..., :C].astype(np.float64)  # true clips per class
    predicted = cm.sum(axis=-2)[..., :C].astype(np.float64)  # predictions per class
    n = cm.sum(axis=(-2, -1)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "wa":
            return tp.sum(axis=-1) / n
        if metric == "ua":
            present = support > 0
            recall = np.where(present, tp / np.where(present, support, 1), 0.0)
            return recall.sum(axis=-1) / present.sum(axis=-1)
        if metric in ("macro_f1", "weighted_f1"):
            den = support + predicted
            f1 = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
            if metric == "macro_f1":
                return f1.sum(axis=-1) / (den > 0).sum(axis=-1)
            return (f1 * support).sum(axis=-1) / support.sum(axis=-1)
    raise KeyError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def score(y: np.ndarray, pred: np.ndarray, metric: str, n_classes: int | None = None) -> float:
    """One metric (``wa``, ``ua``, ``macro_f1``, ``weighted_f1``) of predictions ``(N,)`` against labels ``(N,)``."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError(f"y {y.shape} and pred {pred.shape} must be two arrays of one length")
    if metric not in METRICS:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if len(y) == 0:
        return float("nan")
    C = n_classes or int(max(y.max(), pred.max())) + 1
    return float(from_confusion(confusions(y, pred, C), metric))


def scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRICS` as ``{name: value}``."""
    return {m: score(y, pred, m) for m in METRICS}


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_runs(values: Sequence[float], level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0
                   ) -> tuple[float, float]:
    """Percentile CI of the mean of per-run values (folds x seeds), resampling runs with replacement."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return (float(v[0]), float(v[0])) if len(v) else (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    return _percentile_ci(v[idx].mean(axis=1), level)


def _resampled(runs, metric: str, n_boot: int, rng: np.random.Generator, fn=None) -> np.ndarray:
    """``(n_boot,)`` run-averaged metric over clip resamples (each run resampled within itself)."""
    total = np.zeros(n_boot)
    for run in runs:
        y = np.asarray(run[0], dtype=np.int64)
        C = int(max(int(np.max(y)), *(int(np.max(p)) for p in run[1:]))) + 1
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))
        vals = [from_confusion(confusions(y[idx], np.asarray(p)[idx], C), metric) for p in run[1:]]
        total += vals[0] if len(vals) == 1 else vals[0] - vals[1]
    return total / len(runs)


def bootstrap_clips(runs: Sequence[tuple[np.ndarray, np.ndarray]], metric: str, level: float = 0.95,
                    n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the run-averaged ``metric``, resampling each run's test clips with replacement.

    Args:
        runs: ``(y, pred)`` per run (each ``(N_r,)``); one run = the single-split case.
    """
    if not runs:
        return float("nan"), float("nan")
    return _percentile_ci(_resampled(runs, metric, n_boot, np.random.default_rng(seed)), level)


def paired_bootstrap(runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], metric: str = "wa",
                     n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of ``metric(a) - metric(b)`` on the same clips (resampled within each run).

    Args:
        runs: ``(y, pred_a, pred_b)`` per run.

    Returns:
        ``{"diff": observed run-averaged difference, "ci_low", "ci_high", "p_value"}``; the
        two-sided p-value is twice the smaller share of bootstrap differences on either side of 0
        (capped at 1).
    """
    observed = float(np.mean([score(y, a, metric) - score(y, b, metric) for y, a, b in runs]))
    draws = _resampled(runs, metric, n_boot, np.random.default_rng(seed))
    lo, hi = _percentile_ci(draws, 0.95)
    p = min(1.0, 2 * min(float(np.mean(draws <= 0)), float(np.mean(draws >= 0))))
    return {"diff": observed, "ci_low": lo, "ci_high": hi, "p_value": p}


def mcnemar(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test (binomial on the discordant clips) of two classifiers on the same clips.

    Returns ``{"a_only": clips only a gets right, "b_only": only b, "p_value": two-sided exact p}``.
    """
    from scipy.stats import binomtest

    y, a, b = (np.asarray(v) for v in (y, pred_a, pred_b))
    ra, rb = a == y, b == y
    n01, n10 = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    p = 1.0 if n01 + n10 == 0 else float(binomtest(n01, n01 + n10, 0.5).pvalue)
    return {"a_only": n01, "b_only": n10, "p_value": p}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


