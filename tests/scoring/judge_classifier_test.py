"""Tests for toxjax.scoring.judge_classifier: a judge fit on held-out human labels only."""

from __future__ import annotations

import gzip
import hashlib
import json
import os

import numpy as np
import pytest

from toxjax import fileio
from toxjax.datasets import real_corpus
from toxjax.scoring import corpora, judge_classifier, scorer_specs

# Measured with scikit-learn 1.9.1 (the fit is deterministic): paradetox 0.985, tweets 0.970,
# wikipedia 0.781 (85 positives: the widest margin).
AUC_FLOORS = {"paradetox": 0.95, "tweets": 0.94, "wikipedia": 0.73}

TOXIC = ["you are a stupid idiot", "shut up you idiot", "what a stupid moron", "idiot moron"]
CLEAN = ["thanks for the helpful edit", "the edit looks helpful", "thanks for the fix", "nice fix"]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def small_labels(tmp_path, name="labels.jsonl", extra=()) -> str:
    records = [{"text": t, "label": 1} for t in TOXIC] + [{"text": t, "label": 0} for t in CLEAN]
    return write_jsonl(tmp_path / name, [*records, *extra])


@pytest.fixture(scope="module")
def packaged_judge(tmp_path_factory) -> judge_classifier.JudgeScorer:
    """The packaged judge, fit once for the module (about 4 s) into a fresh cache."""
    cache = str(tmp_path_factory.mktemp("judge_cache"))
    return judge_classifier.JudgeScorer(cache_dir=cache)


def normalised_hashes(text: str) -> set[str]:
    """sha256 of the text with whitespace collapsed and case folded, whole and as the start that
    real_corpus compares held-out texts by (MAX_HELDOUT_CHARS)."""
    text = " ".join(text.split())
    prefix = real_corpus.truncate(text, real_corpus.MAX_HELDOUT_CHARS)
    return {hashlib.sha256(t.casefold().encode()).hexdigest() for t in (text, prefix)}


def packaged_texts(name: str) -> list[str]:
    """Every text of a packaged file that a judge text must not equal."""
    path = real_corpus.packaged_path(name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    texts = []
    for r in records:
        if "prompt" in r:  # RTP: prompt, continuation and both
            parts = [r["prompt"]["text"], (r.get("continuation") or {}).get("text") or ""]
            texts += [*parts, "".join(parts)]
        elif "context" in r:  # cloze: the paragraph with and without its last word
            texts += [r["context"], f"{r['context']} {r['target']}"]
        else:
            texts.append(r["text"])
    return texts


def test_the_judge_never_trains_on_a_corpus_or_evaluation_text(packaged_judge):
    with open(real_corpus.packaged_path("manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    # The scorer trains on exactly the packaged file the manifest hashed.
    assert packaged_judge.labels_path == real_corpus.packaged_path(real_corpus.JUDGE_TRAIN_FILE)
    assert packaged_judge.train_sha256 == manifest["sha256"][real_corpus.JUDGE_TRAIN_FILE]
    assert packaged_judge.scorer_id.startswith(f"heldout-judge-{packaged_judge.train_sha256[:12]}@")
    judge_texts, labels = judge_classifier.read_labels(packaged_judge.labels_path)
    assert 3000 < labels.sum() < len(labels) - 3000  # both classes, thousands each
    judge = set().union(*(normalised_hashes(t) for t in judge_texts))
    others = [
        real_corpus.CORPUS_FILE,
        real_corpus.HELDOUT_CLEAN_FILE,
        real_corpus.CLOZE_FILE,
        *real_corpus.RTP_FILES.values(),
        *(
            os.path.basename(p)
            for p in judge_classifier.detection_files(real_corpus.PACKAGED_DIR).values()
        ),
    ]
    assert len(others) == 8
    for name in others:
        texts = packaged_texts(name)
        assert texts, name
        shared = [t for t in texts if normalised_hashes(t) & judge]
        assert not shared, (name, shared[:3])


def test_heldout_auc_beats_the_measured_floors(packaged_judge):
    aucs = judge_classifier.heldout_auc(packaged_judge)
    assert set(aucs) == set(AUC_FLOORS)
    for task, floor in AUC_FLOORS.items():
        assert aucs[task] > floor, (task, aucs[task])


def test_specs_parse(tmp_path, packaged_judge):
    cache = os.path.dirname(packaged_judge.cache_path)
    packaged = scorer_specs.make_scorer("heldout-judge", cache_dir=cache)
    assert isinstance(packaged, judge_classifier.JudgeScorer) and packaged.loaded_from_cache
    assert packaged.scorer_id == packaged_judge.scorer_id
    own = scorer_specs.make_scorer(f"heldout-judge:{small_labels(tmp_path)}", cache_dir=cache)
    assert own.labels_path == str(tmp_path / "labels.jsonl") and own.scorer_id != packaged.scorer_id
    with pytest.raises(ValueError, match="names no model or file"):
        scorer_specs.make_scorer("heldout-judge:")
    with pytest.raises(FileNotFoundError, match="labels file not found"):
        scorer_specs.make_scorer(f"heldout-judge:{tmp_path / 'missing.jsonl'}", cache_dir=cache)


def test_scores_are_deterministic_and_the_fit_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TOXJAX_DATA_DIR", str(tmp_path / "data"))
    labels = small_labels(tmp_path)
    texts = ["you stupid idiot", "thanks for the edit", ""]
    first = judge_classifier.JudgeScorer(labels)
    assert not first.loaded_from_cache
    assert first.cache_path.startswith(str(tmp_path / "data" / "judge_classifier") + os.sep)
    scores = first.score(texts)["toxicity"]
    assert scores.dtype == np.float32 and scores.shape == (3,) and scores[0] > scores[1]
    second = judge_classifier.JudgeScorer(labels)
    assert second.loaded_from_cache
    np.testing.assert_array_equal(second.score(texts)["toxicity"], scores)
    fresh = judge_classifier.JudgeScorer(labels, cache_dir=str(tmp_path / "elsewhere"))
    assert not fresh.loaded_from_cache and fresh.scorer_id == first.scorer_id
    np.testing.assert_array_equal(fresh.score(texts)["toxicity"], scores)  # the same fit
    assert second.score([])["toxicity"].shape == (0,)
    with pytest.raises(TypeError, match="one str"):
        second.score("one text")


def test_another_file_or_a_damaged_cache_refits(tmp_path):
    cache = str(tmp_path / "cache")
    first = judge_classifier.JudgeScorer(small_labels(tmp_path), cache_dir=cache)
    changed = small_labels(tmp_path, "more.jsonl", [{"text": "idiot", "label": 1}])
    other = judge_classifier.JudgeScorer(changed, cache_dir=cache)
    assert not other.loaded_from_cache and other.cache_path != first.cache_path
    assert other.name != first.name  # the scorer id names the training file's hash
    fileio.write_atomic(first.cache_path, b"not a pickle")
    again = judge_classifier.JudgeScorer(first.labels_path, cache_dir=cache)
    assert not again.loaded_from_cache
    assert judge_classifier.JudgeScorer(first.labels_path, cache_dir=cache).loaded_from_cache


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"label": 1}, "field 'text': missing_field"),
        ({"text": 7, "label": 1}, "field 'text': non_string_field: expected str, got int"),
        ({"text": "  ", "label": 1}, "field 'text': empty_text"),
        ({"text": "idiot"}, "field 'label': missing_field"),
        ({"text": "idiot", "label": 2}, "field 'label': malformed_example: expected 0 or 1, got 2"),
        ({"text": "idiot", "label": "1"}, "field 'label': .*got '1'"),
        ({"text": "idiot", "label": True}, "field 'label': .*got True"),
        ({"text": "idiot", "label": 1.0}, "field 'label': .*got 1.0"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine", "label": 0}, record])
    with pytest.raises(corpora.BadRecordError, match=f"^{path}:2: {message}"):
        judge_classifier.JudgeScorer(path, cache_dir=str(tmp_path))


def test_bad_files_are_named(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "label": 0}\n{"text": \n', encoding="utf-8")
    with pytest.raises(fileio.FileFormatError, match=f"^{broken}:2: invalid JSON"):
        judge_classifier.JudgeScorer(str(broken), cache_dir=str(tmp_path))
    one_class = write_jsonl(tmp_path / "one.jsonl", [{"text": t, "label": 1} for t in TOXIC])
    with pytest.raises(fileio.FileFormatError, match="field 'label': .*both 0 and 1, got only"):
        judge_classifier.JudgeScorer(one_class, cache_dir=str(tmp_path))


def test_heldout_auc_refuses_a_judge_trained_on_a_detection_text(tmp_path):
    path = judge_classifier.detection_files(real_corpus.PACKAGED_DIR)["paradetox"]
    leaked = judge_classifier.read_labels(path)[0][0]
    labels = small_labels(tmp_path, extra=[{"text": leaked.upper(), "label": 1}])
    judge = judge_classifier.JudgeScorer(labels, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="detection_paradetox.jsonl: 1 of its 660 texts"):
        judge_classifier.heldout_auc(judge)
