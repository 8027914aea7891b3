"""Decision-level fusion rules over M models: confidence ensemble, micro-F1 prior, LR, cascade, weighted sum.

Every rule takes a list of M posterior arrays ``(N, C)`` over the same clips, in the same class
order. A whole row of NaN means that model did not see the clip (no face found, no audio).

Missing-model policy (the same for every rule):

* ensemble rules skip a missing model for that clip: the models present compete;
* LR fills a missing model's block with the uniform posterior ``1/C`` and adds, for each model
  that was missing on some validation clip, a 0/1 "missing" indicator column, so the fit learns
  how to weigh the other models when it is absent (:class:`LogisticRegressionFusion`);
* the weighted sum renormalises the weights over the models present;
* a clip *no* model saw gets a NaN posterior row, label ``-1`` and deciding model ``-1``:
  it is never given a made-up answer.

The functional API (:func:`margins`, :func:`confidence_ensemble`, :func:`micro_f1_priors`,
:func:`ensemble_with_prior`) mirrors the paper's equations; the :class:`FusionRule` classes wrap
them with ``fit`` on validation / ``predict_proba`` on test and a JSON-able ``state_dict`` so a
fitted rule can ship with a model. :data:`RULES` names them; :func:`make_rule` builds one by name.
Every rule outputs posteriors, so a fused output can be fused again (the cascade).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple, Sequence

import numpy as np

from lightning_emo.errors import DataError
from lightning_emo.fusion.calibration import TemperatureScaling, nll, stack_posteriors
from lightning_emo.registry import UnknownNameError

# scikit-learn is imported where it is used: inference with a prior or confidence rule never
# loads it (about 1 s of a cold `lightning-emo infer`).
if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

Posteriors = Sequence[np.ndarray] | np.ndarray
STATE_VERSION = 1


class EnsembleOutput(NamedTuple):
    """What a confidence ensemble decided, per clip.

    Attributes:
        labels: ``(N,)`` int64 fused label; ``-1`` where no model saw the clip.
        decider: ``(N,)`` int64 index of the deciding model; ``-1`` where no model saw the clip.
        probs: ``(N, C)`` the deciding model's posterior (NaN row where no model saw the clip),
            so the output can be fused again.
    """

    labels: np.ndarray
    decider: np.ndarray
    probs: np.ndarray


def _present(P: np.ndarray) -> np.ndarray:
    """``(M, N, C)`` -> ``(M, N)`` bool: model m saw clip n."""
    return ~np.isnan(P).all(axis=2)


def _argmax_or_missing(p: np.ndarray) -> np.ndarray:
    """``(N, C)`` -> ``(N,)`` argmax per row (first class on ties), ``-1`` for NaN rows."""
    out = np.full(len(p), -1, dtype=np.int64)
    seen = ~np.isnan(p).all(axis=1)
    out[seen] = p[seen].argmax(axis=1)
    return out


def _check_labels(y: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y has shape {y.shape}, expected ({n},) to match the posteriors")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if (y < 0).any() or (y >= n_classes).any():
        bad = int(np.flatnonzero((y < 0) | (y >= n_classes))[0])
        raise ValueError(f"y[{bad}] = {int(y[bad])} is not a class index in [0, {n_classes}); fit on labelled "
                         "clips only (an unknown label reads as -1)")
    return y


def margins(p: np.ndarray) -> np.ndarray:
    """Confidence margin per clip (paper eq. 3): ``c = p1 - p2``, the top posterior minus the second.

    Shapes: ``p`` ``(N, C)`` -> ``(N,)``, in ``[0, 1]``; NaN where the row is NaN (model missing).
    With a single class the margin is ``p1``.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"expected an (N, C) posterior array, got shape {p.shape}")
    out = np.full(len(p), np.nan)
    seen = ~np.isnan(p).all(axis=1)
    if p.shape[1] == 1:
        out[seen] = p[seen, 0]
    elif seen.any():
        top2 = np.partition(p[seen], -2, axis=1)[:, -2:]
        out[seen] = top2[:, 1] - top2[:, 0]
    return out


def confidence_ensemble(posteriors: Posteriors, bonus: Sequence[float] | np.ndarray | None = None) -> EnsembleOutput:
    """Confidence ensemble (paper eq. 3 and, with a bonus, eq. 5), generalised to M models.

    Per clip, model ``m* = argmax_m (c_m + bonus_m)`` decides, with ``c_m`` its :func:`margins`;
    the fused label is ``argmax_c p_{m*}[c]`` and the fused posterior is ``p_{m*}``. Ties go to
    the model listed first (the paper's eq. 3 lets video win a tie ``c_v >= c_a``: list video
    first to reproduce that exactly). Models missing for a clip are skipped; a clip no model saw
    gets label ``-1``, decider ``-1`` and a NaN posterior row.

    Args:
        posteriors: M arrays ``(N, C)``.
        bonus: ``(M,)`` additive bonus per model (default zeros); see :func:`micro_f1_priors`.

    Returns:
        :class:`EnsembleOutput` ``(labels (N,), decider (N,), probs (N, C))``.
    """
    P = stack_posteriors(posteriors)
    M, N, C = P.shape
    b = np.zeros(M) if bonus is None else np.asarray(bonus, dtype=np.float64).reshape(-1)
    if b.shape != (M,) or not np.isfinite(b).all():
        raise ValueError(f"bonus must be {M} finite numbers (one per model), got {bonus}")
    score = np.stack([margins(p) for p in P]) + b[:, None]  # (M, N)
    present = _present(P)
    score[~present] = -np.inf
    decider = score.argmax(axis=0)  # first maximum: ties go to the model listed first
    nobody = ~present.any(axis=0)
    decider[nobody] = -1
    probs = np.full((N, C), np.nan)
    seen = ~nobody
    probs[seen] = P[decider[seen], np.flatnonzero(seen)]
    return EnsembleOutput(_argmax_or_missing(probs), decider.astype(np.int64), probs)


def micro_f1_scores(posteriors: Posteriors, y: np.ndarray) -> np.ndarray:
    """Each model's micro-F1 (sklearn ``f1_score(average="micro")``) over the clips it saw.

    For single-label multi-class data micro-F1 equals accuracy. A model is scored on the clips
    it saw because the ensemble only ever consults it on those.
    Shapes: M arrays ``(N, C)``, ``y`` ``(N,)`` -> ``(M,)``.
    """
    from sklearn.metrics import f1_score

    P = stack_posteriors(posteriors)
    y = _check_labels(y, P.shape[1], P.shape[2])
    scores = []
    for m, p in enumerate(P):
        seen = ~np.isnan(p).all(axis=1)
        if not seen.any():
            raise DataError(f"model {m} saw none of the clips: no micro-F1 to compute")
        scores.append(f1_score(y[seen], p[seen].argmax(axis=1), average="micro",
                               labels=np.arange(P.shape[2])))
    return np.asarray(scores, dtype=np.float64)


def micro_f1_priors(posteriors_val: Posteriors, y_val: np.ndarray) -> np.ndarray:
    """The ensemble bonus of each model (paper eq. 5): ``bonus_m = F1_m - min_k F1_k`` on validation.

    For two models this is the paper's ``d`` for the better one and 0 for the other.
    Shapes: M arrays ``(N, C)``, ``y_val`` ``(N,)`` -> ``(M,)``, all ``>= 0``.
    """
    f1 = micro_f1_scores(posteriors_val, y_val)
    return f1 - f1.min()


def ensemble_with_prior(posteriors_val: Posteriors, y_val: np.ndarray, posteriors_test: Posteriors) -> EnsembleOutput:
    """Ensemble with micro-F1 prior: bonuses fitted on validation, applied on test.

    ``confidence_ensemble(posteriors_test, bonus=micro_f1_priors(posteriors_val, y_val))``.
    """
    return confidence_ensemble(posteriors_test, micro_f1_priors(posteriors_val, y_val))


def _simplex_grid(n_models: int, steps: int) -> np.ndarray:
    """All weight vectors with entries in ``{0, 1/steps, ..., 1}`` summing to 1: ``(G, M)``."""
    rows = []
    for bars in itertools.combinations(range(steps + n_models - 1), n_models - 1):
        edges = (-1,) + bars + (steps + n_models - 1,)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n_models)])
    return np.asarray(rows, dtype=np.float64) / steps


def weighted_sum(posteriors: Posteriors, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Weighted-sum late fusion: ``p = sum_m w_m p_m / sum_{m present} w_m``.

    Weights are renormalised over the models present for each clip; where every present model
    has weight 0 the present models are averaged equally; a clip no model saw gets a NaN row.
    Shapes: M arrays ``(N, C)``, ``weights`` ``(M,)`` non-negative -> ``(N, C)``.
    """
    P = stack_posteriors(posteriors)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (len(P),) or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be {len(P)} non-negative numbers, got {weights}")
    present = _present(P).astype(np.float64)  # (M, N)
    filled = np.nan_to_num(P, nan=0.0)
    den = (w[:, None] * present).sum(axis=0)  # (N,)
    num = np.einsum("m,mnc->nc", w, filled)
    zero = (den == 0) & (present.sum(axis=0) > 0)
    num[zero] = filled[:, zero].sum(axis=0)
    den[zero] = present[:, zero].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den[:, None]
    out[den == 0] = np.nan
    return out


# --------------------------------------------------------------------------- classes


class FusionRule:
    """A fusion rule: ``fit`` on validation posteriors and labels, ``predict_proba`` on test.

    Subclasses implement ``_fit(P, y)`` and ``_predict_proba(P)`` on the stacked ``(M, N, C)``
    array and list their JSON-able constructor arguments in ``_params``. With
    ``calibrate=True`` a :class:`~lightning_emo.fusion.calibration.TemperatureScaling` is fitted
    per model on the same validation data and applied before the rule.
    """

    name: ClassVar[str] = ""
    _params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, calibrate: bool = False):
        self.calibrate = bool(calibrate)
        self.temperature_: TemperatureScaling | None = None
        self.n_models_: int | None = None
        self.n_classes_: int | None = None

    # -- public API
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able)."""
        params = {k: getattr(self, k) for k in self._params}
        params["calibrate"] = self.calibrate
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}

    def fit(self, posteriors: Posteriors, y: np.ndarray) -> "FusionRule":
        """Fit on validation: M arrays ``(N, C)`` and labels ``(N,)`` (class indices). Returns self."""
        P = stack_posteriors(posteriors)
        y = _check_labels(y, P.shape[1], P.shape[2])
        self.n_models_, _, self.n_classes_ = P.shape
        if self.calibrate:
            self.temperature_ = TemperatureScaling()
            P = self.temperature_.fit_transform(P, y)
        self._fit(P, y)
        return self

    def predict_proba(self, posteriors: Posteriors) -> np.ndarray:
        """Fused posteriors ``(N, C)``; a NaN row where no model saw the clip."""
        return self._predict_proba(self._prepare(posteriors))

    def predict(self, posteriors: Posteriors) -> np.ndarray:
        """Fused labels ``(N,)`` (class indices); ``-1`` where no model saw the clip."""
        return _argmax_or_missing(self.predict_proba(posteriors))

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the rule name, constructor arguments, fitted values (priors,
        temperatures, LR coefficients...). Rebuild with :func:`rule_from_state_dict`."""
        self._check_fitted()
        return {"rule": self.name, "version": STATE_VERSION, "params": self.get_params(),
                "n_models": self.n_models_, "n_classes": self.n_classes_,
                "temperature": None if self.temperature_ is None else self.temperature_.state_dict(),
                "fitted": self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> "FusionRule":
        """Restore what :meth:`state_dict` returned (the constructor arguments must match)."""
        if state.get("rule") != self.name:
            raise ValueError(f"state is for rule {state.get('rule')!r}, not {self.name!r}")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r} is not supported (expected {STATE_VERSION})")
        self.n_models_, self.n_classes_ = int(state["n_models"]), int(state["n_classes"])
        temp = state.get("temperature")
        self.temperature_ = None if temp is None else TemperatureScaling().load_state_dict(temp)
        self._load(state["fitted"])
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- for subclasses
    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, fitted: dict[str, Any]) -> None:
        pass

    def _check_fitted(self) -> None:
        if self.n_models_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load_state_dict() first")

    def _prepare(self, posteriors: Posteriors) -> np.ndarray:
        self._check_fitted()
        P = stack_posteriors(posteriors)
        if P.shape[0] != self.n_models_ or P.shape[2] != self.n_classes_:
            raise ValueError(f"{type(self).__name__} was fitted on {self.n_models_} models x {self.n_classes_} "
                             f"classes, got {P.shape[0]} models x {P.shape[2]} classes")
        if self.temperature_ is not None:
            P = self.temperature_.transform(P)
        return P


class ConfidenceEnsemble(FusionRule):
    """The confidence ensemble (paper eq. 3): the model with the largest margin (+ a fixed bonus) decides.

    See :func:`confidence_ensemble`. ``bonus`` is an optional fixed ``(M,)`` bonus (default 0).
    """

    name = "ensemble"
    _params = ("bonus",)

    def __init__(self, bonus: Sequence[float] | None = None, calibrate: bool = False):
        super().__init__(calibrate)
        self.bonus = None if bonus is None else [float(b) for b in bonus]
        self.bonus_: np.ndarray | None = None

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        self.bonus_ = np.zeros(len(P)) if self.bonus is None else np.asarray(self.bonus, dtype=np.float64)
        if self.bonus_.shape != (len(P),):
            raise ValueError(f"bonus has {len(self.bonus_)} entries for {len(P)} models")

    def decide(self, posteriors: Posteriors) -> EnsembleOutput:
        """The full :class:`EnsembleOutput` (labels, deciding model, posteriors) on new data."""
        return confidence_ensemble(self._prepare(posteriors), self.bonus_)

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        return confidence_ensemble(P, self.bonus_).probs

    def _state(self) -> dict[str, Any]:
        return {"bonus": self.bonus_.tolist()}

    def _load(self, fitted: dict[str, Any]) -> None:
        self.bonus_ = np.asarray(fitted["bonus"], dtype=np.float64)


class PriorEnsemble(ConfidenceEnsemble):
    """Ensemble with micro-F1 prior (paper eq. 5): bonus ``F1_m - min_k F1_k`` fitted on validation.

    Args:
        micro_f1: the models' validation micro-F1 measured elsewhere (``FusionPriorCallback``
            stores it in each checkpoint); ``fit`` then uses these instead of computing them.

    Attributes:
        f1_: ``(M,)`` validation micro-F1 per model; ``bonus_``: ``(M,)`` the priors.
    """

    name = "prior"
    _params = ("micro_f1",)

    def __init__(self, micro_f1: Sequence[float] | None = None, calibrate: bool = False):
        super().__init__(None, calibrate)
        self.micro_f1 = None if micro_f1 is None else [float(f) for f in micro_f1]
        self.f1_: np.ndarray | None = None

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        if self.micro_f1 is not None:
            if len(self.micro_f1) != len(P) or not np.isfinite(self.micro_f1).all():
                raise ValueError(f"micro_f1 must be {len(P)} finite numbers (one per model), got {self.micro_f1}")
            self.f1_ = np.asarray(self.micro_f1, dtype=np.float64)
        else:
            self.f1_ = micro_f1_scores(P, y)
        self.bonus_ = self.f1_ - self.f1_.min()

    def _state(self) -> dict[str, Any]:
        return {"bonus": self.bonus_.tolist(), "micro_f1": self.f1_.tolist()}

    def _load(self, fitted: dict[str, Any]) -> None:
        super()._load(fitted)
        self.f1_ = np.asarray(fitted["micro_f1"], dtype=np.float64)


class LogisticRegressionFusion(FusionRule):
    """LR fusion: scikit-learn ``LogisticRegression`` on the concatenated posteriors.

    Features per clip: ``[p_1 | ... | p_M | missing indicators]`` (``M*C`` + k columns). A model
    missing for a clip contributes the uniform posterior ``1/C``; an indicator column (1 =
    missing) is added for each of the k models that were missing on at least one validation
    clip, so the fit can shift its decision when that model is absent (a model never missing on
    validation gets no indicator: there is nothing to learn it from). A clip no model saw gets
    a NaN row. Classes absent from the validation labels get probability 0.

    Args:
        C: inverse L2 regularisation strength (sklearn's ``C``).
        max_iter: lbfgs iterations.
    """

    name = "lr"
    _params = ("C", "max_iter")

    def __init__(self, C: float = 1.0, max_iter: int = 1000, calibrate: bool = False):
        super().__init__(calibrate)
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.model_: LogisticRegression | None = None
        self.indicators_: list[int] = []

    def features(self, P: np.ndarray) -> np.ndarray:
        """``(M, N, C)`` -> ``(N, M*C + k)`` design matrix (see the class docstring)."""
        M, N, C = P.shape
        present = _present(P)
        filled = np.where(present[:, :, None], P, 1.0 / C)
        blocks = [filled[m] for m in range(M)]
        blocks += [(~present[m]).astype(np.float64)[:, None] for m in self.indicators_]
        return np.concatenate(blocks, axis=1)

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        present = _present(P)
        keep = present.any(axis=0)
        if len(np.unique(y[keep])) < 2:
            raise DataError("LR fusion needs validation clips of at least two classes")
        self.indicators_ = [m for m in range(len(P)) if not present[m, keep].all()]
        from sklearn.linear_model import LogisticRegression

        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter)
        self.model_.fit(self.features(P[:, keep]), y[keep])

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        N = P.shape[1]
        out = np.full((N, self.n_classes_), np.nan)
        keep = _present(P).any(axis=0)
        if keep.any():
            out[keep] = 0.0
            out[np.ix_(keep, self.model_.classes_)] = self.model_.predict_proba(self.features(P[:, keep]))
        return out

    def _state(self) -> dict[str, Any]:
        m = self.model_
        return {"coef": m.coef_.tolist(), "intercept": m.intercept_.tolist(), "classes": m.classes_.tolist(),
                "indicators": list(self.indicators_)}

    def _load(self, fitted: dict[str, Any]) -> None:
        # Rebuild the fitted estimator from its learned attributes (no pickles in exported models).
        from sklearn.linear_model import LogisticRegression

        m = LogisticRegression(C=self.C, max_iter=self.max_iter)
        m.coef_ = np.asarray(fitted["coef"], dtype=np.float64)
        m.intercept_ = np.asarray(fitted["intercept"], dtype=np.float64)
        m.classes_ = np.asarray(fitted["classes"], dtype=np.int64)
        m.n_features_in_ = m.coef_.shape[1]
        self.model_ = m
        self.indicators_ = [int(i) for i in fitted["indicators"]]


class CascadeFusion(FusionRule):
    """The cascade (paper Fig. 5, Tables 4-5): the LR output joins some input models in the ensemble.

    ``q = LR(p_{lr_inputs})``; then ``confidence_ensemble([q] + [p_j for j in join])``, with the
    micro-F1 prior when ``prior=True`` (Table 5) or without (Table 4). The LR output is listed
    first, so it wins exact ties. As in the paper, LR and the prior are both fitted on the same
    validation set (the LR's validation micro-F1 is therefore in-sample and favours the LR
    output); with ``crossfit=K`` the prior is computed on K-fold cross-fitted LR outputs
    instead (out-of-sample), while the LR applied to new data is fitted on all clips.

    Args:
        join: indices of the input models that join the LR output (e.g. ``[0]`` = audio when
            the inputs are ``(audio, video)``); see :func:`make_rule` for names.
        prior: use the micro-F1 prior.
        lr_inputs: indices of the models LR fuses (default: all).
        C, max_iter: passed to :class:`LogisticRegressionFusion`.
        crossfit: 0 (the paper) or the number of folds of the cross-fitted prior.
    """

    name = "cascade"
    _params = ("join", "prior", "lr_inputs", "C", "max_iter", "crossfit")

    def __init__(self, join: Sequence[int] = (0,), prior: bool = False, lr_inputs: Sequence[int] | None = None,
                 C: float = 1.0, max_iter: int = 1000, crossfit: int = 0, calibrate: bool = False):
        super().__init__(calibrate)
        self.crossfit = int(crossfit)
        self.join = [int(j) for j in join]
        if not self.join:
            raise ValueError("join must name at least one input model to join the LR output")
        self.prior = bool(prior)
        self.lr_inputs = None if lr_inputs is None else [int(i) for i in lr_inputs]
        self.C, self.max_iter = float(C), int(max_iter)
        self.lr_: LogisticRegressionFusion | None = None
        self.ensemble_: ConfidenceEnsemble | None = None

    def _members(self, P: np.ndarray) -> list[np.ndarray]:
        lr_in = P if self.lr_inputs is None else P[self.lr_inputs]
        return [self.lr_.predict_proba(lr_in)] + [P[j] for j in self.join]

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        for j in self.join + (self.lr_inputs or []):
            if not 0 <= j < len(P):
                raise ValueError(f"cascade refers to input model {j}, but {len(P)} models were given")
        lr_in = P if self.lr_inputs is None else P[self.lr_inputs]
        self.lr_ = LogisticRegressionFusion(self.C, self.max_iter)
        self.lr_.fit(lr_in, y)
        self.ensemble_ = PriorEnsemble() if self.prior else ConfidenceEnsemble()
        members = self._members(P)
        if self.prior and self.crossfit >= 2:
            members[0] = cross_fit_proba(lambda: LogisticRegressionFusion(self.C, self.max_iter), lr_in, y,
                                         self.crossfit)
        self.ensemble_.fit(members, y)

    def decide(self, posteriors: Posteriors) -> EnsembleOutput:
        """The ensemble's :class:`EnsembleOutput`; ``decider`` 0 = the LR output, ``1 + k`` = ``join[k]``."""
        return self.ensemble_.decide(self._members(self._prepare(posteriors)))

    @property
    def bonus_(self) -> np.ndarray:
        """``(1 + len(join),)`` the ensemble's bonuses (LR output first)."""
        return self.ensemble_.bonus_

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        return self.ensemble_.predict_proba(self._members(P))

    def _state(self) -> dict[str, Any]:
        return {"lr": self.lr_.state_dict(), "ensemble": self.ensemble_.state_dict()}

    def _load(self, fitted: dict[str, Any]) -> None:
        self.lr_ = LogisticRegressionFusion(self.C, self.max_iter).load_state_dict(fitted["lr"])
        self.ensemble_ = rule_from_state_dict(fitted["ensemble"])  # type: ignore[assignment]


class WeightedSumFusion(FusionRule):
    """Weighted-sum late fusion (a baseline beyond the paper): ``p = sum_m w_m p_m`` (see :func:`weighted_sum`).

    The weights are fitted on validation by exhaustive search over the simplex grid with
    resolution ``1/steps`` (all ``w_m in {0, 1/steps, ..., 1}``, ``sum_m w_m = 1``): the vector
    with the highest validation accuracy wins, ties broken by the lower validation NLL, then by
    grid order. ``steps=10`` gives 11 candidates for two models, 286 for four.

    Attributes:
        weights_: ``(M,)`` fitted weights.
    """

    name = "weighted"
    _params = ("steps",)
    MAX_GRID = 50_000

    def __init__(self, steps: int = 10, calibrate: bool = False):
        super().__init__(calibrate)
        self.steps = int(steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.weights_: np.ndarray | None = None

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        M = len(P)
        if math.comb(self.steps + M - 1, M - 1) > self.MAX_GRID:
            raise ValueError(f"{M} models with steps={self.steps} make a grid over {self.MAX_GRID} weight vectors; "
                             "use fewer steps")
        best_key, best_w = None, None
        for w in _simplex_grid(M, self.steps):
            fused = weighted_sum(P, w)
            seen = ~np.isnan(fused).all(axis=1)
            acc = float(np.mean(_argmax_or_missing(fused) == y))
            key = (-acc, nll(fused[seen], y[seen]) if seen.any() else math.inf)
            if best_key is None or key < best_key:
                best_key, best_w = key, w
        self.weights_ = best_w

    def _predict_proba(self, P: np.ndarray) -> np.ndarray:
        return weighted_sum(P, self.weights_)

    def _state(self) -> dict[str, Any]:
        return {"weights": self.weights_.tolist()}

    def _load(self, fitted: dict[str, Any]) -> None:
        self.weights_ = np.asarray(fitted["weights"], dtype=np.float64)


def cross_fit_proba(build: Callable[[], FusionRule], posteriors: Posteriors, y: np.ndarray, folds: int,
                    seed: int = 0) -> np.ndarray:
    """Out-of-fold fused posteriors: each part of the clips is predicted by a rule fitted on the others.

    The clips are cut into ``folds`` parts, stratified by label (scikit-learn's
    ``StratifiedKFold``, shuffled with ``seed``); when a class has fewer clips than ``folds``
    the number of parts drops to that class's count (at least 2), so every fitting part still
    sees every class; with a class of a single clip, plain shuffled ``KFold``.
    Shapes: M arrays ``(N, C)``, ``y`` ``(N,)`` -> ``(N, C)``.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    P = stack_posteriors(posteriors)
    y = _check_labels(y, P.shape[1], P.shape[2])
    n = len(y)
    k = min(int(folds), n)
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds and 2 clips, got {folds} folds over {n} clips")
    smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
    splitter = (StratifiedKFold(min(k, smallest), shuffle=True, random_state=seed) if smallest >= 2
                else KFold(k, shuffle=True, random_state=seed))
    out = np.full((n, P.shape[2]), np.nan)
    for train, held in splitter.split(np.zeros(n), y):
        rule = build()
        rule.fit(P[:, train], y[train])
        out[held] = rule.predict_proba(P[:, held])
    return out


# --------------------------------------------------------------------------- registry

RULE_CLASSES: dict[str, type[FusionRule]] = {
    cls.name: cls for cls in (ConfidenceEnsemble, PriorEnsemble, LogisticRegressionFusion, CascadeFusion,
                              WeightedSumFusion)
}

DEFAULT_MODALITIES = ("audio", "video")


def _cascade(joined: tuple[str, ...], prior: bool) -> Callable[..., FusionRule]:
    def build(modalities: Sequence[str] = DEFAULT_MODALITIES, **kwargs: Any) -> FusionRule:
        modalities = list(modalities)
        missing = [m for m in joined if m not in modalities]
        if missing:
            raise ValueError(f"cascade joining {'+'.join(joined)} needs input models named {missing}; the inputs "
                             f"are {modalities}")
        # Joined models keep their input order, so exact ties resolve as they would without LR.
        return CascadeFusion(join=sorted(modalities.index(m) for m in joined), prior=prior, **kwargs)

    build.__doc__ = (f"LR output + the {' and '.join(joined)} model(s) in the confidence ensemble"
                     f"{' with micro-F1 prior' if prior else ''}.")
    return build


# name -> builder. Cascade names refer to the inputs by modality: by default the inputs are
# (audio, video); pass ``modalities`` to make_rule for another order.
RULES: dict[str, Callable[..., FusionRule]] = {
    "lr": LogisticRegressionFusion,
    "ensemble": ConfidenceEnsemble,
    "prior": PriorEnsemble,
    "weighted": WeightedSumFusion,
    "cascade_audio": _cascade(("audio",), prior=False),
    "cascade_video": _cascade(("video",), prior=False),
    "cascade_both": _cascade(("audio", "video"), prior=False),
    "cascade_prior_audio": _cascade(("audio",), prior=True),
    "cascade_prior_video": _cascade(("video",), prior=True),
    "cascade_prior_both": _cascade(("audio", "video"), prior=True),
}


def make_rule(name: str, *, modalities: Sequence[str] | None = None, **kwargs: Any) -> FusionRule:
    """Build the fusion rule registered as ``name`` in :data:`RULES`.

    Args:
        name: e.g. ``lr``, ``ensemble``, ``prior``, ``weighted``, ``cascade_audio``,
            ``cascade_prior_video``.
        modalities: the modality of each input model, in input order (cascade rules only;
            default ``("audio", "video")``).
        **kwargs: constructor arguments (e.g. ``calibrate=True``, ``C=0.5``).
    """
    if name not in RULES:
        raise UnknownNameError(f"unknown fusion rule {name!r}; known: {', '.join(RULES)}")
    if name.startswith("cascade_"):
        return RULES[name](modalities=modalities or DEFAULT_MODALITIES, **kwargs)
    return RULES[name](**kwargs)


def rule_from_state_dict(state: dict[str, Any]) -> FusionRule:
    """Rebuild a fitted rule from :meth:`FusionRule.state_dict` (e.g. read from a model's JSON)."""
    name = state.get("rule")
    if name not in RULE_CLASSES:
        raise ValueError(f"unknown fusion rule {name!r} in state; known: {', '.join(RULE_CLASSES)}")
    return RULE_CLASSES[name](**state.get("params", {})).load_state_dict(state)
