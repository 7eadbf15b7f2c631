"""Parquet input (readers.ParquetCorpus): footer counts, row-group seeks, and records, bad
records and scored shards that match the same records read from JSON Lines."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import pathlib
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpora_test import read_all, read_each_shard_fresh, write_jsonl

from toxjax.scoring import corpora, job, readers, scorer_specs
from toxjax.scoring.corpora import BadRecordError, InputError


def write_parquet(path, records, *, row_group_size=3, schema=None, **kwargs) -> str:
    table = pa.Table.from_pylist(records, schema=schema)
    pq.write_table(table, str(path), row_group_size=row_group_size, **kwargs)
    return str(path)


def rich_docs(prefix: str, n: int) -> list[dict]:
    """Records with every kind of field the JSONL reader passes through: nested, lists, nulls."""
    return [
        {
            "id": f"{prefix}{i}",
            "text": f"document {prefix}{i} " + "word " * (i % 4),
            "meta": {"url": f"https://example.com/{prefix}/{i}", "lang": "en", "score": i / 8},
            "tags": [f"t{j}" for j in range(i % 3)],
            "token_count": 10 + i,
            "note": None if i % 2 else "even",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def offline():
    return scorer_specs.make_scorer("offline")


def test_counts_come_from_the_footer_without_reading_data(tmp_path, monkeypatch):
    write_parquet(tmp_path / "b.parquet", rich_docs("b", 5))
    write_parquet(tmp_path / "a.parquet", rich_docs("a", 7))
    write_parquet(tmp_path / "c.parquet", rich_docs("c", 0))  # a valid file with no rows

    def no_data_reads(*args, **kwargs):
        raise AssertionError("planning read row data")

    for method in ("iter_batches", "read", "read_row_group", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, method, no_data_reads)
    corpus = readers.open_corpus(str(tmp_path / "*.parquet"))
    assert isinstance(corpus, readers.ParquetCorpus)
    plan = corpora.plan_shards(corpus, 4)
    assert [(os.path.basename(s), n) for s, n in plan.sources] == [
        ("a.parquet", 7),
        ("b.parquet", 5),
        ("c.parquet", 0),
    ]
    assert [s.num_records for s in plan.shards] == [4, 4, 4]


@pytest.mark.parametrize("records_per_shard", [1, 2, 4, 5, 100])
def test_range_reads_across_row_groups_and_files_are_the_rows_in_order(tmp_path, records_per_shard):
    a, b = rich_docs("a", 7), rich_docs("b", 5)
    write_parquet(tmp_path / "a.parquet", a, row_group_size=3)  # row groups of 3, 3, 1
    write_parquet(tmp_path / "b.parquet", b, row_group_size=2)
    spec = "parquet:" + str(tmp_path / "*.parquet")
    corpus = readers.open_corpus(spec)
    plan = corpora.plan_shards(corpus, records_per_shard)
    docs = read_all(corpus, plan)
    assert [d.fields for d in docs] == a + b
    assert [d.text for d in docs] == [r["text"] for r in a + b]
    assert [(os.path.basename(d.source), d.line) for d in docs] == [
        ("a.parquet", i + 1) for i in range(7)
    ] + [("b.parquet", i + 1) for i in range(5)]
    assert read_each_shard_fresh(spec, plan) == docs  # each shard alone, as a Beam worker


def test_a_shard_reads_only_the_row_groups_it_needs(tmp_path):
    """Row group 0's first page is corrupted: shards after it still read, shard 0 stops the
    run with an error naming the file and the row group."""
    path = write_parquet(
        tmp_path / "d.parquet",
        rich_docs("d", 9),
        row_group_size=3,
        compression="none",
        use_dictionary=False,
    )
    first_page = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    data = bytearray(pathlib.Path(path).read_bytes())
    data[first_page : first_page + 24] = b"\xff" * 24
    pathlib.Path(path).write_bytes(bytes(data))
    plan = corpora.plan_shards(readers.open_corpus(path), 2)  # shard 1 starts in row group 0
    assert [s.first_record for s in plan.shards] == [0, 2, 4, 6, 8]
    for shard in plan.shards[2:]:  # rows 4-8 (0-based): row groups 1 and 2 only
        late = readers.open_corpus(path)
        ids = [late.decode(raw).fields["id"] for raw in late.read_shard(shard)]
        stop = shard.first_record + shard.num_records
        assert ids == [f"d{i}" for i in range(shard.first_record, stop)]
    for shard in plan.shards[:2]:
        with pytest.raises(
            InputError,
            match=rf"^{re.escape(path)}: unreadable Parquet data in row group 0 \(records 1-3\)",
        ):
            list(readers.open_corpus(path).read_shard(shard))


def test_struct_columns_dotted_fields_and_arrow_types_as_json_values(tmp_path):
    records = [
        {
            "doc": {"body": {"text": "nested text"}, "title": "t"},
            "when": datetime.datetime(2024, 5, 1, 12, 30),
            "day": datetime.date(2024, 5, 1),
            "price": decimal.Decimal("1.50"),
            "blob": b"\xff\x00",
            "raw": b"plain",
            "attrs": [("k", 1)],
        }
    ]
    schema = pa.schema(
        [
            (
                "doc",
                pa.struct([("body", pa.struct([("text", pa.string())])), ("title", pa.string())]),
            ),
            ("when", pa.timestamp("us")),
            ("day", pa.date32()),
            ("price", pa.decimal128(5, 2)),
            ("blob", pa.binary()),
            ("raw", pa.binary()),
            ("attrs", pa.map_(pa.string(), pa.int64())),
        ]
    )
    path = write_parquet(tmp_path / "n.parquet", records, schema=schema)
    corpus = readers.open_corpus(path, text_field="doc.body.text")
    (doc,) = read_all(corpus, corpora.plan_shards(corpus, 10))
    assert doc.text == "nested text"
    assert doc.fields == {
        "doc": {"body": {"text": "nested text"}, "title": "t"},
        "when": "2024-05-01T12:30:00",
        "day": "2024-05-01",
        "price": "1.50",
        "blob": {"bytes_base64": "/wA="},
        "raw": "plain",
        "attrs": [["k", 1]],
    }
    json.dumps(doc.fields)
    # A binary text column is decoded like a TFRecord bytes feature.
    assert read_all(*_corpus_and_plan(path, text_field="raw"))[0].text == "plain"


def _corpus_and_plan(spec, **kwargs):
    corpus = readers.open_corpus(spec, **kwargs)
    return corpus, corpora.plan_shards(corpus, 10)


def _shard_bytes(output_dir) -> dict[str, bytes]:
    shards = os.path.join(output_dir, "shards")
    return {name: pathlib.Path(shards, name).read_bytes() for name in sorted(os.listdir(shards))}


def test_scored_shards_equal_those_of_the_same_records_as_jsonl(tmp_path, offline):
    records = rich_docs("s", 23)
    records[5]["text"] = None  # bad records are skipped the same way too
    records[11]["text"] = "   "
    (tmp_path / "pq").mkdir()
    (tmp_path / "js").mkdir()
    write_parquet(tmp_path / "pq" / "p0.parquet", records[:13], row_group_size=4)
    write_parquet(tmp_path / "pq" / "p1.parquet", records[13:], row_group_size=4)
    write_jsonl(tmp_path / "js" / "p0.jsonl", records[:13])
    write_jsonl(tmp_path / "js" / "p1.jsonl.gz", records[13:], compress=True)
    options = job.ScoreOptions(records_per_shard=6, score_batch_size=4, on_bad_record="skip")
    manifests = {}
    for name, spec in (("pq", "pq/*.parquet"), ("js", "js/p0.jsonl,js/p1.jsonl.gz")):
        spec = ",".join(str(tmp_path / p) for p in spec.split(","))
        out = str(tmp_path / f"out-{name}")
        manifests[name] = job.score_corpus(spec, out, offline, options, progress=False)
    assert _shard_bytes(tmp_path / "out-pq") == _shard_bytes(tmp_path / "out-js")
    assert len(_shard_bytes(tmp_path / "out-pq")) == 8  # 4 shards and their line indexes
    summaries = [manifests[name]["summary"] for name in ("pq", "js")]
    for summary in summaries:
        for example in summary["skipped_examples"]:
            example["file"] = os.path.basename(example["file"]).split(".")[0]
        for key in ("input", "seconds", "scoring_seconds", "docs_per_second"):
            summary.pop(key, None)
    assert summaries[0] == summaries[1]
    assert summaries[0]["skipped_by_reason"] == {"empty_text": 1, "non_string_field": 1}


def test_a_truncated_parquet_file_is_an_error_naming_it(tmp_path, offline):
    write_parquet(tmp_path / "a.parquet", rich_docs("a", 4))
    cut = write_parquet(tmp_path / "b.parquet", rich_docs("b", 4))
    pathlib.Path(cut).write_bytes(pathlib.Path(cut).read_bytes()[:-12])
    message = rf"^{re.escape(cut)}: not a Parquet file or truncated \(footer unreadable\): "
    with pytest.raises(InputError, match=message):
        corpora.plan_shards(readers.open_corpus(str(tmp_path / "*.parquet")), 10)
    with pytest.raises(InputError, match=message):
        job.score_corpus(
            str(tmp_path / "*.parquet"), str(tmp_path / "out"), offline, job.ScoreOptions()
        )


def test_an_empty_file_or_a_directory_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.parquet: not a Parquet file or truncated"):
        corpora.plan_shards(readers.open_corpus(str(tmp_path / "empty.parquet")), 10)
    (tmp_path / "spark.parquet").mkdir()  # a partitioned dataset's folder
    with pytest.raises(InputError, match=r"spark\.parquet: a directory; name its files"):
        corpora.plan_shards(readers.open_corpus(str(tmp_path / "spark.parquet")), 10)


def _invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A string column holding bytes that are not UTF-8 (writers that skip the check exist)."""
    return pa.array(values, pa.binary()).view(pa.string())


BAD_PARQUET_CASES = [
    # (text column, reason, field)
    (pa.array(["good one", None, "good two"]), corpora.NON_STRING_FIELD, "text"),
    (pa.array([1, 2, 3]), corpora.NON_STRING_FIELD, "text"),
    (pa.array(["good one", " \n ", "good two"]), corpora.EMPTY_TEXT, "text"),
    (pa.array(["good one", "y" * 101, "good two"]), corpora.TOO_LONG, "text"),
    (_invalid_utf8_strings([b"good one", b"caf\xe9", b"good two"]), corpora.INVALID_UTF8, "text"),
    (pa.array([b"good one", b"\xc3\x28", b"good two"]), corpora.INVALID_UTF8, "text"),
]


@pytest.mark.parametrize(("column", "reason", "field"), BAD_PARQUET_CASES)
def test_bad_parquet_record_error_names_file_row_and_field(tmp_path, column, reason, field):
    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"id": [1, 2, 3], "text": column}), path, row_group_size=2)
    corpus = readers.open_corpus(path, max_doc_chars=100)
    raws = list(corpus.read_shard(corpora.plan_shards(corpus, 10).shards[0]))
    assert len(raws) == 3
    if reason != corpora.NON_STRING_FIELD or column.null_count:
        assert [corpus.decode(raws[i]).text for i in (0, 2)] == ["good one", "good two"]
    with pytest.raises(BadRecordError) as info:
        corpus.decode(raws[1])
    assert (info.value.file, info.value.line, info.value.field) == (path, 2, field)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{path}:2: field 'text': {reason}")


def test_invalid_utf8_in_another_column_names_the_nested_field(tmp_path):
    src = _invalid_utf8_strings([b"ok", b"\xff\xfe", b"ok"])
    meta = pa.StructArray.from_arrays([src], names=["src"])
    path = str(tmp_path / "meta.parquet")
    pq.write_table(pa.table({"text": ["a", "b", "c"], "meta": meta}), path)
    corpus = readers.open_corpus(path)
    raws = list(corpus.read_shard(corpora.plan_shards(corpus, 10).shards[0]))
    assert corpus.decode(raws[2]).fields == {"text": "c", "meta": {"src": "ok"}}
    with pytest.raises(BadRecordError) as info:
        corpus.decode(raws[1])
    assert (info.value.line, info.value.field, info.value.reason) == (2, "meta.src", "invalid_utf8")


@pytest.mark.parametrize("case", ["null_text", "missing_column"])
def test_bad_records_stop_or_are_skipped_as_in_jsonl(tmp_path, case, offline):
    if case == "null_text":
        records = [{"id": i, "text": None if i == 2 else f"doc {i}"} for i in range(4)]
    else:  # no text column at all: every record lacks the field
        records = [{"id": i, "body": f"doc {i}"} for i in range(4)]
    inputs = {
        "pq": write_parquet(tmp_path / "in.parquet", records),
        "js": write_jsonl(tmp_path / "in.jsonl", records),
    }
    errors, results = {}, {}
    for name, spec in inputs.items():
        with pytest.raises(BadRecordError) as info:
            job.score_corpus(spec, str(tmp_path / f"strict-{name}"), offline, job.ScoreOptions())
        errors[name] = info.value.to_json() | {"file": os.path.basename(info.value.file)}
        options = job.ScoreOptions(records_per_shard=3, on_bad_record="skip")
        out = str(tmp_path / f"lenient-{name}")
        summary = job.score_corpus(spec, out, offline, options, progress=False)["summary"]
        results[name] = (summary["docs_scored"], summary["skipped_by_reason"])
        if summary["docs_scored"]:
            results[name] += (_shard_bytes(out),)
    assert {k: e.pop("file") for k, e in errors.items()} == {"pq": "in.parquet", "js": "in.jsonl"}
    assert errors["pq"] == errors["js"]
    assert results["pq"] == results["js"]
    if case == "null_text":
        assert errors["pq"] == {
            "line": 3,
            "field": "text",
            "reason": "non_string_field",
            "detail": "expected a string, got null",
        }
        assert results["pq"][:2] == (3, {"non_string_field": 1})
    else:
        assert (errors["pq"]["line"], errors["pq"]["reason"]) == (1, "missing_field")
        assert results["pq"] == (0, {"missing_field": 4})


def test_parquet_input_specs():
    assert isinstance(readers.open_corpus("data/*.parquet"), readers.ParquetCorpus)
    assert isinstance(readers.open_corpus("a.parquet,b/*.parquet"), readers.ParquetCorpus)
    assert isinstance(readers.open_corpus("parquet:data/part-*"), readers.ParquetCorpus)
    assert isinstance(readers.open_corpus("a.parquet,b.jsonl"), readers.JsonlCorpus)
