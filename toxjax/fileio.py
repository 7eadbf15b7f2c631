"""Files at local paths or URLs (gs://...), and writes that appear whole or not at all.

Local paths go through the OS, so a commit is fsync + rename and survives a crash; URLs go
through tf.io.gfile, so TensorFlow is only imported when a path actually needs it. The scoring
job reads its input and writes its resumable output through this one layer.
"""

from __future__ import annotations

import contextlib
import functools
import glob as glob_lib
import os
import uuid
from typing import BinaryIO

TMP_MARKER = ".tmp-"  # in the names of unfinished files: "<dir>/.<name>.tmp-<random>"


@functools.cache
def tf_module():
    """Imports TensorFlow on first use, hiding GPUs so TF never takes memory from JAX."""
    import tensorflow as tf

    # RuntimeError: devices already initialised by another user of TF; keep them as they are.
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")
    return tf


def is_url(path: str) -> bool:
    return "://" in path


def _gfile():
    return tf_module().io.gfile


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
    filesystem); commit() flushes and fsyncs it, then renames it over `path`.
    """

    def __init__(self, path: str):
        self.path = path
        directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
        self.tmp_path = f"{directory}/.{name}{TMP_MARKER}{uuid.uuid4().hex[:12]}"
        self._remote = is_url(path)
        if self._remote:
            self._file = _gfile().GFile(self.tmp_path, "wb")
        else:  # closed by commit() or __exit__
            self._file = open(self.tmp_path, "wb")  # noqa: SIM115
        self._committed = False

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
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
            self._file.close()
            if exists(self.tmp_path):
                remove(self.tmp_path)


def write_atomic(path: str, data: bytes) -> None:
    with AtomicFile(path) as out:
        out.write(data)
        out.commit()
