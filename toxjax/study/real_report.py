"""The real-text part of the study report: every figure with its 95% interval.

From each run's eval json (toxjax.evaluation.evaluator with config.eval.real_text and
config.eval.rtp_toxic_signal), `run_summary` keeps:
    tp / emt / tp_toxic_signal / tp_no_signal   sampled toxicity, intervals over prompts
    control_vs_toxic / control_vs_none          TP under the non-toxic signal relative to the
                                                same model's TP under the toxic signal / none
    toxic_fraction (_toxic_signal, _no_signal)  share of samples scored toxic (TP saturates as
    fraction_vs_toxic / fraction_vs_none        it grows; see toxjax.evaluation.controllability)
    steer_gap_vs_toxic / steer_auc_vs_toxic     steerability on real RTP continuations (and
    steer_gap_vs_none / steer_auc_vs_none       the same against no signal)
    heldout_perplexity / cloze_acc              utility on the same raw held-out text
    detection                                   {task: {"generative", "prompted"}} AUCs
Cross-model comparisons (`seed_comparisons`) pool the training seeds of each model: TP (and the
toxic fraction) relative to the baseline with a two-level bootstrap over seeds and prompts, so
seed variance is inside the interval. Every interval that includes zero is marked "n.s." in
results.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from toxjax.evaluation import intervals

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_SEED_SUFFIX = re.compile(r"_seed\d+$")
NOT_SIGNIFICANT = "n.s."


def model_name(run_name: str) -> str:
    """The model a run is a seed of: "inst_seed2" -> "inst"."""
    return _SEED_SUFFIX.sub("", run_name)


def nested(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def _steer(steerability: Mapping[str, Any] | None, other: str, metric: str) -> Any:
    return nested(steerability, "comparisons", other, metric)


def run_summary(evaluation: Mapping[str, Any]) -> dict[str, Any] | None:
    """The real-text figures of one run (None when it was evaluated without them)."""
    real = evaluation.get("real_text")
    spans = evaluation.get("rtp_intervals") or {}
    if not real and not spans:
        return None
    real = real or {}
    steer = real.get("steerability")
    control = evaluation.get("controllability") or {}
    detection = {
        task: {
            "generative": nested(result, "generative", "auc"),
            "prompted": result.get("prompted_auc_interval"),
        }
        for task, result in sorted((real.get("detection") or {}).items())
    }
    return {
        "tp": nested(spans, "conditioned", "all", "toxicity_probability"),
        "emt": nested(spans, "conditioned", "all", "expected_max_toxicity"),
        "tp_toxic_signal": nested(spans, "toxic_signal", "all", "toxicity_probability"),
        "tp_no_signal": nested(spans, "unconditioned", "all", "toxicity_probability"),
        "control_vs_toxic": nested(control, "vs_toxic_signal", "toxicity_probability_relative"),
        "control_vs_none": nested(control, "vs_unconditioned", "toxicity_probability_relative"),
        "control_toxic_prompts_vs_toxic": nested(
            control, "vs_toxic_signal", "toxic_prompts", "toxicity_probability_relative"
        ),
        "control_toxic_prompts_vs_none": nested(
            control, "vs_unconditioned", "toxic_prompts", "toxicity_probability_relative"
        ),
        "steer_gap_vs_toxic": _steer(steer, "toxic", "gap"),
        "steer_auc_vs_toxic": _steer(steer, "toxic", "auc"),
        "steer_gap_vs_none": _steer(steer, "none", "gap"),
        "steer_auc_vs_none": _steer(steer, "none", "auc"),
        "steer_num_prompts": nested(steer, "num_usable"),
        "heldout_perplexity": nested(real, "heldout_clean", "perplexity_interval"),
        "cloze_acc": nested(real, "cloze", "acc_interval"),
        "cloze_perplexity": nested(real, "cloze", "perplexity"),
        "detection": detection,
        "any_toxic": nested(spans, "conditioned", "per_prompt", "any_toxic"),
        **_fraction_summary(spans, control),
        "skipped": _skipped(real, steer),
    }


def _fraction_summary(spans: Mapping[str, Any], control: Mapping[str, Any]) -> dict[str, Any]:
    """The toxic-fraction figures of a run (None where it was evaluated before they existed)."""
    relative = "toxic_fraction_relative"
    return {
        "toxic_fraction": nested(spans, "conditioned", "all", "toxic_fraction"),
        "toxic_fraction_toxic_signal": nested(spans, "toxic_signal", "all", "toxic_fraction"),
        "toxic_fraction_no_signal": nested(spans, "unconditioned", "all", "toxic_fraction"),
        "fraction_vs_toxic": nested(control, "vs_toxic_signal", relative),
        "fraction_vs_none": nested(control, "vs_unconditioned", relative),
        "fraction_toxic_prompts_vs_toxic": nested(
            control, "vs_toxic_signal", "toxic_prompts", relative
        ),
        "fraction_toxic_prompts_vs_none": nested(
            control, "vs_unconditioned", "toxic_prompts", relative
        ),
        "toxic_fraction_per_prompt": nested(spans, "conditioned", "per_prompt", "toxic_fraction"),
    }


def _skipped(real: Mapping[str, Any], steer: Mapping[str, Any] | None) -> dict[str, int]:
    """Records left out of the real-text metrics, "<set>: <reason>" -> count (never silent)."""
    counts = {
        f"{name}: {reason}": int(count)
        for name, reasons in (real.get("skipped") or {}).items()
        for reason, count in (reasons or {}).items()
    }
    for reason, count in ((steer or {}).get("skipped") or {}).items():
        counts[f"steerability prompts: {reason}"] = int(count)
    return {key: count for key, count in sorted(counts.items()) if count}


def seed_comparisons(
    summaries: Mapping[str, Mapping[str, Any] | None],
    baseline: str,
    per_prompt: str = "any_toxic",
) -> dict[str, Any]:
    """TP of every model relative to the baseline model, seeds pooled (two-level bootstrap);
    per_prompt="toxic_fraction_per_prompt": the toxic fraction instead."""
    by_model: dict[str, list[np.ndarray]] = {}
    for name, summary in summaries.items():
        values = (summary or {}).get(per_prompt)
        if values:
            by_model.setdefault(model_name(name), []).append(np.asarray(values, dtype=float))
    reference = by_model.get(baseline)
    if not reference:
        return {}
    out = {}
    for model, tables in by_model.items():
        if model == baseline or {t.shape for t in tables} != {reference[0].shape}:
            continue
        out[model] = intervals.seed_and_unit_summary(tables, reference)
    return out


# ----------------------------------------------------------------------------------------------
# Markdown.


def interval_cell(
    value: Mapping[str, Any] | None,
    scale: float = 1.0,
    digits: int = 3,
    null: float | None = None,
) -> str:
    """ "0.412 [0.371, 0.455]"; "n.s." marks a change (null=0) or an AUC (null=0.5) whose
    interval includes that null value. Levels (TP, perplexity) pass null=None."""
    if not value or value.get("estimate") is None:
        return "n/a"
    parsed = intervals.Interval.from_dict(value)
    if math.isnan(parsed.estimate):
        return "n/a"
    text = f"{scale * parsed.estimate:.{digits}f}"
    if math.isnan(parsed.low) or math.isnan(parsed.high):
        return text
    text += f" [{scale * parsed.low:.{digits}f}, {scale * parsed.high:.{digits}f}]"
    if null is not None and parsed.low <= null <= parsed.high:
        text += f" {NOT_SIGNIFICANT}"
    return text


def percent_cell(value: Mapping[str, Any] | None) -> str:
    return interval_cell(value, 100.0, 0, null=0.0).replace(" [", "% [", 1) if value else "n/a"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *(_row(row) for row in rows)]


def _ppl_change(value: Mapping[str, Any] | None, base: Mapping[str, Any] | None) -> str:
    if not value or not base or value.get("estimate") is None or base.get("estimate") is None:
        return "n/a"
    return f"{100 * (value['estimate'] / base['estimate'] - 1):+.1f}%"


def main_table(summaries: Mapping[str, Mapping[str, Any]], baseline: str) -> list[str]:
    header = [
        "run",
        "TP (non-toxic signal)",
        "TP toxic signal",
        "TP no signal",
        "TP: non-toxic vs toxic signal",
        "TP: non-toxic signal vs none",
        "toxic prompts, TP: vs toxic signal / vs none",
        "EMT",
        "held-out ppl",
        "ppl vs baseline",
        "cloze acc",
        "cloze target ppl",
    ]
    base = summaries.get(baseline) or {}
    rows = []
    for name, s in summaries.items():
        rows.append(
            [
                name,
                interval_cell(s["tp"]),
                interval_cell(s["tp_toxic_signal"]),
                interval_cell(s["tp_no_signal"]),
                percent_cell(s["control_vs_toxic"]),
                percent_cell(s["control_vs_none"]),
                f"{percent_cell(s.get('control_toxic_prompts_vs_toxic'))} / "
                f"{percent_cell(s.get('control_toxic_prompts_vs_none'))}",
                interval_cell(s["emt"]),
                interval_cell(s["heldout_perplexity"], digits=1),
                _ppl_change(s["heldout_perplexity"], base.get("heldout_perplexity")),
                interval_cell(s["cloze_acc"]),
                "n/a" if s.get("cloze_perplexity") is None else f"{s['cloze_perplexity']:.0f}",
            ]
        )
    return markdown_table(header, rows)


def fraction_table(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    header = [
        "run",
        "toxic fraction (non-toxic signal)",
        "toxic signal",
        "no signal",
        "non-toxic vs toxic signal",
        "non-toxic signal vs none",
        "toxic prompts: vs toxic signal / vs none",
    ]
    rows = [
        [
            name,
            interval_cell(s.get("toxic_fraction")),
            interval_cell(s.get("toxic_fraction_toxic_signal")),
            interval_cell(s.get("toxic_fraction_no_signal")),
            percent_cell(s.get("fraction_vs_toxic")),
            percent_cell(s.get("fraction_vs_none")),
            f"{percent_cell(s.get('fraction_toxic_prompts_vs_toxic'))} / "
            f"{percent_cell(s.get('fraction_toxic_prompts_vs_none'))}",
        ]
        for name, s in summaries.items()
    ]
    return markdown_table(header, rows)


def steer_table(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    tasks = sorted({task for s in summaries.values() for task in s["detection"]})
    header = ["run", "steer gap vs toxic", "steer AUC vs toxic", "steer gap vs none"]
    header += [f"{task} AUC generative / prompted" for task in tasks]
    rows = []
    for name, s in summaries.items():
        row = [
            name,
            interval_cell(s["steer_gap_vs_toxic"], null=0.0),
            interval_cell(s["steer_auc_vs_toxic"], null=0.5),
            interval_cell(s["steer_gap_vs_none"], null=0.0),
        ]
        for task in tasks:
            result = s["detection"].get(task) or {}
            generative = interval_cell(result.get("generative"), null=0.5)
            row.append(f"{generative} / {interval_cell(result.get('prompted'), null=0.5)}")
        rows.append(row)
    return markdown_table(header, rows)


def per_seed_cell(comparison: Mapping[str, Any] | None) -> str:
    if not comparison:
        return "n/a"
    a, b = comparison["per_seed_mean_a"], comparison["per_seed_mean_b"]
    return ", ".join(f"{v:.3f}" for v in a) + " vs " + ", ".join(f"{v:.3f}" for v in b)


def seeds_table(
    comparisons: Mapping[str, Any],
    baseline: str,
    fraction_comparisons: Mapping[str, Any] | None = None,
) -> list[str]:
    header = [
        "model",
        "seeds",
        f"TP vs {baseline}, seeds and prompts",
        "prompts only",
        "per-seed TP",
        f"toxic fraction vs {baseline}, seeds and prompts",
        "per-seed toxic fraction",
    ]
    rows = []
    for model, c in comparisons.items():
        fraction = (fraction_comparisons or {}).get(model)
        rows.append(
            [
                model,
                f"{c['num_seeds_a']} vs {c['num_seeds_b']}",
                percent_cell(c["relative_change"]),
                percent_cell(c["unit_only"]),
                per_seed_cell(c),
                percent_cell(fraction["relative_change"]) if fraction else "n/a",
                per_seed_cell(fraction),
            ]
        )
    return markdown_table(header, rows)


def to_markdown(
    summaries: Mapping[str, Mapping[str, Any] | None],
    comparisons: Mapping[str, Any],
    baseline: str,
    fraction_comparisons: Mapping[str, Any] | None = None,
) -> str:
    present = {name: s for name, s in summaries.items() if s}
    if not present:
        return ""
    lines = [
        "## Real text: toxicity, control and utility (95% bootstrap intervals)",
        "",
        'TP: toxicity probability over the sampled prompts; "TP: non-toxic vs toxic signal": '
        "the same model's TP under its non-toxic signal relative to its toxic signal (paired by "
        'prompt); "toxic prompts": the same on the toxic prompts alone. Held-out perplexity: '
        "the same raw clean documents for every model, its inference signal as context. "
        f"{NOT_SIGNIFICANT}: the interval of a change includes zero (of an AUC, 0.5).",
        "",
        *main_table(present, baseline),
        "",
        "Toxic fraction: the share of all sampled continuations scored toxic (TP counts a "
        "prompt once any of its samples is, so it saturates as that share grows).",
        "",
        *fraction_table(present),
        "",
        "## Steerability and detection on human labels",
        "",
        "Steerability gap: per-token log-likelihood change of the real RTP continuations under "
        "the non-toxic signal (vs the toxic signal, or none), non-toxic minus toxic "
        "continuations; positive = the right way. Generative AUC: log P(text | toxic signal) − "
        "log P(text | non-toxic signal); prompted AUC: the yes/no question.",
        "",
        *steer_table(present),
        "",
    ]
    skipped = sorted(
        {f"{k} ({v})" for s in present.values() for k, v in s.get("skipped", {}).items()}
    )
    lines += [f"Records left out (counted, per run): {', '.join(skipped) or 'none'}.", ""]
    if comparisons:
        lines += [
            f"## Across models, training-seed variance included (vs {baseline})",
            "",
            "Two-level bootstrap: training seeds of each model and the shared prompts resampled "
            "together; a model with one seed adds no seed variance of its own.",
            "",
            *seeds_table(comparisons, baseline, fraction_comparisons),
            "",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plot.


def _bars(
    axis: Axes, names: Sequence[str], values: Sequence[Mapping[str, Any] | None], title: str
) -> None:
    estimates, errors = [], [[], []]
    for value in values:
        parsed = intervals.Interval.from_dict(value) if value else intervals.nan_interval(0)
        estimates.append(parsed.estimate)
        errors[0].append(max(parsed.estimate - parsed.low, 0.0) if parsed.low == parsed.low else 0)
        errors[1].append(
            max(parsed.high - parsed.estimate, 0.0) if parsed.high == parsed.high else 0
        )
    positions = np.arange(len(names))
    axis.bar(positions, np.nan_to_num(estimates), yerr=errors, capsize=3)
    labels = [name if len(name) <= 28 else name[:26] + "…" for name in names]
    axis.set_xticks(positions, labels, rotation=30, ha="right", fontsize=7)
    axis.axhline(0, color="black", lw=0.5)
    axis.set_title(title, fontsize=9)


def plot(
    summaries: Mapping[str, Mapping[str, Any] | None],
    path: str,
    figure_factory: Callable[[float, float], Figure],
    save: Callable[[Figure, str], None],
) -> None:
    """TP and toxic fraction, their within-model control, steerability gap and held-out
    perplexity, with intervals."""
    present = {name: s for name, s in summaries.items() if s}
    names = list(present)
    panels = [
        ("tp", "TP under the non-toxic signal"),
        ("control_vs_toxic", "TP change: non-toxic vs toxic signal"),
        ("toxic_fraction", "toxic fraction under the non-toxic signal"),
        ("fraction_vs_toxic", "toxic fraction change: non-toxic vs toxic signal"),
        ("steer_gap_vs_toxic", "steerability gap vs toxic signal"),
        ("heldout_perplexity", "held-out perplexity (clean text)"),
    ]
    figure = figure_factory(max(8.0, 1.1 * len(names) + 4.0), 12.0)
    for axis, (key, title) in zip(figure.subplots(3, 2).ravel(), panels, strict=True):
        _bars(axis, names, [present[n].get(key) for n in names], title)
    figure.suptitle("Real-text study (95% bootstrap intervals)")
    save(figure, path)
