"""Bootstrap intervals: known distributions, degenerate data, pairing, NaN resamples, seeds."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from toxjax.evaluation import intervals
from toxjax.evaluation.intervals import Interval


def test_interval_excludes_zero_and_round_trips_through_json():
    assert Interval(1.0, 0.5, 1.5, 10).excludes_zero()
    assert Interval(-1.0, -2.0, -0.5, 10).excludes_zero()
    assert not Interval(0.1, -0.1, 0.3, 10).excludes_zero()
    assert not Interval(0.0, 0.0, 0.3, 10).excludes_zero()  # touching zero includes it
    assert not Interval(1.0, math.nan, math.nan, 10).excludes_zero()
    assert not Interval(math.nan, 0.5, 1.5, 10).excludes_zero()
    values = Interval(np.float64(0.25), np.float32(0.125), 0.5, np.int64(7)).to_dict()
    assert values == {"estimate": 0.25, "low": 0.125, "high": 0.5, "n": 7}
    assert [type(values[k]) for k in ("estimate", "low", "high", "n")] == [float] * 3 + [int]
    assert Interval.from_dict(values) == Interval(0.25, 0.125, 0.5, 7)
    nan = Interval(0.5, math.nan, math.nan, 3).to_dict()
    assert math.isnan(nan["low"]) and math.isnan(nan["high"])
    # Strict JSON writers turn NaN into null; reading it back gives NaN again.
    back = Interval.from_dict(json.loads('{"estimate": 0.5, "low": null, "high": null, "n": 3}'))
    assert back.estimate == 0.5 and math.isnan(back.low) and math.isnan(back.high) and back.n == 3


def test_mean_interval_of_a_large_normal_sample_matches_the_normal_theory():
    values = np.random.default_rng(3).normal(loc=10.0, scale=2.0, size=4000)
    result = intervals.mean_interval(values)
    assert result.estimate == pytest.approx(values.mean(), abs=1e-12)
    assert result.n == 4000
    assert result.low < 10.0 < result.high  # covers the true mean
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(values.size)  # ~0.062
    assert result.high - result.low == pytest.approx(2 * half_width, rel=0.1)
    assert result.low == pytest.approx(values.mean() - half_width, abs=0.15 * half_width)
    narrower = intervals.mean_interval(values, confidence=0.5)
    assert result.low < narrower.low < narrower.high < result.high


def test_constant_data_collapse_to_the_estimate():
    assert intervals.mean_interval([0.25] * 50) == Interval(0.25, 0.25, 0.25, 50)
    tenth = intervals.mean_interval([0.1] * 50)  # the mean of 50 x 0.1 rounds below 0.1
    assert tenth.low == tenth.estimate == tenth.high == pytest.approx(0.1)
    assert intervals.mean_difference_interval([1.0] * 3, [0.0] * 4) == Interval(1.0, 1.0, 1.0, 7)
    assert intervals.paired_relative_change([3.0] * 5, [2.0] * 5) == Interval(0.5, 0.5, 0.5, 5)


def test_empty_input_gives_a_nan_interval():
    empty = intervals.mean_interval([])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.estimate, empty.low, empty.high))
    one_group = intervals.mean_difference_interval([1.0, 2.0, 3.0], [])
    assert one_group.n == 3 and math.isnan(one_group.estimate) and math.isnan(one_group.high)


def test_auc_of_perfectly_separated_scores_is_one_to_one():
    labels = [0, 0, 0, 1, 1, 1]
    # Resamples holding one class (2 * 2**-6 of them) have no AUC and are dropped.
    assert intervals.auc_interval(labels, [1, 2, 3, 4, 5, 6]) == Interval(1.0, 1.0, 1.0, 6)
    assert intervals.auc_interval(labels, [6, 5, 4, 3, 2, 1]) == Interval(0.0, 0.0, 0.0, 6)


def test_rank_auc_equals_sklearn_including_ties():
    # Pairs (positive, negative): (2, 1) 1, (2, 2) 0.5, (3, 1) 1, (3, 2) 1 -> 3.5 / 4.
    labels, scores = np.array([[0, 0, 1, 1]]), np.array([[1.0, 2.0, 2.0, 3.0]])
    assert intervals.rank_auc(labels, scores) == pytest.approx([0.875])
    assert math.isnan(intervals.rank_auc(np.array([[1, 1]]), np.array([[0.2, 0.3]]))[0])
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=(3, 300))
    scores = np.round(rng.normal(size=(3, 300)) + labels, 1)  # rounded: many ties
    expected = [roc_auc_score(y, s) for y, s in zip(labels, scores, strict=True)]
    np.testing.assert_allclose(intervals.rank_auc(labels, scores), expected, rtol=1e-12)
    result = intervals.auc_interval(labels[0], scores[0])
    assert result.estimate == expected[0] and result.low < expected[0] < result.high


def test_auc_with_one_class_is_nan():
    result = intervals.auc_interval([1, 1, 1], [0.1, 0.2, 0.3])
    assert math.isnan(result.estimate) and math.isnan(result.low) and math.isnan(result.high)
    assert result.n == 3 and not result.excludes_zero()
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        intervals.auc_interval([0, 2], [0.1, 0.2])


def test_paired_resampling_uses_the_same_indices_for_every_array():
    x = np.arange(20.0)
    difference = lambda a, b: a.mean(axis=1) - b.mean(axis=1)
    # Same indices for both copies: every resample's difference is exactly 0.
    paired = intervals.bootstrap([x, x], difference, paired=True, vectorized=True)
    assert paired == Interval(0.0, 0.0, 0.0, 20)
    # Independent indices: the difference of two resampled means of 0..19 spreads out.
    unpaired = intervals.bootstrap([x, x], difference, paired=False, vectorized=True)
    assert unpaired.n == 40 and unpaired.low < -2.0 and unpaired.high > 2.0


def test_paired_difference_is_narrow_where_the_unpaired_one_is_wide():
    base = np.linspace(0.0, 100.0, 200)  # large spread between units
    a = base + 1.0 + np.where(np.arange(200) % 2 == 0, 0.1, -0.1)  # a - b = 1 +- 0.1
    paired = intervals.paired_difference(a, base)
    assert paired.estimate == pytest.approx(1.0)
    assert 0.98 < paired.low < 1.0 < paired.high < 1.02
    unpaired = intervals.mean_difference_interval(a, base)
    assert unpaired.estimate == pytest.approx(1.0)
    # sd(base) ~ 29: the half-width is about 1.96 * 29 * sqrt(2 / 200) ~ 5.7.
    assert unpaired.low < -3.0 and unpaired.high > 5.0 and not unpaired.excludes_zero()
    with pytest.raises(ValueError, match="equal lengths"):
        intervals.paired_difference([1.0, 2.0], [1.0])


def test_fixed_seed_gives_identical_results():
    values = np.random.default_rng(1).exponential(size=300)
    assert intervals.mean_interval(values, seed=4) == intervals.mean_interval(values, seed=4)
    assert intervals.mean_interval(values, seed=4) != intervals.mean_interval(values, seed=5)
    plain = intervals.bootstrap([values], np.mean, paired=True, seed=4)
    assert plain == intervals.bootstrap([values], np.mean, paired=True, seed=4)


def test_undefined_resamples_are_dropped():
    # mean(a) / mean(b) - 1 with b = [0, 1]: resampled mean(b) is 0 (1/4 of draws: dropped),
    # 0.5 (-> 1) or 1 (-> 0). The estimate is 1 / 0.5 - 1 = 1.
    assert intervals.paired_relative_change([1.0, 1.0], [0.0, 1.0]) == Interval(1.0, 0.0, 1.0, 2)
    result = intervals.paired_relative_change([1.0, 2.0], [0.0, 0.0])
    assert math.isnan(result.estimate) and math.isnan(result.low)


def test_too_few_defined_resamples_give_nan_bounds():
    # Defined only when the resample holds both 0 and 99: 1 - 2 * 0.99**100 + 0.98**100 ~ 40%.
    def mean_if_both_ends(x):
        return x.mean() if (0 in x and 99 in x) else math.nan

    result = intervals.bootstrap([np.arange(100.0)], mean_if_both_ends, paired=True)
    assert result.estimate == 49.5 and result.n == 100
    assert math.isnan(result.low) and math.isnan(result.high)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="confidence"):
        intervals.mean_interval([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        intervals.mean_interval([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="share their first axis"):
        intervals.bootstrap([np.ones(3), np.ones(4)], np.mean, paired=True)


def test_seed_level_variance_widens_the_interval():
    # Units are constant, so only the seeds vary: a's seed means are 1 and 3, b's is 1.
    # Resampled seed pairs average to 1 (1/4), 2 (1/2), 3 (1/4) -> relative change 0, 1, 2.
    a_by_seed, b_by_seed = [np.ones(3), np.full(3, 3.0)], [np.ones(3)]
    result = intervals.seed_and_unit_relative_change(a_by_seed, b_by_seed)
    assert result == Interval(1.0, 0.0, 2.0, 3)
    summary = intervals.seed_and_unit_summary(a_by_seed, b_by_seed)
    assert summary["unit_only"] == {"estimate": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    assert summary["relative_change"] == result.to_dict()
    assert (summary["num_seeds_a"], summary["num_seeds_b"], summary["num_units"]) == (2, 1, 3)
    assert summary["per_seed_mean_a"] == [1.0, 3.0] and summary["per_seed_mean_b"] == [1.0]
    assert summary["seed_std_a"] == pytest.approx(math.sqrt(2.0))  # ddof=1
    assert math.isnan(summary["seed_std_b"])


def test_seed_and_unit_interval_is_wider_when_seeds_disagree():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 0.5, size=400), rng.normal(2.0, 0.5, size=400)
    unit_only = intervals.paired_relative_change(a, b)
    spread = intervals.seed_and_unit_relative_change([a - 0.3, a, a + 0.3], [b - 0.3, b + 0.3])
    assert spread.estimate == pytest.approx(unit_only.estimate)
    assert spread.high - spread.low > 2 * (unit_only.high - unit_only.low)


def test_seed_and_unit_interval_equals_the_unit_one_when_seeds_agree():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 0.5, size=400), rng.normal(2.0, 0.5, size=400)
    unit_only = intervals.paired_relative_change(a, b, seed=3)
    for a_by_seed, b_by_seed in (([a], [b]), ([a, a, a], [b, b])):
        result = intervals.seed_and_unit_relative_change(a_by_seed, b_by_seed, seed=3)
        assert result.n == unit_only.n == 400
        # The same unit draws; only the order of floating-point sums differs.
        np.testing.assert_allclose(
            [result.estimate, result.low, result.high],
            [unit_only.estimate, unit_only.low, unit_only.high],
            rtol=1e-12,
        )


def test_seed_and_unit_rejects_mismatched_units():
    with pytest.raises(ValueError, match="same units"):
        intervals.seed_and_unit_relative_change([np.ones(3)], [np.ones(4)])
    with pytest.raises(ValueError, match="every seed must score the same units"):
        intervals.seed_and_unit_relative_change([np.ones(3), np.ones(2)], [np.ones(3)])
    with pytest.raises(ValueError, match="at least one training seed"):
        intervals.seed_and_unit_relative_change([], [np.ones(3)])
