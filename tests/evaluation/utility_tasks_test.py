"""Utility tasks: harness metric definitions, request layouts, and every TFDS task end to end."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from toxjax.evaluation import utility_tasks
from toxjax.inference.requests import LoglikelihoodRequest, LoglikelihoodResult


def table_fn(table):
    """A fake engine answering prescribed log-probs; records what it was asked."""

    def fn(requests):
        fn.calls.append(list(requests))
        return [LoglikelihoodResult(*table[(r.context, r.continuation)]) for r in requests]

    fn.calls = []
    return fn


def prefers_shorter(requests):
    """Deterministic fake engine: shorter context+continuation is likelier; greedy if <= 4 chars."""
    prefers_shorter.calls.append(list(requests))
    return [
        LoglikelihoodResult(
            logprob=-0.5 * len(r.continuation) - 0.01 * len(r.context),
            is_greedy=len(r.continuation) <= 4,
            num_tokens=len(r.continuation.encode()),
        )
        for r in requests
    ]


prefers_shorter.calls = []  # what it was asked; any test may run first (xdist, -k)


def mock_split_data(examples_by_split):
    """tfds.testing.mock_data as_dataset_fn serving given examples, typed by the real builder."""

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        del decoders, read_config, kwargs
        examples = examples_by_split[str(split)]
        spec = self.info.features.get_tensor_spec()
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)

    return as_dataset


def test_acc_and_acc_norm_follow_their_definitions():
    # Example 1: raw log-likelihood prefers "ab"; divided by len(choice) (2 vs 5 characters,
    # the delimiter space NOT counted) it prefers "abcde" (-1.4 > -1.5). Counting the space
    # (3 vs 6) would flip it back (-1.0 > -1.1667): this pins the harness' convention.
    # Example 2: both metrics pick the gold choice.
    ex1 = utility_tasks.choice_example("Q1", ["ab", "abcde"], 1, source="t", record=0)
    ex2 = utility_tasks.choice_example("Q2", ["yes", "no"], 0, source="t", record=1)
    assert [r.continuation for r in ex1.requests] == [" ab", " abcde"]
    fn = table_fn(
        {
            ("Q1", " ab"): (-3.0, False, 1),
            ("Q1", " abcde"): (-7.0, False, 2),
            ("Q2", " yes"): (-1.0, True, 1),
            ("Q2", " no"): (-2.0, False, 1),
        }
    )
    metrics = utility_tasks.score_multiple_choice([ex1, ex2], fn, task="hand")
    assert len(fn.calls) == 1  # one engine call for every choice of every example
    assert metrics["num_examples"] == 2
    assert metrics["acc"] == 0.5
    assert metrics["acc_norm"] == 1.0


def test_lambada_split_and_metrics():
    request = utility_tasks.lambada_request(
        {"passage": b"she opened the door and saw her brother\n"}, "t", 0
    )
    assert request == LoglikelihoodRequest("she opened the door and saw her", " brother")
    results = [LoglikelihoodResult(-2.0, True, 2), LoglikelihoodResult(-4.0, False, 4)]
    metrics = utility_tasks.lambada_metrics(results)
    assert metrics["acc"] == 0.5
    assert metrics["perplexity"] == pytest.approx(math.e)  # exp(6 / 6 tokens)
    assert metrics["perplexity_per_target"] == pytest.approx(20.085536923)  # exp(mean 3)
    with pytest.raises(ValueError, match="record 3.*'passage'"):
        utility_tasks.lambada_request({"passage": b"single\n"}, "t", 3)


def test_winogrande_partial_scoring_layout():
    example = utility_tasks.winogrande_example(
        {
            "sentence": b"Sarah helped Maria because _ was kind.",
            "option1": b"Sarah",
            "option2": b"Maria",
            "label": 0,
        },
        "t",
        0,
    )
    assert example.requests == (
        LoglikelihoodRequest("Sarah helped Maria because Sarah", " was kind."),
        LoglikelihoodRequest("Sarah helped Maria because Maria", " was kind."),
    )
    assert example.norm_lengths is None


def test_hellaswag_preprocess_matches_harness():
    assert (
        utility_tasks.hellaswag_preprocess(" How to cook [title] Boil water. [step] Stir  it.")
        == "How to cook. Boil water. Stir it."
    )


# Two examples per task: the gold answer is the shorter choice in the first, the longer in the
# second, so the prefers-shorter engine scores acc == 0.5 exactly.
TFDS_DATA = {
    "piqa": [
        {"id": b"p0", "goal": b"Open a jar", "sol1": b"twist", "sol2": b"hit it hard", "label": 0},
        {"id": b"p1", "goal": b"Dry a towel", "sol1": b"wet", "sol2": b"hang it up", "label": 1},
    ],
    "hellaswag": [
        {
            "context": b"A man is cooking.",
            "endings": [
                b"He stirs the pot.",
                b"Ok",
                b"He sings a long song.",
                b"He leaves the kitchen.",
            ],
            "activity_label": b"Cooking",
            "label": 1,
            "split_type": b"indomain",
            "source_id": b"x",
        },
        {
            "context": b"A cat jumps.",
            "endings": [b"It lands gracefully on the sofa.", b"Up", b"Down", b"Sideways"],
            "activity_label": b"Pets",
            "label": 0,
            "split_type": b"indomain",
            "source_id": b"y",
        },
    ],
    "winogrande": [
        {
            "sentence": b"Al gave Bobby a gift because _ was generous.",
            "option1": b"Al",
            "option2": b"Bobby",
            "label": 0,
        },
        {
            "sentence": b"Al thanked Bobby because _ was generous.",
            "option1": b"Al",
            "option2": b"Bobby",
            "label": 1,
        },
    ],
    "arc_easy": [
        {
            "id": b"a0",
            "question": b"What melts ice?",
            "answerKey": 2,
            "choices": {"text": [b"cold air", b"darkness", b"heat"], "label": [0, 1, 2]},
        },
        {
            "id": b"a1",
            "question": b"What do plants need?",
            "answerKey": 3,
            "choices": {"text": [b"sunlight and water", b"rock"], "label": [3, 0]},
        },
    ],
    "bool_q": [
        {"question": b"is water wet", "passage": b"Water is wet.", "answer": False, "title": b"W"},
        {"question": b"is fire hot", "passage": b"Fire is hot.", "answer": True, "title": b"F"},
    ],
    "lambada": [
        {"passage": b"he sat down and ate the soup\n"},
        {"passage": b"we met at the station\n"},
    ],
}


@pytest.mark.parametrize("name", sorted(TFDS_DATA))
def test_every_tfds_task_end_to_end_on_mock_data(name):
    task = utility_tasks.TASKS[name]
    prefers_shorter.calls = []
    with tfds.testing.mock_data(as_dataset_fn=mock_split_data({task.split: TFDS_DATA[name]})):
        metrics = utility_tasks.evaluate_task(name, prefers_shorter, limit=5)
    assert len(prefers_shorter.calls) == 1
    assert metrics["num_examples"] == 2
    assert metrics["source"] == f"tfds:{task.tfds_name}:{task.split}"
    if name == "lambada":
        # " soup" is 5 chars (not greedy), " station" 8: acc 0; per-token perplexity from bytes.
        assert metrics["acc"] == 0.0
        total_logprob = -0.5 * (5 + 8) - 0.01 * (
            len("he sat down and ate the") + len("we met at the")
        )
        assert metrics["perplexity"] == pytest.approx(math.exp(-total_logprob / 13))
    else:
        assert metrics["acc"] == 0.5
    first_request = prefers_shorter.calls[0][0]
    expected_context = {
        "piqa": "Question: Open a jar\nAnswer:",
        "hellaswag": "Cooking: A man is cooking.",
        "winogrande": "Al gave Bobby a gift because Al",
        "arc_easy": "Question: What melts ice?\nAnswer:",
        "bool_q": "Water is wet.\nQuestion: is water wet?\nAnswer:",
        "lambada": "he sat down and ate the",
    }[name]
    assert first_request.context == expected_context


def test_limit_takes_the_first_examples():
    data = {"validation": TFDS_DATA["piqa"] * 3}
    with tfds.testing.mock_data(as_dataset_fn=mock_split_data(data)):
        metrics = utility_tasks.evaluate_task("piqa", prefers_shorter, limit=3)
    assert metrics["num_examples"] == 3


@pytest.mark.parametrize("name", ["piqa", "bool_q"])
def test_random_mock_data_runs_end_to_end(name):
    # The generic random mock data is valid input for these builders.
    with tfds.testing.mock_data(num_examples=4):
        metrics = utility_tasks.evaluate_task(name, prefers_shorter)
    assert metrics["num_examples"] == 4
    assert 0.0 <= metrics["acc"] <= 1.0


def test_invalid_examples_fail_naming_record_and_field():
    no_blank = r"tfds:winogrande:validation: record 0.*'sentence'"
    # Random mock sentences hold no "_" blank.
    with tfds.testing.mock_data(num_examples=2), pytest.raises(ValueError, match=no_blank):
        utility_tasks.evaluate_task("winogrande", prefers_shorter)
    bad = {"validation": [dict(TFDS_DATA["hellaswag"][0], label=7)]}
    with (
        tfds.testing.mock_data(as_dataset_fn=mock_split_data(bad)),
        pytest.raises(ValueError, match=r"record 0: label 7"),
    ):
        utility_tasks.evaluate_task("hellaswag", prefers_shorter)


def test_engine_answer_is_checked():
    ex = utility_tasks.choice_example("Q", ["a", "b"], 0, source="t", record=0)
    with pytest.raises(ValueError, match="returned 1 results for 2 requests"):
        utility_tasks.score_multiple_choice(
            [ex], lambda reqs: [LoglikelihoodResult(-1.0, True, 1)], task="t"
        )
    with pytest.raises(ValueError, match="logprob 0.5"):
        utility_tasks.score_multiple_choice(
            [ex], lambda reqs: [LoglikelihoodResult(0.5, True, 1)] * 2, task="t"
        )


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown utility task 'nope'"):
        utility_tasks.evaluate_task("nope", prefers_shorter)
    assert np.isnan(utility_tasks.multiple_choice_metrics([], [])["acc"])
