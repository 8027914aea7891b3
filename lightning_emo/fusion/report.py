"""The fusion report: run the rules over audio x video pairs (and model groups) and build the paper's Tables 2-5.

:func:`fuse_report` takes several models' predictions (each with ``val`` and ``test`` rows),
fits every rule on the ``val`` split and scores it on ``test``, and returns a :class:`Report`
whose :meth:`Report.write` produces the tables (Markdown + CSV), the fused ``predictions.csv``
of every pair and rule (so they can be fused again), each fitted rule's state as JSON, and a
confusion-matrix PNG of the best method.

Conventions:

* accuracy counts a clip no model saw (no prediction) as an error, over all labelled test clips;
  per-class accuracy is the recall of each class (sklearn ``recall_score(average=None)``);
* WA (accuracy), UA (unweighted average recall), macro- and weighted-F1 are computed by
  :mod:`lightning_emo.fusion.metrics` for every model and method, on val and on test;
* the recommended method (:attr:`Report.best`) is the one with the highest VALIDATION score
  (``select_metric``, WA by default), and its test scores are reported; picking by test score
  would select on the test set. The fusion rules are fitted on the validation clips (the
  paper's fit), so their validation scores come from K-fold cross-fitting over those clips
  (``val_folds``, default 5: fitted on K-1 parts, predicting the held-out part), out-of-sample,
  while test predictions still come from the rule fitted on all validation clips; scored
  in-sample (``val_folds=0``) LR and the cascades would win the choice on their own training
  clips. ``crossfit=K`` also fits the cascades' prior on cross-fitted LR outputs;
* the recommended fusion is compared with the recommended single model on the same test clips
  (McNemar's exact test and a paired bootstrap of the WA difference);
* inside a pair the video model is listed first, so it wins exact margin ties as in the paper's
  eq. 3 (``c_v >= c_a``); the LR output is listed first in a cascade;
* priors ``d`` (in brackets, as in Table 5) are the fitted ensemble bonuses: for two members the
  positive micro-F1 difference, for more the bonus of every member joined by ``/``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, recall_score

from lightning_emo.data.predictions import Predictions, PredictionsError, check_compatible, read_predictions
from lightning_emo.errors import UsageError
from lightning_emo.fusion.metrics import METRICS, TITLES, mcnemar, paired_bootstrap, scores
from lightning_emo.fusion.rules import RULES, FusionRule, cross_fit_proba, make_rule
from lightning_emo.registry import UnknownNameError
from lightning_emo.utils import atomic_path, atomic_write_text, check_outputs

AUDIO, VIDEO = "audio", "video"
PAIR_RULES = ("lr", "ensemble", "prior", "weighted")
CASCADE_RULES = ("cascade_audio", "cascade_video", "cascade_both",
                 "cascade_prior_audio", "cascade_prior_video", "cascade_prior_both")
# What ``cascade`` expands to: the paper's Tables 4 (+audio, +video, +audio+video) and 5 (+audio, +video).
CASCADE_DEFAULT = ("cascade_audio", "cascade_video", "cascade_both", "cascade_prior_audio", "cascade_prior_video")
DEFAULT_RULES = ("lr", "ensemble", "prior", "cascade", "weighted")
RULE_TITLES = {"lr": "LR", "ensemble": "ensemble", "prior": "prior", "weighted": "weighted"}
CASCADE_COLUMNS = {"audio": "+audio", "video": "+video", "both": "+audio+video"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def expand_rules(rules: Sequence[str]) -> list[str]:
    """Expand ``cascade`` to :data:`CASCADE_DEFAULT` and check every name against :data:`RULES`."""
    out: list[str] = []
    for r in rules:
        names = CASCADE_DEFAULT if r == "cascade" else (r,)
        for n in names:
            if n not in RULES:
                raise UnknownNameError(f"unknown fusion rule {n!r}; known: cascade, {', '.join(RULES)}")
            if n not in out:
                out.append(n)
    return out


@dataclass
class Table:
    """A results table: a corner title, column names and rows of formatted cells."""

    title: str
    corner: str
    columns: list[str]
    rows: list[tuple[str, list[str]]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """A GitHub-flavoured Markdown table under a ``###`` heading."""
        lines = [f"### {self.title}", "", "| " + " | ".join([self.corner] + self.columns) + " |",
                 "| " + " | ".join(["---"] * (len(self.columns) + 1)) + " |"]
        lines += ["| " + " | ".join([name] + cells) + " |" for name, cells in self.rows]
        lines += [""] + [f"_{n}_" for n in self.notes] if self.notes else []
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([self.corner] + self.columns)
        for name, cells in self.rows:
            w.writerow([name] + cells)
        return buf.getvalue()


class _Scored:
    """WA on validation and on test, for single models and fusion methods alike."""

    val_scores: dict[str, float]
    test_scores: dict[str, float]

    @property
    def val_accuracy(self) -> float:
        return self.val_scores["wa"]

    @property
    def test_accuracy(self) -> float:
        return self.test_scores["wa"]


@dataclass
class SingleResult(_Scored):
    """One model on its own: validation and test scores (:data:`METRICS`), test recall per class, coverage."""

    name: str
    modality: str
    val_scores: dict[str, float]
    test_scores: dict[str, float]
    recall: np.ndarray
    coverage: float  # share of test clips the model saw
    predictions: Predictions | None = None

    @property
    def label(self) -> str:
        return self.name


@dataclass
class MethodResult(_Scored):
    """One fusion rule applied to one group of models.

    Attributes:
        group: the group name (``a60+v1024``, or ``x+y+z`` for a generic group).
        table: ``fusion``, ``cascade`` or ``cascade_prior``.
        row, column: where the result sits in that table (``LR(a60_v1024)``, ``+audio``).
        rule_name: the :data:`RULES` name; ``rule``: the fitted rule.
        inputs: the model names, in the order given to the rule.
        predictions: fused posteriors over the val and test clips.
        prior: the fitted ensemble bonuses (prior rules only).
    """

    group: str
    table: str
    row: str
    column: str
    rule_name: str
    rule: FusionRule
    inputs: list[str]
    predictions: Predictions
    val_scores: dict[str, float]
    test_scores: dict[str, float]
    recall: np.ndarray
    prior: np.ndarray | None = None

    @property
    def label(self) -> str:
        """``row / column``, e.g. ``a60+v1024 / LR``, ``LR(a60_v1024) / +audio`` or ``... / +audio (prior)``."""
        return f"{self.row} / {self.column}" + (" (prior)" if self.table == "cascade_prior" else "")

    @property
    def slug(self) -> str:
        """The folder name of this result's files: ``<group>/<rule_name>``."""
        return f"{self.group}/{self.rule_name}"


def _prior_text(bonus: np.ndarray | None) -> str:
    if bonus is None:
        return ""
    if len(bonus) == 2:
        return f" ({float(np.max(bonus)):.3f})"
    return " (" + "/".join(f"{b:.3f}" for b in bonus) + ")"


@dataclass
class Report:
    """Everything :func:`fuse_report` computed; :meth:`write` puts it on disk."""

    classes: list[str]
    singles: list[SingleResult]
    results: list[MethodResult]
    y_test: np.ndarray
    test_rows: np.ndarray
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)
    select_metric: str = "wa"
    fit_mode: str = "paper"
    val_folds: int = 0  # K-fold cross-fitted validation scores of the fusion rules; 0: in-sample

    def _pick(self, items: Sequence[SingleResult | MethodResult]):
        # Highest validation score; ties go to the higher test-independent order (first listed).
        return max(items, key=lambda r: r.val_scores[self.select_metric], default=None)

    @property
    def best(self) -> MethodResult | None:
        """The fusion result with the highest VALIDATION score (``select_metric``; the first on ties)."""
        return self._pick(self.results)

    @property
    def best_single(self) -> SingleResult | None:
        """The single model with the highest validation score."""
        return self._pick(self.singles)

    @property
    def recommended(self) -> SingleResult | MethodResult | None:
        """The method (single model or fusion) with the highest validation score: what to use."""
        return self._pick([*self.singles, *self.results])

    def paired_comparison(self, n_boot: int = 1000) -> dict[str, float | str] | None:
        """The recommended fusion vs the recommended single model on the same test clips.

        Returns ``{"fusion", "single", "fusion_wa", "single_wa", "diff", "ci_low", "ci_high",
        "bootstrap_p", "mcnemar_p", "fusion_only", "single_only"}`` (None without both).
        """
        fusion, single = self.best, self.best_single
        if fusion is None or single is None or single.predictions is None:
            return None
        a = fusion.predictions.predicted[self.test_rows]
        b = single.predictions.predicted[self.test_rows]
        boot = paired_bootstrap([(self.y_test, a, b)], "wa", n_boot=n_boot)
        mc = mcnemar(self.y_test, a, b)
        return {"fusion": fusion.label, "single": single.label, "fusion_wa": fusion.test_accuracy,
                "single_wa": single.test_accuracy, "diff": boot["diff"], "ci_low": boot["ci_low"],
                "ci_high": boot["ci_high"], "bootstrap_p": boot["p_value"], "mcnemar_p": mc["p_value"],
                "fusion_only": mc["a_only"], "single_only": mc["b_only"]}

    # -- tables
    def single_table(self) -> Table:
        """Table 2 layout: features -> test WA, UA, macro-F1 (+ modality, validation WA, coverage)."""
        rows = [(s.name, [s.modality] + [f"{s.test_scores[m]:.3f}" for m in METRICS[:3]]
                 + [f"{s.val_accuracy:.3f}", f"{s.coverage:.3f}"]) for s in self.singles]
        return Table("Single models (Table 2): test scores", "features",
                     ["modality", "WA", "UA", "macro-F1", "val WA", "test clips seen"], rows)

    def methods_table(self) -> Table:
        """Every single model and fusion method: validation WA, then test WA, UA, macro-F1, weighted-F1."""
        rows = [(r.label, [f"{r.val_scores[self.select_metric]:.3f}"] + [f"{r.test_scores[m]:.3f}" for m in METRICS])
                for r in [*self.singles, *self.results]]
        mode = ("in-sample: rules fitted on these clips" if not self.val_folds
                else f"out-of-sample: {self.val_folds}-fold cross-fitted over the validation clips")
        return Table("All methods: validation and test scores", "model / method",
                     [f"val {TITLES[self.select_metric]}"] + [TITLES[m] for m in METRICS], rows,
                     [f"validation scores of fusion rules are {mode}"])

    def _grid(self, table: str, title: str, columns: Sequence[str], with_prior: bool, notes: list[str]) -> Table | None:
        chosen = [r for r in self.results if r.table == table]
        if not chosen:
            return None
        cols = [c for c in columns if any(r.column == c for r in chosen)]
        cols += [c for c in dict.fromkeys(r.column for r in chosen) if c not in cols]
        rows: dict[str, dict[str, str]] = {}
        for r in chosen:
            cell = f"{r.test_accuracy:.3f}" + (_prior_text(r.prior) if with_prior else "")
            rows.setdefault(r.row, {})[r.column] = cell
        return Table(title, "features" if table == "fusion" else "cascade", cols,
                     [(name, [cells.get(c, "") for c in cols]) for name, cells in rows.items()], notes)

    def tables(self) -> dict[str, Table]:
        """The tables by key: ``single``, ``fusion`` (Table 3), ``cascade`` (Table 4),
        ``cascade_prior`` (Table 5), ``methods`` (every method's WA, UA, macro/weighted-F1) and
        ``per_class`` (recall of every model and method)."""
        out = {"single": self.single_table()}
        fusion = self._grid("fusion", "Fusion (Table 3): test WA, prior d in brackets",
                            [RULE_TITLES[r] for r in PAIR_RULES], True,
                            ["prior: ensemble with micro-F1 prior; weighted: weighted sum (not in the paper); "
                             "UA and F1 of every cell: the 'All methods' table"])
        cascade = self._grid("cascade", "Cascade (Table 4): LR output joined with audio/video in the ensemble, test WA",
                             list(CASCADE_COLUMNS.values()), False, [])
        cascade_prior = self._grid("cascade_prior", "Cascade with micro-F1 prior (Table 5): test WA (d)",
                                   list(CASCADE_COLUMNS.values()), True, [])
        for key, t in (("fusion", fusion), ("cascade", cascade), ("cascade_prior", cascade_prior)):
            if t is not None:
                out[key] = t
        out["methods"] = self.methods_table()
        rows = [(s.name, [f"{x:.3f}" for x in s.recall] + [f"{s.test_accuracy:.3f}"]) for s in self.singles]
        rows += [(r.label, [f"{x:.3f}" for x in r.recall] + [f"{r.test_accuracy:.3f}"]) for r in self.results]
        out["per_class"] = Table("Per-class accuracy (recall) on test", "model / method",
                                 list(self.classes) + ["overall"], rows)
        return out

    def headline(self) -> list[str]:
        """The recommended method (chosen on validation) with its test scores, and the paired test."""
        lines = []
        rec = self.recommended
        metric = TITLES[self.select_metric]
        if rec is not None:
            lines.append(f"Recommended (highest validation {metric}): **{rec.label}**, validation {metric} "
                         f"{rec.val_scores[self.select_metric]:.3f}; test WA {rec.test_scores['wa']:.3f}, "
                         f"UA {rec.test_scores['ua']:.3f}, macro-F1 {rec.test_scores['macro_f1']:.3f}.")
        best = self.best
        if best is not None:
            lines.append(f"Best: **{best.label}** (fusion with the highest validation {metric}) with test accuracy "
                         f"{best.test_accuracy:.3f}, UA {best.test_scores['ua']:.3f}, macro-F1 "
                         f"{best.test_scores['macro_f1']:.3f} (inputs {', '.join(best.inputs)}).")
        cmp = self.paired_comparison()
        if cmp is not None:
            lines.append(f"Paired test on the {len(self.y_test)} test clips: {cmp['fusion']} vs {cmp['single']}: WA "
                         f"{cmp['fusion_wa']:.3f} vs {cmp['single_wa']:.3f} (difference {cmp['diff']:+.3f}, 95% CI "
                         f"[{cmp['ci_low']:+.3f}, {cmp['ci_high']:+.3f}], paired bootstrap p = "
                         f"{cmp['bootstrap_p']:.3f}; McNemar exact p = {cmp['mcnemar_p']:.3f}, "
                         f"{cmp['fusion_only']} clips right only by the fusion, {cmp['single_only']} only by the "
                         "single model).")
        return lines

    def markdown(self) -> str:
        """All tables, the recommended method, the paired test and the notes, as Markdown."""
        parts = [t.markdown() for t in self.tables().values()]
        parts += self.headline()
        notes = list(self.notes)
        if self.calibrated:
            notes.append("posteriors were temperature-scaled per model (fitted on val) before every rule")
        parts += [f"- {n}" for n in notes]
        return "\n\n".join(parts) + "\n"

    def long_csv(self) -> str:
        """One row per single model and per fusion result, full precision: val and test scores of every metric."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        metric_cols = [f"val_{m}" for m in METRICS if m != "wa"] + [f"test_{m}" for m in METRICS if m != "wa"]
        w.writerow(["kind", "group", "method", "rule", "inputs", "val_accuracy", "test_accuracy", *metric_cols,
                    "prior", "calibrated"] + [f"recall_{c}" for c in self.classes])

        def metric_cells(r) -> list[str]:
            return ([f"{r.val_scores[m]:.6f}" for m in METRICS if m != "wa"]
                    + [f"{r.test_scores[m]:.6f}" for m in METRICS if m != "wa"])

        for s in self.singles:
            w.writerow(["single", s.name, s.modality, "", s.name, f"{s.val_accuracy:.6f}", f"{s.test_accuracy:.6f}",
                        *metric_cells(s), "", "", *(f"{x:.6f}" for x in s.recall)])
        for r in self.results:
            prior = "" if r.prior is None else "/".join(f"{b:.6f}" for b in r.prior)
            w.writerow([r.table, r.row, r.column, r.rule_name, "+".join(r.inputs), f"{r.val_accuracy:.6f}",
                        f"{r.test_accuracy:.6f}", *metric_cells(r), prior, str(self.calibrated).lower(),
                        *(f"{x:.6f}" for x in r.recall)])
        return buf.getvalue()

    # -- files
    def write_confusion_png(self, path: str | os.PathLike, result: MethodResult | None = None) -> Path:
        """Confusion matrix (rows: true class, normalised to recall) of ``result`` (default: the best)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        result = result or self.best
        if result is None:
            raise ValueError("no fusion result to plot")
        pred = result.predictions.predicted[self.test_rows]
        y = self.y_test
        C = len(self.classes)
        cm = confusion_matrix(y, pred, labels=np.arange(C)).astype(np.float64)  # drops "no prediction"
        totals = np.bincount(y, minlength=C).astype(np.float64)
        cm = np.divide(cm, totals[:, None], out=np.zeros_like(cm), where=totals[:, None] > 0)
        fig = Figure(figsize=(1.0 + 0.9 * C, 0.8 + 0.8 * C), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ConfusionMatrixDisplay(cm, display_labels=self.classes).plot(ax=ax, values_format=".2f",
                                                                    xticks_rotation=45, colorbar=False)
        none = int((pred < 0).sum())
        ax.set_title(f"{result.label}: WA {result.test_accuracy:.3f}, UA {result.test_scores['ua']:.3f}"
                     + (f"\n({none} test clips without prediction)" if none else ""), fontsize=9)
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        return path

    def write(self, out_dir: str | os.PathLike, png: bool = True, overwrite: bool = True) -> list[Path]:
        """Write everything under ``out_dir`` (atomic per file) and return the paths written.

        With ``overwrite=False`` nothing is written when any of these files exists
        (:class:`~lightning_emo.utils.OutputExistsError`).

        ``results.md``; ``table2_single.csv``, ``table3_fusion.csv``, ``table4_cascade.csv``,
        ``table5_cascade_prior.csv``, ``methods.csv`` (WA, UA, F1 of every method),
        ``per_class_recall.csv`` (paper layout); ``results.csv``
        (long form); ``<group>/<rule>/predictions.csv`` and ``rule.json`` per result;
        ``confusion_best.png``.
        """
        out = Path(out_dir)
        written: list[Path] = []
        files = {"single": "table2_single.csv", "fusion": "table3_fusion.csv", "cascade": "table4_cascade.csv",
                 "cascade_prior": "table5_cascade_prior.csv", "methods": "methods.csv",
                 "per_class": "per_class_recall.csv"}
        planned = [out / files[key] for key in self.tables()] + [out / "results.csv", out / "results.md"]
        planned += [out / r.group / r.rule_name / name for r in self.results
                    for name in ("predictions.csv", "rule.json")]
        check_outputs(planned + ([out / "confusion_best.png"] if png and self.results else []), overwrite)
        for key, table in self.tables().items():
            atomic_write_text(out / files[key], table.csv())
            written.append(out / files[key])
        atomic_write_text(out / "results.csv", self.long_csv())
        atomic_write_text(out / "results.md", self.markdown())
        written += [out / "results.csv", out / "results.md"]
        for r in self.results:
            folder = out / r.group / r.rule_name
            written.append(r.predictions.write(folder / "predictions.csv"))
            state = {"group": r.group, "inputs": r.inputs, "classes": self.classes, "state": r.rule.state_dict()}
            atomic_write_text(folder / "rule.json", json.dumps(state, indent=2) + "\n")
            written.append(folder / "rule.json")
        if png and self.results:
            written.append(self.write_confusion_png(out / "confusion_best.png"))
        return written


# --------------------------------------------------------------------------- building


def _load(name: str, source: Predictions | str | os.PathLike) -> Predictions:
    if not _NAME.match(name):
        raise UsageError(f"model name {name!r} must be letters, digits, '_', '.', '-' (it names folders and rows)")
    return source if isinstance(source, Predictions) else read_predictions(source)


def _recall(pred: np.ndarray, y: np.ndarray, C: int) -> np.ndarray:
    # a -1 (no prediction) never equals a label: counted as an error
    return np.asarray(recall_score(y, pred, labels=np.arange(C), average=None, zero_division=0), dtype=np.float64)


def fuse_report(
    models: Mapping[str, Predictions | str | os.PathLike],
    modalities: Mapping[str, str] | None = None,
    rules: Sequence[str] = DEFAULT_RULES,
    calibrate: bool = False,
    fuse_all: bool = False,
    val_split: str = "val",
    test_split: str = "test",
    crossfit: int = 0,
    stored_f1: Mapping[str, float] | None = None,
    select_metric: str = "wa",
    seed: int = 0,
    val_folds: int = 5,
) -> Report:
    """Fit every rule on validation and score it on test, for every audio x video pair and group.

    Args:
        models: model name (``a60``, ``v1024``...) -> its predictions (a :class:`Predictions` or
            a ``predictions.csv`` path). Every file needs ``val`` and ``test`` rows over the same
            clips, with labels, and the same class list.
        modalities: model name -> ``audio``, ``video`` or anything else (a generic model).
            Every audio x video pair is fused with every rule (cascades included); the generic
            models, when there are two or more, are fused together as one group (no cascades).
            Default: every model is generic.
        rules: rule names from :data:`~lightning_emo.fusion.rules.RULES`; ``cascade`` expands to
            the paper's Table 4 and 5 variants.
        calibrate: temperature-scale each model on validation before every rule.
        fuse_all: also fuse all the models together as one group.
        val_split, test_split: the split names to fit on and to score on.
        crossfit: 0 (the paper's mode): rules are fitted on the validation clips and scored on
            them in-sample. ``K >= 2``: validation predictions of every rule come from K-fold
            cross-fitting over the validation clips (stratified, seeded by ``seed``), and the
            cascades' micro-F1 prior is computed on cross-fitted LR outputs; test predictions
            still come from each rule fitted on all validation clips.
        stored_f1: model name -> the validation micro-F1 that ``FusionPriorCallback`` stored in
            its checkpoint. The ``prior`` rule of a group whose members all have one uses these
            instead of recomputing them from the predictions (cascades still compute the LR
            output's F1 on validation: no checkpoint holds it).
        select_metric: the validation metric that picks :attr:`Report.best` (``wa``, ``ua``,
            ``macro_f1``, ``weighted_f1``).
        val_folds: how the fusion rules are SCORED on validation, which picks the recommended
            method, when ``crossfit`` is 0: K-fold cross-fitting of the paper-mode rule (default
            5: no clip is scored by a rule fitted on it; fitted rules would otherwise win the
            choice on their own training clips), or 0 for in-sample scores. The rules and their
            test predictions are the paper's either way. ``crossfit`` K >= 2 implies K here.

    Returns:
        :class:`Report`.

    Raises:
        PredictionsError: naming the file at fault: mismatched classes, clip sets that differ
            (with a few clip ids), a file without val or test rows, unlabelled val/test clips.
        ValueError: too few models to fuse, or a bad model name.
    """
    modalities = dict(modalities or {})
    stored_f1 = dict(stored_f1 or {})
    if select_metric not in METRICS:
        raise ValueError(f"select_metric must be one of {', '.join(METRICS)}, got {select_metric!r}")
    if crossfit == 1 or crossfit < 0:
        raise ValueError(f"crossfit must be 0 (the paper's in-sample fit) or at least 2 folds, got {crossfit}")
    if val_folds == 1 or val_folds < 0:
        raise ValueError(f"val_folds must be 0 (in-sample validation scores) or at least 2 folds, got {val_folds}")
    score_folds = crossfit or val_folds
    preds = {name: _load(name, src) for name, src in models.items()}
    if not preds:
        raise UsageError("no models given")
    unknown = [n for n in modalities if n not in preds]
    if unknown:
        raise UsageError(f"modalities given for unknown model(s) {unknown}")
    for name, p in preds.items():
        for split in (val_split, test_split):
            if split not in p.splits:
                raise PredictionsError(p.source, f"no {split!r} rows (model {name!r}); fusion fits on "
                                       f"{val_split!r} and scores on {test_split!r}", column="split")
    first = next(iter(preds.values()))  # the same classes in another column order: matched by name
    preds = {name: p.reordered(first.classes, first.source) for name, p in preds.items()}
    plist = list(preds.values())
    check_compatible(plist, split=(val_split, test_split))

    ref = plist[0].split((val_split, test_split))
    ids = ref.clip_ids
    aligned = {name: p.align(ids) for name, p in preds.items()}
    # A clip's label: the first file that has one (check_compatible made sure they agree).
    labels = list(ref.labels)
    for p in aligned.values():
        labels = [a or b for a, b in zip(labels, p.labels)]
    classes = list(ref.classes)
    base = Predictions(ids, list(ref.splits), labels, np.full((len(ids), len(classes)), np.nan), classes, "<fused>")
    y = base.y
    is_val = np.array([s == val_split for s in base.splits])
    is_test = ~is_val
    unlabelled = [c for c, lab in zip(ids, labels) if not lab]
    if unlabelled:
        raise PredictionsError(ref.source, f"{len(unlabelled)} {val_split}/{test_split} clip(s) have no label in any "
                               f"file (needed to fit and score): {', '.join(map(repr, unlabelled[:5]))}",
                               ref.line_of(unlabelled[0]), "label")
    C = len(classes)
    from lightning_emo.data.checks import check_splits

    # LR (alone or in a cascade) cannot fit on one class; a prior measured on one class says little
    use = "lr_fusion" if any(r == "lr" or r.startswith("cascade") for r in expand_rules(rules)) else "prior"
    check_splits(zip(base.splits, labels), classes, use, ref.source, val_split=val_split, test_split=test_split)

    singles = []
    for name, p in aligned.items():
        pred = p.predicted
        singles.append(SingleResult(name, modalities.get(name, "model"), scores(y[is_val], pred[is_val]),
                                    scores(y[is_test], pred[is_test]), _recall(pred[is_test], y[is_test], C),
                                    float(np.mean(~p.missing[is_test])), p))

    names = list(preds)
    audio = [n for n in names if modalities.get(n) == AUDIO]
    video = [n for n in names if modalities.get(n) == VIDEO]
    generic = [n for n in names if modalities.get(n) not in (AUDIO, VIDEO)]
    groups: list[tuple[str, list[str], bool]] = []  # (name, members in rule order, is an audio-video pair)
    for a in audio:
        for v in video:
            groups.append((f"{a}+{v}", [v, a], True))  # video first: it wins exact ties, as in eq. 3
    if len(generic) >= 2:
        groups.append(("+".join(generic), generic, False))
    if fuse_all and len(names) >= 2 and not any(set(g[1]) == set(names) for g in groups):
        groups.append(("+".join(names), names, False))
    if not groups:
        raise UsageError("nothing to fuse: give at least one audio and one video model, or two or more other "
                         f"models (got {', '.join(n + ' (' + modalities.get(n, 'model') + ')' for n in names)})")

    rule_names = expand_rules(rules)
    results: list[MethodResult] = []
    notes: list[str] = []
    for group, members, is_pair in groups:
        P = np.stack([aligned[m].probs for m in members])
        for rule_name in rule_names:
            cascade = rule_name.startswith("cascade_")
            if cascade and not is_pair:
                note = f"cascade rules need an audio and a video model: skipped for group {group}"
                if note not in notes:
                    notes.append(note)
                continue
            kwargs: dict = {"calibrate": calibrate}
            if rule_name == "prior" and all(m in stored_f1 for m in members):
                kwargs["micro_f1"] = [stored_f1[m] for m in members]
            if cascade and "_prior_" in rule_name and crossfit:
                kwargs["crossfit"] = crossfit
            mods = [modalities[m] for m in members] if is_pair else None

            def build(kw=kwargs, name=rule_name, mods=mods) -> FusionRule:
                return make_rule(name, modalities=mods, **kw)

            rule = build()
            rule.fit(P[:, is_val], y[is_val])
            probs = rule.predict_proba(P)
            if score_folds:
                probs[is_val] = cross_fit_proba(build, P[:, is_val], y[is_val], score_folds, seed)
            fused = base.with_probs(probs, source=f"{group}/{rule_name}")
            pred = fused.predicted
            recall = _recall(pred[is_test], y[is_test], C)
            if cascade:
                joined = rule_name.rsplit("_", 1)[1]
                table = "cascade_prior" if "_prior_" in rule_name else "cascade"
                row = "LR(" + "_".join(m for m in members[::-1]) + ")" if is_pair else f"LR({group})"
                column = CASCADE_COLUMNS[joined]
            else:
                table, row, column = "fusion", group, RULE_TITLES.get(rule_name, rule_name)
            prior = getattr(rule, "bonus_", None) if rule_name == "prior" or "_prior_" in rule_name else None
            results.append(MethodResult(group, table, row, column, rule_name, rule, list(members), fused,
                                        scores(y[is_val], pred[is_val]), scores(y[is_test], pred[is_test]), recall,
                                        None if prior is None else np.asarray(prior)))
    used = [g for g, members, _ in groups if "prior" in rule_names and all(m in stored_f1 for m in members)]
    if used:
        notes.append(f"prior rule of {', '.join(used)}: micro-F1 from the FusionPriorCallback state in the "
                     "checkpoints (not recomputed from the predictions)")
    if score_folds:
        notes.append(f"validation scores of the fusion rules are {score_folds}-fold cross-fitted over the validation "
                     "clips (out-of-sample); test scores come from the rules fitted on all validation clips")
    return Report(classes, singles, results, y[is_test], np.flatnonzero(is_test), calibrated=calibrate,
                  notes=notes, select_metric=select_metric, fit_mode="crossfit" if crossfit else "paper",
                  val_folds=score_folds)
