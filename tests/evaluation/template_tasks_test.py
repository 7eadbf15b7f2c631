"""Tests of the offline demo evaluation tasks (cloze utility and toxicity-detection AUC)."""

import math

import pytest

from toxjax.datasets import template_corpus
from toxjax.evaluation import bias, template_tasks
from toxjax.inference.requests import LoglikelihoodResult


def test_cloze_questions_are_deterministic_held_out_and_well_formed():
    examples = template_tasks.cloze_examples(40)
    assert examples == template_tasks.cloze_examples(40)
    assert examples != template_tasks.cloze_examples(40, seed=5)
    endings = set(template_tasks._ending_pool())
    golds = set()
    for example in examples:
        assert len(example.requests) == template_tasks.NUM_CHOICES
        contexts = {r.context for r in example.requests}
        assert len(contexts) == 1  # one question, four endings
        choices = [r.continuation[1:] for r in example.requests]
        assert all(r.continuation.startswith(" ") for r in example.requests)
        assert len(set(choices)) == template_tasks.NUM_CHOICES
        assert set(choices) <= endings
        # The gold ending completes the cut sentence into real corpus prose.
        sentence = (contexts.pop().split(". ")[-1] + " " + choices[example.gold]).strip()
        assert any(sentence.endswith(s) or s.endswith(sentence) for s in _corpus_sentences())
        golds.add(example.gold)
    assert golds == set(range(template_tasks.NUM_CHOICES))  # the answer position varies


def _corpus_sentences() -> list[str]:
    sentences = list(template_corpus.NEUTRAL_SENTENCES)
    sentences += [
        f"{o} {c}" for o in template_corpus.OPENERS for c in template_corpus.NEUTRAL_CONTINUATIONS
    ]
    return sentences


def test_cloze_accuracy_comes_from_the_shared_metric_code():
    examples = template_tasks.cloze_examples(12)

    def knows_the_answers(requests):
        gold_pairs = {
            (e.requests[e.gold].context, e.requests[e.gold].continuation) for e in examples
        }
        return [
            LoglikelihoodResult(
                -1.0 if (r.context, r.continuation) in gold_pairs else -9.0, False, 1
            )
            for r in requests
        ]

    metrics = template_tasks.evaluate_cloze(knows_the_answers, limit=12)
    assert metrics["task"] == "demo_cloze"
    assert metrics["num_examples"] == 12
    assert metrics["acc"] == 1.0 and metrics["acc_norm"] == 1.0
    flat = template_tasks.evaluate_cloze(
        lambda requests: [LoglikelihoodResult(-1.0, False, 1) for _ in requests], limit=12
    )
    # All ties: argmax picks the first choice, so acc is the share of golds at index 0.
    assert flat["acc"] == pytest.approx(sum(e.gold == 0 for e in examples) / 12)


def test_detection_examples_are_balanced_distinct_and_labelled_by_register():
    examples = template_tasks.detection_examples(30)
    assert [x.label for x in examples] == [i % 2 for i in range(30)]
    assert len({x.text for x in examples}) == 30
    insults = set(template_corpus.INSULT_NOUNS) | set(template_corpus.PROFANITY)
    for x in examples:
        assert len(x.text) <= template_tasks.MAX_TEXT_CHARS
        rude = any(word.strip(".,") in insults for word in x.text.split())
        assert rude == bool(x.label), x


def test_detection_auc_comes_from_the_bias_code():
    examples = template_tasks.detection_examples(20)
    offensive = {x.text for x in examples if x.label}

    def yes_for_offensive(requests):
        out = []
        for r in requests:
            is_offensive = any(t in r.context for t in offensive)
            says_yes = r.continuation == bias.BiasPromptConfig().positive
            out.append(LoglikelihoodResult(-1.0 if is_offensive == says_yes else -5.0, False, 1))
        return out

    report = template_tasks.evaluate_toxicity_detection(yes_for_offensive, limit=20)
    assert report["task"] == "demo_toxicity_detection"
    assert report["auc"] == 1.0
    assert report["num_positive"] == report["num_negative"] == 10

    inverted = template_tasks.evaluate_toxicity_detection(
        lambda requests: [
            LoglikelihoodResult(-6.0 - result.logprob, False, 1)
            for result in yes_for_offensive(requests)
        ],
        limit=20,
    )
    assert inverted["auc"] == 0.0


def test_few_shot_detection_prompts_hold_disjoint_labelled_examples():
    seen_contexts = []

    def record(requests):
        seen_contexts.extend(r.context for r in requests)
        return [LoglikelihoodResult(-1.0, False, 1) for _ in requests]

    config = bias.BiasPromptConfig(num_shots=2)
    report = template_tasks.evaluate_toxicity_detection(record, limit=6, config=config)
    assert report["num_shots"] == 2
    assert math.isclose(report["auc"], 0.5)  # constant scores
    queries = {x.text for x in template_tasks.detection_examples(6)}
    context = seen_contexts[0]
    assert context.count("Answer:") == 3  # two answered shots, then the query
    shots = context.split(config.shot_separator)[:2]
    assert not any(q in shot for shot in shots for q in queries)
