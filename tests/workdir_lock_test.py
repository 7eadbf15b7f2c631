"""toxjax.workdir_lock: one run per workdir, the stale-lock rule, the GCS branch (an in-memory
fake of google.cloud.storage), and real processes: a refused `python -m toxjax.main`, and a
two-process JAX run whose process 1 is not refused by its own process 0."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from toxjax import workdir_lock
from toxjax.workdir_lock import LOCK_NAME, WorkdirInUseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()


def _ago(seconds: float) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    return moment.isoformat(timespec="seconds")


def _holder(pid: int, host: str = HOST, heartbeat_age: float = 0.0, **extra) -> dict:
    return {
        "host": host,
        "pid": pid,
        "started": _ago(3600),
        "heartbeat": _ago(heartbeat_age),
        "command": "python -m toxjax.main --workdir=old",
        "token": "old-token",
        **extra,
    }


def _write_lock(workdir, holder: dict) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    with open(path, "w") as f:
        json.dump(holder, f)
    return path


def _read_lock(workdir) -> dict:
    with open(os.path.join(workdir, LOCK_NAME)) as f:
        return json.load(f)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _enter(workdir: str, command: str = "second run", **kwargs) -> None:
    """Takes and releases the lock (raises if refused)."""
    with workdir_lock.hold(workdir, command, **kwargs):
        pass


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ----- local disk -----


def test_a_second_run_is_refused_naming_the_lock_and_its_holder(tmp_path):
    workdir = str(tmp_path / "run")
    with workdir_lock.hold(workdir, "python -m toxjax.main --workdir=run") as path:
        assert path == os.path.join(workdir, LOCK_NAME)
        holder = _read_lock(workdir)
        assert (holder["host"], holder["pid"]) == (HOST, os.getpid())
        assert holder["command"] == "python -m toxjax.main --workdir=run"
        assert holder["started"].endswith("+00:00") and holder["heartbeat"]
        with pytest.raises(WorkdirInUseError) as refused, workdir_lock.hold(workdir, "second"):
            pytest.fail("a second holder got in")
        message = str(refused.value)
        for part in (path, HOST, f"pid {os.getpid()}", holder["started"], "--workdir=run"):
            assert part in message
        assert _read_lock(workdir)["token"] == holder["token"]  # the refused run left it alone
    assert os.listdir(workdir) == []  # released on exit


def test_the_lock_is_released_on_an_exception(tmp_path):
    with pytest.raises(KeyError), workdir_lock.hold(str(tmp_path), "crashes"):
        raise KeyError("boom")
    assert os.listdir(tmp_path) == []
    with workdir_lock.hold(str(tmp_path), "next run"):  # free again
        pass


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    dead = _dead_pid()
    _write_lock(tmp_path, _holder(dead))  # its heartbeat is fresh: only the pid tells
    with caplog.at_level(logging.WARNING), workdir_lock.hold(str(tmp_path), "new run"):
        assert _read_lock(tmp_path)["pid"] == os.getpid()
    assert f"its process {dead} on this host is gone" in caplog.text
    assert f"pid {dead} on host {HOST}" in caplog.text  # the warning names the old holder
    assert os.listdir(tmp_path) == []


def test_a_live_process_on_another_host_keeps_its_lock_until_its_heartbeat_is_stale(
    tmp_path, caplog, monkeypatch
):
    _write_lock(tmp_path, _holder(1, host="other-host", heartbeat_age=60))
    with pytest.raises(WorkdirInUseError, match="pid 1 on host other-host"):
        _enter(str(tmp_path), "too early")
    _write_lock(tmp_path, _holder(1, host="other-host", heartbeat_age=11 * 60))
    with caplog.at_level(logging.WARNING), workdir_lock.hold(str(tmp_path), "later"):
        assert _read_lock(tmp_path)["command"] == "later"
    assert re.search(r"no heartbeat for 66\d s \(stale after 600 s\)", caplog.text)
    # The timeout is settable: here 30 s, so a minute-old heartbeat is stale.
    monkeypatch.setenv(workdir_lock.STALE_AFTER_ENV, "30")
    _write_lock(tmp_path, _holder(1, host="other-host", heartbeat_age=60))
    with workdir_lock.hold(str(tmp_path), "impatient"):
        assert _read_lock(tmp_path)["command"] == "impatient"


def test_an_unreadable_lock_counts_as_being_written_until_the_timeout(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_bytes(b"")  # a holder between its O_EXCL create and its write
    with pytest.raises(WorkdirInUseError, match="unknown holder"):
        _enter(str(tmp_path), "x")
    old = time.time() - 700
    os.utime(path, (old, old))
    with workdir_lock.hold(str(tmp_path), "x"):
        assert _read_lock(tmp_path)["command"] == "x"


def test_release_deletes_only_our_own_lock(tmp_path, caplog):
    """A run whose lock was taken over (it was stale) leaves the new holder's lock, and its
    heartbeat says it lost the lock."""
    with caplog.at_level(logging.WARNING), workdir_lock.hold(str(tmp_path), "a", heartbeat_s=0.05):
        _write_lock(tmp_path, _holder(12345, host="other-host", token="their-token"))
        deadline = time.time() + 5
        while "no longer holds its lock" not in caplog.text and time.time() < deadline:
            time.sleep(0.05)
    assert "no longer holds its lock" in caplog.text
    assert _read_lock(tmp_path)["token"] == "their-token"
    assert os.listdir(tmp_path) == [LOCK_NAME]


def test_the_heartbeat_is_refreshed(tmp_path, monkeypatch):
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    with workdir_lock.hold(str(tmp_path), "beats", heartbeat_s=0.05):
        first = _read_lock(tmp_path)
        monkeypatch.setattr(workdir_lock, "_now", lambda: later)
        deadline = time.time() + 5
        while _read_lock(tmp_path)["heartbeat"] == first["heartbeat"] and time.time() < deadline:
            time.sleep(0.05)
        beaten = _read_lock(tmp_path)
    assert beaten["heartbeat"] == later.isoformat(timespec="seconds")
    assert {k: v for k, v in beaten.items() if k != "heartbeat"} == {
        k: v for k, v in first.items() if k != "heartbeat"
    }


def _contend(path: str, num_threads: int) -> tuple[list[int], list[int]]:
    """Threads that try to take the lock at once: (winners, refused)."""
    barrier, won, refused = threading.Barrier(num_threads), [], []

    def contend(index: int) -> None:
        holder = _holder(os.getpid(), token=f"t{index}")
        barrier.wait()
        try:
            workdir_lock.acquire(workdir_lock.LocalLock(path), holder, 600.0)
            won.append(index)
        except WorkdirInUseError:
            refused.append(index)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, refused


def test_takeover_is_race_safe(tmp_path):
    """Contenders for one stale lock: exactly one takes it over each round; a contender that
    judged a lock stale before another took it over does not replace the new lock."""
    path = os.path.join(tmp_path, LOCK_NAME)
    for _ in range(10):
        _write_lock(tmp_path, _holder(1, host="other-host", heartbeat_age=3600))
        won, refused = _contend(path, 6)
        assert len(won) == 1 and len(refused) == 5
        assert _read_lock(tmp_path)["token"] == f"t{won[0]}"
        assert os.listdir(tmp_path) == [LOCK_NAME]  # no guard or other file left
    storage = workdir_lock.LocalLock(path)
    _write_lock(tmp_path, _holder(1, host="other-host", heartbeat_age=3600))
    stale_view = storage.read()
    assert storage.take_over(stale_view, json.dumps(_holder(2, token="first")).encode())
    assert not storage.take_over(stale_view, json.dumps(_holder(3, token="late")).encode())
    assert _read_lock(tmp_path)["token"] == "first"
    assert os.listdir(tmp_path) == [LOCK_NAME]


def test_only_process_0_takes_the_lock_and_tells_the_others(tmp_path, monkeypatch):
    told = []
    monkeypatch.setattr(workdir_lock, "_broadcast_ok", lambda ok: told.append(ok) or ok)
    monkeypatch.setattr(workdir_lock, "_process_index_count", lambda: (0, 2))
    with workdir_lock.hold(str(tmp_path), "p0") as path:
        assert path and _read_lock(tmp_path)["process_count"] == 2
        with pytest.raises(WorkdirInUseError):  # a second run's process 0 is refused...
            _enter(str(tmp_path))
    assert told == [True, False]  # ...and tells its other processes
    monkeypatch.setattr(workdir_lock, "_process_index_count", lambda: (1, 2))
    monkeypatch.setattr(workdir_lock, "_broadcast_ok", lambda ok: True)  # process 0 has it
    with workdir_lock.hold(str(tmp_path / "other"), "p1") as path:
        assert path is None and not os.path.exists(tmp_path / "other")
    monkeypatch.setattr(workdir_lock, "_broadcast_ok", lambda ok: False)  # process 0 refused
    with pytest.raises(WorkdirInUseError, match="process 0 could not take its lock"):
        _enter(str(tmp_path / "other"))
    with workdir_lock.hold(str(tmp_path / "other"), "p1 alone", every_process=False) as path:
        assert path is None  # code that process 0 runs alone: no broadcast at all


def test_other_urls_are_not_locked_and_say_so(caplog):
    with caplog.at_level(logging.WARNING), workdir_lock.hold("ram://somewhere/run") as path:
        assert path is None
    assert "ram://somewhere/run: not locked" in caplog.text


# ----- gs:// through an in-memory google.cloud.storage -----


try:
    from google.api_core.exceptions import NotFound, PreconditionFailed
except ImportError:  # not installed here: look-alikes carrying the HTTP status as .code

    class PreconditionFailed(Exception):
        code = 412

    class NotFound(Exception):
        code = 404


class FakeBucket:
    """Objects by name: (data, generation, updated); preconditions checked like GCS."""

    def __init__(self):
        self.objects: dict[str, tuple[bytes, int, datetime.datetime]] = {}
        self._generations = iter(range(1000, 10**6))

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(self, name)

    def get_blob(self, name: str) -> FakeBlob | None:
        if name not in self.objects:
            return None
        blob = FakeBlob(self, name)
        _, blob.generation, blob.updated = self.objects[name]
        return blob

    def check(self, name: str, if_generation_match: int | None) -> None:
        current = self.objects[name][1] if name in self.objects else 0
        if if_generation_match is not None and if_generation_match != current:
            raise PreconditionFailed(f"{name}: generation {current} != {if_generation_match}")


class FakeBlob:
    def __init__(self, bucket: FakeBucket, name: str):
        self.bucket, self.name = bucket, name
        self.generation: int | None = None
        self.updated: datetime.datetime | None = None

    def upload_from_string(self, data, content_type=None, if_generation_match=None) -> None:
        self.bucket.check(self.name, if_generation_match)
        self.generation = next(self.bucket._generations)
        self.updated = datetime.datetime.now(datetime.timezone.utc)
        self.bucket.objects[self.name] = (bytes(data), self.generation, self.updated)

    def download_as_bytes(self, if_generation_match=None) -> bytes:
        if self.name not in self.bucket.objects:
            raise NotFound(self.name)
        self.bucket.check(self.name, if_generation_match)
        return self.bucket.objects[self.name][0]

    def delete(self, if_generation_match=None) -> None:
        if self.name not in self.bucket.objects:
            raise NotFound(self.name)
        self.bucket.check(self.name, if_generation_match)
        del self.bucket.objects[self.name]


@pytest.fixture
def bucket(monkeypatch) -> FakeBucket:
    fake = FakeBucket()
    monkeypatch.setattr(workdir_lock, "_gcs_bucket", lambda name: fake)
    return fake


def _gcs_holder(bucket: FakeBucket) -> dict:
    return json.loads(bucket.objects["runs/a/.toxjax.lock"][0])


def test_gcs_lock_is_created_refused_refreshed_and_released(bucket):
    with workdir_lock.hold("gs://b/runs/a", "gcs run", heartbeat_s=0.05) as path:
        assert path == "gs://b/runs/a/.toxjax.lock"
        first_generation = bucket.objects["runs/a/.toxjax.lock"][1]
        assert _gcs_holder(bucket)["command"] == "gcs run"
        with pytest.raises(WorkdirInUseError, match=f"pid {os.getpid()} on host {HOST}"):
            _enter("gs://b/runs/a")
        deadline = time.time() + 5  # the heartbeat rewrites it at its own generation
        while bucket.objects["runs/a/.toxjax.lock"][1] == first_generation:
            assert time.time() < deadline
            time.sleep(0.05)
    assert bucket.objects == {}


def test_gcs_stale_lock_is_taken_over_at_its_generation(bucket, caplog):
    stale = json.dumps(_holder(1, host="other-host", heartbeat_age=3600)).encode()
    bucket.blob("runs/a/.toxjax.lock").upload_from_string(stale)
    with caplog.at_level(logging.WARNING), workdir_lock.hold("gs://b/runs/a", "taker"):
        assert _gcs_holder(bucket)["command"] == "taker"
    assert "pid 1 on host other-host" in caplog.text and bucket.objects == {}
    # A takeover at a generation that has moved on fails: someone else was faster.
    bucket.blob("runs/a/.toxjax.lock").upload_from_string(stale)
    storage = workdir_lock.GcsLock("gs://b/runs/a/.toxjax.lock")
    seen = storage.read()
    bucket.blob("runs/a/.toxjax.lock").upload_from_string(b'{"token": "faster"}')
    assert not storage.take_over(seen, b'{"token": "late"}')
    assert _gcs_holder(bucket) == {"token": "faster"}


def test_gcs_release_keeps_a_lock_that_is_no_longer_ours(bucket):
    with workdir_lock.hold("gs://b/runs/a", "a", heartbeat_s=3600):
        bucket.blob("runs/a/.toxjax.lock").upload_from_string(b'{"token": "theirs"}')
    assert _gcs_holder(bucket) == {"token": "theirs"}


def test_gcs_create_retried_by_the_client_is_our_own_lock(bucket):
    """The client retries a create whose reply was lost: the object then exists, with our
    token, and is ours (released at its generation), not a lock of another run."""
    storage = workdir_lock.GcsLock("gs://b/runs/a/.toxjax.lock")
    holder = _holder(os.getpid(), token="mine")
    bucket.blob("runs/a/.toxjax.lock").upload_from_string(json.dumps(holder).encode())
    workdir_lock.acquire(storage, holder, 600.0)
    assert storage.generation == bucket.objects["runs/a/.toxjax.lock"][1]
    assert storage.refresh(b'{"token": "mine", "beat": 2}', "mine")
    storage.release("mine")
    assert bucket.objects == {}


def test_gcs_without_the_client_library_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    with pytest.raises(ImportError, match="pip install google-cloud-storage"):
        _enter("gs://b/runs/a")


# ----- real processes -----

HOLD_SCRIPT = """
import sys
from toxjax import workdir_lock
with workdir_lock.hold(sys.argv[1], "the first run"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_main_on_a_workdir_in_use_exits_nonzero_naming_the_holder_and_writes_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, workdir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "toxjax.main",
                "--config=toxjax/configs/tiny.py",
                f"--workdir={workdir}",
                "--mode=train",
            ],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert f"pid {holder.pid} on host {HOST}" in second.stderr
        assert "the first run" in second.stderr and "Traceback" not in second.stderr
        assert os.listdir(workdir) == [LOCK_NAME]
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0 and os.listdir(workdir) == []


MULTI_PROCESS_SCRIPT = """
import os
import sys
import jax
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from toxjax import workdir_lock

def say(text):  # one write: gloo's threads print to the same pipe
    os.write(1, (text + "\\n").encode())

with workdir_lock.hold(sys.argv[3], "two processes") as path:
    say(f"holds {path}")
try:
    with workdir_lock.hold(sys.argv[4], "two processes"):
        say("got the busy one")
except workdir_lock.WorkdirInUseError as error:
    say(f"refused: {error}")
"""


def test_two_jax_processes_share_one_lock_and_stop_together(tmp_path):
    """Process 1 is not refused by its sibling; on a busy workdir both processes stop."""
    free, busy = str(tmp_path / "free"), str(tmp_path / "busy")
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        address = f"localhost:{probe.getsockname()[1]}"
    with workdir_lock.hold(busy, "the busy holder"):
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", MULTI_PROCESS_SCRIPT, address, str(i), free, busy],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for i in range(2)
        ]
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert f"holds {os.path.join(free, LOCK_NAME)}" in outputs[0]
    assert "holds None" in outputs[1]
    assert "the busy holder" in outputs[0] and "process 0 could not take" in outputs[1]
    assert "got the busy one" not in outputs[0] + outputs[1]
