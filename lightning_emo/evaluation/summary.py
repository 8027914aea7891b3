"""The aggregate report of a folds x seeds protocol: per-run scores in, ``summary.csv``/``summary.md``/CI plot out.

Each finished run (one fold x one seed) leaves two files in its folder (:func:`write_run_scores`):

* ``scores.csv``: ``condition,kind,table,row,column,method,split,metric,value``, one row per
  model or fusion method, split (``val``/``test``) and metric (WA, UA, macro-F1, weighted-F1);
  ``condition`` is ``in`` (in-corpus) or ``cross:<name>`` (a test corpus);
* ``test_labels.json``: per condition the test clips, their labels and every method's predicted
  class (``-1`` = no prediction), for confidence intervals over clips and the paired test.

:func:`summarize` reads every finished run and writes, in the protocol's output folder:

* ``summary.csv`` (in-corpus) and ``summary_<name>.csv`` (per test corpus):
  ``method,metric,mean,std,ci_low,ci_high,n`` over the test scores of the ``n`` runs;
* ``summary.md``: the paper's Tables 2-5 with mean ± std, every method's metrics with the CI,
  the method recommended by its mean VALIDATION score with its test score, the paired test of
  the recommended fusion against the recommended single model, and in-corpus vs cross-corpus
  side by side;
* ``summary_ci.png``: every method's mean test WA with its 95 % CI;
* ``summary.json``: the same numbers, how the CI was computed, and the runs used.

The 95 % CI is a percentile bootstrap over the runs' values when there are at least
:data:`MIN_RUNS_FOR_RUN_BOOTSTRAP` runs, else over the test clips (resampled within each run,
the metric averaged over runs): a CI from two or three values would say little.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lightning_emo.fusion.metrics import (METRICS, TITLES, bootstrap_clips, bootstrap_runs, mcnemar, mean_std,
                                              paired_bootstrap)
from lightning_emo.utils import atomic_path, atomic_write_text

SCORE_COLUMNS = ("condition", "kind", "table", "row", "column", "method", "split", "metric", "value")
SUMMARY_COLUMNS = ("method", "metric", "mean", "std", "ci_low", "ci_high", "n")
MIN_RUNS_FOR_RUN_BOOTSTRAP = 5
IN = "in"


# --------------------------------------------------------------------------- per run


def report_rows(report: Any, condition: str = IN) -> list[dict[str, Any]]:
    """The ``scores.csv`` rows of a fusion :class:`~lightning_emo.fusion.report.Report`."""
    rows = []
    for s in report.singles:
        for split, sc in (("val", s.val_scores), ("test", s.test_scores)):
            rows += [dict(condition=condition, kind="single", table="single", row=s.name, column=s.modality,
                          method=s.name, split=split, metric=m, value=sc[m]) for m in METRICS]
    for r in report.results:
        for split, sc in (("val", r.val_scores), ("test", r.test_scores)):
            rows += [dict(condition=condition, kind="fusion", table=r.table, row=r.row, column=r.column,
                          method=r.label, split=split, metric=m, value=sc[m]) for m in METRICS]
    return rows


def report_labels(report: Any) -> dict[str, Any]:
    """The test clips, labels and each method's predicted class of a report (for ``test_labels.json``)."""
    rows = report.test_rows
    first = report.singles[0].predictions if report.singles else report.results[0].predictions
    pred = {s.name: s.predictions.predicted[rows].tolist() for s in report.singles if s.predictions is not None}
    pred.update({r.label: r.predictions.predicted[rows].tolist() for r in report.results})
    return {"clip_ids": [first.clip_ids[i] for i in rows], "y": report.y_test.tolist(), "pred": pred,
            "classes": list(report.classes)}


def write_run_scores(run_dir: str | os.PathLike, reports: dict[str, Any]) -> None:
    """Write ``scores.csv`` and ``test_labels.json`` of one run; ``reports``: condition -> Report."""
    run_dir = Path(run_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, SCORE_COLUMNS, lineterminator="\n")
    w.writeheader()
    for condition, report in reports.items():
        for row in report_rows(report, condition):
            w.writerow({**row, "value": f"{row['value']:.6f}"})
    atomic_write_text(run_dir / "scores.csv", buf.getvalue())
    atomic_write_text(run_dir / "test_labels.json",
                      json.dumps({c: report_labels(r) for c, r in reports.items()}) + "\n")


# --------------------------------------------------------------------------- aggregate


class _Method:
    def __init__(self, row: dict[str, str]):
        self.kind, self.table, self.row, self.column = row["kind"], row["table"], row["row"], row["column"]
        self.name = row["method"]
        self.values: dict[tuple[str, str], list[float]] = defaultdict(list)  # (split, metric) -> per run


def _read_runs(run_dirs: Sequence[Path]) -> tuple[dict[str, dict[str, _Method]], dict[str, list[dict]]]:
    methods: dict[str, dict[str, _Method]] = defaultdict(dict)  # condition -> name -> method (first-seen order)
    labels: dict[str, list[dict]] = defaultdict(list)
    for d in run_dirs:
        with open(d / "scores.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                m = methods[row["condition"]].setdefault(row["method"], _Method(row))
                m.values[(row["split"], row["metric"])].append(float(row["value"]))
        for condition, data in json.loads((d / "test_labels.json").read_text()).items():
            labels[condition].append(data)
    return methods, labels


def _ci(method: str, metric: str, values: list[float], runs: list[dict], seed: int) -> tuple[float, float, str]:
    if len(values) >= MIN_RUNS_FOR_RUN_BOOTSTRAP:
        lo, hi = bootstrap_runs(values, seed=seed)
        return lo, hi, "runs"
    pairs = [(np.asarray(r["y"]), np.asarray(r["pred"][method])) for r in runs if method in r["pred"]]
    lo, hi = bootstrap_clips(pairs, metric, n_boot=500, seed=seed)
    return lo, hi, "clips"


def _pm(mean: float, std: float) -> str:
    return "–" if not np.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def summarize(out: str | os.PathLike, run_dirs: Iterable[str | os.PathLike], select_metric: str = "wa",
              notes: Sequence[str] = (), png: bool = True, title: str = "") -> dict[str, Any]:
    """Aggregate the finished runs into ``summary.csv``/``summary.md``/``summary_ci.png``/``summary.json`` under ``out``.

    Returns the ``summary.json`` content.
    """
    out = Path(out)
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("no finished run to summarize")
    methods, labels = _read_runs(run_dirs)
    n_runs = len(run_dirs)
    ci_over = "runs (folds x seeds)" if n_runs >= MIN_RUNS_FOR_RUN_BOOTSTRAP else "test clips (within each run)"
    result: dict[str, Any] = {"runs": [str(d) for d in run_dirs], "n_runs": n_runs, "ci": f"95% percentile "
                              f"bootstrap over {ci_over}", "select_metric": select_metric, "conditions": {}}
    for condition, by_name in methods.items():
        rows = []
        for name, m in by_name.items():
            for metric in METRICS:
                values = m.values[("test", metric)]
                mean, std = mean_std(values)
                lo, hi, _ = _ci(name, metric, values, labels[condition], seed=len(rows))
                rows.append({"method": name, "metric": TITLES[metric], "mean": mean, "std": std, "ci_low": lo,
                             "ci_high": hi, "n": len(values)})
        val = {name: mean_std(m.values[("val", select_metric)])[0] for name, m in by_name.items()}
        singles = [n for n, m in by_name.items() if m.kind == "single"]
        fusions = [n for n, m in by_name.items() if m.kind != "single"]
        pick = (lambda names: max(names, key=lambda n: val[n]) if names else None)  # first on ties
        cond = {"rows": rows, "val": val, "recommended": pick(list(by_name)), "best_single": pick(singles),
                "best_fusion": pick(fusions)}
        if cond["best_single"] and cond["best_fusion"]:
            cond["paired"] = _paired(labels[condition], cond["best_fusion"], cond["best_single"])
        result["conditions"][condition] = cond
        name = "summary.csv" if condition == IN else f"summary_{condition.split(':', 1)[-1]}.csv"
        buf = io.StringIO()
        w = csv.DictWriter(buf, SUMMARY_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{k: f"{r[k]:.6f}" for k in ("mean", "std", "ci_low", "ci_high")}})
        atomic_write_text(out / name, buf.getvalue())
    atomic_write_text(out / "summary.md", _markdown(methods, result, list(notes), title))
    atomic_write_text(out / "summary.json", json.dumps(result, indent=2, default=float) + "\n")
    if png:
        _plot(out / "summary_ci.png", result)
    return result


def _paired(runs: list[dict], fusion: str, single: str) -> dict[str, Any]:
    triples = [(np.asarray(r["y"]), np.asarray(r["pred"][fusion]), np.asarray(r["pred"][single])) for r in runs
               if fusion in r["pred"] and single in r["pred"]]
    boot = paired_bootstrap(triples, "wa", n_boot=1000)
    y, a, b = (np.concatenate([t[i] for t in triples]) for i in range(3))
    mc = mcnemar(y, a, b)
    return {"fusion": fusion, "single": single, "clips": int(len(y)), **{f"bootstrap_{k}": v for k, v in boot.items()},
            "mcnemar_p": mc["p_value"], "fusion_only": mc["a_only"], "single_only": mc["b_only"]}


def _cell(rows: list[dict], method: str, metric: str = "WA") -> dict | None:
    return next((r for r in rows if r["method"] == method and r["metric"] == metric), None)


def _markdown(methods: dict[str, dict[str, _Method]], result: dict[str, Any], notes: list[str], title: str) -> str:
    n = result["n_runs"]
    parts = [f"# {title or 'Protocol summary'}", "",
             f"{n} run(s) (folds x seeds). Cells: test mean ± standard deviation over the runs; 95% CI: "
             f"{result['ci']}. The recommended method is chosen by its mean validation "
             f"{TITLES[result['select_metric']]}, never by a test score."]
    cond = result["conditions"].get(IN) or next(iter(result["conditions"].values()))
    by_name = methods.get(IN) or next(iter(methods.values()))
    rows = cond["rows"]

    def pm(method: str, metric: str = "WA") -> str:
        c = _cell(rows, method, metric)
        return "–" if c is None else _pm(c["mean"], c["std"])

    singles = [m for m in by_name.values() if m.kind == "single"]
    parts += ["", "### Single models (Table 2)", "", "| features | modality | WA | UA | macro-F1 | val WA |",
              "| --- | --- | --- | --- | --- | --- |"]
    parts += [f"| {m.name} | {m.column} | {pm(m.name)} | {pm(m.name, 'UA')} | {pm(m.name, 'macro-F1')} | "
              f"{_pm(*mean_std(m.values[('val', 'wa')]))} |" for m in singles]
    for table, heading in (("fusion", "Fusion (Table 3): test WA"), ("cascade", "Cascade (Table 4): test WA"),
                           ("cascade_prior", "Cascade with micro-F1 prior (Table 5): test WA")):
        chosen = [m for m in by_name.values() if m.table == table]
        if not chosen:
            continue
        cols = list(dict.fromkeys(m.column for m in chosen))
        grid: dict[str, dict[str, str]] = defaultdict(dict)
        for m in chosen:
            grid[m.row][m.column] = pm(m.name)
        parts += ["", f"### {heading}", "", "| " + " | ".join(["features" if table == "fusion" else "cascade", *cols])
                  + " |", "| " + " | ".join(["---"] * (len(cols) + 1)) + " |"]
        parts += ["| " + " | ".join([row, *(cells.get(c, "") for c in cols)]) + " |" for row, cells in grid.items()]
    parts += ["", "### All methods: test scores (mean ± std, [95% CI] of WA)", "",
              "| method | val " + TITLES[result["select_metric"]] + " | WA | WA 95% CI | UA | macro-F1 | weighted-F1 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in by_name:
        c = _cell(rows, name)
        parts.append(f"| {name} | {cond['val'][name]:.3f} | {pm(name)} | [{c['ci_low']:.3f}, {c['ci_high']:.3f}] | "
                     f"{pm(name, 'UA')} | {pm(name, 'macro-F1')} | {pm(name, 'weighted-F1')} |")
    rec = cond["recommended"]
    if rec:
        c = _cell(rows, rec)
        parts += ["", f"**Recommended** (highest mean validation {TITLES[result['select_metric']]}): **{rec}**: "
                  f"test WA {pm(rec)} (95% CI [{c['ci_low']:.3f}, {c['ci_high']:.3f}]), UA {pm(rec, 'UA')}, "
                  f"macro-F1 {pm(rec, 'macro-F1')}."]
    paired = cond.get("paired")
    if paired:
        parts += ["", f"**Paired test** on the same {paired['clips']} test clips (all runs): best fusion "
                  f"{paired['fusion']} vs best single model {paired['single']} (both chosen on validation): WA "
                  f"difference {paired['bootstrap_diff']:+.3f} (95% CI [{paired['bootstrap_ci_low']:+.3f}, "
                  f"{paired['bootstrap_ci_high']:+.3f}]), paired bootstrap p = {paired['bootstrap_p_value']:.3f}; "
                  f"McNemar exact p = {paired['mcnemar_p']:.3g} ({paired['fusion_only']} clips right only by the "
                  f"fusion, {paired['single_only']} only by the single model)"
                  + (". McNemar pools the runs' test clips: with several seeds a clip counts once per seed, so "
                     "its p-value is optimistic; the bootstrap resamples clips within each run" if n > 1 else "")
                  + "."]
    cross = [c for c in result["conditions"] if c != IN]
    if cross and IN in result["conditions"]:
        head = ["method", "in-corpus WA", "in-corpus UA"]
        for c in cross:
            head += [f"{c.split(':', 1)[1]} WA", f"{c.split(':', 1)[1]} UA"]
        parts += ["", "### In-corpus vs cross-corpus (test mean ± std)", "", "| " + " | ".join(head) + " |",
                  "| " + " | ".join(["---"] * len(head)) + " |"]
        for name in by_name:
            cells = [name, pm(name), pm(name, "UA")]
            for c in cross:
                crow = result["conditions"][c]["rows"]
                for metric in ("WA", "UA"):
                    x = _cell(crow, name, metric)
                    cells.append("–" if x is None else _pm(x["mean"], x["std"]))
            parts.append("| " + " | ".join(cells) + " |")
        for c in cross:
            rc = result["conditions"][c]["recommended"]
            if rc:
                x = _cell(result["conditions"][c]["rows"], rc)
                parts += ["", f"Cross-corpus ({c.split(':', 1)[1]}) recommended by validation: **{rc}**, test WA "
                          f"{_pm(x['mean'], x['std'])}."]
    lr_val = [cond["val"][n] for n, m in by_name.items() if m.kind != "single" and "LR" in n]
    if lr_val and not any("cross-fitt" in n for n in notes):
        notes = notes + ["fusion validation scores are in-sample (the paper's fit): LR and the cascades score "
                         "optimistically on the clips they were fitted on, which biases the validation choice towards "
                         "them; `val_folds: 5` (the default) makes them out-of-sample"]
    if notes:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


def _plot(path: Path, result: dict[str, Any]) -> Path:
    """Every method's mean test WA with its 95% CI (one colour per condition)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conditions = list(result["conditions"])
    names = [r["method"] for r in result["conditions"][conditions[0]]["rows"] if r["metric"] == "WA"]
    fig = Figure(figsize=(8, 1.2 + 0.28 * len(names) * len(conditions)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    height = 0.8 / len(conditions)
    for k, cond in enumerate(conditions):
        rows = {r["method"]: r for r in result["conditions"][cond]["rows"] if r["metric"] == "WA"}
        ys, means, lo, hi = [], [], [], []
        for i, name in enumerate(names):
            r = rows.get(name)
            if r is None or not np.isfinite(r["mean"]):
                continue
            ys.append(i + k * height)
            means.append(r["mean"])
            lo.append(max(0.0, r["mean"] - r["ci_low"]))
            hi.append(max(0.0, r["ci_high"] - r["mean"]))
        ax.errorbar(means, ys, xerr=[lo, hi], fmt="o", capsize=3, markersize=4,
                    label="in-corpus" if cond == IN else cond.split(":", 1)[1])
    ax.set_yticks(np.arange(len(names)) + height * (len(conditions) - 1) / 2)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"test WA (mean, 95% CI: {result['ci']})", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    if len(conditions) > 1:
        ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
