"""The Beam scoring pipeline (DirectRunner) writes exactly what the local job writes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest
from job_test import LengthScorer, leftover_temp_files, shard_files, snapshot

from toxjax.scoring import beam_job, job, run_manifest


def _write_inputs(directory) -> str:
    """Two JSONL files (one gzipped) with a few bad records, as a glob."""
    os.makedirs(directory)
    lines_a = [json.dumps({"id": i, "text": f"plain doc {i} " * (i % 5 + 1)}) for i in range(23)]
    lines_a[4] = '{"id": 4, "text": ""}'
    lines_a[17] = '{"id": 17, "text": "broken'
    lines_b = [json.dumps({"id": 100 + i, "text": f"packed damn doc {i}"}) for i in range(16)]
    lines_b[9] = '{"id": 109}'
    with open(os.path.join(directory, "a.jsonl"), "w") as f:
        f.write("\n".join(lines_a) + "\n")
    with gzip.open(os.path.join(directory, "b.jsonl.gz"), "wt") as f:
        f.write("\n".join(lines_b) + "\n")
    return os.path.join(directory, "*.jsonl*")


OPTIONS = dict(records_per_shard=6, on_bad_record="skip", score_batch_size=4)


def test_direct_runner_output_equals_local_output_record_for_record(tmp_path):
    pattern = _write_inputs(tmp_path / "in")
    local = str(tmp_path / "local")
    beam = str(tmp_path / "beam")
    local_manifest = job.score_corpus(
        pattern, local, "offline", job.ScoreOptions(**OPTIONS), progress=False
    )
    beam_manifest = beam_job.score_corpus_beam(
        pattern, beam, "offline", job.ScoreOptions(**OPTIONS), runner="DirectRunner"
    )
    assert beam_manifest == run_manifest.load_manifest(beam) and beam_manifest["complete"]
    assert len(beam_manifest["shards"]) == 7  # 39 records / 6
    assert beam_manifest["summary"]["skipped_by_reason"] == {
        "empty_text": 1,
        "malformed_json": 1,
        "missing_field": 1,
    }
    assert [e["path"] for e in beam_manifest["shards"]] == [
        e["path"] for e in local_manifest["shards"]
    ]
    assert snapshot(beam) == snapshot(local)
    assert os.path.exists(os.path.join(beam, "histogram.png"))
    assert leftover_temp_files(beam) == []
    assert not [n for n in os.listdir(os.path.join(beam, "shards")) if "result" in n]


def test_beam_run_finishes_an_interrupted_local_run(tmp_path):
    pattern = _write_inputs(tmp_path / "in")
    reference = str(tmp_path / "reference")
    job.score_corpus(pattern, reference, "offline", job.ScoreOptions(**OPTIONS), progress=False)
    out = str(tmp_path / "out")
    job.score_corpus(pattern, out, "offline", job.ScoreOptions(**OPTIONS), progress=False)
    # Forget shards 2 and 5, as if the run had been killed before them.
    manifest = run_manifest.load_manifest(out)
    kept = {e["index"]: e for e in manifest["shards"] if e["index"] not in (2, 5)}
    header = {k: v for k, v in manifest.items() if k not in ("complete", "shards", "summary")}
    run_manifest.write_manifest(out, header, kept)
    for name in ("summary.json", "histogram.png", "shards/scored-00005.jsonl"):
        os.remove(os.path.join(out, name))
    mtimes = {i: os.stat(os.path.join(out, e["path"])).st_mtime_ns for i, e in kept.items()}
    beam_job.score_corpus_beam(
        pattern, out, "offline", job.ScoreOptions(**OPTIONS), runner="DirectRunner"
    )
    assert snapshot(out) == snapshot(reference)
    assert {i: os.stat(os.path.join(out, e["path"])).st_mtime_ns for i, e in kept.items()} == mtimes


def test_shards_finished_by_workers_of_a_dead_job_are_adopted(tmp_path):
    reference = str(tmp_path / "reference")
    job.score_corpus(
        "demo:400",
        reference,
        LengthScorer(),
        job.ScoreOptions(records_per_shard=100),
        progress=False,
    )
    out = str(tmp_path / "out")
    options = job.ScoreOptions(records_per_shard=100)
    run = job.start_run("demo:400", out, LengthScorer(), options, overwrite=False)
    for shard in (run.plan.shards[1], run.plan.shards[3]):  # what two workers finished
        entry = job.score_shard(shard, run.corpus, LengthScorer(), out, options)
        run_manifest.write_shard_result(out, run.header, entry)
    assert run_manifest.load_manifest(out)["shards"] == []  # the job died before its last step
    resumed = LengthScorer()
    job.score_corpus(
        "demo:400", out, resumed, job.ScoreOptions(records_per_shard=100), progress=False
    )
    assert resumed.texts == 200
    assert snapshot(out) == snapshot(reference)
    assert sorted(os.listdir(os.path.join(out, "shards"))) == shard_files(range(4))


def test_beam_needs_a_scorer_spec_workers_can_rebuild(tmp_path):
    with pytest.raises(TypeError, match="scorer spec"):
        beam_job.score_corpus_beam("demo:10", str(tmp_path), LengthScorer())


@pytest.mark.slow
def test_cli_runs_beam_with_pass_through_pipeline_options(tmp_path):
    pattern = _write_inputs(tmp_path / "in")
    local = str(tmp_path / "local")
    job.score_corpus(pattern, local, "offline", job.ScoreOptions(**OPTIONS), progress=False)
    beam = str(tmp_path / "beam")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "toxjax.scoring",
            f"--input={pattern}",
            f"--output_dir={beam}",
            "--runner=DirectRunner",
            "--records_per_shard=6",
            "--on_bad_record=skip",
            "--score_batch_size=4",
            "--direct_num_workers=2",
            "--direct_running_mode=multi_threading",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Scored 36 of 39 docs" in result.stdout and "missing_field: 1" in result.stdout
    assert snapshot(beam) == snapshot(local)
