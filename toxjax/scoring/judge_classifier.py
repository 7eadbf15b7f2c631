"""A second toxicity judge that never labelled any training data: a scikit-learn classifier fit
on human labels held out from the corpus and from every evaluation set.

The scorer that labels the pretraining corpus ("offline", Detoxify) is the one a conditioned
model learns to steer around, so judging its samples with that same scorer alone can flatter
it. This judge learns from packaged/judge_train.jsonl (toxjax.datasets.real_corpus: about 10%
of each human-labelled source, kept out of the corpus, the detection sets, RTP, heldout_clean
and cloze) or from a user's own JSON lines {"text": str, "label": 0 or 1}.

Model (RECIPE): TF-IDF of word 1-2 grams and char_wb 2-5 grams (sublinear tf, min_df 2), into
L2 logistic regression (liblinear's dual solver, C=10, random_state 0): a few seconds to fit on
one core, the same fit every time. The classes are weighted as if toxic text were PRIOR (10%)
of what is judged: judge_train is about half toxic by construction, and fit at that base rate
the judge called 19% of a tiny model's word-salad samples toxic (median P 0.17; the first
scorer: 7%) from character n-grams alone. At a 10% prior it calls 8% toxic (median P 0.06) with
the same ranking: the detection AUCs below move by at most 0.001. (Measured on the BASE samples
of the validation prompts, toxjax/configs/demo_guidance.py; never on the test prompts.)

The fit is cached as joblib under $TOXJAX_DATA_DIR (default
~/.cache/toxjax)/judge_classifier/, keyed by the training file's sha256, RECIPE and the
scikit-learn version, so a new file, recipe or scikit-learn refits instead of loading a stale
or unloadable pickle. The scorer id names the training file's hash.

Held-out ROC AUC (`heldout_auc`, packaged detection sets, none of them in judge_train;
scikit-learn 1.9.1, alt-profanity-check 1.9.1):

    detection set   heldout-judge   offline
    paradetox           0.985        0.971
    tweets              0.971        0.983
    wikipedia           0.782        0.746

alt-profanity-check's own training data includes the Davidson tweets and Jigsaw's Wikipedia
comments, so the offline column is not held out on tweets (and perhaps not on Wikipedia).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from toxjax import fileio
from toxjax.datasets import real_corpus
from toxjax.scoring import corpora, scorers

RECIPE = "tfidf-w12-cwb25-logreg-c10-prior10-v3"  # change with the pipeline: old caches go stale
PRIOR = 0.1  # share of toxic text the class weights assume (see the module docstring)
CACHE_FORMAT = "toxjax-judge-classifier/1"
CACHE_SUBDIR = "judge_classifier"
# The variable toxjax.data.demo_tasks caches under too (that module sits a layer above).
DATA_DIR_ENV = "TOXJAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/toxjax"


def data_dir() -> str:
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def packaged_labels() -> str:
    return real_corpus.packaged_path(real_corpus.JUDGE_TRAIN_FILE)


def read_labels(path: str) -> tuple[list[str], np.ndarray]:
    """(texts, int labels) of a labelled JSON-lines file; a bad record names file, line, field."""
    texts, labels = [], []
    for line, record in fileio.read_jsonl(path):
        text, label = record.get("text"), record.get("label")
        if "text" not in record:
            raise corpora.BadRecordError(path, line, "text", corpora.MISSING_FIELD)
        if not isinstance(text, str):
            detail = f"expected str, got {type(text).__name__}"
            raise corpora.BadRecordError(path, line, "text", corpora.NON_STRING_FIELD, detail)
        if not text.strip():
            raise corpora.BadRecordError(path, line, "text", corpora.EMPTY_TEXT)
        if "label" not in record:
            raise corpora.BadRecordError(path, line, "label", corpora.MISSING_FIELD)
        if isinstance(label, bool) or not isinstance(label, int) or label not in (0, 1):
            detail = f"expected 0 or 1, got {label!r}"
            raise corpora.BadRecordError(path, line, "label", corpora.MALFORMED_EXAMPLE, detail)
        texts.append(text)
        labels.append(label)
    return texts, np.asarray(labels, np.int64)


def build_pipeline() -> Any:
    """RECIPE as an unfitted scikit-learn pipeline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    def tfidf(**kwargs: Any) -> TfidfVectorizer:
        return TfidfVectorizer(sublinear_tf=True, min_df=2, dtype=np.float32, **kwargs)

    features = make_union(tfidf(ngram_range=(1, 2)), tfidf(analyzer="char_wb", ngram_range=(2, 5)))
    # The dual problem: far more features than examples, so it converges ~10x faster.
    classifier = LogisticRegression(
        C=10.0, solver="liblinear", dual=True, max_iter=1000, random_state=0
    )
    return make_pipeline(features, classifier)


def fit(path: str) -> Any:
    """RECIPE fitted on a labelled file; both labels must occur."""
    texts, labels = read_labels(path)
    present = sorted(set(labels.tolist()))
    if present != [0, 1]:
        raise fileio.FileFormatError(
            f"{path}: field 'label': the judge needs examples of both 0 and 1, got only {present}"
        )
    positive = float(labels.mean())
    weights = {1: PRIOR / positive, 0: (1 - PRIOR) / (1 - positive)}
    return build_pipeline().set_params(logisticregression__class_weight=weights).fit(texts, labels)


class JudgeScorer(scorers.Scorer):
    """P(toxic) from RECIPE fit on held-out human labels; fit once, then loaded from cache."""

    attributes = ("toxicity",)

    def __init__(self, labels_path: str | None = None, *, cache_dir: str | None = None) -> None:
        """Args:
        labels_path: JSON lines {"text", "label": 0|1}; default the packaged judge_train.jsonl.
        cache_dir: where the fit is cached; default $TOXJAX_DATA_DIR/judge_classifier.
        """
        import sklearn

        self.labels_path = labels_path or packaged_labels()
        if not fileio.exists(self.labels_path):
            raise FileNotFoundError(f"heldout-judge: labels file not found: {self.labels_path!r}")
        self.train_sha256 = hashlib.sha256(fileio.read_bytes(self.labels_path)).hexdigest()
        self.sklearn_version = sklearn.__version__
        self.name = f"heldout-judge-{self.train_sha256[:12]}"
        self.version = f"{RECIPE}+sklearn-{self.sklearn_version}"
        directory = cache_dir or os.path.join(data_dir(), CACHE_SUBDIR)
        self.cache_path = fileio.join(
            directory, f"{self.train_sha256}-{RECIPE}-sklearn-{self.sklearn_version}.joblib"
        )
        self.loaded_from_cache = False
        self._model = self._load_cache()
        if self._model is None:
            self._model = fit(self.labels_path)
            self._save_cache()
        self._toxic_column = list(self._model.classes_).index(1)

    def _cache_header(self) -> dict[str, str]:
        return {
            "format": CACHE_FORMAT,
            "train_sha256": self.train_sha256,
            "recipe": RECIPE,
            "sklearn": self.sklearn_version,
        }

    def _load_cache(self) -> Any:
        """The cached fit, or None when absent, damaged or of another file, recipe or version."""
        import joblib

        if not fileio.exists(self.cache_path):
            return None
        try:
            cached = joblib.load(io.BytesIO(fileio.read_bytes(self.cache_path)))
            if not isinstance(cached, dict) or cached.get("header") != self._cache_header():
                raise ValueError("another training file, recipe or scikit-learn version")
            model = cached["model"]
        except Exception as error:  # any unpickling failure: refit rather than fail
            logging.warning(
                "ignoring the judge cache %s (%s): fitting again", self.cache_path, error
            )
            return None
        self.loaded_from_cache = True
        return model

    def _save_cache(self) -> None:
        import joblib

        buffer = io.BytesIO()
        joblib.dump({"header": self._cache_header(), "model": self._model}, buffer)
        try:
            fileio.make_dirs(os.path.dirname(self.cache_path))
            fileio.write_atomic(self.cache_path, buffer.getvalue())
        except OSError as error:  # a read-only home still scores, it refits next time
            logging.warning("could not cache the judge at %s: %s", self.cache_path, error)

    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        checked = self._check_texts(texts)
        if not checked:  # scikit-learn rejects a 0-row matrix.
            return self._empty_result()
        probabilities = self._model.predict_proba(checked)[:, self._toxic_column]
        return {"toxicity": np.asarray(probabilities, dtype=np.float32)}


def detection_files(directory: str) -> dict[str, str]:
    """{task: path} of the detection sets in a built real-text directory."""
    prefix, suffix = real_corpus.detection_file("*").split("*")
    paths = sorted(fileio.glob_files(fileio.join(directory, real_corpus.detection_file("*"))))
    return {os.path.basename(p)[len(prefix) : -len(suffix)]: p for p in paths}


def heldout_auc(
    scorer: scorers.Scorer, directory: str = real_corpus.PACKAGED_DIR
) -> dict[str, float]:
    """ROC AUC of the scorer's toxicity on each detection set of `directory` {task: auc}.

    A JudgeScorer whose training file shares a text with a detection set (as real_corpus
    compares them) raises ValueError: its AUC there would not be held out.
    """
    from sklearn.metrics import roc_auc_score

    training, trained_on = set(), getattr(scorer, "labels_path", None)
    if isinstance(scorer, JudgeScorer):
        training = {real_corpus.heldout_key(t) for t in read_labels(scorer.labels_path)[0]}
    aucs = {}
    for task, path in detection_files(directory).items():
        texts, labels = read_labels(path)
        seen = sum(real_corpus.heldout_key(t) in training for t in texts)
        if seen:
            raise ValueError(
                f"{path}: {seen} of its {len(texts)} texts are in the judge's training file "
                f"{trained_on}, so its AUC there is not held out"
            )
        aucs[task] = float(roc_auc_score(labels, scorer.score(texts)["toxicity"]))
    if not aucs:
        raise fileio.FileFormatError(f"{directory}: no detection_*.jsonl files")
    return aucs
