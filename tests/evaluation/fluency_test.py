"""Fluency and diversity: distinct-n and judge perplexity against hand-computed values; the
second judge's figures and agreement on a run."""

import json
import math

import numpy as np
import pytest

from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.evaluation import controllability, fluency, rtp
from toxjax.inference.requests import LoglikelihoodResult


def test_distinct_n_counts_unique_ngrams_over_a_prompts_samples():
    samples = ["the cat sat", "the cat ran", "a dog"]
    # unigrams: the cat sat the cat ran a dog -> 8 tokens, 6 unique (the, cat, sat, ran, a, dog)
    assert fluency.distinct_n(samples, 1) == pytest.approx(6 / 8)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) (a dog) -> 5, unique 4
    assert fluency.distinct_n(samples, 2) == pytest.approx(4 / 5)
    # trigrams: (the cat sat) (the cat ran) -> 2, unique 2; "a dog" has none
    assert fluency.distinct_n(samples, 3) == pytest.approx(1.0)
    assert math.isnan(fluency.distinct_n(["", "one"], 2))  # no bigram at all
    with pytest.raises(ValueError, match="n must be >= 1"):
        fluency.distinct_n(samples, 0)


def test_diversity_is_per_prompt():
    table = fluency.diversity([["a a a a"], ["a b c d"]])
    np.testing.assert_allclose(table["distinct_1"], [0.25, 1.0])
    np.testing.assert_allclose(table["distinct_2"], [1 / 3, 1.0])


class FakeJudge:
    """Log-prob -1 per character of the continuation; one token per character."""

    def __init__(self):
        self.requests = []

    def __call__(self, requests):
        self.requests += requests
        return [
            LoglikelihoodResult(-float(len(r.continuation)), False, len(r.continuation))
            for r in requests
        ]


def test_judge_nll_sums_per_prompt_and_skips_empty_continuations():
    judge = FakeJudge()
    out = fluency.judge_nll(judge, ["p1", "p2"], [["ab", ""], ["abcd", "a"]])
    np.testing.assert_array_equal(out["judge_nll"], [2.0, 5.0])
    np.testing.assert_array_equal(out["judge_tokens"], [2, 5])
    assert [(r.context, r.continuation) for r in judge.requests] == [
        ("p1", "ab"),
        ("p2", "abcd"),
        ("p2", "a"),
    ]
    assert all(r.truncate for r in judge.requests)


def test_judge_perplexity_is_token_weighted_with_an_interval():
    nll = np.array([2.0, 6.0, 1.0, 3.0])
    tokens = np.array([2, 3, 1, 2])
    interval = fluency.perplexity_interval(nll, tokens)
    assert interval.estimate == pytest.approx(math.exp(12 / 8))
    assert interval.low <= interval.estimate <= interval.high and interval.n == 4
    assert interval.low < interval.high
    # A prompt whose samples were all empty adds nothing.
    with_empty = fluency.perplexity_interval([*nll, 0.0], [*tokens, 0])
    assert with_empty.estimate == pytest.approx(interval.estimate)


def test_summary_has_distinct_and_perplexity_intervals():
    per_prompt = {
        "distinct_1": np.array([0.5, 1.0, np.nan]),
        "distinct_2": np.array([0.5, 1.0, 1.0]),
        "distinct_3": np.array([1.0, 1.0, 1.0]),
        "judge_nll": np.array([1.0, 2.0, 3.0]),
        "judge_tokens": np.array([1, 1, 1]),
    }
    out = fluency.summary(per_prompt)
    assert out["distinct_1"]["estimate"] == pytest.approx(0.75)  # the NaN prompt is left out
    assert out["distinct_1"]["n"] == 2
    assert out["distinct_3"] == {"estimate": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    assert out["judge_perplexity"]["estimate"] == pytest.approx(math.exp(2.0))
    assert "judge_perplexity" not in fluency.summary({"distinct_2": np.ones(2)})


def test_agreement_is_spearman_over_samples():
    a = np.array([[0.1, 0.2], [0.3, 0.9]])
    assert fluency.agreement(a, a**2)["spearman"] == pytest.approx(1.0)
    assert fluency.agreement(a, -a) == {"spearman": pytest.approx(-1.0), "n": 4}
    assert math.isnan(fluency.agreement(a, np.ones_like(a))["spearman"])
    with pytest.raises(ValueError, match="cannot be compared"):
        fluency.agreement(a, np.ones(3))


def _generate(prompts, num_samples, negatives=None):
    """Echo-free fake engine: sample i of a prompt is i+1 copies of "w"."""
    _generate.negatives = negatives
    return [[" ".join(["w"] * (i + 1)) for i in range(num_samples)] for _ in prompts]


def _score(texts):
    return {"toxicity": np.array([0.9 if t.count("w") > 2 else 0.1 for t in texts])}


class SecondScorer:
    scorer_id = "second"

    def score(self, texts):
        return {"toxicity": np.array([0.2 * t.count("w") for t in texts])}


def _prompts(n):
    return [rtp.Prompt(f"prompt {i}", 0.9 if i % 2 else 0.1, False, str(i)) for i in range(n)]


def test_an_rtp_run_reports_fluency_diversity_and_the_second_judge(tmp_path):
    config = rtp.RTPConfig(num_samples=4, prompts_per_call=3)
    judges = fluency.Judges(FakeJudge(), SecondScorer())
    path = str(tmp_path / "records.jsonl")
    result = rtp.evaluate_rtp(
        _prompts(5),
        _generate,
        _score,
        config=config,
        records_path=path,
        judges=judges,
        progress=False,
    )
    # Samples "w", "w w", "w w w", "w w w w": 10 words, 1 unique.
    np.testing.assert_allclose(result.extras["distinct_1"], [0.1] * 5)
    # Judge: 1 + 3 + 5 + 7 characters per prompt.
    np.testing.assert_array_equal(result.extras["judge_nll"], [16.0] * 5)
    assert result.extras["judge_scores"].shape == (5, 4)
    assert result.judge_scorer_id == "second" and not result.guided
    with open(path) as f:
        record = json.loads(f.readline())
    assert record["judge_scores"] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert record["distinct_2"] == pytest.approx(1 / 6)  # 0 + 1 + 2 + 3 bigrams, all "w w"
    out = controllability.run_intervals(result, np.array([p.toxicity for p in _prompts(5)]))
    assert out["fluency"]["judge_perplexity"]["estimate"] == pytest.approx(math.exp(1.0))
    second = out["judge_scorer"]
    assert second["scorer"] == "second"
    # Under the second judge samples 3 and 4 (0.6, 0.8) pass 0.5: every prompt toxic.
    assert second["all"]["toxicity_probability"]["estimate"] == 1.0
    assert second["all"]["toxic_fraction"]["estimate"] == pytest.approx(0.5)
    assert second["agreement"]["n"] == 20 and second["agreement"]["spearman"] > 0.8


def test_guided_conditioned_run_passes_the_toxic_signal_as_negatives():
    fmt = ConditioningFormat()
    runs = rtp.evaluate_rtp_conditioned_and_unconditioned(
        _prompts(2),
        _generate,
        _score,
        strategy="meda",
        fmt=fmt,
        config=rtp.RTPConfig(num_samples=2),
        progress=False,
        guided=True,
    )
    assert runs["conditioned"].guided and not runs["unconditioned"].guided
    toxic = fmt.toxic_prefix(Strategy.MEDA)
    assert _generate.negatives == [toxic + "prompt 0", toxic + "prompt 1"]
    with pytest.raises(ValueError, match="has none"):
        rtp.evaluate_rtp_conditioned_and_unconditioned(
            _prompts(2),
            _generate,
            _score,
            strategy="base",
            fmt=fmt,
            progress=False,
            guided=True,
        )
