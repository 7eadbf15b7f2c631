"""Per-prompt values, interval summaries and within-model contrasts on hand-made RTP results."""

import math

import numpy as np
import pytest

from toxjax.evaluation import controllability, rtp

# 4 prompts x 2 samples. Row maxima: 0.7, 0.3, 0.5, 0.9; toxic (> 0.5): 1, 0, 0, 1; toxic
# samples per prompt: 1, 0, 0, 2 of 2.
SCORES = [[0.2, 0.7], [0.1, 0.3], [0.5, 0.4], [0.9, 0.6]]
# Prompt toxicity: prompt 1 unscored; prompt 3 sits on the threshold (toxic only with ">=").
PROMPT_TOXICITY = np.array([0.8, np.nan, 0.2, 0.5])


def result(scores, comparison=">"):
    """A fake rtp.RTPResult: only config and scores matter here."""
    return rtp.RTPResult(
        prefix="",
        scorer_id="fake",
        config=rtp.RTPConfig(num_samples=len(scores[0]), comparison=comparison),
        metrics={},
        scores=np.asarray(scores, dtype=np.float64),
    )


def estimate(interval):
    return interval["estimate"]


def test_per_prompt_maximum_and_any_toxic_follow_the_comparison():
    values = controllability.per_prompt(result(SCORES))
    np.testing.assert_allclose(values["max_toxicity"], [0.7, 0.3, 0.5, 0.9])
    np.testing.assert_array_equal(values["any_toxic"], [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(values["toxic_fraction"], [0.5, 0.0, 0.0, 1.0])
    # ">=" counts prompt 2, whose maximum is exactly 0.5.
    inclusive = controllability.per_prompt(result(SCORES, comparison=">="))
    np.testing.assert_array_equal(inclusive["any_toxic"], [1.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(inclusive["toxic_fraction"], [0.5, 0.0, 0.5, 1.0])


def test_run_intervals_by_prompt_subset():
    out = controllability.run_intervals(result(SCORES), PROMPT_TOXICITY)
    tp = {subset: out[subset]["toxicity_probability"] for subset in ("all", "toxic", "nontoxic")}
    emt = {subset: out[subset]["expected_max_toxicity"] for subset in ("all", "toxic", "nontoxic")}
    # all: TP (1+0+0+1)/4, EMT (0.7+0.3+0.5+0.9)/4; the unscored prompt counts here only.
    assert (estimate(tp["all"]), tp["all"]["n"]) == (0.5, 4)
    assert estimate(emt["all"]) == pytest.approx(0.6)
    # toxic: prompt 0 alone (0.5 is not > 0.5): one unit, so the interval collapses.
    assert tp["toxic"] == {"estimate": 1.0, "low": 1.0, "high": 1.0, "n": 1}
    assert emt["toxic"] == {"estimate": 0.7, "low": 0.7, "high": 0.7, "n": 1}
    # nontoxic: prompts 2 and 3.
    assert (estimate(tp["nontoxic"]), tp["nontoxic"]["n"]) == (0.5, 2)
    assert estimate(emt["nontoxic"]) == pytest.approx(0.7)
    for interval in (*tp.values(), *emt.values()):
        assert interval["low"] <= interval["estimate"] <= interval["high"]
    # The toxic fraction: samples, not prompts. all (0.5+0+0+1)/4; toxic 0.5; nontoxic (0+1)/2.
    fraction = {subset: estimate(out[subset]["toxic_fraction"]) for subset in tp}
    assert fraction == {"all": 0.375, "toxic": 0.5, "nontoxic": 0.5}
    assert out["per_prompt"] == {
        "max_toxicity": [0.7, 0.3, 0.5, 0.9],
        "any_toxic": [1.0, 0.0, 0.0, 1.0],
        "toxic_fraction": [0.5, 0.0, 0.0, 1.0],
    }


def test_run_intervals_toxic_prompts_use_the_comparison_too():
    out = controllability.run_intervals(result(SCORES, comparison=">="), PROMPT_TOXICITY)
    # ">=": prompt 3 (0.5) is a toxic prompt now; any_toxic is 1, 0, 1, 1.
    assert out["toxic"]["toxicity_probability"] == {
        "estimate": 1.0,
        "low": 1.0,
        "high": 1.0,
        "n": 2,
    }
    assert estimate(out["toxic"]["expected_max_toxicity"]) == pytest.approx(0.8)  # (0.7+0.9)/2
    assert out["nontoxic"]["toxicity_probability"]["n"] == 1  # prompt 2 only


def test_run_intervals_empty_subset_is_nan():
    out = controllability.run_intervals(result(SCORES), np.full(4, np.nan))
    assert out["toxic"]["toxicity_probability"]["n"] == 0
    assert math.isnan(estimate(out["nontoxic"]["expected_max_toxicity"]))
    assert estimate(out["all"]["toxicity_probability"]) == 0.5


# Within one model: any_toxic per prompt, and maxima, under each condition.
#   conditioned   [1, 0, 0, 0]  TP 0.25   maxima 0.6, 0.2, 0.1, 0.3  EMT 0.3
#   toxic_signal  [1, 1, 1, 0]  TP 0.75   maxima 0.9, 0.8, 0.7, 0.2  EMT 0.65
#   unconditioned [1, 1, 0, 0]  TP 0.5    maxima 0.8, 0.6, 0.4, 0.2  EMT 0.5
CONDITIONS = {
    "conditioned": [[0.6, 0.1], [0.2, 0.0], [0.1, 0.1], [0.3, 0.2]],
    "toxic_signal": [[0.9, 0.1], [0.8, 0.5], [0.7, 0.3], [0.2, 0.2]],
    "unconditioned": [[0.8, 0.1], [0.6, 0.5], [0.4, 0.3], [0.2, 0.1]],
}


def test_within_model_relative_changes_by_hand():
    out = controllability.within_model({c: result(s) for c, s in CONDITIONS.items()})
    vs_toxic, vs_none = out["vs_toxic_signal"], out["vs_unconditioned"]
    assert estimate(vs_toxic["toxicity_probability_relative"]) == pytest.approx(0.25 / 0.75 - 1)
    assert estimate(vs_toxic["toxicity_probability_difference"]) == pytest.approx(-0.5)
    assert estimate(vs_toxic["expected_max_toxicity_relative"]) == pytest.approx(0.3 / 0.65 - 1)
    assert estimate(vs_none["toxicity_probability_relative"]) == pytest.approx(-0.5)
    assert estimate(vs_none["toxicity_probability_difference"]) == pytest.approx(-0.25)
    assert estimate(vs_none["expected_max_toxicity_relative"]) == pytest.approx(0.3 / 0.5 - 1)
    # Toxic samples per prompt: 1,0,0,0 (non-toxic signal), 1,1,1,0 (toxic), 1,1,0,0 (none),
    # of 2 each. TP sees prompts 1-2 only through their single toxic samples.
    assert estimate(vs_toxic["toxic_fraction_relative"]) == pytest.approx(0.125 / 0.375 - 1)
    assert estimate(vs_none["toxic_fraction_relative"]) == pytest.approx(0.125 / 0.25 - 1)
    for contrast in (vs_toxic, vs_none):
        for interval in contrast.values():
            assert interval["n"] == 4  # paired by prompt
            assert interval["low"] <= interval["estimate"] <= interval["high"]


def test_within_model_needs_the_toxic_signal_and_the_conditioned_run():
    runs = {c: result(s) for c, s in CONDITIONS.items()}
    only_toxic = controllability.within_model({k: runs[k] for k in ("conditioned", "toxic_signal")})
    assert list(only_toxic) == ["vs_toxic_signal"]  # no unconditioned run: that contrast only
    # Strategies without signals (BASE, FILTER) have no toxic-signal run.
    assert (
        controllability.within_model({k: runs[k] for k in ("conditioned", "unconditioned")}) is None
    )
    assert (
        controllability.within_model({k: runs[k] for k in ("toxic_signal", "unconditioned")})
        is None
    )


def test_within_model_on_the_toxic_prompts_alone():
    runs = {c: result(s) for c, s in CONDITIONS.items()}
    out = controllability.within_model(runs, PROMPT_TOXICITY)
    # Toxic prompts (> 0.5): prompt 0 only (1 is unscored, 3 sits on the threshold).
    for contrast in ("vs_toxic_signal", "vs_unconditioned"):
        toxic = out[contrast]["toxic_prompts"]
        assert toxic["num_prompts"] == 1
        assert toxic["toxicity_probability_relative"]["n"] == 1
        assert toxic["toxic_fraction_relative"] == {  # 1 of 2 samples toxic under each
            "estimate": 0.0,
            "low": 0.0,
            "high": 0.0,
            "n": 1,
        }
    assert "toxic_prompts" not in controllability.within_model(runs)["vs_toxic_signal"]
    unscored = controllability.within_model(runs, np.full(4, np.nan))
    assert "toxic_prompts" not in unscored["vs_toxic_signal"]  # no toxic prompt: no block
