"""Fusion rules: hand-computed examples, references (sklearn), properties (hypothesis), state round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from lightning_emo.fusion import (
    RULES,
    CascadeFusion,
    ConfidenceEnsemble,
    LogisticRegressionFusion,
    PriorEnsemble,
    TemperatureScaling,
    WeightedSumFusion,
    confidence_ensemble,
    ensemble_with_prior,
    make_rule,
    margins,
    micro_f1_priors,
    micro_f1_scores,
    rule_from_state_dict,
    temperature_scale,
    weighted_sum,
)
from lightning_emo.fusion.calibration import nll

NAN3 = [np.nan] * 3

# Five clips, three classes; audio misses clips 3-4, video misses clip 4.
AUDIO = np.array([[0.6, 0.3, 0.1],    # margin 0.3
                  [0.4, 0.35, 0.25],  # margin 0.05
                  [0.5, 0.3, 0.2],    # margin 0.2 (ties with video)
                  NAN3, NAN3])
VIDEO = np.array([[0.1, 0.2, 0.7],    # margin 0.5
                  [0.1, 0.6, 0.3],    # margin 0.3
                  [0.3, 0.5, 0.2],    # margin 0.2 (the same float as audio's)
                  [0.1, 0.1, 0.8],
                  NAN3])


def _synthetic(n: int, seed: int, C: int = 4, strengths=(2.0, 2.0)):
    """Model m is informative on half the classes: audio on the first half, video on the second."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    out = []
    for m, s in enumerate(strengths):
        z = rng.normal(size=(n, C))
        good = (y < C // 2) if m == 0 else (y >= C // 2)
        z[np.flatnonzero(good), y[good]] += s
        p = np.exp(z)
        out.append(p / p.sum(1, keepdims=True))
    return out, y


# --------------------------------------------------------------------------- functional API


def test_margins_by_hand():
    np.testing.assert_allclose(margins(AUDIO)[:3], [0.3, 0.05, 0.2])
    assert np.isnan(margins(AUDIO)[3:]).all()
    np.testing.assert_allclose(margins(np.array([[0.25, 0.25, 0.5]])), [0.25])
    np.testing.assert_allclose(margins(np.array([[1.0]])), [1.0])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        margins(np.zeros(3))


def test_confidence_ensemble_by_hand_with_tie_and_missing():
    labels, decider, probs = confidence_ensemble([AUDIO, VIDEO])
    # clip 0: video 0.5 > 0.3; clip 1: video 0.3 > 0.05; clip 2: tie -> audio (listed first);
    # clip 3: audio missing -> video; clip 4: nobody saw it.
    np.testing.assert_array_equal(decider, [1, 1, 0, 1, -1])
    np.testing.assert_array_equal(labels, [2, 1, 0, 2, -1])
    np.testing.assert_allclose(probs[:4], np.stack([VIDEO[0], VIDEO[1], AUDIO[2], VIDEO[3]]))
    assert np.isnan(probs[4]).all()
    # The other order: the tie goes to video, now listed first.
    labels, decider, _ = confidence_ensemble([VIDEO, AUDIO])
    np.testing.assert_array_equal(decider, [0, 0, 0, 0, -1])
    np.testing.assert_array_equal(labels, [2, 1, 1, 2, -1])


def test_confidence_ensemble_with_bonus_by_hand():
    # Audio gets d = 0.25: clip 0 becomes 0.55 >= 0.5 -> audio; clip 1: 0.30 >= 0.30 (a tie) -> audio.
    labels, decider, _ = confidence_ensemble([AUDIO, VIDEO], bonus=[0.25, 0.0])
    np.testing.assert_array_equal(decider, [0, 0, 0, 1, -1])
    np.testing.assert_array_equal(labels, [0, 0, 0, 2, -1])
    with pytest.raises(ValueError, match="bonus"):
        confidence_ensemble([AUDIO, VIDEO], bonus=[0.1])


def test_micro_f1_priors_by_hand_and_against_sklearn():
    y = np.array([0, 1, 2, 0])
    good = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3      # 3 of 4 right
    bad = np.eye(3)[[1, 1, 0, 2]] * 0.8 + 0.2 / 3       # 1 of 4 right
    np.testing.assert_allclose(micro_f1_scores([good, bad], y), [0.75, 0.25])
    np.testing.assert_allclose(micro_f1_priors([good, bad], y), [0.5, 0.0])  # the paper's d for the better one
    (a, v), y = _synthetic(60, 3)
    expected = [f1_score(y, p.argmax(1), average="micro") for p in (a, v)]
    np.testing.assert_allclose(micro_f1_scores([a, v], y), expected)
    # A model is scored on the clips it saw.
    v_missing = v.copy()
    v_missing[:10] = np.nan
    np.testing.assert_allclose(micro_f1_scores([v_missing], y),
                               [f1_score(y[10:], v[10:].argmax(1), average="micro")])


def test_ensemble_with_prior_fits_on_val_applies_on_test():
    (a, v), y = _synthetic(200, 4, strengths=(3.0, 1.0))
    val, test = slice(0, 100), slice(100, 200)
    out = ensemble_with_prior([a[val], v[val]], y[val], [a[test], v[test]])
    bonus = micro_f1_priors([a[val], v[val]], y[val])
    np.testing.assert_array_equal(out.labels, confidence_ensemble([a[test], v[test]], bonus).labels)
    rule = PriorEnsemble().fit([a[val], v[val]], y[val])
    np.testing.assert_allclose(rule.bonus_, bonus)
    np.testing.assert_array_equal(rule.predict([a[test], v[test]]), out.labels)


def test_weighted_sum_by_hand():
    out = weighted_sum([AUDIO, VIDEO], [0.25, 0.75])
    np.testing.assert_allclose(out[0], 0.25 * AUDIO[0] + 0.75 * VIDEO[0])
    np.testing.assert_allclose(out[3], VIDEO[3])  # renormalised over the model present
    assert np.isnan(out[4]).all()
    # Only a zero-weight model present: the present models are averaged.
    np.testing.assert_allclose(weighted_sum([AUDIO, VIDEO], [1.0, 0.0])[3], VIDEO[3])


# --------------------------------------------------------------------------- classes


def test_lr_fusion_agrees_with_sklearn():
    (a, v), y = _synthetic(300, 5)
    val, test = slice(0, 150), slice(150, 300)
    rule = LogisticRegressionFusion(C=0.7).fit([a[val], v[val]], y[val])
    ref = LogisticRegression(C=0.7, max_iter=1000).fit(np.hstack([a[val], v[val]]), y[val])
    np.testing.assert_allclose(rule.predict_proba([a[test], v[test]]), ref.predict_proba(np.hstack([a[test], v[test]])),
                               atol=1e-10)
    np.testing.assert_array_equal(rule.predict([a[test], v[test]]), ref.predict(np.hstack([a[test], v[test]])))
    assert rule.indicators_ == []


def test_lr_fusion_missing_models_uniform_fill_and_indicator():
    (a, v), y = _synthetic(200, 6)
    v = v.copy()
    v[::7] = np.nan  # video missing on some validation clips
    rule = LogisticRegressionFusion().fit([a, v], y)
    assert rule.indicators_ == [1]
    X = rule.features(np.stack([a, v]))
    assert X.shape == (200, 4 + 4 + 1)
    np.testing.assert_allclose(X[0, 4:8], 0.25)  # uniform posterior in the missing block
    assert X[0, 8] == 1.0 and X[1, 8] == 0.0
    ref = LogisticRegression(max_iter=1000).fit(X, y)
    np.testing.assert_allclose(rule.predict_proba([a, v]), ref.predict_proba(X), atol=1e-10)
    # A clip no model saw gets a NaN row and label -1.
    a2 = a.copy()
    a2[::7] = np.nan
    p = rule.predict_proba([a2, v])
    assert np.isnan(p[::7]).all() and not np.isnan(p[1::7]).any()
    assert (rule.predict([a2, v])[::7] == -1).all()


def test_lr_fusion_class_absent_from_validation_gets_zero():
    (a, v), y = _synthetic(120, 7)
    keep = y != 3
    rule = LogisticRegressionFusion().fit([a[keep], v[keep]], y[keep])
    p = rule.predict_proba([a, v])
    assert p.shape == (120, 4)
    np.testing.assert_allclose(p[:, 3], 0.0)
    np.testing.assert_allclose(p.sum(1), 1.0)
    with pytest.raises(ValueError, match="two classes"):
        LogisticRegressionFusion().fit([a[y == 0], v[y == 0]], y[y == 0])


def test_cascade_is_lr_output_joined_in_the_ensemble():
    (a, v), y = _synthetic(300, 8)
    val, test = slice(0, 150), slice(150, 300)
    lr = LogisticRegressionFusion().fit([a[val], v[val]], y[val])
    q_val, q_test = lr.predict_proba([a[val], v[val]]), lr.predict_proba([a[test], v[test]])
    # Table 4: LR + audio, no prior (inputs ordered audio, video).
    rule = make_rule("cascade_audio").fit([a[val], v[val]], y[val])
    assert isinstance(rule, CascadeFusion) and rule.join == [0] and not rule.prior
    expected = confidence_ensemble([q_test, a[test]])
    np.testing.assert_allclose(rule.predict_proba([a[test], v[test]]), expected.probs)
    np.testing.assert_array_equal(rule.decide([a[test], v[test]]).decider, expected.decider)
    # Table 5: LR + video with the micro-F1 prior fitted on validation.
    rule = make_rule("cascade_prior_video").fit([a[val], v[val]], y[val])
    bonus = micro_f1_priors([q_val, v[val]], y[val])
    np.testing.assert_allclose(rule.bonus_, bonus)
    expected = confidence_ensemble([q_test, v[test]], bonus)
    np.testing.assert_array_equal(rule.predict([a[test], v[test]]), expected.labels)
    # Both joined.
    rule = make_rule("cascade_both").fit([a[val], v[val]], y[val])
    np.testing.assert_array_equal(rule.predict([a[test], v[test]]),
                                  confidence_ensemble([q_test, a[test], v[test]]).labels)


def test_cascade_modalities_order_and_errors():
    assert make_rule("cascade_audio", modalities=("video", "audio")).join == [1]
    assert make_rule("cascade_both", modalities=("video", "audio")).join == [0, 1]
    with pytest.raises(ValueError, match="audio"):
        make_rule("cascade_audio", modalities=("x", "y"))
    with pytest.raises(KeyError, match="unknown fusion rule"):
        make_rule("nope")


def test_weighted_fusion_fits_weights_on_validation():
    (a, v), y = _synthetic(200, 9, strengths=(2.5, 1.0))
    rule = WeightedSumFusion(steps=10).fit([a, v], y)
    assert rule.weights_.sum() == pytest.approx(1.0)
    acc = np.mean(rule.predict([a, v]) == y)
    # The grid holds the one-hot weights, so validation accuracy is at least each model's own.
    assert acc >= max(np.mean(a.argmax(1) == y), np.mean(v.argmax(1) == y))
    np.testing.assert_allclose(rule.predict_proba([a, v]), weighted_sum([a, v], rule.weights_))


def test_weighted_grid_size_guard():
    with pytest.raises(ValueError, match="fewer steps"):
        WeightedSumFusion(steps=100).fit([AUDIO[:3]] * 8, np.array([0, 1, 2]))


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("calibrate", [False, True])
def test_state_dict_round_trip_through_json(name, calibrate):
    (a, v), y = _synthetic(160, 10)
    v = v.copy()
    v[::9] = np.nan
    rule = make_rule(name, calibrate=calibrate).fit([a[:80], v[:80]], y[:80])
    state = json.loads(json.dumps(rule.state_dict()))
    assert state["rule"] == type(rule).name and state["params"]["calibrate"] is calibrate
    again = rule_from_state_dict(state)
    np.testing.assert_allclose(again.predict_proba([a[80:], v[80:]]), rule.predict_proba([a[80:], v[80:]]),
                               atol=1e-12)
    if calibrate:
        assert len(state["temperature"]["temperatures"]) == 2


def test_unfitted_and_mismatched_inputs_are_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        ConfidenceEnsemble().predict([AUDIO, VIDEO])
    rule = ConfidenceEnsemble().fit([AUDIO[:3], VIDEO[:3]], np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="2 models"):
        rule.predict([AUDIO, VIDEO, VIDEO])
    with pytest.raises(ValueError, match="class index"):
        ConfidenceEnsemble().fit([AUDIO[:3]], np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="partially NaN"):
        confidence_ensemble([np.array([[0.5, np.nan, 0.5]])])
    with pytest.raises(ValueError, match="state is for rule"):
        PriorEnsemble().load_state_dict(rule.state_dict())


# --------------------------------------------------------------------------- calibration


def test_temperature_scaling_lowers_nll_of_overconfident_posteriors():
    rng = np.random.default_rng(11)
    n, C = 400, 5
    y = rng.integers(0, C, n)
    z = rng.normal(size=(n, C))
    z[np.arange(n), y] += 1.0
    over = np.exp(4 * z)  # four times too sharp
    over /= over.sum(1, keepdims=True)
    under = np.exp(0.3 * z)
    under /= under.sum(1, keepdims=True)
    ts = TemperatureScaling().fit([over, under], y)
    t_over, t_under = ts.temperatures_
    assert t_over > 2 and t_under < 1
    cal_over, cal_under = ts.transform([over, under])
    assert nll(cal_over, y) < nll(over, y) and nll(cal_under, y) < nll(under, y)
    np.testing.assert_array_equal(cal_over.argmax(1), over.argmax(1))  # accuracy unchanged
    np.testing.assert_allclose(temperature_scale(over, 1.0), over, atol=1e-9)
    assert np.isnan(temperature_scale(AUDIO, 2.0)[3]).all()


def test_calibrated_rule_applies_temperatures_before_the_ensemble():
    (a, v), y = _synthetic(200, 12)
    rule = ConfidenceEnsemble(calibrate=True).fit([a, v], y)
    ts = rule.temperature_
    np.testing.assert_allclose(rule.predict_proba([a, v]), confidence_ensemble(ts.transform([a, v])).probs)


# --------------------------------------------------------------------------- properties


@st.composite
def posterior_sets(draw, max_models: int = 4):
    M = draw(st.integers(1, max_models))
    N = draw(st.integers(1, 12))
    C = draw(st.integers(2, 5))
    raw = draw(arrays(np.float64, (M, N, C), elements=st.floats(0.01, 1.0)))
    P = raw / raw.sum(axis=2, keepdims=True)
    missing = draw(arrays(np.bool_, (M, N)))
    P[missing] = np.nan
    return P


@settings(max_examples=60, deadline=None)
@given(posterior_sets())
def test_zero_priors_equal_the_plain_ensemble(P):
    plain = confidence_ensemble(P)
    zero = confidence_ensemble(P, bonus=np.zeros(len(P)))
    for x, z in zip(plain, zero):
        np.testing.assert_array_equal(x, z)


@settings(max_examples=40, deadline=None)
@given(posterior_sets(max_models=3), st.data())
def test_equal_validation_f1_gives_zero_priors(P, data):
    # Two copies of one model: same F1, so the prior ensemble is the plain ensemble.
    y = data.draw(arrays(np.int64, P.shape[1], elements=st.integers(0, P.shape[2] - 1)))
    p = np.where(np.isnan(P[0]), P[-1], P[0])
    if np.isnan(p).all(axis=1).all():
        return
    both = [p, p.copy()]
    rule = PriorEnsemble().fit(both, y)
    np.testing.assert_array_equal(rule.bonus_, [0.0, 0.0])
    np.testing.assert_array_equal(rule.predict(both), confidence_ensemble(both).labels)


@settings(max_examples=60, deadline=None)
@given(posterior_sets(), st.data())
def test_a_prior_above_one_makes_that_model_always_decide(P, data):
    k = data.draw(st.integers(0, len(P) - 1))
    bonus = np.zeros(len(P))
    bonus[k] = data.draw(st.floats(1.0001, 5.0))
    out = confidence_ensemble(P, bonus)
    present = ~np.isnan(P[k]).all(axis=1)
    np.testing.assert_array_equal(out.decider[present], k)
    np.testing.assert_array_equal(out.labels[present], P[k][present].argmax(1))


@settings(max_examples=60, deadline=None)
@given(posterior_sets(max_models=1), st.data())
def test_one_model_alone_returns_its_own_argmax(P, data):
    p = P[0]
    seen = ~np.isnan(p).all(axis=1)
    expected = np.where(seen, np.nan_to_num(p).argmax(1), -1)
    np.testing.assert_array_equal(confidence_ensemble([p]).labels, expected)
    y = data.draw(arrays(np.int64, len(p), elements=st.integers(0, p.shape[1] - 1)))
    if seen.any():
        for rule in (ConfidenceEnsemble(), PriorEnsemble(), WeightedSumFusion(steps=4)):
            np.testing.assert_array_equal(rule.fit([p], y).predict([p]), expected)


def test_cross_fit_proba_is_out_of_fold_and_keeps_every_class_in_each_fit():
    from lightning_emo.fusion.rules import LogisticRegressionFusion, cross_fit_proba

    rng = np.random.default_rng(0)
    y = np.array([0] * 10 + [1] * 10 + [2] * 3)  # class 2 has fewer clips than folds: parts drop to 3
    P = [rng.dirichlet(np.ones(3), size=len(y)) for _ in range(2)]
    P[0][np.arange(len(y)), y] += 2.0
    P[0] /= P[0].sum(1, keepdims=True)
    oof = cross_fit_proba(lambda: LogisticRegressionFusion(), P, y, folds=5, seed=0)
    assert oof.shape == (len(y), 3) and np.isfinite(oof).all()
    insample = LogisticRegressionFusion().fit(P, y).predict_proba(P)
    assert not np.allclose(oof, insample)  # each clip predicted by a fit that never saw it
