"""Text corpora (JSONL, Parquet, TFRecord, TFDS, demo corpus) as one deterministic record sequence.

The scoring job needs three things from an input: a cheap count of its records (to plan shards
before scoring anything), a way to read any contiguous range of records (so a shard can be
scored alone, by a local loop or a Beam worker), and per-record validation that names the
file, line and field of every bad record. Records are numbered 1-based per file ("line"); for
Parquet, TFRecord and TFDS inputs the number is the record's (row's) position in the file or
split.

This module holds what every format shares (records, validation, shard plans, the Corpus
interface) and picks the reader for an input spec; the readers themselves are in
toxjax.scoring.readers, and files go through toxjax.fileio (TensorFlow only for URLs).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

# Re-exported: the file helpers were first defined here, and callers still import them here.

# Why a record is rejected; the keys of the summary's per-reason skip counts.
MALFORMED_JSON = "malformed_json"
MALFORMED_EXAMPLE = "malformed_example"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
NON_STRING_FIELD = "non_string_field"
EMPTY_TEXT = "empty_text"
INVALID_UTF8 = "invalid_utf8"
TOO_LONG = "too_long"
REASONS = (
    MALFORMED_JSON,
    MALFORMED_EXAMPLE,
    NOT_AN_OBJECT,
    MISSING_FIELD,
    NON_STRING_FIELD,
    EMPTY_TEXT,
    INVALID_UTF8,
    TOO_LONG,
)

DEFAULT_MAX_DOC_CHARS = 1_000_000


class InputError(ValueError):
    """The input as a whole is unusable (bad spec, no files, changed since planning)."""


class BadRecordError(ValueError):
    """One record is unusable; says where (file, line, field) and why (a REASONS key)."""

    def __init__(self, file: str, line: int, field: str | None, reason: str, detail: str = ""):
        self.file, self.line, self.field = file, line, field
        self.reason, self.detail = reason, detail
        where = f"{file}:{line}: " + (f"field {field!r}: " if field is not None else "")
        super().__init__(where + reason + (f": {detail}" if detail else ""))

    def __reduce__(self):  # picklable, e.g. when a Beam worker reports it
        return type(self), (self.file, self.line, self.field, self.reason, self.detail)

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ("file", "line", "field", "reason", "detail")}


# ------------------------------------------------------------------------------------------
# Records and shard plans.


class RawRecord(NamedTuple):
    """One undecoded record: its source (file), 1-based line/record number and payload."""

    source: str
    line: int
    payload: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """A validated record: its original fields (JSON-able) and the text to score."""

    source: str
    line: int
    fields: dict[str, Any]
    text: str


@dataclasses.dataclass(frozen=True)  # no slots: Python 3.10 cannot unpickle those
class Segment:
    """Records [start, stop) (0-based) of one source; byte_offset locates `start` in JSONL."""

    source: str
    start: int
    stop: int
    byte_offset: int | None = None


@dataclasses.dataclass(frozen=True)  # no slots: Python 3.10 cannot unpickle those
class ShardSpec:
    """Global records [first_record, first_record + num_records), possibly spanning files."""

    index: int
    first_record: int
    num_records: int
    segments: tuple[Segment, ...]


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    input_spec: str
    sources: tuple[tuple[str, int], ...]  # (source, number of records), in reading order
    records_per_shard: int
    shards: tuple[ShardSpec, ...]

    @property
    def num_records(self) -> int:
        return sum(count for _, count in self.sources)


def plan_shards(corpus: Corpus, records_per_shard: int, *, progress: bool = False) -> ShardPlan:
    """Cuts the input into shards of `records_per_shard` records: the same input, same shards.

    Bad records count as records here (they are skipped or rejected later), so the partition
    depends only on the input bytes, never on validation options.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    sources, offsets = [], {}
    total = 0
    from tqdm import tqdm

    for source in tqdm(
        corpus.sources(), desc="counting records", unit="files", disable=not progress
    ):
        count, source_offsets = corpus.count(source, total, records_per_shard)
        sources.append((source, count))
        offsets[source] = source_offsets
        total += count
    if total == 0:
        names = ", ".join(source for source, _ in sources) or corpus.spec
        raise InputError(f"{names}: empty: the input holds no records")
    shards: list[ShardSpec] = []
    segments: list[Segment] = []
    shard_start = 0
    position = 0
    for source, count in sources:
        local = 0
        while local < count:
            room = shard_start + records_per_shard - position
            take = min(room, count - local)
            offset = 0 if local == 0 else offsets[source].get(local)
            segments.append(Segment(source, local, local + take, offset))
            local += take
            position += take
            if position - shard_start == records_per_shard:
                shards.append(
                    ShardSpec(len(shards), shard_start, records_per_shard, tuple(segments))
                )
                segments, shard_start = [], position
    if segments:
        shards.append(ShardSpec(len(shards), shard_start, position - shard_start, tuple(segments)))
    return ShardPlan(corpus.spec, tuple(sources), records_per_shard, tuple(shards))


# ------------------------------------------------------------------------------------------
# Field access and validation shared by every format.


def get_field(record: dict[str, Any], path: str) -> Any:
    """`record[path]`, else a walk down dotted keys ("prompt.text"); KeyError if absent."""
    if path in record:
        return record[path]
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(path)
        value = value[key]
    return value


def check_text(text: Any, source: str, line: int, field: str, max_doc_chars: int) -> str:
    """The text to score; non-strings, blank and overlong texts are bad records, never scored."""
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        raise BadRecordError(
            source, line, field, NON_STRING_FIELD, f"expected a string, got {kind}"
        )
    if not text.strip():
        raise BadRecordError(source, line, field, EMPTY_TEXT, "text is empty or whitespace-only")
    if len(text) > max_doc_chars:
        raise BadRecordError(
            source, line, field, TOO_LONG, f"{len(text)} characters > max_doc_chars={max_doc_chars}"
        )
    return text


def decode_text_bytes(value: Any, source: str, line: int, field: str) -> Any:
    """UTF-8 bytes (TFRecord, TFDS) as str; any other value is left for check_text to judge."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRecordError(
                source,
                line,
                field,
                INVALID_UTF8,
                f"byte 0x{value[e.start]:02x} at offset {e.start}",
            ) from None
    return value


# ------------------------------------------------------------------------------------------
# The Corpus interface, and the reader for an input spec.


class Corpus(abc.ABC):
    """One input: its sources in reading order, record counts, range reads and decoding.

    A corpus keeps the stream of its last read open, so reading shards in order (the local
    loop) streams each file once, while any shard can still be read alone (a Beam worker).
    """

    def __init__(self, spec: str, text_field: str, max_doc_chars: int):
        self.spec, self.text_field, self.max_doc_chars = spec, text_field, max_doc_chars
        self._cached: tuple[str, int, Any] | None = None  # (source, next record, stream)

    @abc.abstractmethod
    def sources(self) -> list[str]: ...

    @abc.abstractmethod
    def count(self, source: str, first_global: int, every: int) -> tuple[int, dict[int, int]]:
        """Number of records in `source`, and byte offsets of records whose global index is a
        multiple of `every` (empty where the format seeks by record number instead)."""

    @abc.abstractmethod
    def _open(self, segment: Segment) -> Any:
        """A stream positioned at segment.start, read with `_next`."""

    def _next(self, stream: Any) -> Any:
        """The next payload, or None at the end of the source."""
        return next(stream, None)

    @abc.abstractmethod
    def decode(self, raw: RawRecord) -> Document:
        """Validates one record; raises BadRecordError naming file, line and field."""

    def _text(self, record: dict[str, Any], source: str, line: int) -> str:
        """The validated text field of a decoded record (bytes must be UTF-8)."""
        try:
            value = get_field(record, self.text_field)
        except KeyError:
            raise BadRecordError(source, line, self.text_field, MISSING_FIELD, "absent") from None
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        value = decode_text_bytes(value, source, line, self.text_field)
        return check_text(value, source, line, self.text_field, self.max_doc_chars)

    def read(self, segment: Segment) -> Iterator[RawRecord]:
        cached, self._cached = self._cached, None
        if cached is not None and cached[:2] == (segment.source, segment.start):
            stream = cached[2]
        else:
            self._close_stream(cached)
            stream = self._open(segment)
        for index in range(segment.start, segment.stop):
            payload = self._next(stream)
            if payload is None:
                raise InputError(
                    f"{segment.source} ended after {index} records but {segment.stop} were "
                    "counted when planning: the input changed while it was being scored"
                )
            yield RawRecord(segment.source, index + 1, payload)
        self._cached = (segment.source, segment.stop, stream)

    def read_shard(self, shard: ShardSpec) -> Iterator[RawRecord]:
        for segment in shard.segments:
            yield from self.read(segment)

    def close(self) -> None:
        self._close_stream(self._cached)
        self._cached = None

    @staticmethod
    def _close_stream(cached: tuple[str, int, Any] | None) -> None:
        if cached is not None and hasattr(cached[2], "close"):
            cached[2].close()
