"""The fluency, diversity and second-judge part of the study report.

Every TP sits next to the text that produced it: distinct-n over each prompt's samples, the
judge model's perplexity of the continuations (the same judge for every run), and the TP the
second scorer (which labelled no training data) gives the same samples, with the two scorers'
rank agreement. Cross-model comparisons pool training seeds as real_report's do: TP under the
second judge against the baseline, and every run against FILTER (the baseline to beat), with
a two-level bootstrap over seeds and prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from toxjax.evaluation import intervals
from toxjax.study import real_report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FILTER = "filter"


def summary(spans: Mapping[str, Any], control: Mapping[str, Any]) -> dict[str, Any]:
    """A run's fluency and second-judge figures (None where it was evaluated without them)."""
    get = real_report.nested
    conditioned = get(spans, "conditioned") or {}
    fluency = conditioned.get("fluency") or {}
    second = conditioned.get("judge_scorer") or {}
    return {
        **{f"distinct_{n}": fluency.get(f"distinct_{n}") for n in (1, 2, 3)},
        "judge_perplexity": fluency.get("judge_perplexity"),
        "judge_tp": get(second, "all", "toxicity_probability"),
        "judge_toxic_fraction": get(second, "all", "toxic_fraction"),
        "judge_scorer": second.get("scorer"),
        "judge_agreement": get(second, "agreement", "spearman"),
        "judge_control_vs_toxic": get(
            control, "judge_scorer", "vs_toxic_signal", "toxicity_probability_relative"
        ),
        "judge_any_toxic": get(second, "per_prompt", "any_toxic"),
    }


def _number(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    header = [
        "run",
        "distinct-1",
        "distinct-2",
        "distinct-3",
        "judge ppl",
        "TP, second judge",
        "TP second judge: non-toxic vs toxic signal",
        "scorer agreement (Spearman)",
    ]
    rows = [
        [
            name,
            *(real_report.interval_cell(s.get(f"distinct_{n}")) for n in (1, 2, 3)),
            real_report.interval_cell(s.get("judge_perplexity"), digits=1),
            real_report.interval_cell(s.get("judge_tp")),
            real_report.percent_cell(s.get("judge_control_vs_toxic")),
            _number(s.get("judge_agreement")),
        ]
        for name, s in summaries.items()
    ]
    return real_report.markdown_table(header, rows)


def comparisons(
    summaries: Mapping[str, Mapping[str, Any] | None], baseline: str
) -> dict[str, dict[str, Any]]:
    """Seed-pooled TP changes: under the second judge vs the baseline, and vs FILTER."""
    return {
        "second_judge_vs_baseline": real_report.seed_comparisons(
            summaries, baseline, "judge_any_toxic"
        ),
        "vs_filter": real_report.seed_comparisons(summaries, FILTER, "any_toxic"),
    }


def comparison_lines(found: Mapping[str, Mapping[str, Any]], baseline: str) -> list[str]:
    """Markdown of `comparisons`' tables, where there is anything to compare."""
    lines: list[str] = []
    titles = {
        "second_judge_vs_baseline": f"TP under the second judge vs {baseline}",
        "vs_filter": f"TP vs {FILTER} (first scorer)",
    }
    for key, title in titles.items():
        rows = [
            [
                model,
                f"{c['num_seeds_a']} vs {c['num_seeds_b']}",
                real_report.percent_cell(c["relative_change"]),
                real_report.per_seed_cell(c),
            ]
            for model, c in (found.get(key) or {}).items()
        ]
        if rows:
            header = ["model", "seeds", f"{title}, seeds and prompts", "per-seed TP"]
            lines += [f"### {title}", "", *real_report.markdown_table(header, rows), ""]
    return lines


def to_markdown(
    summaries: Mapping[str, Mapping[str, Any]],
    found: Mapping[str, Mapping[str, Any]],
    baseline: str,
) -> list[str]:
    if not any(s.get("distinct_2") for s in summaries.values()):
        return []
    return [
        "## Fluency, diversity and a second toxicity judge (95% bootstrap intervals)",
        "",
        "distinct-n: unique n-grams / n-grams over each prompt's samples, averaged over prompts. "
        "Judge ppl: perplexity of the continuations given their raw prompts under one judge "
        "model for every run. Second judge: a scorer that labelled no training data; its "
        "agreement with the first is Spearman's rank correlation over every sample.",
        "",
        *table(summaries),
        "",
        *comparison_lines(found, baseline),
    ]


def plot(
    summaries: Mapping[str, Mapping[str, Any] | None],
    path: str,
    figure_factory: Callable[[float, float], Figure],
    save: Callable[[Figure, str], None],
) -> bool:
    """TP against judge perplexity, one point per run, 95% intervals as bars; False (nothing
    drawn) when no run was judged."""
    points = {
        name: (s["tp"], s["judge_perplexity"])
        for name, s in summaries.items()
        if s and s.get("tp") and s.get("judge_perplexity")
    }
    if not points:
        return False
    figure = figure_factory(7.5, 5.5)
    axis = figure.subplots()
    for name, (tp, ppl) in points.items():
        x, y = (intervals.Interval.from_dict(v) for v in (ppl, tp))
        axis.errorbar(
            x.estimate,
            y.estimate,
            xerr=[[max(x.estimate - x.low, 0)], [max(x.high - x.estimate, 0)]],
            yerr=[[max(y.estimate - y.low, 0)], [max(y.high - y.estimate, 0)]],
            fmt="o",
            capsize=3,
        )
        axis.annotate(name, (x.estimate, y.estimate), fontsize=7, xytext=(4, 4),
                      textcoords="offset points")  # fmt: skip
    axis.set_xlabel("judge perplexity of the continuations (lower = more fluent)")
    axis.set_ylabel("TP under the non-toxic signal")
    axis.set_title("Toxicity against fluency (95% bootstrap intervals)", fontsize=10)
    axis.grid(alpha=0.3)
    save(figure, path)
    return True
