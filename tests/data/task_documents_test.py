"""toxjax.data.task_documents: the streaming input reads, document by document, what
seqio.get_dataset gives for the same registered task, for every strategy."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import seqio
import tensorflow as tf

from toxjax.data import task_documents, tasks
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.data.vocab import train_vocabulary
from toxjax.datasets import template_corpus
from toxjax.scoring import job, scorer_specs

FAMILY = "task_documents_test"
SEQ_LEN = 48
NUM_DOCS = 240
# Random augmentation, INST levels and bins: every branch of the conditioning is exercised.
FMT = ConditioningFormat(augment_fraction=0.7, score_bins=4, threshold=0.3)


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("task_documents")
    path = directory / "corpus.jsonl"
    records = template_corpus.generate(NUM_DOCS, seed=3, offensive_fraction=0.4)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = str(directory / "scored")
    options = job.ScoreOptions(segment="sentence", records_per_shard=70)
    job.score_corpus(str(path), out, scorer_specs.make_scorer("offline"), options, progress=False)
    return out


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory) -> seqio.SentencePieceVocabulary:
    texts = [d["text"] for d in template_corpus.generate(300)]
    prefix = str(tmp_path_factory.mktemp("spm") / "vocab")
    model = train_vocabulary(texts, prefix, vocab_size=500, fmt=FMT, segment=True, progress=False)
    return seqio.SentencePieceVocabulary(model)


@pytest.fixture(scope="module")
def family(scored, vocabulary) -> dict[str, str]:
    names = tasks.register_toxicity_tasks(
        FAMILY,
        scored,
        vocabulary=vocabulary,
        fmt=FMT,
        strategies=list(Strategy),
        validation_fraction=0.2,
        mixture_with=[(f"{FAMILY}_base", 0.25)],
    )
    split_names = tasks.register_toxicity_tasks(
        FAMILY + "_split",
        scored,
        vocabulary=vocabulary,
        fmt=FMT,
        strategies=[Strategy.INST],
        validation_fraction=0.2,
        long_documents="split",
    )
    return {**names, "inst_split": split_names["inst"]}


def _seqio_documents(name: str, split: str) -> Counter:
    dataset = seqio.get_mixture_or_task(name).get_dataset(
        {"targets": SEQ_LEN}, split=split, shuffle=False, num_epochs=1
    )
    return Counter(tuple(ex["targets"].tolist()) for ex in dataset.as_numpy_iterator())


def _one_epoch(name: str, split: str, seed: int = 0) -> Counter:
    """The first epoch of the streaming order (indices 0..N-1), pieces flattened."""
    documents = task_documents.task_documents(name, split, SEQ_LEN, seed)
    size = task_documents.split_size(name, split)
    found: Counter = Counter()
    for index in range(size):
        element = documents[index]
        for piece in (
            [] if element is None else (element if isinstance(element, list) else [element])
        ):
            assert piece.dtype == np.int32
            found[tuple(piece.tolist())] += 1
    return found


@pytest.mark.parametrize("strategy", [s.value for s in Strategy] + ["inst_split"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_one_epoch_equals_seqio_document_by_document(family, strategy, split):
    expected = _seqio_documents(family[strategy], split)
    assert sum(expected.values()) > 0
    assert _one_epoch(family[strategy], split) == expected


def test_the_strategies_really_differ(family):
    """The equality above is not vacuous: signals, filtering and pieces change the documents."""
    epochs = {s: _one_epoch(family[s], "train") for s in ("base", "meda", "inst", "filter")}
    assert len({frozenset(e.items()) for e in epochs.values()}) == 4
    assert sum(epochs["filter"].values()) < sum(epochs["base"].values())
    assert max(len(d) for d in _one_epoch(family["inst_split"], "train")) == SEQ_LEN


def test_epochs_are_permutations_that_differ(family):
    name = family["base"]
    documents = task_documents.task_documents(name, "train", SEQ_LEN, seed=5)
    size = task_documents.split_size(name, "train")
    first = [documents[i] for i in range(size)]
    second = [documents[size + i] for i in range(size)]

    def key(element):
        return None if element is None else tuple(element.tolist())

    assert Counter(map(key, first)) == Counter(map(key, second))
    assert [key(e) for e in first] != [key(e) for e in second]
    other_seed = task_documents.task_documents(name, "train", SEQ_LEN, seed=6)
    assert [key(other_seed[i]) for i in range(size)] != [key(e) for e in first]


def test_mixture_draws_its_parts_at_their_rates(family):
    name = family["inst_mix"]
    base, inst = _one_epoch(family["base"], "train"), _one_epoch(family["inst"], "train")
    documents = task_documents.task_documents(name, "train", SEQ_LEN, seed=0)
    drawn = [documents[i] for i in range(800)]
    kept = [tuple(d.tolist()) for d in drawn if d is not None]
    untagged_only = set(base) - set(inst)
    assert all(d in base or d in inst for d in kept)
    share = sum(d in untagged_only for d in kept) / len(kept)
    assert 0.1 < share < 0.3  # rate 0.25, less the documents BASE and INST share


def test_task_without_random_access_is_read_through_seqio():
    name = "task_documents_test_function_source"
    texts = [f"document {i} " + "x" * (i % 9) for i in range(30)]
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                    {"targets": texts}
                ),
                splits=["train"],
            ),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
            output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)},
        )
    assert _one_epoch(name, "train") == _seqio_documents(name, "train")
