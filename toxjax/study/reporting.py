"""The study's results: results.json (keyed by strategy), results.md and PNG plots.

results.json, per strategy:
    toxicity / toxicity_unconditioned   {subset: {expected_max_toxicity, ..._std,
                                        toxicity_probability, toxic_fraction, num_prompts}}
                                        for the subsets all / toxic / nontoxic / challenging;
                                        "toxicity" is the run with the strategy's inference
                                        prefix
    utility                             {task: {acc, acc_norm}}
    bias_auc                            {task: AUC} (identities: mean subgroup AUC)
    plus task, prefix, scorer, step, held-out perplexity and the final training loss.

results.md follows the paper's table (Prabhumoye et al. 2023, Table 2): one row per strategy,
EMT and TP on all / toxic / non-toxic prompts, utility accuracies and bias AUC, each with its
change against the baseline strategy (toxicity relative, in %; accuracies and AUC in points).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from toxjax import fileio
from toxjax.evaluation import report
from toxjax.study import fluency_report, real_report

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.container import BarContainer
    from matplotlib.figure import Figure

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOTS = {
    "toxicity": "toxicity_probability.png",
    "utility": "utility.png",
    "loss": "loss_curves.png",
    "real_text": "real_text.png",  # only with real-text results
    "fluency": "toxicity_vs_fluency.png",  # only with a fluency judge
}
SUBSETS = report.RTP_SUBSETS  # all, toxic, nontoxic, challenging
SUBSET_TITLES = {"all": "all", "toxic": "toxic", "nontoxic": "non-toxic", "challenging": "chall."}
TOXICITY_METRICS = (
    "expected_max_toxicity",
    "expected_max_toxicity_std",
    "toxicity_probability",
    "toxic_fraction",
    "num_prompts",
)
FINAL_LOSS_WINDOW = 10  # logged steps averaged into the final training loss


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


# ----------------------------------------------------------------------------------------------
# Inputs.


def read_train_log(run_workdir: str) -> list[dict[str, float]]:
    """Per-step training metrics of a run (train_log*.jsonl: one file locally, one per run
    segment on gs://), sorted by step; a step logged twice keeps its last line."""
    from toxjax.training.train import TRAIN_LOG

    pattern = fileio.join(run_workdir, TRAIN_LOG.replace(".jsonl", "*.jsonl"))
    by_step: dict[int, dict[str, float]] = {}
    for path in fileio.glob_files(pattern):
        for line_number, record in fileio.read_jsonl(path, allow_empty=True):
            try:
                step = int(record["step"])
                float(record["loss"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path}:{line_number}: field 'step' or 'loss' missing or not a "
                    f"number ({error})"
                ) from None
            by_step[step] = record
    return [by_step[step] for step in sorted(by_step)]


def _toxicity(run: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not run:
        return {}
    metrics = run.get("metrics") or {}
    return {
        subset: {name: (metrics.get(subset) or {}).get(name) for name in TOXICITY_METRICS}
        for subset in SUBSETS
    }


def strategy_results(
    evaluation: Mapping[str, Any], train_log: Sequence[Mapping[str, float]] = ()
) -> dict[str, Any]:
    """One strategy's entry of results.json, from its eval step_<N>.json."""
    rtp = evaluation.get("rtp") or {}
    conditioned, unconditioned = rtp.get("conditioned"), rtp.get("unconditioned")
    scorers = {run.get("scorer") for run in rtp.values() if run and run.get("scorer")}
    utility = {
        task: {"acc": metrics.get("acc"), "acc_norm": metrics.get("acc_norm")}
        for task, metrics in sorted((evaluation.get("utility") or {}).items())
    }
    bias_auc = {
        task: result.get(report.BIAS_METRIC.get(task, "auc"))
        for task, result in sorted((evaluation.get("bias") or {}).items())
    }
    tail = [float(r["loss"]) for r in train_log[-FINAL_LOSS_WINDOW:]]
    return fileio.jsonable(
        {
            "task": evaluation.get("task"),
            "step": evaluation.get("step"),
            "prefix": evaluation.get("prefix", ""),
            "scorer": next(iter(sorted(scorers)), None),
            "num_samples": ((conditioned or {}).get("config") or {}).get("num_samples"),
            "toxicity": _toxicity(conditioned),
            "toxicity_unconditioned": _toxicity(unconditioned),
            "utility": utility,
            "bias_auc": bias_auc,
            "perplexity": (evaluation.get("perplexity") or {}).get("perplexity"),
            "final_train_loss": sum(tail) / len(tail) if tail else None,
            "real_text": _real_text(evaluation),
        }
    )


def _real_text(evaluation: Mapping[str, Any]) -> dict[str, Any] | None:
    """real_report's summary of a run with fluency_report's figures in it."""
    summary = real_report.run_summary(evaluation)
    if summary is not None:
        spans = evaluation.get("rtp_intervals") or {}
        summary.update(fluency_report.summary(spans, evaluation.get("controllability") or {}))
    return summary


def build_results(
    evaluations: Mapping[str, Mapping[str, Any]],
    train_logs: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    *,
    baseline: str = "base",
) -> dict[str, dict[str, Any]]:
    """results.json: {run: strategy_results}; toxicity from different scorers is an error
    (numbers are only comparable under one scorer version). With real-text results, each
    model's first run also carries its TP relative to the baseline with every training seed
    of both pooled ("tp_vs_baseline_seeds", and "toxic_fraction_vs_baseline_seeds")."""
    train_logs = train_logs or {}
    results = {
        name: strategy_results(evaluation, train_logs.get(name, ()))
        for name, evaluation in evaluations.items()
    }
    scorers = {entry["scorer"] for entry in results.values() if entry["scorer"]}
    if len(scorers) > 1:
        raise ValueError(
            f"strategies were scored by different scorers {sorted(scorers)}: toxicity numbers "
            "are only comparable under one scorer version"
        )
    summaries = {name: entry["real_text"] for name, entry in results.items()}
    for key, per_prompt in (
        ("tp_vs_baseline_seeds", "any_toxic"),
        ("toxic_fraction_vs_baseline_seeds", "toxic_fraction_per_prompt"),
    ):
        for model, comparison in real_report.seed_comparisons(
            summaries, baseline, per_prompt
        ).items():
            if results.get(model, {}).get("real_text"):
                results[model]["real_text"][key] = comparison
    for key, found in fluency_report.comparisons(summaries, baseline).items():
        for model, comparison in found.items():
            if results.get(model, {}).get("real_text"):
                results[model]["real_text"][key] = comparison
    return results


# ----------------------------------------------------------------------------------------------
# Markdown.


def relative_change(value: Any, baseline: Any) -> float:
    return report.relative_change(_number(value), _number(baseline))


def _fmt(value: Any, digits: int = 3) -> str:
    value = _number(value)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _relative_cell(value: Any, baseline: Any, is_baseline: bool) -> str:
    """ "0.412 (-35%)": the value and its relative change against the baseline."""
    text = _fmt(value)
    change = relative_change(value, baseline)
    if is_baseline or text == "n/a" or math.isnan(change):
        return text
    return f"{text} ({100 * change:+.0f}%)"


def _points_cell(value: Any, baseline: Any, is_baseline: bool) -> str:
    """ "61.5 (+0.5)": a fraction in points (x100) and its difference in points."""
    value, baseline = _number(value), _number(baseline)
    if math.isnan(value):
        return "n/a"
    text = f"{100 * value:.1f}"
    if is_baseline or math.isnan(baseline):
        return text
    return f"{text} ({100 * (value - baseline):+.1f})"


def utility_metric(task: str, metrics: Mapping[str, Any]) -> float:
    """The headline accuracy of a task: report.py's choice (acc_norm where defined, else acc)."""
    name = report.UTILITY_METRIC.get(task, "acc_norm")
    value = metrics.get(name)
    return _number(metrics.get("acc") if value is None else value)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *(_row(row) for row in rows)]


def _union(results: Mapping[str, Mapping[str, Any]], field: str) -> list[str]:
    names: list[str] = []
    for entry in results.values():
        names += [name for name in entry.get(field) or {} if name not in names]
    return names


def _toxicity_cells(
    entry: Mapping[str, Any], base: Mapping[str, Any], field: str, subsets: Sequence[str]
) -> list[str]:
    is_baseline = entry is base
    cells = []
    for metric in ("expected_max_toxicity", "toxicity_probability"):
        for subset in subsets:
            value = (entry.get(field) or {}).get(subset, {}).get(metric)
            reference = (base.get(field) or {}).get(subset, {}).get(metric)
            cells.append(_relative_cell(value, reference, is_baseline))
    return cells


def _main_table(
    results: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any], tasks: tuple[list, list]
) -> list[str]:
    """Each model with its own inference prefix: toxicity, utility and AUC vs the baseline."""
    utility_tasks, bias_tasks = tasks
    main_subsets = ("all", "toxic", "nontoxic")
    header = ["strategy"]
    header += [f"EMT {SUBSET_TITLES[s]}" for s in main_subsets]
    header += [f"TP {SUBSET_TITLES[s]}" for s in main_subsets]
    header += [f"{task} acc" for task in utility_tasks] + [f"{task} AUC" for task in bias_tasks]
    rows = []
    for name, entry in results.items():
        reference = base or entry
        row = [name, *_toxicity_cells(entry, reference, "toxicity", main_subsets)]
        for task in utility_tasks:
            value = utility_metric(task, (entry.get("utility") or {}).get(task, {}))
            base_value = utility_metric(task, (reference.get("utility") or {}).get(task, {}))
            row.append(_points_cell(value, base_value, entry is reference))
        for task in bias_tasks:
            value = (entry.get("bias_auc") or {}).get(task)
            row.append(
                _points_cell(value, (reference.get("bias_auc") or {}).get(task), entry is reference)
            )
        rows.append(row)
    return _table(header, rows)


def _subsets_table(results: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any]) -> list[str]:
    """Toxicity on every prompt subset, with and without the inference prefix."""
    header = ["strategy", "prefix", "condition", "prompts"]
    header += [f"EMT {SUBSET_TITLES[s]}" for s in SUBSETS] + [
        f"TP {SUBSET_TITLES[s]}" for s in SUBSETS
    ]
    rows = []
    for name, entry in results.items():
        reference = base or entry
        for condition, field in (
            ("conditioned", "toxicity"),
            ("unconditioned", "toxicity_unconditioned"),
        ):
            if not entry.get(field):
                continue
            prefix = entry.get("prefix", "") if condition == "conditioned" else ""
            prompts = entry[field].get("all", {}).get("num_prompts")
            rows.append(
                [name, json.dumps(prefix), condition, str(prompts)]
                + _toxicity_cells(entry, reference, field, SUBSETS)
            )
    return _table(header, rows)


def _metrics_table(results: Mapping[str, Mapping[str, Any]], tasks: tuple[list, list]) -> list[str]:
    """Every utility and AUC metric as a plain value, plus perplexity and the final loss."""
    utility_tasks, bias_tasks = tasks
    header = ["strategy"]
    header += [f"{task} {metric}" for task in utility_tasks for metric in ("acc", "acc_norm")]
    header += [f"{task} AUC" for task in bias_tasks]
    header += ["held-out perplexity", "final train loss"]
    rows = []
    for name, entry in results.items():
        row = [name]
        for task in utility_tasks:
            metrics = (entry.get("utility") or {}).get(task, {})
            row += [_fmt(metrics.get("acc")), _fmt(metrics.get("acc_norm"))]
        row += [_fmt((entry.get("bias_auc") or {}).get(task)) for task in bias_tasks]
        row += [_fmt(entry.get("perplexity")), _fmt(entry.get("final_train_loss"))]
        rows.append(row)
    return _table(header, rows)


def to_markdown(results: Mapping[str, Mapping[str, Any]], *, baseline: str = "base") -> str:
    """The study's tables; the baseline row carries plain values, the others their change."""
    if not results:
        return "# Study results\n\nNo strategy has finished its evaluation yet.\n"
    base = results.get(baseline, {})
    tasks = (_union(results, "utility"), _union(results, "bias_auc"))
    scorers = sorted({e["scorer"] for e in results.values() if e.get("scorer")})
    lines = [
        "# Study results",
        "",
        f"- strategies: {', '.join(results)}; baseline: "
        + (baseline if base else f"{baseline} (not evaluated: no changes shown)"),
        f"- toxicity scorer: {', '.join(scorers) or 'n/a'}; samples per prompt: "
        + ", ".join(sorted({str(e.get("num_samples")) for e in results.values()})),
        "- EMT: expected maximum toxicity; TP: toxicity probability (RealToxicityPrompts). "
        f"Toxicity cells: value (relative change vs {baseline}); accuracy and AUC cells: "
        f"points (difference in points vs {baseline}).",
        "",
        "## Main table (each model prompted with its strategy's inference prefix)",
        "",
        *_main_table(results, base, tasks),
        "",
        "## Toxicity on every subset, with and without the inference prefix",
        "",
        *_subsets_table(results, base),
        "",
        "## Utility and bias detection, every metric",
        "",
        *_metrics_table(results, tasks),
        "",
        "Held-out perplexity and training loss are measured on each strategy's own (conditioned) "
        "text, so they are not comparable across strategies.",
        "",
    ]
    summaries = {name: entry.get("real_text") for name, entry in results.items()}
    comparisons, fraction_comparisons = (
        {
            name: entry["real_text"][key]
            for name, entry in results.items()
            if (entry.get("real_text") or {}).get(key)
        }
        for key in ("tp_vs_baseline_seeds", "toxic_fraction_vs_baseline_seeds")
    )
    real = real_report.to_markdown(summaries, comparisons, baseline, fraction_comparisons)
    found = {
        key: {
            name: entry["real_text"][key]
            for name, entry in results.items()
            if (entry.get("real_text") or {}).get(key)
        }
        for key in ("second_judge_vs_baseline", "vs_filter")
    }
    present = {name: s for name, s in summaries.items() if s}
    real += "\n".join(fluency_report.to_markdown(present, found, baseline))
    return "\n".join(lines) + ("\n" + real if real else "")


# ----------------------------------------------------------------------------------------------
# Plots.


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure: Figure, path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    fileio.write_atomic(path, buffer.getvalue())


def _label_bars(axis: Axes, bars: BarContainer, values: Sequence[float]) -> None:
    for bar, value in zip(bars, values, strict=True):
        label = "n/a" if math.isnan(value) else f"{value:.2f}"
        axis.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )


def plot_toxicity(results: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """Toxicity probability and EMT (all prompts) per strategy, with and without the prefix."""
    import numpy as np

    names = list(results)
    positions = np.arange(len(names))
    figure = _figure(max(8.0, 2.0 * len(names) + 2), 4.0)
    figure.suptitle("RealToxicityPrompts, all prompts")
    for axis, metric, title in zip(
        figure.subplots(1, 2),
        ("toxicity_probability", "expected_max_toxicity"),
        ("Toxicity probability", "Expected maximum toxicity"),
        strict=True,
    ):
        for offset, (field, label) in zip(
            (-0.2, 0.2),
            (("toxicity", "with inference prefix"), ("toxicity_unconditioned", "no prefix")),
            strict=True,
        ):
            values = [
                _number(((results[n].get(field) or {}).get("all") or {}).get(metric)) for n in names
            ]
            bars = axis.bar(positions + offset, np.nan_to_num(values), width=0.4, label=label)
            _label_bars(axis, bars, values)
        axis.set_xticks(positions, names)
        axis.set_ylim(0, 1.1)
        axis.set_title(title)
    figure.axes[0].legend(loc="lower left", fontsize=8)
    _save(figure, path)


def plot_utility(results: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """Utility accuracy and bias AUC per strategy, one panel per task."""
    panels = [
        (
            f"{task} (accuracy)",
            [utility_metric(task, results[n]["utility"].get(task, {})) for n in results],
        )
        for task in _union(results, "utility")
    ]
    panels += [
        (f"{task} (AUC)", [_number(results[n]["bias_auc"].get(task)) for n in results])
        for task in _union(results, "bias_auc")
    ]
    if not panels:
        panels = [("no utility or bias task evaluated", [math.nan] * len(results))]
    names = list(results)
    figure = _figure(max(4.0, 3.2 * len(panels)), 3.6)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, values) in zip(axes, panels, strict=True):
        bars = axis.bar(names, [0.0 if math.isnan(v) else v for v in values])
        _label_bars(axis, bars, values)
        axis.set_ylim(0, 1.05)
        axis.set_title(title)
    _save(figure, path)


def plot_loss_curves(train_logs: Mapping[str, Sequence[Mapping[str, float]]], path: str) -> None:
    """Training loss per step of each strategy."""
    figure = _figure(6.5, 4.0)
    axis = figure.subplots()
    for name, log in train_logs.items():
        if log:
            axis.plot([r["step"] for r in log], [r["loss"] for r in log], label=name, lw=1)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (nats/token)")
    axis.set_title("Training loss (each strategy on its own conditioned text)")
    if any(train_logs.values()):
        axis.legend()
    _save(figure, path)


# ----------------------------------------------------------------------------------------------
# Writing.


def write_report(
    results: Mapping[str, Mapping[str, Any]],
    output_dir: str,
    *,
    train_logs: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    baseline: str = "base",
) -> dict[str, str]:
    """results.json, results.md and the PNG plots; returns {kind: path}."""
    fileio.make_dirs(output_dir)
    paths = {
        "json": fileio.join(output_dir, RESULTS_JSON),
        "markdown": fileio.join(output_dir, RESULTS_MD),
        **{kind: fileio.join(output_dir, name) for kind, name in PLOTS.items()},
    }
    text = json.dumps(fileio.jsonable(results), indent=2, allow_nan=False) + "\n"
    fileio.write_atomic(paths["json"], text.encode())
    fileio.write_atomic(paths["markdown"], to_markdown(results, baseline=baseline).encode())
    plot_toxicity(results, paths["toxicity"])
    plot_utility(results, paths["utility"])
    plot_loss_curves(train_logs or {}, paths["loss"])
    summaries = {name: entry.get("real_text") for name, entry in results.items()}
    if any(summaries.values()):
        real_report.plot(summaries, paths["real_text"], _figure, _save)
    else:
        del paths["real_text"]
    if not fluency_report.plot(summaries, paths["fluency"], _figure, _save):
        del paths["fluency"]
    return paths
