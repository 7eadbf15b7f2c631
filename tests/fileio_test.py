"""toxjax.fileio: atomic writes, and the same helpers for local paths and URLs (ram://)."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle

import numpy as np
import pytest

from toxjax import fileio


def _temp_files(directory) -> list[str]:
    return [name for name in os.listdir(directory) if fileio.TMP_MARKER in name]


def test_atomic_file_appears_whole_only_on_commit(tmp_path):
    path = str(tmp_path / "out.jsonl")
    with fileio.AtomicFile(path) as out:
        out.write(b"line 1\n")
        out.write(b"line 2\n")
        assert not os.path.exists(path)
        assert _temp_files(tmp_path) == [os.path.basename(out.tmp_path)]
        assert os.path.basename(out.tmp_path).startswith(".out.jsonl.tmp-")
        out.commit()
    assert (tmp_path / "out.jsonl").read_bytes() == b"line 1\nline 2\n"
    assert _temp_files(tmp_path) == []


def test_error_before_commit_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_bytes(b"old\n")
    with pytest.raises(RuntimeError, match="killed"), fileio.AtomicFile(str(path)) as out:
        out.write(b"half of the new")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old\n"
    assert _temp_files(tmp_path) == []
    fileio.write_atomic(str(path), b"new\n")
    assert path.read_bytes() == b"new\n"


class _FullDisk(io.FileIO):
    """A file on a full disk: every write fails with ENOSPC."""

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("buffered", [False, True], ids=["at write", "at commit"])
def test_a_full_disk_names_the_file_and_the_bytes_and_leaves_no_temp_file(
    tmp_path, monkeypatch, buffered
):
    """Unbuffered, write() fails; buffered, the bytes reach the disk (and fail) at commit."""

    def full_disk_open(path, mode="r", **kwargs):
        raw = _FullDisk(path, "wb")
        return io.BufferedWriter(raw) if buffered else raw

    monkeypatch.setattr(fileio, "open", full_disk_open, raising=False)  # shadows the builtin
    path = str(tmp_path / "manifest.json")
    with pytest.raises(fileio.DiskFullError) as full:
        fileio.write_atomic(path, b"x" * 1234)
    assert isinstance(full.value, OSError) and full.value.errno == errno.ENOSPC
    assert (full.value.path, full.value.num_bytes) == (path, 1234)
    assert f"no space left on device writing {path} (1234 bytes)" in str(full.value)
    assert "free space" in str(full.value)
    assert isinstance(full.value.__cause__, OSError)  # the original error is kept
    assert os.listdir(tmp_path) == []  # neither the file nor its temporary file
    copy = pickle.loads(pickle.dumps(full.value))  # as a Beam worker's error travels
    assert (str(copy), copy.errno, copy.num_bytes) == (str(full.value), errno.ENOSPC, 1234)


def test_local_helpers(tmp_path, monkeypatch):
    assert not fileio.is_url(str(tmp_path)) and fileio.is_url("gs://bucket/x")
    directory = fileio.join(str(tmp_path), "a", "b")
    assert directory == os.path.join(str(tmp_path), "a", "b")
    assert fileio.list_dir(directory) == []  # missing: nothing listed, no error
    fileio.make_dirs(directory)
    fileio.make_dirs(directory)  # exists already: fine
    for name in ("z.jsonl", "a.jsonl", "m.txt"):
        fileio.write_atomic(fileio.join(directory, name), name.encode())
    assert fileio.list_dir(directory) == ["a.jsonl", "m.txt", "z.jsonl"]
    assert fileio.size(fileio.join(directory, "m.txt")) == 5
    assert fileio.read_bytes(fileio.join(directory, "z.jsonl")) == b"z.jsonl"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fileio.glob_files("~/a/b/*.jsonl") == [
        os.path.join(directory, "a.jsonl"),
        os.path.join(directory, "z.jsonl"),
    ]
    fileio.remove(fileio.join(directory, "m.txt"))
    assert not fileio.exists(fileio.join(directory, "m.txt"))


def test_url_helpers_go_through_tf_gfile(tmp_path):
    """ram:// is TensorFlow's in-memory filesystem: the code path gs:// paths take."""
    root = f"ram://{tmp_path.name}-fileio/"
    directory = fileio.join(root, "out", "shards")
    assert directory == f"ram://{tmp_path.name}-fileio/out/shards"
    assert fileio.list_dir(directory) == []
    fileio.make_dirs(directory)
    with fileio.AtomicFile(fileio.join(directory, "b.jsonl")) as out:
        out.write(b'{"x": 1}\n')
        assert not fileio.exists(fileio.join(directory, "b.jsonl"))
        out.commit()
    fileio.write_atomic(fileio.join(directory, "a.jsonl"), b"{}\n")
    fileio.make_dirs(fileio.join(directory, "sub"))
    assert fileio.list_dir(directory) == ["a.jsonl", "b.jsonl", "sub"]
    assert fileio.size(fileio.join(directory, "b.jsonl")) == 9
    with fileio.open_read(fileio.join(directory, "b.jsonl")) as f:
        assert f.read() == b'{"x": 1}\n'
    assert fileio.glob_files(f"{directory}/*.jsonl") == [
        f"{directory}/a.jsonl",
        f"{directory}/b.jsonl",
    ]
    fileio.remove(fileio.join(directory, "a.jsonl"))
    assert fileio.list_dir(directory) == ["b.jsonl", "sub"]


def test_read_jsonl_yields_line_numbers_and_skips_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(fileio.read_jsonl(str(path))) == [(1, {"a": 1}), (3, {"a": 2})]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"a\.jsonl: no such file"),
        (b"", r"a\.jsonl: empty: no JSON records"),
        (b"\n  \n", r"a\.jsonl: empty: no JSON records"),
        (b'{"a": 1}\n{"a": \n', r"a\.jsonl:2: invalid JSON \(Expecting value at column"),
        (b'{"a": 1}\n[1, 2]\n', r"a\.jsonl:2: expected a JSON object, got list"),
        (b'{"a": 1}\n{"a": "\xff"}\n', r"a\.jsonl:2: invalid UTF-8"),
    ],
)
def test_read_jsonl_errors_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "a.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(fileio.FileFormatError, match=message):
        list(fileio.read_jsonl(str(path)))


def test_read_jsonl_allows_an_empty_file_when_asked(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"")
    assert list(fileio.read_jsonl(str(path), allow_empty=True)) == []


def test_open_write_refuses_to_append_to_a_url():
    with pytest.raises(ValueError, match="cannot append"):
        fileio.open_write("gs://bucket/log.jsonl", "a")


def test_jsonl_is_strict_json(tmp_path):
    path = tmp_path / "out.jsonl"
    records = [
        {"x": np.float32(0.5), "nan": math.nan, "arr": np.array([1, 2]), "flag": np.bool_(1)}
    ]
    assert fileio.write_jsonl(str(path), records) == 1
    assert json.loads(path.read_text()) == {"x": 0.5, "nan": None, "arr": [1, 2], "flag": True}
    as_json = fileio.jsonable({"inf": float("inf"), "t": (1, np.int64(2))})
    assert as_json == {"inf": None, "t": [1, 2]}
