"""predictions.csv I/O and validation, and ``lightning-emo fuse`` end to end on synthetic complementary models."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from lightning_emo.cli import main as cli_main
from lightning_emo.data.predictions import (
    Predictions,
    PredictionsError,
    check_compatible,
    read_predictions,
    write_predictions,
)
from lightning_emo.fusion.report import fuse_report

CLASSES = ["angry", "happy", "sad", "neutral"]
N_VAL, N_TEST = 80, 120


def _posteriors(y: np.ndarray, good: list[int], strength: float, rng: np.random.Generator) -> np.ndarray:
    z = rng.normal(size=(len(y), len(CLASSES)))
    hit = np.isin(y, good)
    z[np.flatnonzero(hit), y[hit]] += strength
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two audio models informative on angry/happy, two video models on sad/neutral (v1 misses some faces)."""
    root = tmp_path_factory.mktemp("preds")
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(CLASSES), N_VAL + N_TEST)
    ids = [f"clip{i:04d}" for i in range(len(y))]
    splits = ["val"] * N_VAL + ["test"] * N_TEST
    labels = [CLASSES[i] for i in y]
    paths = {}
    for name, good, strength in [("a1", [0, 1], 3.0), ("a2", [0, 1], 2.0), ("v1", [2, 3], 3.0), ("v2", [2, 3], 2.5)]:
        p = _posteriors(y, good, strength, rng)
        if name == "v1":
            p[[3, 10, N_VAL + 1, N_VAL + 7]] = np.nan  # no face found
        paths[name] = write_predictions(root / name / "predictions.csv", ids, splits, labels, p, CLASSES)
    return {"root": root, "paths": paths, "ids": ids, "splits": splits, "labels": labels, "y": y}


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = cli_main(["fuse", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- predictions.csv


def test_predictions_round_trip_with_missing_rows(tmp_path):
    probs = np.array([[0.2, 0.8], [np.nan, np.nan], [1.0, 0.0]])
    path = write_predictions(tmp_path / "p.csv", ["a", "b", "c"], ["val", "test", "test"], ["x", "", "y"], probs,
                             ["x", "y"])
    text = path.read_text().splitlines()
    assert text[0] == "clip_id,split,label,x,y" and text[2] == "b,test,,,"
    p = read_predictions(path)
    assert p.clip_ids == ["a", "b", "c"] and p.classes == ["x", "y"]
    np.testing.assert_allclose(p.probs[[0, 2]], probs[[0, 2]])
    assert np.isnan(p.probs[1]).all()
    np.testing.assert_array_equal(p.y, [0, -1, 1])
    np.testing.assert_array_equal(p.missing, [False, True, False])
    np.testing.assert_array_equal(p.predicted, [1, -1, 0])
    assert p.split("test").clip_ids == ["b", "c"]
    assert p.align(["c", "a"]).labels == ["y", "x"]
    with pytest.raises(PredictionsError, match="'zz'"):
        p.align(["zz"])
    # Columns may come in another order when the class list is given.
    q = read_predictions(path, classes=["y", "x"])
    np.testing.assert_allclose(q.probs[0], [0.8, 0.2])


def test_write_predictions_refuses_bad_input(tmp_path):
    ok = dict(clip_ids=["a"], splits=["val"], labels=["x"], classes=["x", "y"])
    with pytest.raises(ValueError, match="partially missing"):
        write_predictions(tmp_path / "p.csv", probs=np.array([[0.5, np.nan]]), **ok)
    with pytest.raises(ValueError, match="not a probability"):
        write_predictions(tmp_path / "p.csv", probs=np.array([[0.5, 0.6]]), **ok)
    with pytest.raises(ValueError, match="unknown label"):
        write_predictions(tmp_path / "p.csv", probs=np.array([[0.5, 0.5]]), **{**ok, "labels": ["z"]})
    with pytest.raises(ValueError, match="shape"):
        write_predictions(tmp_path / "p.csv", probs=np.array([[1.0]]), **ok)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("body, line, column, message", [
    ("clip_id,label,x,y\na,x,0.5,0.5\n", 1, "split", "missing column"),
    ("clip_id,split,label,x,y\na,val,x,0.5,abc\n", 2, "y", "expected a probability"),
    ("clip_id,split,label,x,y\na,val,x,0.5,0.5\nb,val,x,0.7,0.5\n", 3, "x", "sum to 1.2"),
    ("clip_id,split,label,x,y\na,val,x,,0.5\n", 2, "x", "partially empty"),
    ("clip_id,split,label,x,y\na,val,z,0.5,0.5\n", 2, "label", "unknown label 'z'"),
    ("clip_id,split,label,x,y\na,val,x,0.5,0.5\na,test,x,0.5,0.5\n", 3, "clip_id", "duplicate clip_id 'a'"),
    ("clip_id,split,label,x,y\na,val,x,0.5\n", 2, None, "expected 5 fields"),
])
def test_read_predictions_errors_name_file_line_column(tmp_path, body, line, column, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(PredictionsError, match=message) as info:
        read_predictions(path)
    err = info.value
    assert err.file == str(path) and err.line == line and err.column == column
    assert str(path) in str(err) and f"line {line}" in str(err)


def test_read_predictions_class_list_mismatch(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("clip_id,split,label,x,y\na,val,x,0.5,0.5\n")
    with pytest.raises(PredictionsError, match="missing class column") as info:
        read_predictions(path, classes=["x", "w"])
    assert info.value.column == "w"
    with pytest.raises(PredictionsError, match="unexpected column"):
        read_predictions(path, classes=["x"])


def test_check_compatible_names_the_differing_clips():
    p = Predictions(["a", "b", "c"], ["val"] * 3, ["x"] * 3, np.full((3, 2), 0.5), ["x", "y"], "one.csv")
    q = Predictions(["a", "b", "d"], ["val"] * 3, ["x"] * 3, np.full((3, 2), 0.5), ["x", "y"], "two.csv")
    with pytest.raises(PredictionsError, match=r"two.csv: clip set differs from one.csv: 1 clip\(s\) only in "
                                               r"one.csv: 'c'; 1 clip\(s\) only in this file: 'd'"):
        check_compatible([p, q])
    r = Predictions(["a", "b", "c"], ["val"] * 3, ["x"] * 3, np.full((3, 2), 0.5), ["y", "x"], "three.csv")
    with pytest.raises(PredictionsError, match="three.csv.*class list"):
        check_compatible([p, r])
    s = Predictions(["a", "b", "c"], ["val", "val", "test"], ["x"] * 3, np.full((3, 2), 0.5), ["x", "y"], "four.csv")
    with pytest.raises(PredictionsError, match="'c' is in split 'test' here but 'val'"):
        check_compatible([p, s])


def test_files_that_disagree_on_a_label_name_the_line(tmp_path):
    probs = np.full((2, 2), 0.5)
    one = read_predictions(write_predictions(tmp_path / "one.csv", ["a", "b"], ["val"] * 2, ["x", "y"], probs, "xy"))
    two = read_predictions(write_predictions(tmp_path / "two.csv", ["a", "b"], ["val"] * 2, ["x", "x"], probs, "xy"))
    with pytest.raises(PredictionsError, match="labelled 'x' here but 'y'") as info:
        check_compatible([one, two])
    assert info.value.file == str(tmp_path / "two.csv") and info.value.line == 3 and info.value.column == "label"


# --------------------------------------------------------------------------- the command


def test_fuse_command_writes_paper_tables_and_beats_single_models(corpus, tmp_path, capsys):
    paths = corpus["paths"]
    out = tmp_path / "fusion"
    rc, stdout, _ = _run(["--audio", f"a1={paths['a1']}", "--audio", f"a2={paths['a2']}",
                          "--video", f"v1={paths['v1']}", "--video", f"v2={paths['v2']}", "--out", out], capsys)
    assert rc == 0
    assert "Fusion (Table 3)" in stdout and "Cascade (Table 4)" in stdout and "(Table 5)" in stdout

    # Table 3 layout: rows are audio+video pairs, columns the methods, prior d in brackets.
    t3 = _read_csv(out / "table3_fusion.csv")
    assert [r["features"] for r in t3] == ["a1+v1", "a1+v2", "a2+v1", "a2+v2"]
    assert list(t3[0]) == ["features", "LR", "ensemble", "prior", "weighted"]
    assert all(r["prior"].count("(") == 1 and r["prior"].endswith(")") for r in t3)
    t4 = _read_csv(out / "table4_cascade.csv")
    assert [r["cascade"] for r in t4] == ["LR(a1_v1)", "LR(a1_v2)", "LR(a2_v1)", "LR(a2_v2)"]
    assert list(t4[0]) == ["cascade", "+audio", "+video", "+audio+video"]
    t5 = _read_csv(out / "table5_cascade_prior.csv")
    assert list(t5[0]) == ["cascade", "+audio", "+video"] and "(" in t5[0]["+audio"]
    t2 = _read_csv(out / "table2_single.csv")
    assert [r["features"] for r in t2] == ["a1", "a2", "v1", "v2"]
    assert float(next(r for r in t2 if r["features"] == "v1")["test clips seen"]) == pytest.approx(1 - 2 / N_TEST,
                                                                                                   abs=1e-3)
    per_class = _read_csv(out / "per_class_recall.csv")
    assert list(per_class[0])[1:] == CLASSES + ["overall"]
    assert any(r["model / method"] == "a1+v1 / LR" for r in per_class)
    assert any(r["model / method"] == "LR(a1_v1) / +audio (prior)" for r in per_class)

    # Fusion of complementary models beats the best single model, by a wide margin here.
    results = _read_csv(out / "results.csv")
    best_single = max(float(r["test_accuracy"]) for r in results if r["kind"] == "single")
    for method in ("lr", "ensemble", "prior", "weighted"):
        fused = float(next(r for r in results if r["group"] == "a1+v1" and r["rule"] == method)["test_accuracy"])
        assert fused > best_single + 0.1, method
    # The single-model accuracy is recomputable from the input file (a missing clip counts as wrong).
    v1 = read_predictions(paths["v1"]).split("test")
    assert float(next(r for r in results if r["group"] == "v1")["test_accuracy"]) == pytest.approx(
        np.mean(v1.predicted == v1.y), abs=1e-6)

    md = (out / "results.md").read_text()
    assert "| a1+v1 |" in md and "Best:" in md
    assert (out / "confusion_best.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fused = read_predictions(out / "a1+v1" / "prior" / "predictions.csv", classes=CLASSES)
    assert fused.clip_ids == corpus["ids"] and set(fused.splits) == {"val", "test"}
    assert (out / "a1+v1" / "cascade_prior_audio" / "rule.json").is_file()


def test_fused_outputs_can_be_fused_again_and_generic_models(corpus, tmp_path, capsys):
    paths = corpus["paths"]
    first = tmp_path / "first"
    rc, _, _ = _run(["--audio", f"a1={paths['a1']}", "--video", f"v2={paths['v2']}", "--out", first,
                     "--rules", "lr", "ensemble", "--quiet", "--no-png"], capsys)
    assert rc == 0 and not (first / "confusion_best.png").exists()
    second = tmp_path / "second"
    rc, stdout, _ = _run(["--model", f"lr={first / 'a1+v2' / 'lr' / 'predictions.csv'}",
                          "--model", f"a2={paths['a2']}", "--model", f"v1={paths['v1']}",
                          "--rules", "prior", "weighted", "cascade", "--calibrate", "--out", second], capsys)
    assert rc == 0
    t3 = _read_csv(second / "table3_fusion.csv")
    assert [r["features"] for r in t3] == ["lr+a2+v1"]
    assert t3[0]["prior"].count("/") == 2  # three bonuses for three models
    assert "cascade rules need an audio and a video model" in stdout
    assert "temperature-scaled" in stdout


def test_fuse_report_python_api(corpus):
    preds = {n: read_predictions(p) for n, p in corpus["paths"].items()}
    report = fuse_report({"a1": preds["a1"], "v1": preds["v1"]}, {"a1": "audio", "v1": "video"},
                         rules=["ensemble", "cascade_prior_both"])
    assert [(r.table, r.row, r.column) for r in report.results] == [
        ("fusion", "a1+v1", "ensemble"), ("cascade_prior", "LR(a1_v1)", "+audio+video")]
    assert report.results[0].inputs == ["v1", "a1"]  # video first: it wins exact ties (eq. 3)
    assert set(report.tables()) == {"single", "fusion", "cascade_prior", "methods", "per_class"}
    assert report.best.val_accuracy == max(r.val_accuracy for r in report.results)  # chosen on validation
    assert len(report.y_test) == N_TEST


def test_fuse_errors_name_the_file(corpus, tmp_path, capsys):
    paths = corpus["paths"]
    ids, splits, labels = corpus["ids"], corpus["splits"], corpus["labels"]
    uniform = np.full((len(ids), 4), 0.25)

    other_classes = write_predictions(tmp_path / "classes.csv", ids, splits, labels[:0] + [""] * len(ids), uniform,
                                      ["angry", "happy", "sad", "fear"])
    rc, _, err = _run(["--audio", f"a1={paths['a1']}", "--video", f"v={other_classes}", "--out", tmp_path / "o"],
                      capsys)
    assert rc == 2 and str(other_classes) in err and "class list" in err

    fewer = write_predictions(tmp_path / "fewer.csv", ids[:-3], splits[:-3], labels[:-3], uniform[:-3], CLASSES)
    rc, _, err = _run(["--audio", f"a1={paths['a1']}", "--video", f"v={fewer}", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and str(fewer) in err and "clip set" in err and repr(ids[-1]) in err

    no_test = write_predictions(tmp_path / "no_test.csv", ids, ["val"] * len(ids), labels, uniform, CLASSES)
    rc, _, err = _run(["--audio", f"a1={paths['a1']}", "--video", f"v={no_test}", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and str(no_test) in err and "no 'test' rows" in err

    broken = tmp_path / "broken.csv"
    broken.write_text(paths["a1"].read_text().replace("val,", "val,oops,", 1))
    rc, _, err = _run(["--audio", f"a1={broken}", "--video", f"v1={paths['v1']}", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and f"{broken}, line 2" in err

    unlabelled = write_predictions(tmp_path / "unlabelled.csv", ids, splits, [""] * len(ids), uniform, CLASSES)
    rc, _, err = _run(["--model", f"x={unlabelled}", "--model", f"y={unlabelled}", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and f"{unlabelled}, line 2, column 'label'" in err and "no label" in err

    rc, _, err = _run(["--audio", f"a1={paths['a1']}", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "nothing to fuse" in err
    assert not (tmp_path / "o").exists()

    with pytest.raises(SystemExit) as info:
        cli_main(["fuse", "--audio", "no-equals-sign", "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli_main(["fuse", "--audio", f"a1={paths['a1']}", "--video", f"v1={paths['v1']}", "--rules", "bogus",
                  "--out", str(tmp_path / "o")])
    assert "unknown fusion rule 'bogus'" in capsys.readouterr().err


def test_crossfit_gives_out_of_sample_validation_scores_and_the_same_test_predictions(corpus):
    models = {n: corpus["paths"][n] for n in ("a1", "v1")}
    mods = {"a1": "audio", "v1": "video"}
    paper = fuse_report(models, mods, rules=["lr", "prior", "cascade_prior_audio"], val_folds=0)
    cross = fuse_report(models, mods, rules=["lr", "prior", "cascade_prior_audio"], crossfit=5)
    by = {r.rule_name: r for r in paper.results}
    for r in cross.results:
        p = by[r.rule_name]
        test = cross.test_rows
        if r.rule_name != "cascade_prior_audio":  # the cascade's prior itself is cross-fitted
            np.testing.assert_allclose(r.predictions.probs[test], p.predictions.probs[test])
    # LR scored on the clips it was fitted on is optimistic; cross-fitted it is not
    assert cross.results[0].val_accuracy < by["lr"].val_accuracy
    assert cross.fit_mode == "crossfit" and "out-of-sample" in cross.markdown()
    # the cascade's prior: the LR output's F1 on cross-fitted outputs is below its in-sample F1
    assert cross.results[2].rule.ensemble_.f1_[0] < by["cascade_prior_audio"].rule.ensemble_.f1_[0]
    with pytest.raises(ValueError, match="crossfit must be 0"):
        fuse_report(models, mods, rules=["lr"], crossfit=1)


def test_default_scores_paper_rules_out_of_sample_for_the_choice(corpus):
    """The paper's fit, scored on validation by 5-fold cross-fitting: same test predictions, honest val scores."""
    models = {n: corpus["paths"][n] for n in ("a1", "v1")}
    mods = {"a1": "audio", "v1": "video"}
    rules = ["lr", "prior", "cascade_prior_audio"]
    in_sample = fuse_report(models, mods, rules=rules, val_folds=0)
    default = fuse_report(models, mods, rules=rules)
    test = default.test_rows
    for a, b in zip(default.results, in_sample.results):
        np.testing.assert_allclose(a.predictions.probs[test], b.predictions.probs[test])  # the paper's rules
    assert default.results[0].val_accuracy < in_sample.results[0].val_accuracy  # LR no longer scored on its fit
    assert default.fit_mode == "paper" and "5-fold cross-fitted" in default.markdown()
    assert "in-sample" in in_sample.markdown()
    with pytest.raises(ValueError, match="val_folds must be 0"):
        fuse_report(models, mods, rules=["lr"], val_folds=1)


def test_prior_rule_uses_stored_micro_f1(corpus):
    models = {n: corpus["paths"][n] for n in ("a1", "v1")}
    mods = {"a1": "audio", "v1": "video"}
    refit = fuse_report(models, mods, rules=["prior"]).results[0].rule
    same = fuse_report(models, mods, rules=["prior"], stored_f1={"v1": refit.f1_[0], "a1": refit.f1_[1]})
    assert same.results[0].rule.f1_.tolist() == refit.f1_.tolist()
    assert any("FusionPriorCallback" in n for n in same.notes)
    other = fuse_report(models, mods, rules=["prior"], stored_f1={"v1": 0.9, "a1": 0.1}).results[0].rule
    assert other.f1_.tolist() == [0.9, 0.1] and other.bonus_.tolist() == pytest.approx([0.8, 0.0])


def test_report_recommends_by_validation_and_reports_the_paired_test(corpus):
    report = fuse_report({n: corpus["paths"][n] for n in ("a1", "v1")}, {"a1": "audio", "v1": "video"},
                         rules=["lr", "ensemble", "prior"])
    assert report.recommended.val_accuracy == max(r.val_accuracy for r in [*report.singles, *report.results])
    cmp = report.paired_comparison()
    assert cmp["fusion"] == report.best.label and cmp["single"] == report.best_single.label
    assert cmp["mcnemar_p"] < 0.05 and cmp["diff"] > 0  # complementary models: fusion clearly better here
    md = report.markdown()
    assert "Recommended (highest validation WA)" in md and "McNemar exact p" in md and "| UA |" in md
    assert "All methods" in md and "macro-F1" in md
