"""One table per question of the study, from the saved results of every evaluated model.

Input: one JSON-able dict per model,
    {"model": "inst", "rtp": {"conditioned": RTPResult.summary(), "unconditioned": ...},
     "utility": {task: metrics}, "bias": {task: report}}
(any section may be missing). Toxicity numbers are only comparable under one scorer, so
building a report from runs scored by different scorers is an error, not a footnote.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from toxjax import fileio

RTP_SUBSETS = ("all", "toxic", "nontoxic", "challenging")
UTILITY_METRIC = {"lambada": "acc"}  # every other task: acc_norm where reported, else acc
BIAS_METRIC = {"civil_comments_identities": "mean_subgroup_auc"}  # every other task: auc


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def relative_change(value: float, baseline: float) -> float:
    """(value - baseline) / baseline; NaN when either is missing or the baseline is 0."""
    value, baseline = _number(value), _number(baseline)
    if math.isnan(value) or math.isnan(baseline) or baseline == 0.0:
        return math.nan
    return (value - baseline) / baseline


def _scorer_ids(models: Sequence[Mapping[str, Any]]) -> set[str]:
    return {
        run["scorer"]
        for model in models
        for run in (model.get("rtp") or {}).values()
        if run and run.get("scorer")
    }


def build_report(models: Sequence[Mapping[str, Any]], *, baseline: str = "base") -> dict[str, Any]:
    """Rows for toxicity (with TP change relative to the baseline model), utility and bias."""
    names = [model["model"] for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    scorers = _scorer_ids(models)
    if len(scorers) > 1:
        raise ValueError(
            f"RTP results come from different scorers {sorted(scorers)}: toxicity numbers are "
            "only comparable under one scorer version; rescore or report them separately"
        )
    by_name = {model["model"]: model for model in models}
    base_tp = math.nan
    if baseline in by_name:
        base_run = (by_name[baseline].get("rtp") or {}).get("unconditioned") or {}
        base_tp = _number(base_run.get("metrics", {}).get("all", {}).get("toxicity_probability"))
    toxicity = []
    for model in models:
        for condition, run in sorted((model.get("rtp") or {}).items()):
            row: dict[str, Any] = {
                "model": model["model"],
                "condition": condition,
                "prefix": run.get("prefix", ""),
            }
            for subset in RTP_SUBSETS:
                metrics = run["metrics"].get(subset, {})
                row[f"{subset}/num_prompts"] = metrics.get("num_prompts", 0)
                row[f"{subset}/emt"] = _number(metrics.get("expected_max_toxicity"))
                row[f"{subset}/emt_std"] = _number(metrics.get("expected_max_toxicity_std"))
                row[f"{subset}/tp"] = _number(metrics.get("toxicity_probability"))
            row["tp_change_vs_baseline"] = relative_change(row["all/tp"], base_tp)
            toxicity.append(row)
    utility = [
        {
            "model": model["model"],
            **{
                task: _number(metrics.get(UTILITY_METRIC.get(task, "acc_norm"), metrics.get("acc")))
                for task, metrics in sorted((model.get("utility") or {}).items())
            },
        }
        for model in models
    ]
    bias = [
        {
            "model": model["model"],
            **{
                task: _number(result.get(BIAS_METRIC.get(task, "auc")))
                for task, result in sorted((model.get("bias") or {}).items())
            },
        }
        for model in models
    ]
    return fileio.jsonable(
        {
            "scorer": next(iter(scorers), None),
            "baseline": baseline,
            "toxicity": toxicity,
            "utility": utility,
            "bias": bias,
        }
    )


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("\n", "\\n").replace("|", "\\|")


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_markdown(report: Mapping[str, Any]) -> str:
    """Human-readable tables; missing values read "n/a"."""
    toxicity = [
        {
            key: row[key]
            for key in (
                "model",
                "condition",
                "prefix",
                "all/emt",
                "all/tp",
                "toxic/emt",
                "toxic/tp",
                "nontoxic/emt",
                "nontoxic/tp",
                "challenging/emt",
                "challenging/tp",
                "tp_change_vs_baseline",
            )
        }
        for row in report["toxicity"]
    ]
    return "\n".join(
        [
            f"# Evaluation report (scorer: {report['scorer'] or 'n/a'})",
            "",
            f"## Toxicity (RealToxicityPrompts; TP change relative to {report['baseline']}, "
            "unconditioned)",
            "",
            _table(toxicity),
            "## Utility (acc_norm where defined, else acc)",
            "",
            _table(report["utility"]),
            "## Bias detection (AUC; identities: mean subgroup AUC)",
            "",
            _table(report["bias"]),
        ]
    )


def write_report(report: Mapping[str, Any], output_dir: str) -> dict[str, str]:
    """Writes report.json and report.md; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "json": os.path.join(output_dir, "report.json"),
        "markdown": os.path.join(output_dir, "report.md"),
    }
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(fileio.jsonable(report), f, indent=2, allow_nan=False)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(to_markdown(report))
    return paths
