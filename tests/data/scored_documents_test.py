"""toxjax.data.scored_documents: random access by line index, and bad input named exactly."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest
import seqio

from toxjax.data import input_pipeline, scored_data, scored_documents, tasks
from toxjax.datasets import template_corpus
from toxjax.scoring import job, scorer_specs

NUM_DOCS = 50


@pytest.fixture
def scored(tmp_path) -> str:
    path = tmp_path / "corpus.jsonl"
    records = template_corpus.generate(NUM_DOCS, seed=1)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = str(tmp_path / "scored")
    options = job.ScoreOptions(records_per_shard=20)
    job.score_corpus(str(path), out, scorer_specs.make_scorer("offline"), options, progress=False)
    return out


def _documents(directory: str) -> scored_documents.ScoredDocuments:
    return scored_documents.ScoredDocuments(scored_data.load_scored_corpus(directory), "toxicity")


def test_line_index_skips_blank_lines_as_the_jsonl_reader_does():
    data = b'{"a": 1}\n\n  \n{"b": 2}\n{"c": 3}'
    index = scored_documents.line_index(data)
    assert index.tolist() == [[0, 1], [13, 4], [22, 5]]


def test_random_access_equals_the_sequential_reader(scored):
    documents = _documents(scored)
    corpus = scored_data.load_scored_corpus(scored)
    sequential = [
        record
        for shard in corpus.shards
        for record in scored_data.iter_scored_records(shard.path, attribute="toxicity")
    ]
    assert len(documents) == NUM_DOCS == len(sequential)
    for index in (0, 19, 20, 37, 49, 3):  # across shard boundaries, in any order
        document = documents[index]
        assert (document["text"], document["score"], document["key"]) == sequential[index]
    indexes = [p for p in os.listdir(os.path.join(scored, "shards")) if p.endswith(".index.npy")]
    assert len(indexes) == 3  # written once per shard on first read, then reused
    assert os.path.getsize(os.path.join(scored, "shards", indexes[0])) < 20 * 16 + 200


def test_a_bad_record_is_named_by_file_line_and_field(scored):
    shard = os.path.join(scored, "shards", "scored-00001.jsonl")
    with open(shard) as f:
        lines = f.read().splitlines(keepends=True)
    record = json.loads(lines[4])
    record["scores"]["toxicity"] = "high"
    lines[4] = json.dumps(record) + "\n"
    with open(shard, "w") as f:
        f.write("".join(lines))
    with pytest.raises(scored_data.ScoredDataError, match=rf"{shard}:5: field 'scores.toxicity'"):
        _documents(scored)[24]


def test_a_truncated_shard_is_named(scored):
    documents = _documents(scored)
    documents[0]  # the index exists, then the shard loses its tail
    shard = os.path.join(scored, "shards", "scored-00000.jsonl")
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:  # the same file, rewritten in place
        f.write(data[: len(data) - 40])
    with pytest.raises(scored_data.ScoredDataError, match=rf"{shard}:20: invalid JSON.*truncated"):
        documents[19]


def test_an_index_that_does_not_match_the_manifest_is_refused(scored):
    shard = os.path.join(scored, "shards", "scored-00002.jsonl")
    np.save(shard + scored_documents.INDEX_SUFFIX, np.zeros((3, 2), np.int64))
    with pytest.raises(scored_data.ScoredDataError, match=r"indexes 3 records.*num_records=10"):
        _documents(scored)[45]


def test_a_shard_missing_mid_run_stops_training_with_its_name(scored):
    names = tasks.register_toxicity_tasks(
        "scored_documents_test", scored, vocabulary=seqio.ByteVocabulary(), strategies=["base"]
    )
    config = ml_collections.ConfigDict(
        {
            "data": {
                "task": names["base"],
                "split": "train",
                "seq_len": 64,
                "seed": 0,
                "global_batch_size": 4,
                "packing_bins": 1,
            },
            "model": {"vocab_size": 384},
            "train": {"num_steps": 100},
        }
    )
    import jax

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    pipeline = input_pipeline.create_train_pipeline(config, sharding)
    pipeline.local_batch(0)
    for name in os.listdir(os.path.join(scored, "shards")):
        os.remove(os.path.join(scored, "shards", name))
    with pytest.raises(scored_data.ScoredDataError, match=r"scored-0000\d\.jsonl.*does not exist"):
        for step in range(1, 100):
            pipeline.local_batch(step)
    pipeline.close()
