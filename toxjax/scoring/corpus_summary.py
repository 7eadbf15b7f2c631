"""Score statistics: per shard while scoring, merged into the run summary at the end.

Each shard keeps small sufficient statistics (count, sum, extremes, count above the threshold
and a fixed-bin histogram per attribute) so the summary of a resumed or Beam run is computed
from the manifest alone, without reading every scored record again.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

HISTOGRAM_BINS = 50  # equal-width bins over [0, 1]; scores outside are clipped into the ends
MAX_SKIPPED_EXAMPLES = 10  # skipped records quoted in the summary (per shard and overall)


class ShardStats:
    """Accumulates one shard's score statistics, batch by batch."""

    def __init__(self, attributes: Sequence[str], threshold: float):
        self.threshold = float(threshold)
        self.count = 0
        self.sums = {a: 0.0 for a in attributes}
        self.mins = {a: float("inf") for a in attributes}
        self.maxs = {a: float("-inf") for a in attributes}
        self.above = dict.fromkeys(attributes, 0)
        self.histograms = {a: np.zeros(HISTOGRAM_BINS, np.int64) for a in attributes}

    def add(self, scores: Mapping[str, np.ndarray]) -> None:
        for attribute, values in scores.items():
            values = np.asarray(values, np.float64)
            if values.size == 0:
                continue
            self.sums[attribute] += float(values.sum())
            self.mins[attribute] = min(self.mins[attribute], float(values.min()))
            self.maxs[attribute] = max(self.maxs[attribute], float(values.max()))
            # "above" means score > threshold, as in conditioning.py (INST/FILTER).
            self.above[attribute] += int(np.count_nonzero(values > self.threshold))
            self.histograms[attribute] += histogram_counts(values)
        self.count += len(next(iter(scores.values()), ()))

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "count": self.count,
            "attributes": {
                a: {
                    "sum": self.sums[a],
                    "min": self.mins[a] if self.count else None,
                    "max": self.maxs[a] if self.count else None,
                    "num_above": self.above[a],
                    "histogram": self.histograms[a].tolist(),
                }
                for a in self.sums
            },
        }


def histogram_counts(values: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
    return np.histogram(clipped, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0].astype(np.int64)


def summarize(
    header: Mapping[str, Any],
    entries: Iterable[Mapping[str, Any]],
    attribute: str,
    threshold: float,
) -> dict[str, Any]:
    """The run summary from the manifest header and its (complete) shard entries."""
    entries = sorted(entries, key=lambda entry: entry["index"])
    attributes = list(header["attributes"])
    scored = sum(entry["num_records"] for entry in entries)
    reasons: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    histograms = {a: np.zeros(HISTOGRAM_BINS, np.int64) for a in attributes}
    sums, above = dict.fromkeys(attributes, 0.0), dict.fromkeys(attributes, 0)
    for entry in entries:
        reasons.update(entry["skipped"])
        examples.extend(entry["skipped_examples"][: MAX_SKIPPED_EXAMPLES - len(examples)])
        for a in attributes:
            stats = entry["stats"]["attributes"][a]
            histograms[a] += np.asarray(stats["histogram"], np.int64)
            sums[a] += stats["sum"]
            above[a] += stats["num_above"]
    seconds = sum(entry.get("seconds", 0.0) for entry in entries)
    return {
        "scorer": header["scorer"],
        "input": header["input"],
        "num_input_records": header["num_input_records"],
        "docs_scored": scored,
        "docs_skipped": sum(reasons.values()),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "skipped_examples": examples,
        "attribute": attribute,
        "threshold": threshold,
        "num_above_threshold": above,
        "fraction_above_threshold": {a: above[a] / scored if scored else 0.0 for a in attributes},
        "mean": {a: sums[a] / scored if scored else 0.0 for a in attributes},
        "histogram": {
            "bin_edges": np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1).round(6).tolist(),
            "counts": {a: histograms[a].tolist() for a in attributes},
        },
        "scoring_seconds": round(seconds, 3),
        "docs_per_second": round(scored / seconds, 1) if seconds > 0 else None,
    }


def histogram_png(summary: Mapping[str, Any]) -> bytes:
    """A PNG with one score histogram per attribute; the threshold drawn on the main one."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    counts = summary["histogram"]["counts"]
    edges = np.asarray(summary["histogram"]["bin_edges"])
    figure, axes = plt.subplots(
        len(counts), 1, figsize=(7, 2.6 * len(counts)), squeeze=False, constrained_layout=True
    )
    for axis, (attribute, values) in zip(axes[:, 0], counts.items(), strict=True):
        axis.bar(edges[:-1], values, width=np.diff(edges), align="edge", color="tab:blue")
        axis.set_yscale("symlog", linthresh=1)
        axis.set_xlim(0.0, 1.0)
        axis.set_ylabel("documents")
        fraction = summary["fraction_above_threshold"][attribute]
        axis.set_title(
            f"{attribute}: {fraction:.1%} of {summary['docs_scored']} docs > {summary['threshold']}"
        )
        if attribute == summary["attribute"]:
            axis.axvline(summary["threshold"], color="tab:red", linestyle="--", label="threshold")
            axis.legend()
    axes[-1, 0].set_xlabel(f"score ({summary['scorer']})")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def format_summary(summary: Mapping[str, Any], output_dir: str) -> str:
    lines = [
        f"Scored {summary['docs_scored']} of {summary['num_input_records']} docs from "
        f"{summary['input']} with {summary['scorer']} into {output_dir}",
        f"Skipped {summary['docs_skipped']} docs" + (":" if summary["docs_skipped"] else "."),
    ]
    lines += [f"  {reason}: {n}" for reason, n in summary["skipped_by_reason"].items()]
    if summary["skipped_examples"]:
        lines.append("  first skipped records:")
        for example in summary["skipped_examples"]:
            field = f" field {example['field']!r}" if example["field"] is not None else ""
            detail = f": {example['detail']}" if example["detail"] else ""
            lines.append(
                f"    {example['file']}:{example['line']}{field}: {example['reason']}{detail}"
            )
    for attribute, fraction in summary["fraction_above_threshold"].items():
        marker = "*" if attribute == summary["attribute"] else " "
        lines.append(
            f"{marker} {attribute} > {summary['threshold']}: {fraction:.2%} "
            f"({summary['num_above_threshold'][attribute]} docs), "
            f"mean {summary['mean'][attribute]:.4f}"
        )
    if summary.get("docs_per_second"):
        lines.append(f"Scoring speed: {summary['docs_per_second']} docs/s")
    return "\n".join(lines)
