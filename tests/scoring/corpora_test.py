"""Shard plans, field access, input specs and the shared read path of toxjax.scoring.corpora."""

from __future__ import annotations

import gzip
import json

import pytest

from toxjax.scoring import corpora, readers
from toxjax.scoring.corpora import BadRecordError, InputError


def write_jsonl(path, records, *, trailing_newline=True, compress=False):
    data = "\n".join(json.dumps(r) for r in records) + ("\n" if trailing_newline else "")
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(data.encode("utf-8"))
    return str(path)


def numbered_docs(prefix, n):
    return [{"id": f"{prefix}{i}", "text": f"document {prefix}{i}"} for i in range(n)]


def read_all(corpus, plan):
    return [corpus.decode(raw) for shard in plan.shards for raw in corpus.read_shard(shard)]


def read_each_shard_fresh(spec, plan, **kwargs):
    """Every shard read by a fresh corpus, last shard first (as Beam workers may)."""
    out = {}
    for shard in reversed(plan.shards):
        corpus = readers.open_corpus(spec, **kwargs)
        out[shard.index] = [corpus.decode(raw) for raw in corpus.read_shard(shard)]
        corpus.close()
    return [doc for index in sorted(out) for doc in out[index]]


def test_jsonl_glob_plans_fixed_size_shards_across_sorted_files(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", numbered_docs("b", 4), trailing_newline=False)
    write_jsonl(tmp_path / "a.jsonl", numbered_docs("a", 3))
    spec = str(tmp_path / "*.jsonl")
    corpus = readers.open_corpus(spec)
    plan = corpora.plan_shards(corpus, 2)
    assert [s for s, _ in plan.sources] == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert [n for _, n in plan.sources] == [3, 4]
    assert [s.num_records for s in plan.shards] == [2, 2, 2, 1]
    assert [s.first_record for s in plan.shards] == [0, 2, 4, 6]
    assert len(plan.shards[1].segments) == 2  # a.jsonl line 3 + b.jsonl line 1
    docs = read_all(corpus, plan)
    assert [d.fields["id"] for d in docs] == [f"a{i}" for i in range(3)] + [
        f"b{i}" for i in range(4)
    ]
    assert [(d.source.rsplit("/", 1)[1], d.line) for d in docs][2:4] == [
        ("a.jsonl", 3),
        ("b.jsonl", 1),
    ]
    assert read_each_shard_fresh(spec, plan) == docs
    assert readers.open_corpus("jsonl:" + spec).sources() == corpus.sources()


def test_text_field_selection_and_dotted_nested_paths(tmp_path):
    path = write_jsonl(
        tmp_path / "n.jsonl",
        [{"prompt": {"text": "nested one"}, "body": "flat"}, {"prompt.text": "literal key"}],
    )
    corpus = readers.open_corpus(path, text_field="prompt.text")
    docs = read_all(corpus, corpora.plan_shards(corpus, 10))
    assert [d.text for d in docs] == ["nested one", "literal key"]
    corpus = readers.open_corpus(path, text_field="body")
    plan = corpora.plan_shards(corpus, 10)
    raws = list(corpus.read_shard(plan.shards[0]))
    assert corpus.decode(raws[0]).text == "flat"
    with pytest.raises(BadRecordError, match=r"n\.jsonl:2: field 'body': missing_field"):
        corpus.decode(raws[1])


def test_bad_input_specs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no input files match"):
        readers.open_corpus(str(tmp_path / "missing-*.jsonl")).sources()
    with pytest.raises(InputError, match="tfds:<name>"):
        readers.open_corpus("tfds:imdb_reviews")
    with pytest.raises(InputError, match="demo:<num_docs>"):
        readers.open_corpus("demo:many")
    with pytest.raises(ValueError, match="records_per_shard"):
        corpora.plan_shards(readers.open_corpus("demo:3"), 0)


def test_input_that_shrinks_after_planning_is_an_error_not_a_silent_drop(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", numbered_docs("c", 6))
    corpus = readers.open_corpus(path)
    plan = corpora.plan_shards(corpus, 4)
    write_jsonl(tmp_path / "c.jsonl", numbered_docs("c", 5))
    with pytest.raises(InputError, match="ended after 5 records"):
        read_all(corpus, plan)
