"""Files at local paths or URLs (gs://...), and writes that appear whole or not at all.

Local paths go through the OS, so a commit is fsync + rename and survives a crash; URLs go
through tf.io.gfile, so TensorFlow is only imported when a path actually needs it. Every
module reads and writes files through this one layer (kept instead of etils.epath: it is
small, already gives atomic durable commits, and needs no extra dependency), and every
JSON-lines file is read by `read_jsonl`, so errors always name the file and line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob as glob_lib
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, BinaryIO, TypeVar

import numpy as np

from toxjax.tf_import import import_tensorflow

T = TypeVar("T")
TMP_MARKER = ".tmp-"  # in the names of unfinished files: "<dir>/.<name>.tmp-<random>"


class FileFormatError(ValueError):
    """A file that is missing, empty or malformed; the message starts with `path[:line]:`."""


class DiskFullError(OSError):
    """A write that found no space left on the device (errno stays ENOSPC): the message names
    the file, the bytes being written and what to do, instead of a bare "[Errno 28]"."""

    def __init__(self, path: str, num_bytes: int, message: str | None = None):
        self.path, self.num_bytes = path, num_bytes
        self.message = message or (
            f"no space left on device writing {path} ({num_bytes} bytes): free space on that "
            "disk, or write to another directory"
        )
        super().__init__(errno.ENOSPC, self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # pickled across processes (Beam) with its own arguments
        return type(self), (self.path, self.num_bytes, self.message)


def is_url(path: str) -> bool:
    return "://" in path


def _gfile():
    return import_tensorflow().io.gfile


def glob_files(pattern: str) -> list[str]:
    """Sorted matches; local ones as absolute paths (`~` expanded)."""
    if is_url(pattern):
        return sorted(_gfile().glob(pattern))
    return sorted(os.path.abspath(p) for p in glob_lib.glob(os.path.expanduser(pattern)))


def open_read(path: str) -> BinaryIO:
    if is_url(path):
        return _gfile().GFile(path, "rb")
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def open_write(path: str, mode: str = "w") -> IO[Any]:
    """A file opened for writing ("w", "wb") or appending ("a"); not atomic (see AtomicFile).

    Appending to a gs:// object is not possible: callers that append write one file per run
    segment there instead.
    """
    if is_url(path):
        if mode.startswith("a"):
            raise ValueError(f"{path}: cannot append to a URL; write a new file instead")
        return _gfile().GFile(path, mode)
    encoding = None if "b" in mode else "utf-8"
    return open(path, mode, encoding=encoding)  # noqa: SIM115 (the caller closes it)


def read_json(path: str) -> Any:
    """One JSON document; a missing or malformed file names the path."""
    if not exists(path):
        raise FileFormatError(f"{path}: no such file")
    try:
        return json.loads(read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FileFormatError(f"{path}: invalid JSON ({error})") from None


def read_jsonl(path: str, *, allow_empty: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for every non-blank line of a JSON-lines file.

    The one JSON-lines reader: a missing or empty file, invalid JSON or a line that is not
    an object raises FileFormatError("path:line: ...") before the caller sees bad data.
    """
    if not exists(path):
        raise FileFormatError(f"{path}: no such file")
    count = 0
    with open_read(path) as f:
        for line_number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            count += 1
            yield line_number, parse_json_object(raw, f"{path}:{line_number}")
    if not count and not allow_empty:
        raise FileFormatError(f"{path}: empty: no JSON records")


def parse_json_object(raw: bytes, where: str) -> dict[str, Any]:
    """One JSON-lines record; errors start with `where` ("path:line")."""
    try:
        record = json.loads(raw)
    except UnicodeDecodeError as error:
        raise FileFormatError(f"{where}: invalid UTF-8 ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise FileFormatError(
            f"{where}: invalid JSON ({error.msg} at column {error.colno})"
        ) from None
    if not isinstance(record, dict):
        raise FileFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def join(*parts: str) -> str:
    """os.path.join for local paths; URLs always take "/" whatever the OS."""
    if is_url(parts[0]):
        return "/".join([parts[0].rstrip("/"), *parts[1:]])
    return os.path.join(*parts)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def size(path: str) -> int:
    return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def list_dir(path: str) -> list[str]:
    """Sorted entry names (no trailing "/"), or [] if the directory does not exist."""
    if is_url(path):
        return sorted(n.rstrip("/") for n in _gfile().listdir(path)) if exists(path) else []
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def make_dirs(path: str) -> None:
    _gfile().makedirs(path) if is_url(path) else os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    _gfile().remove(path) if is_url(path) else os.remove(path)


class AtomicFile:
    """A file that appears complete at `path` on commit(), or not at all.

    Writes go to a temporary file in the same directory (so the rename stays on one
    filesystem); commit() flushes and fsyncs it, then renames it over `path`. A full disk
    raises DiskFullError (naming the path and size) and leaves no temporary file.
    """

    def __init__(self, path: str):
        self.path = path
        self.num_bytes = 0  # written so far
        directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
        self.tmp_path = f"{directory}/.{name}{TMP_MARKER}{uuid.uuid4().hex[:12]}"
        self._remote = is_url(path)
        if self._remote:
            self._file = _gfile().GFile(self.tmp_path, "wb")
        else:  # closed by commit() or __exit__
            try:
                self._file = open(self.tmp_path, "wb")  # noqa: SIM115
            except OSError as error:  # no inode left is ENOSPC too
                self._disk_full(error, 0)
                raise
        self._committed = False

    def _disk_full(self, error: OSError, num_bytes: int) -> None:
        """Re-raises ENOSPC as DiskFullError; any other error is left to the caller."""
        if error.errno == errno.ENOSPC and not isinstance(error, DiskFullError):
            raise DiskFullError(self.path, num_bytes) from error

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as error:
            self._disk_full(error, self.num_bytes + len(data))
            raise
        self.num_bytes += len(data)

    def commit(self) -> None:
        try:
            self._commit()
        except OSError as error:  # buffered bytes reach the disk only now
            self._disk_full(error, self.num_bytes)
            raise

    def _commit(self) -> None:
        if self._remote:
            self._file.close()
            _gfile().rename(self.tmp_path, self.path, overwrite=True)
        else:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp_path, self.path)
            directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:  # make the rename itself durable
                os.fsync(directory)
            finally:
                os.close(directory)
        self._committed = True

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._committed:  # an error before commit: leave nothing behind
            with contextlib.suppress(OSError):  # closing flushes: a full disk fails again
                self._file.close()
            if exists(self.tmp_path):
                remove(self.tmp_path)


def write_atomic(path: str, data: bytes) -> None:
    with AtomicFile(path) as out:
        out.write(data)
        out.commit()


def jsonable(value: Any) -> Any:
    """Plain-JSON version of metrics/records: numpy scalars unwrapped, NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return [jsonable(item) for item in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return value


def from_fields(cls: type[T], values: Mapping[str, Any] | None, what: str) -> T:
    """The dataclass `cls` from a mapping (a config dict, a JSON object); a key that is not one
    of its fields is an error naming `what` ("unknown {what} fields [...]"), not ignored."""
    values = dict(values or {})
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} fields {unknown}; known: {sorted(known)}")
    return cls(**values)


def write_jsonl(
    path: str, records: Sequence[Mapping[str, Any]] | Iterator[Mapping[str, Any]]
) -> int:
    """Writes one strict-JSON object per line (NaN -> null); returns the number written."""
    count = 0
    with open_write(path) as f:
        for record in records:
            f.write(json.dumps(jsonable(record), ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count
