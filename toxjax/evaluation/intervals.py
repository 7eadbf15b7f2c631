"""95% percentile-bootstrap intervals for the study's metrics (TP, EMT, AUCs, gaps).

A change whose interval includes zero is not a result, so every headline number carries one.
The resampled units are prompts or examples (`n` in an `Interval`); `seed_and_unit_*` also
resamples training seeds, for comparisons between models trained several times.

`scipy.stats.bootstrap` is not used: resamples whose statistic is undefined (an AUC over one
class, a ratio over a zero mean) must be dropped rather than turn the whole interval NaN, and
the two-level (seed and unit) scheme is not one it offers. The percentile method is the one
both share. A fixed `seed` gives identical results; resampling is vectorised with numpy in
chunks of bounded memory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from scipy import stats
from sklearn.metrics import roc_auc_score

N_RESAMPLES = 2000
CONFIDENCE = 0.95
MIN_VALID_FRACTION = 0.5  # fewer defined resamples than this: no interval
_CHUNK_ELEMENTS = 1 << 22  # resampled values held in memory at once

# Vectorised statistics get arrays of shape [batch, n, ...] and return [batch];
# plain ones get arrays of shape [n, ...] and return a float.
Statistic = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate, its `confidence` bootstrap interval and the number of resampled units."""

    estimate: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero (False if anything is NaN)."""
        if any(math.isnan(v) for v in (self.estimate, self.low, self.high)):
            return False
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "estimate": float(self.estimate),
            "low": float(self.low),
            "high": float(self.high),
            "n": int(self.n),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Interval:
        """Inverse of `to_dict`; also reads strict JSON, where NaN was written as null."""

        def number(key: str) -> float:
            return math.nan if values[key] is None else float(values[key])

        return cls(number("estimate"), number("low"), number("high"), int(values["n"]))


def nan_interval(n: int, estimate: float = math.nan) -> Interval:
    """An interval that could not be computed (no data, or an undefined statistic)."""
    return Interval(float(estimate), math.nan, math.nan, int(n))


def _check_options(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def percentile_interval(
    estimate: float, distribution: np.ndarray, *, n: int, confidence: float
) -> Interval:
    """The percentile interval of a bootstrap distribution, non-finite resamples dropped.

    Fewer than half the resamples defined means the statistic is mostly undefined on this data
    (say, nearly all one class): no interval is better than one from a biased few.
    """
    distribution = np.asarray(distribution, dtype=np.float64)
    valid = distribution[np.isfinite(distribution)]
    if valid.size < MIN_VALID_FRACTION * distribution.size:
        logging.warning(
            "bootstrap: only %d of %d resamples have a defined statistic; no interval",
            valid.size,
            distribution.size,
        )
        return nan_interval(n, estimate)
    if valid.size < distribution.size:
        logging.info("bootstrap: dropped %d undefined resamples", distribution.size - valid.size)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(valid, [alpha, 1.0 - alpha])
    return Interval(float(estimate), float(low), float(high), int(n))


def _as_arrays(samples: Sequence[Any]) -> list[np.ndarray]:
    arrays = [np.asarray(x) for x in samples]
    if not arrays:
        raise ValueError("bootstrap needs at least one sample array")
    if any(x.ndim == 0 for x in arrays):
        raise ValueError("bootstrap samples must be arrays with a unit (first) axis")
    return arrays


def _is_constant(x: np.ndarray) -> bool:
    """Every unit (row along the first axis) equal: every resample is then the data itself."""
    return bool(np.all(x == x[:1]))


def _index_chunks(
    rng: np.random.Generator, sizes: Sequence[int], n_resamples: int, chunk: int
) -> Iterator[list[np.ndarray]]:
    """Per chunk, one [batch, size] index array per size, drawn in a fixed order."""
    for start in range(0, n_resamples, chunk):
        batch = min(chunk, n_resamples - start)
        yield [rng.integers(0, size, size=(batch, size)) for size in sizes]


def _evaluate(
    statistic: Statistic, arrays: Sequence[np.ndarray], *, vectorized: bool, batched: bool
) -> np.ndarray:
    """The statistic over a batch of resampled arrays (batched) or over the data (not)."""
    if vectorized:
        if batched:
            return np.asarray(statistic(*arrays), dtype=np.float64)
        return np.asarray(statistic(*(x[None] for x in arrays)), dtype=np.float64)[0]
    if batched:
        batch = arrays[0].shape[0]
        return np.asarray(
            [statistic(*(x[row] for x in arrays)) for row in range(batch)], dtype=np.float64
        )
    return np.float64(statistic(*arrays))


def bootstrap(
    samples: Sequence[np.ndarray],
    statistic: Statistic,
    *,
    paired: bool,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    vectorized: bool = False,
) -> Interval:
    """Percentile bootstrap of `statistic(*samples)`.

    paired=True: the arrays share their first (unit) axis and are resampled with the same
    indices, so pairs stay pairs; n is that length. paired=False: each array is resampled
    on its own (independent groups); n is their total length. `vectorized` statistics get a
    leading resample axis (see `Statistic`) and are far faster. An empty array gives a NaN
    interval; constant data an interval collapsed to the estimate.
    """
    _check_options(n_resamples, confidence)
    arrays = _as_arrays(samples)
    sizes = [x.shape[0] for x in arrays]
    if paired and len(set(sizes)) > 1:
        raise ValueError(f"paired samples must share their first axis, got lengths {sizes}")
    n = sizes[0] if paired else sum(sizes)
    if min(sizes) == 0:
        return nan_interval(n)
    estimate = float(_evaluate(statistic, arrays, vectorized=vectorized, batched=False))
    if all(_is_constant(x) for x in arrays):
        return Interval(estimate, estimate, estimate, n)
    per_resample = max(1, sum(x.size for x in arrays))
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // per_resample))
    rng = np.random.default_rng(seed)
    draws = []
    for indices in _index_chunks(rng, sizes[:1] if paired else sizes, n_resamples, chunk):
        if paired:
            indices = indices * len(arrays)
        resampled = [x[i] for x, i in zip(arrays, indices, strict=True)]
        draws.append(_evaluate(statistic, resampled, vectorized=vectorized, batched=True))
    return percentile_interval(estimate, np.concatenate(draws), n=n, confidence=confidence)


# ----- vectorised statistics (arrays [batch, n]) -----


def _means(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1)


def _ratio_minus_one(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator - 1, NaN where the denominator is zero (no relative change)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / denominator - 1.0
    return np.where(denominator == 0.0, np.nan, out)


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC per row via the Mann-Whitney rank sum (ties count half, as in sklearn); NaN for
    rows holding one class. Equal to `roc_auc_score`, but vectorised over resamples."""
    labels = labels.astype(bool)
    ranks = stats.rankdata(scores, axis=1)
    positives = labels.sum(axis=1).astype(np.float64)
    negatives = labels.shape[1] - positives
    rank_sum = np.where(labels, ranks, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
    return np.where((positives == 0) | (negatives == 0), np.nan, auc)


# ----- convenience -----


def _vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values must have equal lengths, got {a.size} and {b.size}")
    return a, b


def mean_interval(
    values: Any, *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """Mean over units (e.g. TP or EMT over prompts)."""
    return bootstrap(
        [_vector(values, "values")],
        _means,
        paired=True,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        vectorized=True,
    )


def auc_interval(
    labels: Any,
    scores: Any,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """ROC AUC of scores against 0/1 labels, examples resampled as (label, score) pairs.

    The estimate is sklearn's `roc_auc_score` (NaN with one class); resamples use the equal,
    vectorised rank formula.
    """
    labels, scores = _pair(labels, scores)
    if not np.all(np.isin(labels, (0.0, 1.0))):
        raise ValueError("labels must be 0 or 1")
    interval = bootstrap(
        [labels, scores],
        rank_auc,
        paired=True,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        vectorized=True,
    )
    one_class = labels.size == 0 or np.unique(labels).size < 2
    estimate = math.nan if one_class else float(roc_auc_score(labels, scores))
    return dataclasses.replace(interval, estimate=estimate)


def _vectorized(samples: list[np.ndarray], statistic, *, paired: bool, **options) -> Interval:
    return bootstrap(samples, statistic, paired=paired, vectorized=True, **options)


def mean_difference_interval(
    a: Any, b: Any, *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """mean(a) - mean(b) for independent groups (each resampled on its own)."""
    return _vectorized(
        [_vector(a, "a"), _vector(b, "b")],
        lambda x, y: _means(x) - _means(y),
        paired=False,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )


def paired_difference(
    a: Any, b: Any, *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """mean(a - b) over the same units (e.g. one prompt's score under two conditions)."""
    options = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    return _vectorized(list(_pair(a, b)), lambda x, y: _means(x - y), paired=True, **options)


def paired_relative_change(
    a: Any, b: Any, *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """mean(a) / mean(b) - 1 over the same units; NaN when mean(b) is 0."""
    options = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    return _vectorized(
        list(_pair(a, b)),
        lambda x, y: _ratio_minus_one(_means(x), _means(y)),
        paired=True,
        **options,
    )


# ----- two levels: training seeds and units -----


def _seed_table(by_seed: Sequence[Any], name: str) -> np.ndarray:
    """[num_seeds, num_units] from one array of per-unit values per training seed."""
    if len(by_seed) == 0:
        raise ValueError(f"{name} needs at least one training seed")
    rows = [_vector(x, f"{name}[{i}]") for i, x in enumerate(by_seed)]
    if len({row.size for row in rows}) > 1:
        raise ValueError(
            f"{name}: every seed must score the same units, got lengths "
            f"{[row.size for row in rows]}"
        )
    return np.stack(rows)


def _seed_tables(a_by_seed: Sequence[Any], b_by_seed: Sequence[Any]) -> tuple[np.ndarray, ...]:
    a, b = _seed_table(a_by_seed, "a_by_seed"), _seed_table(b_by_seed, "b_by_seed")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must score the same units, got {a.shape[1]} and {b.shape[1]}")
    return a, b


def _unit_counts(indices: np.ndarray) -> np.ndarray:
    """How often each unit was drawn, per resample: [batch, n] indices -> [batch, n] counts."""
    batch, n = indices.shape
    offsets = indices + n * np.arange(batch)[:, None]
    return np.bincount(offsets.ravel(), minlength=batch * n).reshape(batch, n)


def _seed_and_unit_means(
    table: np.ndarray, units: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per resample, the mean of `table` [seeds, n] over freshly drawn seeds and the given unit
    counts [batch, n]: sum_s sum_u seed_count[s] unit_count[u] table[s, u] / (seeds * n)."""
    num_seeds, n = table.shape
    seeds = rng.multinomial(num_seeds, np.full(num_seeds, 1.0 / num_seeds), size=units.shape[0])
    return ((units @ table.T) * seeds).sum(axis=1) / (num_seeds * n)


def seed_and_unit_relative_change(
    a_by_seed: Sequence[Any],
    b_by_seed: Sequence[Any],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """mean(a) / mean(b) - 1 across models trained with several seeds each, on shared units.

    Each resample draws every model's training seeds with replacement (independently: seeds
    of different models are not paired) and one set of units shared by both models (the same
    prompts were given to all). The statistic is the mean over the drawn seeds and units of a
    over that of b, minus 1. n is the number of units. With one seed per model this is
    `paired_relative_change` (same unit draws for the same `seed`).
    """
    _check_options(n_resamples, confidence)
    a, b = _seed_tables(a_by_seed, b_by_seed)
    n = a.shape[1]
    if n == 0:
        return nan_interval(0)
    estimate = float(_ratio_minus_one(np.array([a.mean()]), np.array([b.mean()]))[0])
    units_rng = np.random.default_rng(seed)  # the draws `bootstrap` makes for the same seed
    seeds_rng = np.random.default_rng([seed, 1])
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // (2 * n)))
    draws = []
    for (indices,) in _index_chunks(units_rng, [n], n_resamples, chunk):
        units = _unit_counts(indices).astype(np.float64)  # [batch, n]
        means = [_seed_and_unit_means(table, units, seeds_rng) for table in (a, b)]
        draws.append(_ratio_minus_one(*means))
    return percentile_interval(estimate, np.concatenate(draws), n=n, confidence=confidence)


def seed_and_unit_summary(
    a_by_seed: Sequence[Any], b_by_seed: Sequence[Any], **options: Any
) -> dict[str, Any]:
    """The two-level interval with what it rests on: seed counts, per-seed means and their
    spread (std with ddof=1; NaN with one seed), and the unit-only interval of the
    seed-averaged values, so a reader sees how much training-seed variance widens it.
    options: n_resamples, seed, confidence, as `seed_and_unit_relative_change` takes them."""
    a, b = _seed_tables(a_by_seed, b_by_seed)
    spread = lambda m: float(m.std(ddof=1)) if m.size > 1 else math.nan
    per_seed_a, per_seed_b = a.mean(axis=1), b.mean(axis=1)
    return {
        "relative_change": seed_and_unit_relative_change(a, b, **options).to_dict(),
        "unit_only": paired_relative_change(a.mean(axis=0), b.mean(axis=0), **options).to_dict(),
        "num_units": int(a.shape[1]),
        "num_seeds_a": int(a.shape[0]),
        "num_seeds_b": int(b.shape[0]),
        "per_seed_mean_a": [float(m) for m in per_seed_a],
        "per_seed_mean_b": [float(m) for m in per_seed_b],
        "seed_std_a": spread(per_seed_a),
        "seed_std_b": spread(per_seed_b),
    }
