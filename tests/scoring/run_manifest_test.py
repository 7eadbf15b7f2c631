"""toxjax.scoring.run_manifest: the manifest, conflicts with other runs, what a rerun resumes."""

from __future__ import annotations

import json
import os

import pytest

from toxjax.scoring import run_manifest
from toxjax.scoring.run_manifest import OutputConflictError

HEADER = {"format_version": 1, "scorer": "length@1", "input": "demo:4", "num_shards": 2}


def _write_shard(output_dir: str, index: int, data: bytes = b'{"text": "x"}\n') -> dict:
    """A finished shard file and its manifest entry."""
    relative = run_manifest.shard_path(index)
    os.makedirs(os.path.join(output_dir, run_manifest.SHARDS_DIR), exist_ok=True)
    with open(os.path.join(output_dir, relative), "wb") as f:
        f.write(data)
    return {"index": index, "path": relative, "num_bytes": len(data)}


def test_fresh_directory_gets_an_empty_manifest(tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=f"no manifest.json in {out}"):
        run_manifest.load_manifest(out)
    assert run_manifest.prepare_output(out, HEADER, overwrite=False) == {}
    assert os.path.isdir(os.path.join(out, "shards"))
    manifest = run_manifest.load_manifest(out)
    assert manifest == {**HEADER, "complete": False, "shards": [], "summary": None}


def test_manifest_lists_shards_in_order_and_is_complete_with_all_of_them(tmp_path):
    out = str(tmp_path)
    one, zero = _write_shard(out, 1), _write_shard(out, 0)
    partial = run_manifest.write_manifest(out, HEADER, {1: one})
    assert partial["complete"] is False and partial["shards"] == [one]
    full = run_manifest.write_manifest(out, HEADER, {1: one, 0: zero}, {"docs_scored": 2})
    assert full["complete"] is True and full["shards"] == [zero, one]
    assert run_manifest.load_manifest(out) == full
    assert run_manifest.prepare_output(out, HEADER, overwrite=False) == {0: zero, 1: one}


def test_other_run_is_a_conflict_naming_what_changed_unless_overwrite(tmp_path):
    out = str(tmp_path)
    entry = _write_shard(out, 0)
    run_manifest.write_manifest(out, HEADER, {0: entry})
    for name in ("summary.json", "histogram.png", "notes.txt", "shards/README"):
        (tmp_path / name).write_text("x")
    other = {**HEADER, "scorer": "length@2", "input": "x" * 200}
    with pytest.raises(OutputConflictError) as info:
        run_manifest.prepare_output(out, other, overwrite=False)
    message = str(info.value)
    assert 'scorer: "length@1" -> "length@2"' in message and "--overwrite" in message
    assert f'input: "demo:4" -> "{"x" * 116}...' in message  # long values are shortened
    assert run_manifest.prepare_output(out, other, overwrite=True) == {}
    assert sorted(os.listdir(out)) == ["manifest.json", "notes.txt", "shards"]
    assert os.listdir(os.path.join(out, "shards")) == ["README"]  # not a shard: kept
    assert run_manifest.load_manifest(out)["scorer"] == "length@2"


def test_shard_files_without_a_manifest_are_a_conflict(tmp_path):
    _write_shard(str(tmp_path), 0)
    with pytest.raises(OutputConflictError, match="holds shard files but .* has no manifest"):
        run_manifest.prepare_output(str(tmp_path), HEADER, overwrite=False)


def test_temp_files_are_deleted_and_damaged_shards_are_not_finished(tmp_path, caplog):
    out = str(tmp_path)
    zero, one = _write_shard(out, 0), _write_shard(out, 1)
    run_manifest.write_manifest(out, HEADER, {0: zero, 1: one})
    with open(os.path.join(out, one["path"]), "ab") as f:
        f.write(b"appended by someone\n")
    (tmp_path / ".manifest.json.tmp-0123").write_text("killed mid-write")
    (tmp_path / "shards" / ".scored-00001.jsonl.tmp-4567").write_text("killed mid-shard")
    assert run_manifest.prepare_output(out, HEADER, overwrite=False) == {0: zero}
    assert "shards/scored-00001.jsonl is missing or damaged" in caplog.text
    assert sorted(os.listdir(out)) == ["manifest.json", "shards"]
    assert sorted(os.listdir(os.path.join(out, "shards"))) == [
        "scored-00000.jsonl",
        "scored-00001.jsonl",
    ]
    assert run_manifest.load_manifest(out)["shards"] == [zero]


def test_worker_notes_are_adopted_for_the_same_run_only(tmp_path):
    out = str(tmp_path)
    assert run_manifest.prepare_output(out, HEADER, overwrite=False) == {}
    zero, one = _write_shard(out, 0), _write_shard(out, 1)
    run_manifest.write_shard_result(out, {**HEADER, "scorer": "other@1"}, zero)
    run_manifest.write_shard_result(out, HEADER, one)
    note = json.loads((tmp_path / "shards" / "scored-00001.jsonl.result.json").read_bytes())
    assert note == {"header_digest": run_manifest.header_digest(HEADER), "entry": one}
    assert run_manifest.prepare_output(out, HEADER, overwrite=False) == {1: one}
    assert run_manifest.load_manifest(out)["shards"] == [one]
    run_manifest.remove_shard_results(out)
    assert sorted(os.listdir(os.path.join(out, "shards"))) == [
        "scored-00000.jsonl",
        "scored-00001.jsonl",
    ]


def test_header_digest_ignores_key_order_and_json_bytes_keep_text_readable():
    reordered = dict(reversed(list(HEADER.items())))
    assert run_manifest.header_digest(reordered) == run_manifest.header_digest(HEADER)
    assert run_manifest.header_digest({**HEADER, "num_shards": 3}) != (
        run_manifest.header_digest(HEADER)
    )
    assert run_manifest.json_bytes({"text": "café"}) == '{"text": "café"}\n'.encode()
