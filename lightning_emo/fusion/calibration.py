"""Per-model temperature scaling of posteriors, fitted on validation by minimising the NLL."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

EPS = 1e-12  # floor for log(p): a posterior of exactly 0 stays finite on the log scale


def stack_posteriors(posteriors: Sequence[np.ndarray] | np.ndarray, what: str = "posteriors") -> np.ndarray:
    """Stack M posterior arrays into one ``(M, N, C)`` float64 array and validate them.

    Each ``(N, C)`` array holds probability rows, or whole rows of NaN where that model did not
    see the clip. A single ``(N, C)`` array is taken as one model.

    Raises:
        ValueError: on differing shapes, partially-NaN rows or non-finite values.
    """
    if isinstance(posteriors, np.ndarray) and posteriors.ndim == 2:
        posteriors = [posteriors]
    arrays = [np.asarray(p, dtype=np.float64) for p in posteriors]
    if not arrays:
        raise ValueError(f"{what}: no models given")
    for m, p in enumerate(arrays):
        if p.ndim != 2:
            raise ValueError(f"{what}[{m}]: expected an (N, C) array, got shape {p.shape}")
        if p.shape != arrays[0].shape:
            raise ValueError(f"{what}[{m}]: shape {p.shape} differs from {what}[0]'s {arrays[0].shape}")
        nan = np.isnan(p)
        partial = nan.any(axis=1) & ~nan.all(axis=1)
        if partial.any():
            raise ValueError(f"{what}[{m}]: row {int(np.flatnonzero(partial)[0])} is partially NaN "
                             "(a missing clip must be a whole row of NaN)")
        if np.isinf(p).any():
            raise ValueError(f"{what}[{m}]: infinite values")
    return np.stack(arrays)


def temperature_scale(p: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale posteriors: ``q = softmax(log(max(p, eps)) / T)``.

    ``T > 1`` softens over-confident posteriors, ``T < 1`` sharpens them; the argmax (and so the
    model's accuracy) never changes. Shapes: ``p`` ``(N, C)`` -> ``(N, C)``; NaN rows stay NaN.
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    seen = ~np.isnan(p).all(axis=1)
    if seen.any():
        out[seen] = np.exp(log_softmax(np.log(np.maximum(p[seen], EPS)) / float(temperature), axis=1))
    return out


def nll(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood ``-1/N sum_i log p[i, y_i]`` over the rows that are not NaN.

    Shapes: ``p`` ``(N, C)``, ``y`` ``(N,)`` class indices.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    seen = ~np.isnan(p).all(axis=1)
    return float(-np.mean(np.log(np.maximum(p[seen, y[seen]], EPS))))


class TemperatureScaling:
    """One temperature per model, each fitted on validation by minimising the NLL (Guo et al., 2017).

    For model m with log-posteriors ``z = log p_m``, ``T_m = argmin_T -1/N sum_i log softmax(z_i / T)[y_i]``,
    searched on ``log T`` within ``bounds`` with scipy's bounded scalar minimiser. Only the clips
    the model saw (non-NaN rows) count. Temperature scaling never changes a model's argmax; it
    changes the margins the confidence ensemble compares and the inputs LR sees.

    Attributes:
        temperatures_: ``(M,)`` fitted temperatures, after :meth:`fit` or :meth:`load_state_dict`.
    """

    def __init__(self, bounds: tuple[float, float] = (0.05, 20.0)):
        if not 0 < bounds[0] < bounds[1]:
            raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.temperatures_: np.ndarray | None = None

    def fit(self, posteriors: Sequence[np.ndarray] | np.ndarray, y: np.ndarray) -> "TemperatureScaling":
        """Fit one temperature per model. ``posteriors``: M arrays ``(N, C)``; ``y``: ``(N,)`` class indices."""
        P = stack_posteriors(posteriors)
        y = np.asarray(y, dtype=np.int64)
        if y.shape != P.shape[1:2]:
            raise ValueError(f"y has shape {y.shape}, expected ({P.shape[1]},)")
        temps = []
        lo, hi = np.log(self.bounds[0]), np.log(self.bounds[1])
        for m, p in enumerate(P):
            seen = ~np.isnan(p).all(axis=1) & (y >= 0)
            if not seen.any():
                raise ValueError(f"model {m}: no labelled clip with a posterior to fit a temperature on")
            z = np.log(np.maximum(p[seen], EPS))
            ys = y[seen]

            def objective(log_t: float, z=z, ys=ys) -> float:
                return float(-np.mean(log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(ys)), ys]))

            res = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
            # The bounded search may stop near, but not on, T = 1; keep the identity if it is as good.
            temps.append(float(np.exp(res.x)) if res.fun < objective(0.0) else 1.0)
        self.temperatures_ = np.asarray(temps)
        return self

    def transform(self, posteriors: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Apply the fitted temperatures: M arrays ``(N, C)`` -> ``(M, N, C)``."""
        if self.temperatures_ is None:
            raise RuntimeError("TemperatureScaling is not fitted: call fit() or load_state_dict() first")
        P = stack_posteriors(posteriors)
        if len(P) != len(self.temperatures_):
            raise ValueError(f"{len(P)} models given, temperatures fitted for {len(self.temperatures_)}")
        return np.stack([temperature_scale(p, t) for p, t in zip(P, self.temperatures_)])

    def fit_transform(self, posteriors: Sequence[np.ndarray] | np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.fit(posteriors, y).transform(posteriors)

    def state_dict(self) -> dict:
        """JSON-able state: ``{"temperatures": [...], "bounds": [lo, hi]}``."""
        return {"temperatures": None if self.temperatures_ is None else self.temperatures_.tolist(),
                "bounds": list(self.bounds)}

    def load_state_dict(self, state: dict) -> "TemperatureScaling":
        self.bounds = tuple(float(b) for b in state.get("bounds", self.bounds))  # type: ignore[assignment]
        temps = state.get("temperatures")
        self.temperatures_ = None if temps is None else np.asarray(temps, dtype=np.float64)
        return self
