"""Steerability and generative-classifier metrics on hand-computed log-likelihood tables, and
one check against a real tiny model's engine."""

import json
import logging
import math

import numpy as np
import pytest

from toxjax.evaluation import steering
from toxjax.evaluation.bias import LabeledText
from toxjax.evaluation.rtp import Prompt
from toxjax.fileio import jsonable
from toxjax.inference import loglik
from toxjax.inference.requests import LoglikelihoodRequest, LoglikelihoodResult
from toxjax.testing.small_decoder import (
    CFG,
    FAST_COMPILE,
    RULES,
    VOCAB,
    init_params,
    one_device_mesh,
)

SIGNALS = {"nontoxic": "N\n", "toxic": "T\n", "none": ""}
FEW = {"n_resamples": 200}  # hand-made data: few resamples keep the tests quick


class TableLoglikelihood:
    """A LoglikelihoodFn answering (logprob, num_tokens) from a dict keyed by
    (context, continuation); it records every call."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, requests):
        self.calls.append(list(requests))
        return [
            LoglikelihoodResult(logprob=lp, is_greedy=False, num_tokens=n)
            for lp, n in (self.table[(r.context, r.continuation)] for r in requests)
        ]


def prompt(name, continuation, toxicity):
    return Prompt(name, 0.5, False, f"id-{name}", {}, continuation, toxicity)


PROMPTS = [
    prompt("A", " bad", 0.9),  # toxic
    prompt("B", " worse", 0.8),  # toxic
    prompt("C", " nice", 0.1),
    prompt("D", " fine", 0.5),  # not > 0.5: non-toxic
]
# (logprob, num_tokens) per (prompt, condition). Per-token log-likelihoods and deltas:
#        nontoxic  toxic  none    ll(N)-ll(T)  ll(N)-ll(none)
#   A    -4        -2     -3      -2           -1
#   B    -3        -2     -2.5    -1           -0.5
#   C    -1        -2     -1.5     1            0.5
#   D    -1        -1.5   -0.25    0.5         -0.75
ANSWERS = {
    "A": {"nontoxic": (-8.0, 2), "toxic": (-4.0, 2), "none": (-6.0, 2)},
    "B": {"nontoxic": (-12.0, 4), "toxic": (-8.0, 4), "none": (-10.0, 4)},
    "C": {"nontoxic": (-2.0, 2), "toxic": (-4.0, 2), "none": (-3.0, 2)},
    "D": {"nontoxic": (-1.0, 1), "toxic": (-1.5, 1), "none": (-0.25, 1)},
}


def table(answers=ANSWERS, signals=SIGNALS):
    return TableLoglikelihood(
        {
            (signals[c] + p.text, p.continuation): answers[p.text][c]
            for p in PROMPTS
            for c in signals
        }
    )


def test_steerability_gaps_and_aucs_by_hand():
    engine = table()
    result = steering.steerability(PROMPTS, engine, signals=SIGNALS, **FEW)
    assert len(engine.calls) == 1  # one engine call holds every condition of every prompt
    assert engine.calls[0][:3] == [
        LoglikelihoodRequest("N\nA", " bad", truncate=True),
        LoglikelihoodRequest("T\nA", " bad", truncate=True),
        LoglikelihoodRequest("A", " bad", truncate=True),
    ]
    assert (result["num_usable"], result["num_toxic"], result["num_nontoxic"]) == (4, 2, 2)
    toxic = result["comparisons"]["toxic"]
    # Toxic continuations: deltas -2, -1; non-toxic: 1, 0.5; every non-toxic one is higher.
    assert toxic["mean_delta_toxic"]["estimate"] == pytest.approx(-1.5)
    assert toxic["mean_delta_nontoxic"]["estimate"] == pytest.approx(0.75)
    assert toxic["gap"]["estimate"] == pytest.approx(2.25)
    assert toxic["auc"] == {"estimate": 1.0, "low": 1.0, "high": 1.0, "n": 4}
    assert (toxic["mean_delta_toxic"]["n"], toxic["gap"]["n"]) == (2, 4)
    assert toxic["signal"] == "T\n" and (toxic["num_toxic"], toxic["num_nontoxic"]) == (2, 2)
    none = result["comparisons"]["none"]
    # Toxic: -1, -0.5; non-toxic: 0.5, -0.75; pairs won by non-toxic: 3 of 4.
    assert none["mean_delta_toxic"]["estimate"] == pytest.approx(-0.75)
    assert none["mean_delta_nontoxic"]["estimate"] == pytest.approx(-0.125)
    assert none["gap"]["estimate"] == pytest.approx(0.625)
    assert none["auc"]["estimate"] == pytest.approx(0.75)
    # The reference comparison is the headline.
    assert result["reference"] == "toxic" and result["gap"] == toxic["gap"]
    assert result["auc"] == toxic["auc"]
    assert result["per_prompt"][3] == {
        "id": "id-D",
        "continuation_toxicity": 0.5,
        "toxic": False,
        "loglik_per_token": {"nontoxic": -1.0, "toxic": -1.5, "none": -0.25},
        "num_tokens": {"nontoxic": 1, "toxic": 1, "none": 1},
    }
    assert [p["toxic"] for p in result["per_prompt"]] == [True, True, False, False]
    assert result["per_prompt"][1]["loglik_per_token"]["none"] == -2.5  # -10 / 4 tokens
    assert result["num_token_count_mismatch"] == 0
    assert json.loads(json.dumps(jsonable(result), allow_nan=False))["gap"]["n"] == 4


def test_a_model_steering_the_wrong_way_has_a_negative_gap():
    swapped = {
        name: {"nontoxic": by["toxic"], "toxic": by["nontoxic"], "none": by["none"]}
        for name, by in ANSWERS.items()
    }
    result = steering.steerability(PROMPTS, table(swapped), signals=SIGNALS, **FEW)
    assert result["gap"]["estimate"] == pytest.approx(-2.25)
    assert result["auc"]["estimate"] == 0.0
    assert result["gap"]["high"] < 0.0 and result["comparisons"]["toxic"]["gap"]["high"] < 0.0


def test_reference_selects_the_headline_comparison():
    result = steering.steerability(PROMPTS, table(), signals=SIGNALS, reference="none", **FEW)
    assert result["gap"]["estimate"] == pytest.approx(0.625)
    assert result["auc"]["estimate"] == pytest.approx(0.75)


def test_unusable_prompts_are_counted_logged_and_reported(caplog):
    bad = [
        prompt("E", None, 0.9),
        prompt("F", "  \n", 0.2),
        prompt("G", " ok", math.nan),
        prompt("H", None, math.nan),  # counted once, under its first reason
    ]
    engine = table()
    with caplog.at_level(logging.WARNING):
        result = steering.steerability(
            [*PROMPTS[:2], *bad, *PROMPTS[2:]], engine, signals=SIGNALS, **FEW
        )
    assert result["skipped"] == {
        "no_continuation": 2,
        "empty_continuation": 1,
        "no_continuation_score": 1,
    }
    assert (result["num_prompts"], result["num_usable"]) == (8, 4)
    assert len(engine.calls[0]) == 4 * 3
    assert result["gap"]["estimate"] == pytest.approx(2.25)  # the usable four, as before
    assert "skipped 4 of 8 prompts" in caplog.text


def test_no_usable_prompt_is_an_error_naming_the_reasons():
    bad = [prompt("E", None, 0.9), prompt("F", "", 0.2)]
    with pytest.raises(ValueError, match=r"no usable prompt among 2.*'no_continuation': 1"):
        steering.steerability(bad, table(), signals=SIGNALS)


def test_signals_must_hold_nontoxic_and_another_condition():
    with pytest.raises(ValueError, match="at least one other condition"):
        steering.steerability(PROMPTS, table(), signals={"nontoxic": "N\n"})
    with pytest.raises(ValueError, match="must hold 'nontoxic'"):
        steering.steerability(PROMPTS, table(), signals={"toxic": "T\n", "none": ""})
    with pytest.raises(ValueError, match="reference must be a condition"):
        steering.steerability(PROMPTS, table(), signals=SIGNALS, reference="nontoxic")
    with pytest.raises(ValueError, match="reference must be a condition"):
        steering.steerability(PROMPTS, table(), signals={"nontoxic": "N\n", "none": ""})


def test_one_group_only_gives_nan_gap_and_auc():
    nontoxic_only = PROMPTS[2:]
    result = steering.steerability(nontoxic_only, table(), signals=SIGNALS, **FEW)
    toxic = result["comparisons"]["toxic"]
    assert toxic["mean_delta_toxic"]["n"] == 0 and math.isnan(toxic["mean_delta_toxic"]["estimate"])
    assert toxic["mean_delta_nontoxic"]["estimate"] == pytest.approx(0.75)
    assert math.isnan(result["gap"]["estimate"]) and math.isnan(result["auc"]["estimate"])
    assert json.loads(json.dumps(jsonable(result)))["auc"]["estimate"] is None


EXAMPLES = [
    LabeledText("a", 1),
    LabeledText("b", 1),
    LabeledText("c", 0),
    LabeledText("d", 0),
]
# (logprob, num_tokens) under the toxic / non-toxic signal. Per-token scores T - N:
#   a: -1 - -3 = 2    b: -1 - -1.5 = 0.5    c: -2 - -1 = -1    d: -1 - -2 = 1
# d's signals score different token counts, each divided by its own: summed log-probs would
# give d 5 > a's 4 and an AUC of 0.5; per token, positives win 3 of 4 pairs: AUC 0.75.
CLASSIFIER = {
    ("T\n", "a"): (-2.0, 2),
    ("N\n", "a"): (-6.0, 2),
    ("T\n", "b"): (-1.0, 1),
    ("N\n", "b"): (-1.5, 1),
    ("T\n", "c"): (-2.0, 1),
    ("N\n", "c"): (-1.0, 1),
    ("T\n", "d"): (-1.0, 1),
    ("N\n", "d"): (-6.0, 3),
}


def test_generative_classifier_auc_by_hand():
    engine = TableLoglikelihood(CLASSIFIER)
    result = steering.generative_classifier(
        EXAMPLES, engine, toxic_signal="T\n", nontoxic_signal="N\n", task="toy", **FEW
    )
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 8
    assert engine.calls[0][:2] == [
        LoglikelihoodRequest("T\n", "a", truncate=True),
        LoglikelihoodRequest("N\n", "a", truncate=True),
    ]
    assert result["auc"]["estimate"] == pytest.approx(0.75) and result["auc"]["n"] == 4
    assert (result["num_examples"], result["num_positive"], result["num_negative"]) == (4, 2, 2)
    assert result["skipped"] == {"empty_text": 0, "bad_label": 0}
    assert result["task"] == "toy" and result["normalization"] == "per_token"


def test_generative_classifier_skips_and_counts_bad_examples(caplog):
    engine = TableLoglikelihood(CLASSIFIER)
    bad = [LabeledText("", 1), LabeledText(" \n", 0), LabeledText("e", 2), LabeledText("f", -1)]
    with caplog.at_level(logging.WARNING):
        result = steering.generative_classifier(
            [*bad, *EXAMPLES], engine, toxic_signal="T\n", nontoxic_signal="N\n", task="toy", **FEW
        )
    assert result["skipped"] == {"empty_text": 2, "bad_label": 2}
    assert result["num_examples"] == 4 and result["auc"]["estimate"] == pytest.approx(0.75)
    assert "skipped 4 of 8 examples" in caplog.text
    with pytest.raises(ValueError, match=r"no usable example among 2.*'bad_label': 1"):
        steering.generative_classifier(
            bad[1:3], engine, toxic_signal="T\n", nontoxic_signal="N\n", task="toy"
        )
    with pytest.raises(ValueError, match="signals are the same"):
        steering.generative_classifier(
            EXAMPLES, engine, toxic_signal="T\n", nontoxic_signal="T\n", task="toy"
        )


def test_steerability_per_token_logliks_equal_the_engine_on_a_tiny_model():
    engine = loglik.make_loglikelihood_fn(
        init_params(scale=4.0),
        CFG,
        VOCAB,
        one_device_mesh(),
        RULES,
        batch_size=4,
        compiler_options=FAST_COMPILE,
    )
    signals = {"nontoxic": "tox: 0\n", "toxic": "tox: 1\n", "none": ""}
    prompts = [
        prompt("You are a", " fool.", 0.9),
        prompt("The sky is", " blue today", 0.05),
        prompt("Go away", ", idiot", 0.7),
    ]
    result = steering.steerability(prompts, engine, signals=signals, **FEW)
    direct = engine(
        [
            LoglikelihoodRequest(signals[c] + p.text, p.continuation)
            for p in prompts
            for c in signals
        ]
    )
    expected = np.array([r.logprob / r.num_tokens for r in direct]).reshape(3, 3)
    got = np.array([list(p["loglik_per_token"].values()) for p in result["per_prompt"]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert [p["num_tokens"]["none"] for p in result["per_prompt"]] == [6, 11, 7]  # bytes
    assert result["num_token_count_mismatch"] == 0
    assert result["comparisons"]["toxic"]["gap"]["estimate"] == pytest.approx(
        (expected[1, 0] - expected[1, 1]) - np.mean(expected[[0, 2], 0] - expected[[0, 2], 1]),
        abs=1e-6,
    )


def test_suffixes_follow_the_prompt_and_give_the_same_metrics():
    """SEGMENT's signals go after the prompt: same answers keyed on prompt + suffix."""
    suffixes = {"nontoxic": "<a>", "toxic": "<m>", "none": ""}
    prefixes = {c: "" for c in suffixes}
    engine = TableLoglikelihood(
        {
            (p.text + suffixes[c], p.continuation): ANSWERS[p.text][c]
            for p in PROMPTS
            for c in suffixes
        }
    )
    result = steering.steerability(PROMPTS, engine, signals=prefixes, suffixes=suffixes, **FEW)
    assert engine.calls[0][:2] == [
        LoglikelihoodRequest("A<a>", " bad", truncate=True),
        LoglikelihoodRequest("A<m>", " bad", truncate=True),
    ]
    reference = steering.steerability(PROMPTS, table(), signals=SIGNALS, **FEW)
    assert result["gap"] == reference["gap"] and result["auc"] == reference["auc"]
    assert result["suffixes"] == suffixes


def test_suffixes_for_unknown_conditions_are_refused():
    with pytest.raises(ValueError, match="non_toxic"):
        steering.steerability(
            PROMPTS, table(), signals=SIGNALS, suffixes={"non_toxic": "<a>"}, **FEW
        )
