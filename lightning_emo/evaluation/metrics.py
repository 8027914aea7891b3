"""Classification scores (WA, UA, macro-F1, weighted-F1), bootstrap confidence intervals and paired tests.

Conventions (the same everywhere in the package):

* ``pred`` holds class indices, ``-1`` where no model gave an answer (no face, no audio): such
  a clip counts as an error in every metric, never as a skipped clip;
* **WA** (weighted accuracy) is plain accuracy; **UA** (unweighted average recall) is the mean
  of the per-class recalls over the classes present in ``y`` (scikit-learn's
  ``balanced_accuracy_score`` for predictions without ``-1``);
* **macro-F1** / **weighted-F1** are scikit-learn's ``f1_score`` over the classes present in
  ``y`` or predicted (``-1`` is never a class), ``zero_division=0``.

Confidence intervals are percentile bootstraps (95 % by default): over clips for one run
(:func:`bootstrap_clips`, resampling the test clips of each run and averaging over runs), or
over runs for several folds x seeds (:func:`bootstrap_runs`, resampling the per-run values).
The paired comparison of two methods on the same clips is a paired bootstrap of the
difference (:func:`paired_bootstrap`) and McNemar's exact test (:func:`mcnemar`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

METRICS = ("wa", "ua", "macro_f1", "weighted_f1")
TITLES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1"}
N_BOOT = 2000


def _labels(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.union1d(np.unique(y), np.unique(pred[pred >= 0]))


def score(y: np.ndarray, pred: np.ndarray, metric: str) -> float:
    """One metric (``wa``, ``ua``, ``macro_f1``, ``weighted_f1``) of predictions ``(N,)`` against labels ``(N,)``."""
    from sklearn.metrics import f1_score, recall_score

    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError(f"y {y.shape} and pred {pred.shape} must be two arrays of one length")
    if len(y) == 0:
        return float("nan")
    if metric == "wa":
        return float(np.mean(y == pred))
    if metric == "ua":
        return float(recall_score(y, pred, labels=np.unique(y), average="macro", zero_division=0))
    if metric in ("macro_f1", "weighted_f1"):
        return float(f1_score(y, pred, labels=_labels(y, pred), average=metric.split("_")[0], zero_division=0))
    raise KeyError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


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


def bootstrap_clips(runs: Sequence[tuple[np.ndarray, np.ndarray]], metric: str, level: float = 0.95,
                    n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the run-averaged ``metric``, resampling each run's test clips with replacement.

    Args:
        runs: ``(y, pred)`` per run (each ``(N_r,)``); one run = the single-split case.
    """
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        vals = []
        for y, pred in runs:
            i = rng.integers(0, len(y), size=len(y))
            vals.append(score(y[i], pred[i], metric))
        draws[b] = np.mean(vals)
    return _percentile_ci(draws, level)


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
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for k in range(n_boot):
        vals = []
        for y, a, b in runs:
            i = rng.integers(0, len(y), size=len(y))
            vals.append(score(y[i], a[i], metric) - score(y[i], b[i], metric))
        draws[k] = np.mean(vals)
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


MetricFn = Callable[[np.ndarray, np.ndarray], float]
