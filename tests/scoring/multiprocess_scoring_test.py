"""The scoring command on 2 JAX processes x 4 CPU devices (gloo), as on a pod slice's workers
with the JAX scorer, against the same command on 1 process x 4 devices: the same files. A
process that fails stops the other, and the output they leave is resumed."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from job_test import snapshot

from toxjax.scoring import job, run_manifest
from toxjax.testing.processes import ProcessGroup, command_environment, with_cpu_devices

REPO = str(pathlib.Path(__file__).resolve().parents[2])
NUM_RECORDS, RECORDS_PER_SHARD = 60, 10
# What differs between any two runs: how long each shard took.
TIMINGS = re.compile(rb'"(seconds|scoring_seconds|docs_per_second)": [-+.0-9eE]+')

pytestmark = pytest.mark.slow


def _corpus(path: pathlib.Path) -> str:
    words = ["you", "are", "a", "stupid", "idiot", "the", "garden", "is", "lovely", "today"]
    lines = []
    for i in range(NUM_RECORDS):
        text = " ".join(words[(i + j) % len(words)] for j in range(3 + i % 9))
        lines.append(json.dumps({"id": i, "text": "" if i in (7, 33) else text}))  # 2 skipped
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _files(directory: str) -> dict[str, bytes]:
    """Every file under `directory` by relative path, timings masked."""
    root = pathlib.Path(directory)
    return {
        str(path.relative_to(root)): TIMINGS.sub(rb'"\1": T', path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _environment(tmp_path: pathlib.Path) -> dict[str, str]:
    return command_environment(REPO, str(tmp_path / "jax_cache"))


def test_two_processes_write_the_one_process_output(tmp_path, checkpoint_path):
    corpus = _corpus(tmp_path / "corpus.jsonl")
    env = _environment(tmp_path)

    def command(output_dir: str) -> list[str]:
        return [
            sys.executable, "-m", "toxjax.scoring", f"--input={corpus}",
            f"--output_dir={output_dir}", f"--scorer=detoxify-jax:{checkpoint_path}",
            f"--records_per_shard={RECORDS_PER_SHARD}", "--score_batch_size=4",
            "--on_bad_record=skip", "--noprogress",
        ]  # fmt: skip

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    # The same local devices as each of the two processes: the same batch shapes, same bits.
    one_env = {**env, "JAX_PLATFORMS": "cpu"}
    one_env["XLA_FLAGS"] = with_cpu_devices(env.get("XLA_FLAGS", ""), 4)
    result = subprocess.run(
        command(one), cwd=REPO, env=one_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    group = ProcessGroup(
        command(two), str(tmp_path / "logs"), count=2, devices=4, cwd=REPO, env=env, heartbeat_s=60
    )
    codes, logs = group.wait(300), group.logs()
    assert codes == [0, 0], f"exit codes {codes}:\n" + "\n".join(log[-3000:] for log in logs)
    # Each process scored every other pending shard, and said so.
    assert "process 0 of 2 scored shards [0, 2, 4]" in logs[0]
    assert "process 1 of 2 scored shards [1, 3, 5]" in logs[1]
    one_files, two_files = _files(one), _files(two)
    num_shards = NUM_RECORDS // RECORDS_PER_SHARD
    shards = [f"shards/scored-{i:05d}.jsonl" for i in range(num_shards)]
    assert sorted(one_files) == sorted(
        ["histogram.png", "manifest.json", "summary.json", *shards]
        + [shard + ".index.npy" for shard in shards]
    )  # no lock, notes or temporary files left
    assert sorted(two_files) == sorted(one_files)
    for name in one_files:
        assert two_files[name] == one_files[name], name
    manifest = json.loads(one_files["manifest.json"].replace(b'": T', b'": 0'))
    assert manifest["complete"] and manifest["summary"]["docs_skipped"] == 2


def test_a_failing_process_stops_both_and_a_rerun_resumes_their_shards(tmp_path):
    """A bad record in shard 2 (process 0's second): process 1 finishes shards 1 and 3 (notes),
    process 0 stops; both exit 1. The rerun scores shard 2 alone and equals an uninterrupted
    run."""
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": f"document {i} " * (i % 5 + 1)}) for i in range(40)]
    good, lines[25] = lines[25], json.dumps({"id": 25, "txt": "no text field"})
    path.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "out")
    command = [
        sys.executable, "-m", "toxjax.scoring", f"--input={path}", f"--output_dir={out}",
        "--records_per_shard=10", "--scorer=offline", "--noprogress",
    ]  # fmt: skip
    group = ProcessGroup(
        command, str(tmp_path / "logs"), cwd=REPO, env=_environment(tmp_path), heartbeat_s=60
    )
    codes, logs = group.wait(120), group.logs()
    assert codes == [1, 1], "\n".join(log[-3000:] for log in logs)
    assert f"error: {path}:26: field 'text'" in logs[0]
    assert "process 1 of 2 scored shards [1, 3]" in logs[1]
    assert "failed on process(es) [0]; see their logs" in logs[1]
    assert [e["index"] for e in run_manifest.load_manifest(out)["shards"]] == [0]
    kept = {
        name: os.stat(os.path.join(out, name)).st_mtime_ns
        for name in map(run_manifest.shard_path, (0, 1, 3))
    }
    lines[25] = good  # the same records: the same run
    path.write_text("\n".join(lines) + "\n")
    options = job.ScoreOptions(records_per_shard=10)
    job.score_corpus(str(path), out, "offline", options, progress=False)
    reference = str(tmp_path / "reference")
    job.score_corpus(str(path), reference, "offline", options, progress=False)
    assert snapshot(out) == snapshot(reference)
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in kept} == kept
