"""Random access to the documents of a scored directory: what the streaming input shuffles.

The training input (Grain) reads documents by global index in a shuffled order, so every
scored shard gets a line index: the byte offset and line number of each record, 16 bytes per
document (well under 0.1 byte per training token), written once per corpus next to the shard
(`<shard>.index.npy`, local disk or gs://) and shared by every strategy, vocabulary and host.
The scoring job writes it as it commits each shard; a directory scored before gets it on first
read. Records are checked exactly as the sequential reader checks them (`scored_data`), so a
bad record stops training with the same "path:line: field ..." error.
"""

from __future__ import annotations

import bisect
import io
import os
import threading
from typing import Any

import numpy as np
from absl import logging

from toxjax import fileio
from toxjax.data.scored_data import (
    ScoredCorpus,
    ScoredDataError,
    checked_fields,
    segment_fields,
)
from toxjax.scoring.line_index import INDEX_SUFFIX, index_bytes, line_index


def write_shard_index(shard_path: str) -> np.ndarray:
    """Builds and publishes (atomically) the line index of one shard file."""
    index = line_index(fileio.read_bytes(shard_path))
    fileio.write_atomic(shard_path + INDEX_SUFFIX, index_bytes(index))
    return index


def load_shard_index(shard_path: str, num_records: int) -> np.ndarray:
    """The shard's line index, built and written on first use; checked against the manifest."""
    if not fileio.exists(shard_path):
        raise ScoredDataError(f"{shard_path}: scored shard listed in the manifest does not exist")
    path = shard_path + INDEX_SUFFIX
    if fileio.exists(path):
        index = np.load(io.BytesIO(fileio.read_bytes(path)), allow_pickle=False)
    else:
        logging.info("Indexing %s (once per corpus)", shard_path)
        try:
            index = write_shard_index(shard_path)
        except OSError as error:  # a read-only corpus: index in memory, every run
            logging.warning("Cannot write %s (%s): indexing in memory", path, error)
            index = line_index(fileio.read_bytes(shard_path))
    if index.ndim != 2 or len(index) != num_records:
        raise ScoredDataError(
            f"{path}: indexes {len(index)} records but the manifest lists num_records="
            f"{num_records}: the shard was rewritten after scoring; delete the index to rebuild"
        )
    return index


class ScoredDocuments:
    """A Grain random-access source: document i of a scored directory (its shards in manifest
    order) as {"text", "score", "key"} (+ "segment_ends", "segment_scores" for SEGMENT)."""

    def __init__(self, corpus: ScoredCorpus, attribute: str, *, segments: bool = False):
        self.corpus = corpus
        self.attribute = attribute
        self.segments = segments
        counts = [shard.num_records for shard in corpus.shards]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self._indexes: dict[int, np.ndarray] = {}
        self._local = threading.local()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"ScoredDocuments({self.corpus.directory!r}, {self.attribute!r})"

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own files
        return {**self.__dict__, "_indexes": {}, "_local": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"document {index} of {len(self)} in {self.corpus.directory}")
        shard_number = bisect.bisect_right(self._starts, index) - 1
        shard = self.corpus.shards[shard_number]
        if shard_number not in self._indexes:
            self._indexes[shard_number] = load_shard_index(shard.path, shard.num_records)
        offset, line_number = self._indexes[shard_number][index - self._starts[shard_number]]
        where = f"{shard.path}:{int(line_number)}"
        record = _parse(self._read_line(shard.path, int(offset)), where)
        text, score, key = checked_fields(record, self.attribute, self.corpus.text_field, where)
        document = {"text": text, "score": score, "key": key}
        if self.segments:
            ends, scores = segment_fields(record, self.attribute, text, where)
            document["segment_ends"], document["segment_scores"] = ends, scores
        return document

    def _read_line(self, path: str, offset: int) -> bytes:
        files = self._local.__dict__.setdefault("files", {})
        try:
            if path not in files:
                files[path] = fileio.open_read(path)
            handle = files[path]
            if not fileio.is_url(path) and os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                raise FileNotFoundError(f"{path} was replaced")  # deleted or rewritten
            handle.seek(offset)
            return handle.readline()
        except Exception as error:  # noqa: BLE001 (OSError locally; tf.errors.OpError on gs://)
            files.pop(path, None)
            raise ScoredDataError(
                f"{path}: scored shard listed in the manifest does not exist or cannot be read "
                f"({error}); was it deleted or moved while training?"
            ) from None


def _parse(line: bytes, where: str) -> dict[str, Any]:
    """One record, with read_jsonl's errors; a truncated shard ends in an unreadable line."""
    try:
        return fileio.parse_json_object(line, where)
    except fileio.FileFormatError as error:
        hint = (
            "; was the shard truncated or rewritten after scoring?" if "JSON" in str(error) else ""
        )
        raise ScoredDataError(f"{error}{hint}") from None
