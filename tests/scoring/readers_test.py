"""The input formats of toxjax.scoring.readers (JSONL, TFRecord, TFDS, demo), via open_corpus."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from corpora_test import numbered_docs, read_all, read_each_shard_fresh, write_jsonl

from toxjax.scoring import corpora, readers
from toxjax.scoring.corpora import BadRecordError, InputError


@pytest.mark.parametrize("records_per_shard", [1, 3, 1000])
def test_jsonl_gz_reads_like_plain_and_shards_read_alone(tmp_path, records_per_shard):
    records = numbered_docs("x", 10)
    plain = write_jsonl(tmp_path / "p.jsonl", records)
    packed = write_jsonl(tmp_path / "p.jsonl.gz", records, compress=True)
    results = []
    for spec in (plain, packed):
        corpus = readers.open_corpus(spec)
        plan = corpora.plan_shards(corpus, records_per_shard)
        sequential = read_all(corpus, plan)
        assert read_each_shard_fresh(spec, plan) == sequential
        results.append([(d.fields, d.text, d.line) for d in sequential])
    assert results[0] == results[1] == [(r, r["text"], i + 1) for i, r in enumerate(records)]


BAD_JSONL_CASES = [
    # (line bytes, reason, field)
    (b'{"text": "unterminated', corpora.MALFORMED_JSON, None),
    (b"   ", corpora.MALFORMED_JSON, None),
    (b"[1, 2]", corpora.NOT_AN_OBJECT, None),
    (b'{"body": "no text here"}', corpora.MISSING_FIELD, "text"),
    (b'{"text": 5}', corpora.NON_STRING_FIELD, "text"),
    (b'{"text": null}', corpora.NON_STRING_FIELD, "text"),
    (b'{"text": ""}', corpora.EMPTY_TEXT, "text"),
    (b'{"text": " \\n\\t "}', corpora.EMPTY_TEXT, "text"),
    (b'{"text": "caf\xe9 au lait"}', corpora.INVALID_UTF8, "text"),
    (b'{"text": "fine", "meta": {"src": "\xff\xfe"}}', corpora.INVALID_UTF8, "meta.src"),
    (b'{"text": "x\\ud800y"}', corpora.INVALID_UTF8, "text"),
    (b'{"text": "' + b"long " * 30 + b'"}', corpora.TOO_LONG, "text"),
]


@pytest.mark.parametrize(("line", "reason", "field"), BAD_JSONL_CASES)
def test_bad_jsonl_record_error_names_file_line_and_field(tmp_path, line, reason, field):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "good one"}\n' + line + b'\n{"text": "good two"}\n')
    corpus = readers.open_corpus(str(path), max_doc_chars=100)
    plan = corpora.plan_shards(corpus, 10)
    assert plan.num_records == 3  # a bad line is still a record of the partition
    raws = list(corpus.read_shard(plan.shards[0]))
    assert corpus.decode(raws[0]).text == "good one"
    assert corpus.decode(raws[2]).text == "good two"
    with pytest.raises(BadRecordError) as info:
        corpus.decode(raws[1])
    error = info.value
    assert (error.file, error.line, error.field, error.reason) == (str(path), 2, field, reason)
    assert str(error).startswith(f"{path}:2: ")
    if field is not None:
        assert f"field {field!r}" in str(error)
    copy = pickle.loads(pickle.dumps(error))  # survives being reported by a Beam worker
    assert (copy.file, copy.line, copy.field, copy.reason, str(copy)) == (
        error.file,
        error.line,
        error.field,
        error.reason,
        str(error),
    )


def _example(**features):
    feature = {}
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, bytes) for v in values):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif all(isinstance(v, int) for v in values):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_tfrecord(path, payloads, compress=False):
    options = tf.io.TFRecordOptions(compression_type="GZIP" if compress else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for payload in payloads:
            writer.write(payload)
    return str(path)


@pytest.mark.parametrize("compress", [False, True])
def test_tfrecord_reader_keeps_features_as_json_values(tmp_path, compress):
    suffix = ".tfrecord.gz" if compress else ".tfrecord"
    _write_tfrecord(
        tmp_path / f"a{suffix}",
        [_example(text=f"doc {i}".encode(), id=i, weight=0.5, tags=[b"x", b"y"]) for i in range(5)],
        compress,
    )
    _write_tfrecord(tmp_path / f"b{suffix}", [_example(text=b"last", blob=b"\xff\x00")], compress)
    spec = "tfrecord:" + str(tmp_path / f"*{suffix}")
    corpus = readers.open_corpus(spec)
    plan = corpora.plan_shards(corpus, 2)
    assert [n for _, n in plan.sources] == [5, 1]
    docs = read_all(corpus, plan)
    assert [d.text for d in docs] == [f"doc {i}" for i in range(5)] + ["last"]
    assert docs[3].fields == {"id": 3, "tags": ["x", "y"], "text": "doc 3", "weight": 0.5}
    assert docs[3].line == 4
    assert docs[5].fields["blob"] == {"bytes_base64": "/wA="}
    json.dumps([d.fields for d in docs])  # every value is JSON-able
    assert read_each_shard_fresh(spec, plan) == docs
    # Unprefixed globs of .tfrecord files are read as TFRecord too.
    assert isinstance(readers.open_corpus(str(tmp_path / f"*{suffix}")), readers.TFRecordCorpus)


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        (b"\x08\x96\x01 not a proto", corpora.MALFORMED_EXAMPLE, None),
        (_example(body=b"no text"), corpora.MISSING_FIELD, "text"),
        (_example(text=7), corpora.NON_STRING_FIELD, "text"),
        (_example(text=[b"a", b"b"]), corpora.NON_STRING_FIELD, "text"),
        (_example(text=b"\xc3\x28 broken"), corpora.INVALID_UTF8, "text"),
        (_example(text=b"   "), corpora.EMPTY_TEXT, "text"),
        (_example(text=b"y" * 101), corpora.TOO_LONG, "text"),
    ],
)
def test_bad_tfrecord_record_error_names_file_record_and_field(tmp_path, payload, reason, field):
    path = _write_tfrecord(tmp_path / "bad.tfrecord", [_example(text=b"good"), payload])
    corpus = readers.open_corpus("tfrecord:" + path, max_doc_chars=100)
    raws = list(corpus.read_shard(corpora.plan_shards(corpus, 10).shards[0]))
    assert corpus.decode(raws[0]).text == "good"
    with pytest.raises(BadRecordError) as info:
        corpus.decode(raws[1])
    assert (info.value.file, info.value.line, info.value.field) == (path, 2, field)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{path}:2: ")


class ToxjaxTinyCorpus(tfds.core.GeneratorBasedBuilder):
    """A real (tiny) TFDS dataset, prepared offline, so slicing and metadata are exercised."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            disable_shuffling=True,  # keep the generation order: ids read back in order
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "id": np.int64,
                    "meta": tfds.features.FeaturesDict({"source": tfds.features.Text()}),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(0, 11), "test": self._generate_examples(100, 4)}

    def _generate_examples(self, first, n):
        for i in range(first, first + n):
            text = "   " if i == 5 else f"tfds doc {i}"  # one empty text, to be skipped
            yield i, {"text": text, "id": i, "meta": {"source": f"src {i}"}}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("toxjax_tiny_corpus", data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_reader_reads_a_prepared_split_by_absolute_slices(tiny_tfds_dir):
    spec = "tfds:toxjax_tiny_corpus:train[2:9]+test"
    corpus = readers.open_corpus(spec, tfds_data_dir=tiny_tfds_dir)
    plan = corpora.plan_shards(corpus, 3)
    assert plan.num_records == 11 and len(plan.shards) == 4
    docs, skipped = [], []
    for shard in plan.shards:
        for raw in corpus.read_shard(shard):
            try:
                docs.append(corpus.decode(raw))
            except BadRecordError as e:
                skipped.append(e)
    assert [d.fields["id"] for d in docs] == [2, 3, 4, 6, 7, 8, 100, 101, 102, 103]
    assert docs[0].fields == {"id": 2, "meta": {"source": "src 2"}, "text": "tfds doc 2"}
    assert [(e.line, e.field, e.reason) for e in skipped] == [(4, "text", corpora.EMPTY_TEXT)]
    # A fresh reader per shard (Beam) sees the same records.
    fresh = []
    for shard in plan.shards:
        reader = readers.open_corpus(spec, tfds_data_dir=tiny_tfds_dir, text_field="meta.source")
        fresh += [reader.decode(raw).text for raw in reader.read_shard(shard)]
    assert fresh == [f"src {i}" for i in [2, 3, 4, 5, 6, 7, 8, 100, 101, 102, 103]]


def test_tfds_never_downloads_unless_asked(tmp_path):
    spec = "tfds:toxjax_tiny_corpus:test"
    corpus = readers.open_corpus(spec, tfds_data_dir=str(tmp_path))
    with pytest.raises(InputError, match="--tfds_download"):
        corpora.plan_shards(corpus, 10)
    corpus = readers.open_corpus(spec, tfds_data_dir=str(tmp_path), tfds_download=True)
    assert corpora.plan_shards(corpus, 10).num_records == 4


def test_tfds_reader_under_mock_data_counts_by_iteration():
    spec = "tfds:imdb_reviews:train"
    with tfds.testing.mock_data(num_examples=5):
        corpus = readers.open_corpus(spec)
        plan = corpora.plan_shards(corpus, 2)
        assert plan.num_records == 5 and [s.num_records for s in plan.shards] == [2, 2, 1]
        docs = read_all(corpus, plan)
        assert read_each_shard_fresh(spec, plan) == docs
    assert len(docs) == 5 and all(isinstance(d.text, str) and d.text.strip() for d in docs)
    assert set(docs[0].fields) == {"text", "label"} and isinstance(docs[0].fields["label"], int)


def test_demo_corpus_input():
    corpus = readers.open_corpus("demo:25")
    plan = corpora.plan_shards(corpus, 10)
    docs = read_all(corpus, plan)
    assert [d.fields["id"] for d in docs] == [f"demo-{i:06d}" for i in range(25)]
    assert plan.sources == (("demo:25", 25),)
    assert corpora.plan_shards(readers.open_corpus("demo"), 1000).num_records == 4000


@pytest.mark.parametrize("spec", ["{dir}/empty.jsonl", "{dir}/*.jsonl"])
def test_an_input_with_no_records_is_an_error_naming_its_files(tmp_path, spec):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    corpus = readers.open_corpus(spec.format(dir=tmp_path))
    with pytest.raises(InputError, match=r"empty\.jsonl: empty: the input holds no records"):
        corpora.plan_shards(corpus, 10)


def test_a_missing_input_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"missing\.jsonl"):
        readers.open_corpus(str(tmp_path / "missing.jsonl")).sources()
