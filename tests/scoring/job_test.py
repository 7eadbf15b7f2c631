"""The local scoring job: output layout, summary, resumability, reruns and bad records."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np
import pytest

from toxjax import fileio, workdir_lock
from toxjax.datasets import template_corpus
from toxjax.scoring import job, run_manifest, scorer_specs, scorers
from toxjax.scoring.corpora import BadRecordError
from toxjax.scoring.line_index import INDEX_SUFFIX


class LengthScorer(scorers.Scorer):
    """Deterministic two-attribute scorer spread over [0, 1]; counts the texts it scores."""

    name, version, attributes = "length", "1", ("toxicity", "insult")

    def __init__(self, version: str = "1"):
        self.version = version
        self.calls = 0
        self.texts = 0

    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.texts += len(texts)
        toxicity = np.asarray([(len(t) % 97) / 96 for t in texts], np.float32)
        return {"toxicity": toxicity, "insult": (1.0 - toxicity).astype(np.float32)}


class InterruptAfter(LengthScorer):
    """Dies (like Ctrl-C) on its `limit`-th call, mid-shard."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def score(self, texts):
        if self.calls + 1 == self.limit:
            raise KeyboardInterrupt
        return super().score(texts)


@pytest.fixture(scope="module")
def offline():
    return scorer_specs.make_scorer("offline")


RUNTIME_KEYS = {"seconds", "scoring_seconds", "docs_per_second"}


def _without_runtimes(value):
    if isinstance(value, dict):
        return {k: _without_runtimes(v) for k, v in value.items() if k not in RUNTIME_KEYS}
    if isinstance(value, list):
        return [_without_runtimes(v) for v in value]
    return value


def snapshot(output_dir) -> dict:
    """Everything a run produces, minus timings: shard bytes, manifest, summary."""
    shards_dir = os.path.join(output_dir, "shards")
    files = {name: pathlib.Path(shards_dir, name).read_bytes() for name in os.listdir(shards_dir)}
    manifest = _without_runtimes(run_manifest.load_manifest(str(output_dir)))
    with open(os.path.join(output_dir, "summary.json")) as f:
        summary = _without_runtimes(json.load(f))
    return {"shards": files, "manifest": manifest, "summary": summary}


def shard_files(indices) -> list[str]:
    """The sorted names of finished shards: each with its line index."""
    names = [f"scored-{i:05d}.jsonl" for i in indices]
    return sorted(names + [name + INDEX_SUFFIX for name in names])


def leftover_temp_files(output_dir) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(output_dir)
        for name in names
        if ".tmp-" in name
    ]


def _records(output_dir, manifest) -> list[dict]:
    records = []
    for entry in manifest["shards"]:
        with open(os.path.join(output_dir, entry["path"]), encoding="utf-8") as f:
            records += [json.loads(line) for line in f]
    return records


def test_output_layout_keeps_fields_and_adds_scores(tmp_path, offline):
    out = str(tmp_path / "out")
    manifest = job.score_corpus(
        "demo:250",
        out,
        offline,
        job.ScoreOptions(records_per_shard=100, score_batch_size=64),
        progress=False,
    )
    assert manifest["complete"] is True
    assert manifest["scorer"] == offline.scorer_id and manifest["attributes"] == ["toxicity"]
    assert manifest["input"] == "demo:250" and manifest["text_field"] == "text"
    assert [e["path"] for e in manifest["shards"]] == [
        f"shards/scored-{i:05d}.jsonl" for i in range(3)
    ]
    assert [e["num_records"] for e in manifest["shards"]] == [100, 100, 50]
    assert [e["num_skipped"] for e in manifest["shards"]] == [0, 0, 0]
    for entry in manifest["shards"]:
        data = pathlib.Path(out, entry["path"]).read_bytes()
        assert entry["num_bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    records = _records(out, manifest)
    originals = template_corpus.generate(250)
    assert [{k: r[k] for k in ("id", "text", "register")} for r in records] == originals
    assert all(r["scorer"] == offline.scorer_id for r in records)
    expected = offline.score([d["text"] for d in originals])["toxicity"]
    np.testing.assert_allclose([r["scores"]["toxicity"] for r in records], expected, rtol=1e-6)
    assert list(records[0]) == ["id", "text", "register", "scores", "scorer"]
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == manifest["summary"]
    with open(os.path.join(out, "histogram.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert manifest == run_manifest.load_manifest(out)
    assert leftover_temp_files(out) == []


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_summary_fraction_above_threshold_and_histogram_are_exact(tmp_path, threshold):
    out = str(tmp_path / "out")
    manifest = job.score_corpus(
        "demo:300",
        out,
        LengthScorer(),
        job.ScoreOptions(records_per_shard=70, threshold=threshold),
        progress=False,
    )
    summary = manifest["summary"]
    records = _records(out, manifest)
    assert summary["docs_scored"] == len(records) == 300 and summary["docs_skipped"] == 0
    for attribute in ("toxicity", "insult"):
        values = np.asarray([r["scores"][attribute] for r in records])
        assert summary["num_above_threshold"][attribute] == int(np.sum(values > threshold))
        assert summary["fraction_above_threshold"][attribute] == pytest.approx(
            np.mean(values > threshold)
        )
        assert summary["mean"][attribute] == pytest.approx(values.mean())
        counts = np.histogram(values, bins=50, range=(0.0, 1.0))[0]
        assert summary["histogram"]["counts"][attribute] == counts.tolist()
    assert summary["threshold"] == threshold and summary["attribute"] == "toxicity"


def test_rerun_on_complete_output_is_a_noop(tmp_path):
    out = str(tmp_path / "out")
    job.score_corpus(
        "demo:200", out, LengthScorer(), job.ScoreOptions(records_per_shard=50), progress=False
    )
    mtimes = {p: os.stat(p).st_mtime_ns for p in _all_files(out)}
    before = snapshot(out)
    again = LengthScorer()
    manifest = job.score_corpus(
        "demo:200", out, again, job.ScoreOptions(records_per_shard=50), progress=False
    )
    assert again.calls == 0
    assert {p: os.stat(p).st_mtime_ns for p in _all_files(out)} == mtimes
    assert snapshot(out) == before and manifest == run_manifest.load_manifest(out)


def _all_files(directory) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]


def test_rerun_with_new_threshold_rewrites_only_the_summary(tmp_path):
    out = str(tmp_path / "out")
    job.score_corpus(
        "demo:200", out, LengthScorer(), job.ScoreOptions(records_per_shard=50), progress=False
    )
    shard_files = sorted(p for p in _all_files(out) if "scored-" in p)
    mtimes = [os.stat(p).st_mtime_ns for p in shard_files]
    again = LengthScorer()
    manifest = job.score_corpus(
        "demo:200",
        out,
        again,
        job.ScoreOptions(records_per_shard=50, threshold=0.8),
        progress=False,
    )
    assert again.calls == 0 and [os.stat(p).st_mtime_ns for p in shard_files] == mtimes
    values = np.asarray([r["scores"]["toxicity"] for r in _records(out, manifest)])
    assert manifest["summary"]["threshold"] == 0.8
    assert manifest["summary"]["num_above_threshold"]["toxicity"] == int(np.sum(values > 0.8))


def test_rerun_with_other_scorer_or_input_is_refused_unless_overwrite(tmp_path):
    out = str(tmp_path / "out")
    job.score_corpus(
        "demo:100", out, LengthScorer(), job.ScoreOptions(records_per_shard=50), progress=False
    )
    with pytest.raises(
        run_manifest.OutputConflictError, match=r"scorer: \"length@1\" -> \"length@2\""
    ):
        job.score_corpus(
            "demo:100",
            out,
            LengthScorer("2"),
            job.ScoreOptions(records_per_shard=50),
            progress=False,
        )
    with pytest.raises(run_manifest.OutputConflictError, match="input.*--overwrite"):
        job.score_corpus(
            "demo:120", out, LengthScorer(), job.ScoreOptions(records_per_shard=50), progress=False
        )
    with pytest.raises(run_manifest.OutputConflictError, match="records_per_shard"):
        job.score_corpus(
            "demo:100", out, LengthScorer(), job.ScoreOptions(records_per_shard=40), progress=False
        )
    manifest = job.score_corpus(
        "demo:120",
        out,
        LengthScorer("2"),
        job.ScoreOptions(records_per_shard=50),
        overwrite=True,
        progress=False,
    )
    assert manifest["scorer"] == "length@2" and manifest["summary"]["docs_scored"] == 120
    assert sorted(os.listdir(os.path.join(out, "shards"))) == shard_files(range(3))


def test_url_inputs_and_outputs_go_through_tf_gfile(tmp_path):
    """ram:// is TensorFlow's in-memory filesystem: the code path gs:// paths take."""
    import tensorflow as tf

    root = f"ram://{tmp_path.name}"
    with tf.io.gfile.GFile(f"{root}/in/a.jsonl", "w") as f:
        f.write('{"text": "hello there"}\n{"text": ""}\n{"text": "damn it"}\n')
    out = f"{root}/out"
    kwargs = dict(records_per_shard=2, on_bad_record="skip")
    manifest = job.score_corpus(
        f"{root}/in/*.jsonl", out, LengthScorer(), job.ScoreOptions(**kwargs)
    )
    assert manifest["input_files"] == [{"path": f"{root}/in/a.jsonl", "num_records": 3}]
    assert manifest["summary"]["skipped_by_reason"] == {"empty_text": 1}
    assert sorted(name.rstrip("/") for name in tf.io.gfile.listdir(out)) == [
        "histogram.png",
        "manifest.json",
        "shards",
        "summary.json",
    ]
    assert not [n for n in tf.io.gfile.listdir(f"{out}/shards") if ".tmp-" in n]
    with tf.io.gfile.GFile(f"{out}/shards/scored-00001.jsonl") as f:
        assert json.loads(f.read())["text"] == "damn it"
    again = LengthScorer()
    assert (
        job.score_corpus(
            f"{root}/in/*.jsonl", out, again, job.ScoreOptions(**kwargs), progress=False
        )
        == manifest
    )
    assert again.calls == 0


def test_foreign_shard_files_without_manifest_are_refused(tmp_path):
    (tmp_path / "out" / "shards").mkdir(parents=True)
    (tmp_path / "out" / "shards" / "scored-00000.jsonl").write_text("{}\n")
    with pytest.raises(run_manifest.OutputConflictError, match="no manifest.json"):
        job.score_corpus("demo:10", str(tmp_path / "out"), LengthScorer(), progress=False)


def test_interrupted_run_resumes_to_the_uninterrupted_output(tmp_path):
    reference = str(tmp_path / "reference")
    options = job.ScoreOptions(records_per_shard=100, score_batch_size=30)
    job.score_corpus("demo:500", reference, LengthScorer(), options, progress=False)
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):  # dies in the middle of shard 2 (call 9 of 4/shard)
        job.score_corpus("demo:500", out, InterruptAfter(9), options, progress=False)
    partial = run_manifest.load_manifest(out)
    assert partial["complete"] is False and [e["index"] for e in partial["shards"]] == [0, 1]
    assert leftover_temp_files(out) == []
    assert sorted(os.listdir(os.path.join(out, "shards"))) == shard_files([0, 1])
    resumed = LengthScorer()
    job.score_corpus(
        "demo:500",
        out,
        resumed,
        job.ScoreOptions(records_per_shard=100, score_batch_size=30),
        progress=False,
    )
    assert resumed.texts == 300  # only the three unfinished shards were scored
    assert snapshot(out) == snapshot(reference)


def test_missing_or_damaged_shard_is_scored_again(tmp_path):
    reference = str(tmp_path / "reference")
    job.score_corpus(
        "demo:300",
        reference,
        LengthScorer(),
        job.ScoreOptions(records_per_shard=100),
        progress=False,
    )
    out = str(tmp_path / "out")
    job.score_corpus(
        "demo:300", out, LengthScorer(), job.ScoreOptions(records_per_shard=100), progress=False
    )
    with open(os.path.join(out, "shards", "scored-00001.jsonl"), "r+b") as f:
        f.truncate(100)
    os.remove(os.path.join(out, "shards", "scored-00002.jsonl"))
    again = LengthScorer()
    job.score_corpus(
        "demo:300", out, again, job.ScoreOptions(records_per_shard=100), progress=False
    )
    assert again.texts == 200
    assert snapshot(out) == snapshot(reference)


BAD_LINES = [
    (b'{"text": "half', "malformed_json", None),
    (b'"just a string"', "not_an_object", None),
    (b'{"body": "x"}', "missing_field", "text"),
    (b'{"text": ["a", "b"]}', "non_string_field", "text"),
    (b'{"text": "  \\t "}', "empty_text", "text"),
    (b'{"text": "bad \xff byte"}', "invalid_utf8", "text"),
    (b'{"text": "' + b"z" * 200 + b'"}', "too_long", "text"),
]


@pytest.mark.parametrize(("line", "reason", "field"), BAD_LINES)
def test_bad_record_stops_the_run_or_is_counted_as_skipped(tmp_path, line, reason, field):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": "two"}\n' + line + b'\n{"text": "four"}\n')
    kwargs = dict(records_per_shard=2, max_doc_chars=100)
    with pytest.raises(BadRecordError) as info:
        job.score_corpus(
            str(path), str(tmp_path / "strict"), LengthScorer(), job.ScoreOptions(**kwargs)
        )
    assert str(info.value).startswith(f"{path}:3: ")
    assert (info.value.line, info.value.field, info.value.reason) == (3, field, reason)
    assert (field is None) or f"field {field!r}" in str(info.value)
    # The shard before the bad record is kept: fixing the input and rerunning resumes.
    assert [e["index"] for e in run_manifest.load_manifest(str(tmp_path / "strict"))["shards"]] == [
        0
    ]

    out = str(tmp_path / "lenient")
    manifest = job.score_corpus(
        str(path), out, LengthScorer(), job.ScoreOptions(on_bad_record="skip", **kwargs)
    )
    summary = manifest["summary"]
    assert summary["docs_scored"] == 3 and summary["docs_skipped"] == 1
    assert summary["skipped_by_reason"] == {reason: 1}
    example = summary["skipped_examples"][0]
    assert (example["file"], example["line"], example["field"]) == (str(path), 3, field)
    assert manifest["shards"][1]["skipped"] == {reason: 1}
    assert [r["text"] for r in _records(out, manifest)] == ["one", "two", "four"]
    assert manifest["shards"][0]["skipped"] == {} and manifest["shards"][0]["num_skipped"] == 0


def test_cli_reports_a_bad_record_with_file_line_and_field(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": 12}\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "toxjax.scoring",
            f"--input={path}",
            f"--output_dir={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert f"error: {path}:2: field 'text': non_string_field" in result.stderr


def _wait_for_shards(manifest_path: str, at_least: int, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the scoring job ended before it could be killed"
        try:
            with open(manifest_path) as f:
                done = len(json.load(f)["shards"])
        except (FileNotFoundError, json.JSONDecodeError):
            done = 0
        if done >= at_least:
            return done
        time.sleep(0.02)
    raise TimeoutError(f"fewer than {at_least} shards after 240 s")


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, input_spec, records_per_shard, kills, segment",
    [  # each backend, each segmentation
        ("detoxify-jax", "demo:400", 25, (3, 10), ""),
        ("offline", "demo:1200", 50, (3, 10), "sentence"),  # segment scores too
    ],
)
def test_sigkill_twice_then_rerun_equals_an_uninterrupted_run(
    tmp_path, checkpoint_path, backend, input_spec, records_per_shard, kills, segment
):
    spec = "offline" if backend == "offline" else f"{backend}:{checkpoint_path}"
    scorer = scorer_specs.make_scorer(spec)  # also writes the Flax cache the children read
    out = str(tmp_path / "killed")
    command = [
        sys.executable, "-m", "toxjax.scoring", f"--input={input_spec}", f"--output_dir={out}",
        f"--records_per_shard={records_per_shard}", "--shard_delay_s=0.1", "--noprogress",
        f"--scorer={spec}", f"--segment={segment}",
    ]  # fmt: skip
    num_shards = -(-int(input_spec.partition(":")[2]) // records_per_shard)
    manifest_path = os.path.join(out, "manifest.json")
    first_shards: dict[str, int] = {}
    for kill_at in kills:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_shards(manifest_path, kill_at, proc)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        manifest = run_manifest.load_manifest(out)
        assert manifest["complete"] is False and len(manifest["shards"]) < num_shards
        assert manifest["scorer"] == scorer.scorer_id
        if not first_shards:
            first_shards = {
                e["path"]: os.stat(os.path.join(out, e["path"])).st_mtime_ns
                for e in manifest["shards"]
            }
    # The rerun (same arguments, in this process to save a start-up) finishes the job.
    options = job.ScoreOptions(records_per_shard=records_per_shard, segment=segment)
    job.score_corpus(input_spec, out, scorer, options, progress=False)
    reference = str(tmp_path / "reference")
    job.score_corpus(input_spec, reference, scorer, options, progress=False)
    assert snapshot(out) == snapshot(reference)
    assert leftover_temp_files(out) == []
    # Shards finished before the first kill were never scored (or written) again.
    assert {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in first_shards} == first_shards


def test_a_rerun_with_the_other_backend_is_refused(tmp_path, checkpoint_path):
    out = str(tmp_path / "out")
    options = job.ScoreOptions(records_per_shard=20)
    torch_run = job.score_corpus(
        "demo:40", out, f"detoxify:{checkpoint_path}", options, progress=False
    )
    with pytest.raises(run_manifest.OutputConflictError) as raised:
        job.score_corpus("demo:40", out, f"detoxify-jax:{checkpoint_path}", options)
    message = str(raised.value)
    assert torch_run["scorer"].endswith(":torch") and torch_run["scorer"] in message
    assert torch_run["scorer"].replace(":torch", ":jax") in message and "never mixed" in message
    assert run_manifest.load_manifest(out)["scorer"] == torch_run["scorer"]  # left untouched


def test_segment_scores_cover_each_document(tmp_path):
    path = tmp_path / "in.jsonl"
    texts = ["You are a stupid idiot. The garden is lovely today.", "One sentence only", "x"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = str(tmp_path / "out")
    scorer = LengthScorer()
    options = job.ScoreOptions(segment="sentence", score_batch_size=2)
    manifest = job.score_corpus(str(path), out, scorer, options, progress=False)
    assert manifest["segment"] == "sentence"
    records = _records(out, manifest)
    assert [r["segment_ends"] for r in records] == [[24, 51], [17], [1]]
    first = records[0]
    pieces = [texts[0][:24], texts[0][24:]]
    expected = scorer.score(pieces)
    for attribute in ("toxicity", "insult"):
        assert first["segment_scores"][attribute] == [float(str(v)) for v in expected[attribute]]
        assert first["scores"][attribute] == float(str(scorer.score(texts[:1])[attribute][0]))
    # Another segmentation is another run: refused, not mixed.
    with pytest.raises(run_manifest.OutputConflictError, match="segment"):
        job.score_corpus(str(path), out, scorer, job.ScoreOptions(segment="chunk:10"))
    with pytest.raises(job.ConfigError, match="chunk:<chars>"):
        job.ScoreOptions(segment="paragraph")


# ----- one run per output directory; a full disk -----


class _FullDiskAfter(io.FileIO):
    """A shard file on a disk that fills up after `room` bytes (ENOSPC, like the OS)."""

    def __init__(self, path: str, room: int):
        super().__init__(path, "wb")
        self.room = room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return super().write(data)


def _full_disk_open(room: int):
    """fileio's `open`, on a disk with `room` bytes left for shard 1 (shard 0 fits)."""

    def open_file(path, mode="r", **kwargs):
        if "scored-00001" in path:
            return _FullDiskAfter(path, room)
        return open(path, mode, **kwargs)

    return open_file


def test_a_full_disk_while_writing_a_shard_names_it_and_publishes_nothing(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    options = job.ScoreOptions(records_per_shard=100, score_batch_size=30)
    monkeypatch.setattr(fileio, "open", _full_disk_open(room=1), raising=False)
    with pytest.raises(fileio.DiskFullError) as full:
        job.score_corpus("demo:300", out, LengthScorer(), options, progress=False)
    message = str(full.value)
    shard = os.path.join(out, "shards", "scored-00001.jsonl")
    assert full.value.errno == errno.ENOSPC and full.value.path == shard
    assert f"no space left on device writing shard {shard}: it needs more than " in message
    assert "free space on that disk, or choose another --output_dir" in message
    assert sorted(os.listdir(os.path.join(out, "shards"))) == shard_files([0])
    assert leftover_temp_files(out) == [] and sorted(os.listdir(out)) == ["manifest.json", "shards"]
    assert [e["index"] for e in run_manifest.load_manifest(out)["shards"]] == [0]
    # Room for one batch: the message estimates what the whole shard needs.
    monkeypatch.setattr(fileio, "open", _full_disk_open(room=15_000), raising=False)
    with pytest.raises(fileio.DiskFullError, match=r"it needs about \d+ bytes for its 100 records"):
        job.score_corpus("demo:300", out, LengthScorer(), options, progress=False)
    monkeypatch.undo()  # space freed: the rerun scores the rest
    resumed = LengthScorer()
    job.score_corpus("demo:300", out, resumed, options, progress=False)
    assert resumed.texts == 200


def test_a_second_scoring_run_on_an_output_in_use_is_refused_before_writing(tmp_path):
    out = str(tmp_path / "out")
    scorer = LengthScorer()
    with workdir_lock.hold(out, "python -m toxjax.scoring --output_dir=out"):
        with pytest.raises(workdir_lock.WorkdirInUseError, match="--output_dir=out"):
            job.score_corpus("demo:50", out, scorer, progress=False)
        assert os.listdir(out) == [workdir_lock.LOCK_NAME] and scorer.calls == 0
    manifest = job.score_corpus("demo:50", out, scorer, progress=False)
    assert manifest["complete"] and workdir_lock.LOCK_NAME not in os.listdir(out)


def test_cli_on_an_output_in_use_exits_1_naming_the_holder(tmp_path):
    out = str(tmp_path / "out")
    with workdir_lock.hold(out, "the first scoring run"):
        result = subprocess.run(
            [sys.executable, "-m", "toxjax.scoring", "--input=demo:20", f"--output_dir={out}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert os.listdir(out) == [workdir_lock.LOCK_NAME]
    assert result.returncode == 1
    assert f"toxjax.scoring: error: {out} is in use by another run" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr and "the first scoring run" in result.stderr


def test_a_finished_output_is_read_without_taking_its_lock(tmp_path):
    """Study jobs that share a scored corpus each find it finished, all at once."""
    out = str(tmp_path / "out")
    manifest = job.score_corpus("demo:50", out, LengthScorer(), progress=False)
    with workdir_lock.hold(out, "another job"):
        again = LengthScorer()
        assert job.score_corpus("demo:50", out, again, progress=False) == manifest
        assert again.calls == 0
