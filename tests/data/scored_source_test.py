"""Scored shards through their SeqIO source: values, keys, splits, host sharding, and errors
naming file, line and field (the checks of toxjax.data.scored_data, as the pipeline meets them)."""

import json
import os

import pytest
import seqio
import tensorflow as tf

from toxjax.data.conditioning import stable_doc_key
from toxjax.data.scored_data import (
    TRAIN,
    VALIDATION,
    ScoredDataError,
    in_validation,
    iter_scored_records,
    load_scored_corpus,
)
from toxjax.data.scored_source import ScoredShardsSource


def write_scored_dir(
    directory: str,
    shards: list[list[dict]],
    *,
    attributes=("toxicity",),
    complete=True,
    text_field="text",
    manifest_counts: list[int] | None = None,
) -> str:
    """Writes the documented layout of toxjax.scoring.job by hand (manifest + JSONL shards)."""
    tf.io.gfile.makedirs(os.path.join(directory, "shards"))
    entries = []
    for index, records in enumerate(shards):
        path = f"shards/scored-{index:05d}.jsonl"
        with tf.io.gfile.GFile(os.path.join(directory, path), "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        count = len(records) if manifest_counts is None else manifest_counts[index]
        entries.append({"path": path, "num_records": count, "num_skipped": 0})
    manifest = {
        "scorer": "fake@1",
        "attributes": list(attributes),
        "text_field": text_field,
        "input": "hand-written",
        "complete": complete,
        "shards": entries,
        "summary": {},
    }
    with tf.io.gfile.GFile(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return directory


def scored(text: str, score: float, doc_id=None, **extra_scores) -> dict:
    record = {"text": text, "scores": {"toxicity": score, **extra_scores}, "scorer": "fake@1"}
    if doc_id is not None:
        record["id"] = doc_id
    return record


def as_tuples(ds: tf.data.Dataset) -> list[tuple[str, float, str]]:
    return [
        (ex["text"].decode(), float(ex["score"]), ex["key"].decode())
        for ex in ds.as_numpy_iterator()
    ]


def many_docs(num_shards: int, per_shard: int) -> list[list[dict]]:
    return [
        [scored(f"doc {s}-{i}", (s * per_shard + i) / 100, f"d{s}-{i}") for i in range(per_shard)]
        for s in range(num_shards)
    ]


def test_yields_text_score_and_key_with_the_documented_types(tmp_path):
    directory = write_scored_dir(
        str(tmp_path), [[scored("Have a nice day.", 0.07, "a1"), scored("No id here.", 0.93)]]
    )
    source = ScoredShardsSource({TRAIN: directory})
    ds = source.get_dataset(TRAIN, shuffle=False)
    assert ds.element_spec == {
        "text": tf.TensorSpec([], tf.string),
        "score": tf.TensorSpec([], tf.float64),
        "key": tf.TensorSpec([], tf.string),
    }
    seqio.test_utils.assert_dataset(
        ds,
        [
            {"text": "Have a nice day.", "score": 0.07, "key": "a1"},
            {"text": "No id here.", "score": 0.93, "key": stable_doc_key("No id here.")},
        ],
    )
    assert source.num_input_examples(TRAIN) == 2


def test_integer_ids_become_string_keys(tmp_path):
    directory = write_scored_dir(str(tmp_path), [[scored("x", 0.1, 17)]])
    assert as_tuples(ScoredShardsSource({TRAIN: directory}).get_dataset(TRAIN, False)) == [
        ("x", 0.1, "17")
    ]


def test_configured_attribute_and_dotted_text_field(tmp_path):
    records = [{"doc": {"body": "hello"}, "scores": {"toxicity": 0.2, "insult": 0.6}}]
    directory = write_scored_dir(
        str(tmp_path), [records], attributes=("toxicity", "insult"), text_field="doc.body"
    )
    source = ScoredShardsSource({TRAIN: directory}, attribute="insult")
    assert as_tuples(source.get_dataset(TRAIN, False)) == [("hello", 0.6, stable_doc_key("hello"))]


def test_hash_split_is_disjoint_complete_and_deterministic(tmp_path):
    shards = many_docs(num_shards=4, per_shard=250)
    directory = write_scored_dir(str(tmp_path), shards)
    source = ScoredShardsSource(directory, validation_fraction=0.1)
    assert tuple(source.splits) == (TRAIN, VALIDATION)
    train = as_tuples(source.get_dataset(TRAIN, shuffle=False))
    validation = as_tuples(source.get_dataset(VALIDATION, shuffle=False))
    train_keys, validation_keys = {k for *_, k in train}, {k for *_, k in validation}
    assert not train_keys & validation_keys
    assert len(train_keys | validation_keys) == 1000
    assert 70 <= len(validation_keys) <= 130  # 10% of 1000, within 3 sigma
    assert all(in_validation(k, 0.1) for k in validation_keys)
    assert source.num_input_examples(TRAIN) is None  # unknown until every key is read
    # Same keys in another source: same split (it depends on the key only).
    again = ScoredShardsSource(directory, validation_fraction=0.1)
    assert as_tuples(again.get_dataset(VALIDATION, shuffle=False)) == validation
    # Python iteration gives the same records as the tf.data pipeline.
    assert sorted(source.iter_split(VALIDATION)) == sorted(validation)


def test_split_seed_changes_the_split(tmp_path):
    directory = write_scored_dir(str(tmp_path), many_docs(1, 300))
    a = ScoredShardsSource(directory, validation_fraction=0.2, split_seed=0)
    b = ScoredShardsSource(directory, validation_fraction=0.2, split_seed=1)
    assert as_tuples(a.get_dataset(VALIDATION, False)) != as_tuples(
        b.get_dataset(VALIDATION, False)
    )


def test_separate_directories_per_split(tmp_path):
    train_dir = write_scored_dir(str(tmp_path / "tr"), [[scored("a", 0.1, "a"), scored("b", 0.2)]])
    test_dir = write_scored_dir(str(tmp_path / "te"), [[scored("c", 0.3, "c")]])
    source = ScoredShardsSource({TRAIN: train_dir, "test": test_dir})
    assert tuple(source.splits) == (TRAIN, "test")
    assert [t for t, *_ in as_tuples(source.get_dataset("test", False))] == ["c"]
    assert (source.num_input_examples(TRAIN), source.num_input_examples("test")) == (2, 1)
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        source.get_dataset(VALIDATION)


def test_lazy_directory_is_resolved_once_on_first_use(tmp_path):
    calls = []

    def prepare() -> str:
        calls.append(1)
        return write_scored_dir(str(tmp_path), many_docs(1, 20))

    source = ScoredShardsSource(prepare, validation_fraction=0.2)
    assert calls == []
    source.get_dataset(TRAIN, False)
    source.get_dataset(VALIDATION, False)
    assert calls == [1]


def test_host_sharding_is_by_file_and_covers_every_record_once(tmp_path):
    directory = write_scored_dir(str(tmp_path), many_docs(num_shards=5, per_shard=7))
    source = ScoredShardsSource({TRAIN: directory})
    assert len(source.list_shards(TRAIN)) == 5
    per_host = [
        as_tuples(source.get_dataset(TRAIN, False, shard_info=seqio.ShardInfo(i, 2)))
        for i in range(2)
    ]
    host_prefixes = [{t.split("-")[0] for t, *_ in host} for host in per_host]
    assert host_prefixes == [{"doc 0", "doc 2", "doc 4"}, {"doc 1", "doc 3"}]
    everything = sorted(per_host[0] + per_host[1])
    assert everything == sorted(as_tuples(source.get_dataset(TRAIN, False)))
    with pytest.raises(ValueError, match="5 shard files, fewer than the 8 hosts"):
        source.get_dataset(TRAIN, False, shard_info=seqio.ShardInfo(0, 8))


def test_file_shuffle_is_seeded(tmp_path):
    directory = write_scored_dir(str(tmp_path), many_docs(num_shards=6, per_shard=3))
    source = ScoredShardsSource({TRAIN: directory})
    first = as_tuples(source.get_dataset(TRAIN, shuffle=True, seed=3))
    assert first == as_tuples(source.get_dataset(TRAIN, shuffle=True, seed=3))
    assert sorted(first) == sorted(as_tuples(source.get_dataset(TRAIN, shuffle=False)))


def test_reads_through_gfile_urls():
    directory = write_scored_dir("ram://toxjax-scored", [[scored("in memory", 0.4, "m")]])
    source = ScoredShardsSource({TRAIN: directory})
    assert as_tuples(source.get_dataset(TRAIN, False)) == [("in memory", 0.4, "m")]


def test_missing_manifest(tmp_path):
    with pytest.raises(
        ScoredDataError, match=r"manifest\.json: no scoring manifest.*toxjax\.scoring"
    ):
        load_scored_corpus(str(tmp_path))


def test_incomplete_scoring(tmp_path):
    write_scored_dir(str(tmp_path), [[scored("a", 0.1)]], complete=False)
    with pytest.raises(ScoredDataError, match="field 'complete' is false"):
        ScoredShardsSource({TRAIN: str(tmp_path)}).get_dataset(TRAIN)


def test_manifest_without_the_attribute(tmp_path):
    write_scored_dir(str(tmp_path), [[scored("a", 0.1)]])
    with pytest.raises(ScoredDataError, match=r"field 'attributes' lacks 'insult'.*\['toxicity'\]"):
        load_scored_corpus(str(tmp_path), attribute="insult")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (
            '{"text": "b", "scores": {"insult": 0.2}}',
            r"scored-00000\.jsonl:2: field 'scores\.toxicity' missing",
        ),
        ('{"scores": {"toxicity": 0.2}}', r"scored-00000\.jsonl:2: field 'text' missing"),
        (
            '{"text": "b", "scores": {"toxicity": "high"}}',
            r":2: field 'scores\.toxicity' is not a number",
        ),
        ('{"text": "b", "scores": {"toxicity": NaN}}', r":2: field 'scores\.toxicity' is nan"),
        ('{"text": 3, "scores": {"toxicity": 0.1}}', r":2: field 'text' is not a string"),
        ('{"text": "b"}', r":2: field 'scores' missing"),
        ('{"text": "b", ', r":2: invalid JSON"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, bad_line, message):
    directory = write_scored_dir(str(tmp_path), [[scored("a", 0.1)]], manifest_counts=[2])
    with tf.io.gfile.GFile(os.path.join(directory, "shards/scored-00000.jsonl"), "a") as f:
        f.write(bad_line + "\n")
    source = ScoredShardsSource({TRAIN: directory})
    with pytest.raises(ScoredDataError, match=message):
        list(source.iter_split(TRAIN))
    # The tf.data pipeline surfaces the same message.
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        list(source.get_dataset(TRAIN, False).as_numpy_iterator())


def test_truncated_shard_is_detected(tmp_path):
    directory = write_scored_dir(str(tmp_path), [[scored("a", 0.1)]], manifest_counts=[3])
    with pytest.raises(
        ScoredDataError, match="holds 1 records but the manifest lists num_records=3"
    ):
        list(
            iter_scored_records(
                directory + "/shards/scored-00000.jsonl", attribute="toxicity", expected_records=3
            )
        )


def test_missing_shard_file(tmp_path):
    directory = write_scored_dir(str(tmp_path), [[scored("a", 0.1)]])
    os.remove(os.path.join(directory, "shards/scored-00000.jsonl"))
    with pytest.raises(
        ScoredDataError, match="scored-00000.jsonl: scored shard listed in the manifest"
    ):
        list(ScoredShardsSource({TRAIN: directory}).iter_split(TRAIN))


def test_bad_manifest_fields(tmp_path):
    write_scored_dir(str(tmp_path), [[scored("a", 0.1)]])
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["num_records"] = "many"
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        ScoredDataError, match=r"field 'shards\[0\]\.num_records' missing or not a count"
    ):
        load_scored_corpus(str(tmp_path))
    path.write_text("{not json")
    with pytest.raises(ScoredDataError, match="manifest.json: invalid JSON"):
        load_scored_corpus(str(tmp_path))
