"""The line index the scoring job writes next to every shard as it commits it."""

from __future__ import annotations

import io
import json
import os
import pathlib

import numpy as np
import pytest
from job_test import LengthScorer, shard_files

from toxjax.scoring import job, run_manifest
from toxjax.scoring.line_index import INDEX_SUFFIX, LineIndexer, index_bytes, line_index


def test_line_index_skips_blank_lines_and_counts_them():
    data = b'{"a": 1}\n\n{"a": 2}\n   \n{"a": 3}'
    assert line_index(data).tolist() == [[0, 1], [10, 3], [23, 5]]
    assert line_index(b"").shape == (0, 2) and line_index(b"").dtype == np.int64
    loaded = np.load(io.BytesIO(index_bytes(line_index(data))), allow_pickle=False)
    assert loaded.tolist() == line_index(data).tolist()


def test_indexing_the_pieces_equals_indexing_the_whole():
    pieces = [b'{"a": 1}\n\n', b"", b'{"b": 22}\n', b"\n  \n", b'{"c": 333}\n{"d": 4}']
    indexer = LineIndexer()
    for piece in pieces:
        indexer.add(piece)
    whole = line_index(b"".join(pieces))
    assert indexer.index().dtype == np.int64
    np.testing.assert_array_equal(indexer.index(), whole)
    assert LineIndexer().index().shape == (0, 2)
    with pytest.raises(ValueError, match="did not end a line"):
        indexer.add(b'{"e": 5}\n')  # the last piece left its line open


def _indexes(out: str) -> dict[str, np.ndarray]:
    shards = pathlib.Path(out, "shards")
    return {
        path.name.removesuffix(INDEX_SUFFIX): np.load(path, allow_pickle=False)
        for path in sorted(shards.glob("*" + INDEX_SUFFIX))
    }


def test_every_shard_gets_the_index_of_its_bytes(tmp_path):
    """Many batches per shard, and one shard whose records are all skipped (empty file)."""
    path = tmp_path / "in.jsonl"
    texts = [f"document {i} " * (i % 7 + 1) for i in range(25)]
    texts[10:15] = [""] * 5  # shard 2 (5 records per shard): nothing scored
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = str(tmp_path / "out")
    options = job.ScoreOptions(records_per_shard=5, score_batch_size=2, on_bad_record="skip")
    manifest = job.score_corpus(str(path), out, LengthScorer(), options, progress=False)
    assert [entry["path"] for entry in manifest["shards"]] == [
        run_manifest.shard_path(i) for i in range(5)
    ]  # the manifest lists shards, never their indexes
    assert sorted(os.listdir(os.path.join(out, "shards"))) == shard_files(range(5))
    indexes = _indexes(out)
    assert list(indexes) == [f"scored-{i:05d}.jsonl" for i in range(5)]
    for entry in manifest["shards"]:
        data = pathlib.Path(out, entry["path"]).read_bytes()
        index = indexes[os.path.basename(entry["path"])]
        assert index.dtype == np.int64 and len(index) == entry["num_records"]
        np.testing.assert_array_equal(index, line_index(data))
    assert len(indexes["scored-00002.jsonl"]) == 0


def test_overwrite_removes_the_indexes_with_their_shards(tmp_path):
    out = str(tmp_path / "out")
    options = job.ScoreOptions(records_per_shard=10)
    job.score_corpus("demo:50", out, LengthScorer(), options, progress=False)
    assert sorted(os.listdir(os.path.join(out, "shards"))) == shard_files(range(5))
    job.score_corpus("demo:20", out, LengthScorer("2"), options, overwrite=True, progress=False)
    assert sorted(os.listdir(os.path.join(out, "shards"))) == shard_files(range(2))


def test_a_rescored_shard_gets_a_fresh_index(tmp_path):
    out = str(tmp_path / "out")
    options = job.ScoreOptions(records_per_shard=10)
    job.score_corpus("demo:30", out, LengthScorer(), options, progress=False)
    shard = pathlib.Path(out, run_manifest.shard_path(1))
    index_path = pathlib.Path(str(shard) + INDEX_SUFFIX)
    index_path.write_bytes(index_bytes(np.zeros((3, 2), np.int64)))  # stale
    shard.write_bytes(shard.read_bytes() + b'{"damaged": true}\n')
    job.score_corpus("demo:30", out, LengthScorer(), options, progress=False)
    np.testing.assert_array_equal(
        np.load(index_path, allow_pickle=False), line_index(shard.read_bytes())
    )
