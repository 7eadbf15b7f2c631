"""One run per workdir: a lock file that every other run on the same directory is refused by.

    with workdir_lock.hold(workdir):  # taken before the run writes anything
        ...

WORKDIR/.toxjax.lock holds JSON: the holder's host, pid, start time (UTC), command, and a
heartbeat time that a daemon thread refreshes every 30 s. A second run finds it and stops with
WorkdirInUseError, which names the lock file and its holder. The lock is deleted when the run
ends, also on an exception; a killed run (SIGKILL, a lost machine) leaves it behind, for the
stale-lock rule:

A lock is stale when its holder ran on this host and that process is gone, or when its
heartbeat is older than the stale timeout (10 minutes by default, set by the environment
variable TOXJAX_LOCK_STALE_AFTER_S in seconds); the next run then takes it over, with a
warning that names the old holder.

Local paths: the lock is created with O_CREAT|O_EXCL, so of two runs exactly one gets it. A
stale lock is replaced under a guard file (itself O_EXCL), and only if it is still the lock
that was judged stale: renaming it aside without a guard would let a contender that judged it
stale a moment before another run took it over move that run's live lock away.
gs:// paths: Cloud Storage generation preconditions through google-cloud-storage (create with
if_generation_match=0; take over, heartbeat and delete only at the generation last seen).
Other URLs (ram://, s3:// through tf.io.gfile) offer no atomic create: not locked, with a
warning. Multi-process JAX runs: process 0 alone holds the lock for the run, and tells the
other processes whether it got it, so they never refuse each other and stop together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from absl import logging

from toxjax import distributed, fileio

LOCK_NAME = ".toxjax.lock"
STALE_AFTER_ENV = "TOXJAX_LOCK_STALE_AFTER_S"
DEFAULT_STALE_AFTER_S = 600.0
HEARTBEAT_S = 30.0
GUARD_WAIT_S, GUARD_STALE_S = 5.0, 60.0  # see LocalLock._guarded
_ATTEMPTS = 5  # create / take over rounds before giving up under contention
_PRECONDITION_FAILED, _NOT_FOUND = 412, 404  # HTTP status of a GCS conditional request


class WorkdirInUseError(RuntimeError):
    """Another run holds the directory; the message names the lock file and its holder."""


def lock_path(workdir: str) -> str:
    return fileio.join(workdir, LOCK_NAME)


def stale_after_s() -> float:
    """The stale timeout: TOXJAX_LOCK_STALE_AFTER_S, or 10 minutes."""
    return float(os.environ.get(STALE_AFTER_ENV) or DEFAULT_STALE_AFTER_S)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _seconds_since(stamp: Any) -> float | None:
    try:
        return (_now() - datetime.datetime.fromisoformat(str(stamp))).total_seconds()
    except (TypeError, ValueError):  # not a time, or one without its UTC offset
        return None


def describe(holder: Mapping[str, Any] | None) -> str:
    """The holder in words, for refusals and takeover warnings."""
    if not holder:
        return "an unknown holder (the lock file is empty or not JSON)"
    beat = _seconds_since(holder.get("heartbeat"))
    beat_text = f", last heartbeat {beat:.0f} s ago" if beat is not None else ""
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} (started "
        f"{holder.get('started')}{beat_text}): {holder.get('command')}"
    )


def _pid_alive(pid: Any) -> bool:
    """Whether a process of this host runs with that pid (unknown counts as alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Seen:
    """A lock as read: raw bytes (compared before a takeover), holder record, version, mtime."""

    raw: bytes
    holder: dict[str, Any] | None  # None when the file is empty or not JSON (being written)
    version: Any  # GCS: the object generation; local: unused
    modified: float  # seconds since the epoch of its last write


def _seen(raw: bytes, version: Any, modified: float) -> Seen:
    try:
        holder = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        holder = None
    return Seen(raw, holder if isinstance(holder, dict) else None, version, modified)


def stale_reason(seen: Seen, stale_after: float) -> str | None:
    """Why a lock may be taken over (the rule in the module docstring), or None: it is live."""
    holder = seen.holder or {}
    if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
        return f"its process {holder.get('pid')} on this host is gone"
    age = _seconds_since(holder.get("heartbeat"))
    if age is None:  # no readable heartbeat: the file's own last write
        age = time.time() - seen.modified
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s (stale after {stale_after:.0f} s)"
    return None


# ------------------------------------------------------------------------------------------
# Storage: a local file or a GCS object, each with atomic create, takeover and delete.


class LocalLock:
    """The lock file on a local (or POSIX-mounted) disk.

    Only create() writes without the guard, and only where no lock exists (O_EXCL). Every other
    change (takeover, heartbeat, release) is made under the guard file (also O_EXCL), after
    reading the lock again: so no one replaces a lock that changed since it was judged stale.
    """

    def __init__(self, path: str):
        self.path = path
        self.guard = f"{path}.guard"

    def create(self, data: bytes) -> bool:
        """True if this call created the file; False if it exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        except BaseException:  # a half-written lock would block every later run
            os.close(fd)
            os.remove(self.path)
            raise
        os.close(fd)
        return True

    def read(self) -> Seen | None:
        try:
            with open(self.path, "rb") as f:
                return _seen(f.read(), None, os.fstat(f.fileno()).st_mtime)
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[bool]:
        """Holds the guard (True), or gives up after GUARD_WAIT_S (False). A guard is held for
        milliseconds: one older than GUARD_STALE_S was left by a killed process."""
        deadline = time.monotonic() + GUARD_WAIT_S
        while True:
            try:
                os.close(os.open(self.guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.stat(self.guard).st_mtime > GUARD_STALE_S:
                        os.remove(self.guard)
                        continue
            if time.monotonic() > deadline:
                yield False
                return
            time.sleep(0.01)
        try:
            yield True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.guard)

    def adopt(self, seen: Seen) -> None:
        """Our own lock, found where create() had just failed: nothing to remember."""

    def take_over(self, seen: Seen, data: bytes) -> bool:
        """Replaces the stale lock `seen`; False if it changed meanwhile or another run won."""
        with self._guarded() as guarded:
            current = self.read()
            if not guarded or current is None or current.raw != seen.raw:
                return False
            os.remove(self.path)
            return self.create(data)

    def refresh(self, data: bytes, token: str) -> bool:
        """Rewrites our lock (heartbeat); False if it is no longer ours."""
        with self._guarded() as guarded:
            if not guarded:  # busy: the next beat tries again
                return True
            seen = self.read()
            if seen is None or (seen.holder or {}).get("token") != token:
                return False
            fresh = f"{self.path}.heartbeat-{uuid.uuid4().hex[:12]}"
            try:
                with open(fresh, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(fresh, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(fresh)
                raise
            return True

    def release(self, token: str) -> None:
        """Deletes the lock if it is still ours."""
        with self._guarded():
            seen = self.read()
            if seen is not None and (seen.holder or {}).get("token") == token:
                os.remove(self.path)
            elif seen is not None:
                logging.warning(
                    "%s: not deleted: it is no longer this run's lock (now %s's)",
                    self.path,
                    describe(seen.holder),
                )


def _gcs_bucket(name: str) -> Any:
    """The google.cloud.storage Bucket (tests substitute an in-memory one)."""
    try:
        from google.cloud import storage
    except ImportError as error:
        raise ImportError(
            f"locking a gs:// workdir (gs://{name}/...) needs google-cloud-storage, for its "
            "generation preconditions: pip install google-cloud-storage"
        ) from error
    return storage.Client().bucket(name)


def _http_status(error: Exception) -> int | None:
    """The HTTP status of a failed GCS call (google.api_core errors carry it as .code)."""
    code = getattr(error, "code", None)
    return code if isinstance(code, int) else None


class GcsLock:
    """The lock object on Cloud Storage: atomic through generation preconditions."""

    def __init__(self, path: str):
        self.path = path
        bucket, _, self._name = path[len("gs://") :].partition("/")
        self._bucket = _gcs_bucket(bucket)
        self.generation: int | None = None

    def _upload(self, data: bytes, if_generation_match: int) -> bool:
        blob = self._bucket.blob(self._name)
        try:
            blob.upload_from_string(
                data, content_type="application/json", if_generation_match=if_generation_match
            )
        except Exception as error:
            if _http_status(error) in (_PRECONDITION_FAILED, _NOT_FOUND):
                return False
            raise
        self.generation = blob.generation
        return True

    def create(self, data: bytes) -> bool:
        return self._upload(data, 0)

    def read(self) -> Seen | None:
        for _ in range(_ATTEMPTS):
            blob = self._bucket.get_blob(self._name)
            if blob is None:
                return None
            try:
                raw = blob.download_as_bytes(if_generation_match=blob.generation)
            except Exception as error:  # rewritten between the two calls: read it again
                if _http_status(error) in (_PRECONDITION_FAILED, _NOT_FOUND):
                    continue
                raise
            updated = getattr(blob, "updated", None)
            return _seen(raw, blob.generation, updated.timestamp() if updated else time.time())
        return None

    def take_over(self, seen: Seen, data: bytes) -> bool:
        return self._upload(data, seen.version)

    def _still_ours(self, token: str) -> bool:
        """Whether the object is still our lock, at a generation we may not have seen (a
        request the client retried after its first attempt had succeeded)."""
        seen = self.read()
        if seen is None or (seen.holder or {}).get("token") != token:
            return False
        self.generation = seen.version
        return True

    def adopt(self, seen: Seen) -> None:
        """Our own lock, created by a request the client retried: its generation is ours."""
        self.generation = seen.version

    def refresh(self, data: bytes, token: str) -> bool:
        if self.generation is not None and self._upload(data, self.generation):
            return True
        return self._still_ours(token) and self._upload(data, self.generation)

    def release(self, token: str) -> None:
        for _ in range(2):
            try:
                self._bucket.blob(self._name).delete(if_generation_match=self.generation)
                return
            except Exception as error:
                if _http_status(error) not in (_PRECONDITION_FAILED, _NOT_FOUND):
                    raise
            if not self._still_ours(token):
                logging.warning("%s: not deleted: it is no longer this run's lock", self.path)
                return


# ------------------------------------------------------------------------------------------
# Holding a lock.


class _Heartbeat(threading.Thread):
    """Refreshes the lock's heartbeat until stopped; a lost lock is logged, not fatal."""

    def __init__(self, storage: Any, holder: dict[str, Any], interval: float):
        super().__init__(name=f"toxjax-lock-heartbeat:{storage.path}", daemon=True)
        self.storage, self.holder, self.interval = storage, holder, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            holder = {**self.holder, "heartbeat": _iso(_now())}
            try:
                if not self.storage.refresh(_encode(holder), holder["token"]):
                    logging.error(
                        "%s: this run no longer holds its lock (another run took it over?)",
                        self.storage.path,
                    )
                    return
            except Exception as error:  # a network blip: try again at the next beat
                logging.warning("%s: heartbeat failed (%s)", self.storage.path, error)


def _encode(holder: Mapping[str, Any]) -> bytes:
    return (json.dumps(holder, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _storage(workdir: str) -> LocalLock | GcsLock | None:
    path = lock_path(workdir)
    if path.startswith("gs://"):
        return GcsLock(path)
    if fileio.is_url(path):
        logging.warning("%s: not locked (only local and gs:// directories can be)", workdir)
        return None
    fileio.make_dirs(workdir)
    return LocalLock(path)


def refusal(path: str, seen: Seen | None, stale_after: float) -> WorkdirInUseError:
    return WorkdirInUseError(
        f"{path.rsplit('/', 1)[0] or '/'} is in use by another run: {path} is held by "
        f"{describe(seen.holder if seen else None)}. Wait for that run to end, or stop it, or "
        "use another directory. A lock whose holder is gone is taken over by the next run "
        f"(at once on the same host, else after {stale_after:.0f} s without a heartbeat); "
        "delete the file by hand only if no run uses the directory"
    )


def acquire(storage: Any, holder: dict[str, Any], stale_after: float) -> None:
    """Creates the lock, or takes a stale one over; raises WorkdirInUseError if it is live."""
    data = _encode(holder)
    seen = None
    for _ in range(_ATTEMPTS):
        if storage.create(data):
            return
        seen = storage.read()
        if seen is None:  # released meanwhile
            continue
        if (seen.holder or {}).get("token") == holder["token"]:
            storage.adopt(seen)  # our own create, retried by the client after a lost reply
            return
        reason = stale_reason(seen, stale_after)
        if reason is None:
            break
        if storage.take_over(seen, data):
            logging.warning(
                "%s: took over a stale lock (%s) held by %s",
                storage.path,
                reason,
                describe(seen.holder),
            )
            return
    raise refusal(storage.path, seen, stale_after)


def _process_index_count() -> tuple[int, int]:
    """(jax.process_index(), jax.process_count()), without starting a JAX backend in a
    single-process run (the scoring command may never need one)."""
    jax = sys.modules.get("jax")
    started = jax is not None and jax.distributed.is_initialized()
    if not started and not distributed.is_multi_process_environment():
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def _broadcast_ok(ok: bool) -> bool:
    """Process 0's `ok`, on every process."""
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _take(
    workdir: str, command: str | None, count: int, stale_after: float
) -> tuple[LocalLock | GcsLock | None, dict[str, Any]]:
    """Process 0's part: the storage and holder record of a lock it now holds."""
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _iso(_now()),
        "heartbeat": _iso(_now()),
        "command": command or shlex.join(sys.argv),
        "process_count": count,
        "token": uuid.uuid4().hex,  # which run wrote a lock, whatever else matches
    }
    storage = _storage(workdir)
    if storage is not None:
        acquire(storage, holder, stale_after)
    return storage, holder


@contextlib.contextmanager
def hold(
    workdir: str,
    command: str | None = None,
    *,
    every_process: bool = True,
    stale_after: float | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> Iterator[str | None]:
    """Holds WORKDIR's lock for the `with` block; yields the lock path (None where unlocked).

    command: what the holder runs, shown to refused runs (default: this process's argv).
    every_process: every process of a multi-process run enters together (entry points):
    process 0 takes the lock and tells the others whether it did, so that all stop if it
    did not. False for code that process 0 runs alone (the study's scoring stage).
    stale_after: seconds without a heartbeat before a lock is stale (default stale_after_s()).
    """
    index, count = _process_index_count()
    stale_after = stale_after_s() if stale_after is None else stale_after
    storage, holder, error = None, {}, None
    if index == 0:
        try:
            storage, holder = _take(workdir, command, count, stale_after)
        except Exception as e:  # raised below, once the other processes know
            error = e
    if count > 1 and every_process:
        taken = _broadcast_ok(error is None)
        if not taken and error is None:
            raise WorkdirInUseError(f"{workdir}: process 0 could not take its lock: see its log")
    if error is not None:
        raise error
    if storage is None:  # not process 0, or a URL that cannot be locked
        yield None
        return
    heartbeat = _Heartbeat(storage, holder, heartbeat_s)
    heartbeat.start()
    try:
        yield storage.path
    finally:
        heartbeat.stopped.set()
        heartbeat.join(timeout=60)
        try:
            storage.release(holder["token"])
        except Exception as error:  # never hide the run's own error; the next run takes over
            logging.warning("%s: could not delete the lock (%s)", storage.path, error)
