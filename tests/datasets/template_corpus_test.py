"""The demo corpus is deterministic, has both registers, and the offline scorer separates them."""

import json

import numpy as np
import profanity_check
import pytest
from sklearn.metrics import roc_auc_score

from toxjax.datasets import template_corpus

IDENTITY_TERMS = (
    "black",
    "white",
    "asian",
    "jew",
    "muslim",
    "christian",
    "gay",
    "lesbian",
    "trans",
    "woman",
    "women",
    "immigrant",
    "mexican",
    "african",
    "disabled",
    "retard",
)


def test_same_seed_same_documents_and_other_seed_differs():
    assert template_corpus.generate(200, seed=3) == template_corpus.generate(200, seed=3)
    assert template_corpus.generate(200, seed=3) != template_corpus.generate(200, seed=4)


def test_default_corpus_has_thousands_of_documents_in_both_registers():
    docs = template_corpus.generate()
    assert len(docs) == template_corpus.DEFAULT_NUM_DOCS >= 2000
    registers = [d["register"] for d in docs]
    offensive = registers.count("offensive") / len(docs)
    assert set(registers) == set(template_corpus.REGISTERS)
    assert 0.25 < offensive < 0.35
    assert len({d["id"] for d in docs}) == len(docs)


def test_offline_scorer_separates_the_registers():
    docs = template_corpus.generate()
    labels = np.array([d["register"] == "offensive" for d in docs])
    scores = profanity_check.predict_prob([d["text"] for d in docs])
    assert roc_auc_score(labels, scores) > 0.99
    # An offensive document with one mild rude sentence among polite ones can score low: the
    # scorer's misses are the label noise INST and FILTER live with on real data too.
    assert (scores[labels] > 0.5).mean() > 0.9
    assert (scores[~labels] > 0.5).mean() < 0.02


def _is_rude(sentence: str) -> bool:
    return any(template_corpus.is_insult(w) for w in sentence.split()) or any(
        w.strip(".,").lower() in ("crap", "hell") for w in sentence.split()
    )


def test_every_offensive_document_has_a_rude_sentence_and_many_open_politely():
    docs = template_corpus.generate()
    rude_first = []
    for doc in docs:
        flags = [_is_rude(s) for s in template_corpus.sentences(doc["text"])]
        assert 2 <= len(flags) <= 4, doc
        if doc["register"] == "neutral":
            assert not any(flags), doc
        else:
            assert any(flags), doc
            rude_first.append(flags[0])
    # The register is not given away by the first sentence: a polite start can still turn rude.
    assert 0.15 < 1 - np.mean(rude_first) < 0.45


def test_rude_sentences_name_no_identity_group():
    words = {
        w.strip(".,!?").lower()
        for d in template_corpus.generate()
        if d["register"] == "offensive"
        for s in template_corpus.sentences(d["text"])
        if _is_rude(s)
        for w in s.split()
    }
    assert "idiot" in words  # the check reads the rude sentences themselves
    assert not words & set(IDENTITY_TERMS)


def test_write_jsonl_round_trips(tmp_path):
    path = template_corpus.write_jsonl(str(tmp_path / "demo.jsonl"), num_docs=50, seed=1)
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert records == template_corpus.generate(50, seed=1)


@pytest.mark.parametrize("kwargs", [{"num_docs": -1}, {"offensive_fraction": 1.5}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        template_corpus.generate(**kwargs)
