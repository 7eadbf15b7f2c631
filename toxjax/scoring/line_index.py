"""The line index of a scored shard: byte offset and line number of every record.

The training input reads documents at random through `<shard>.index.npy`; the scoring job
writes it as it commits each shard, from the lines it wrote (no re-read). It lives here, in
the scoring layer that writes shards, so the data layer above can import it.
"""

from __future__ import annotations

import io

import numpy as np

INDEX_SUFFIX = ".index.npy"


def line_index(data: bytes) -> np.ndarray:
    """[records, 2] int64: (byte offset, 1-based line number) of every non-blank line, the
    lines `fileio.read_jsonl` yields."""
    buffer = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [len(data)]])
    numbers = np.arange(1, len(starts) + 1)
    keep = [bool(data[a:b].strip()) for a, b in zip(starts, stops, strict=True)]
    return np.stack([starts[keep], numbers[keep]], axis=1).astype(np.int64)


def index_bytes(index: np.ndarray) -> bytes:
    """The index as a .npy file (no pickle: any reader can load it safely)."""
    out = io.BytesIO()
    np.save(out, index, allow_pickle=False)
    return out.getvalue()


class LineIndexer:
    """line_index of a file written piece by piece, built from the pieces as they are written,
    so a shard is indexed without reading it back. Every piece but the last ends a line."""

    def __init__(self) -> None:
        self._parts = [line_index(b"")]
        self._num_bytes = 0
        self._num_lines = 0
        self._line_open = False

    def add(self, data: bytes) -> None:
        if not data:
            return
        if self._line_open:
            raise ValueError("LineIndexer: a piece was added after one that did not end a line")
        index = line_index(data)
        index[:, 0] += self._num_bytes
        index[:, 1] += self._num_lines
        self._parts.append(index)
        self._num_bytes += len(data)
        self._num_lines += data.count(b"\n")
        self._line_open = not data.endswith(b"\n")

    def index(self) -> np.ndarray:
        """Equal to line_index of the pieces joined."""
        return np.concatenate(self._parts)
