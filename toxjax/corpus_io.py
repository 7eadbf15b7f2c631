"""Text corpora (JSONL, TFRecord, TFDS, the demo corpus) as one deterministic record sequence.

The scoring job needs three things from an input: a cheap count of its records (to plan shards
before scoring anything), a way to read any contiguous range of records (so a shard can be
scored alone, by a local loop or a Beam worker), and per-record validation that names the
file, line and field of every bad record. Records are numbered 1-based per file ("line"); for
TFRecord and TFDS inputs the number is the record's position in the file or split.

Files are read with the builtin `open` for local paths and `tf.io.gfile` for URLs (gs://...),
so TensorFlow is only imported when an input or output actually needs it.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import dataclasses
import functools
import glob as glob_lib
import gzip
import json
import os
import re
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

import numpy as np

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
_CHUNK_BYTES = 1 << 20
# A JSON escape that may decode to a lone surrogate (which UTF-8 cannot encode).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# "<name>[/<config>][:<version>]:<split>"; the split may hold colons ("train[10:20]").
_TFDS_SPEC = re.compile(r"^(?P<name>[^:\[\]]+(?::[\d*]+\.[\d*]+\.[\d*]+)?):(?P<split>.+)$")


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
# Files: local paths through the OS, URLs (gs://...) through tf.io.gfile.


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


def glob_files(pattern: str) -> list[str]:
    if is_url(pattern):
        return sorted(tf_module().io.gfile.glob(pattern))
    return sorted(os.path.abspath(p) for p in glob_lib.glob(os.path.expanduser(pattern)))


def open_read(path: str) -> BinaryIO:
    if is_url(path):
        return tf_module().io.gfile.GFile(path, "rb")
    return open(path, "rb")


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


def _check_text(text: Any, source: str, line: int, field: str, max_doc_chars: int) -> str:
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


def _jsonable(value: Any) -> Any:
    """numpy/bytes values (TFDS, TFRecord) as JSON values; non-UTF-8 bytes as base64."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"bytes_base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.ndarray):
        return [_jsonable(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _decode_text_bytes(value: Any, source: str, line: int, field: str) -> Any:
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


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_field_with_surrogates(value: Any, prefix: str = "") -> str | None:
    if isinstance(value, str):
        return prefix if _has_lone_surrogate(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _has_lone_surrogate(key):
                return f"{prefix}.{key}".lstrip(".")
            found = _first_field_with_surrogates(item, f"{prefix}.{key}".lstrip("."))
            if found is not None:
                return found
    if isinstance(value, list):
        for item in value:
            found = _first_field_with_surrogates(item, prefix)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------------------------
# Corpora.


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
        value = _decode_text_bytes(value, source, line, self.text_field)
        return _check_text(value, source, line, self.text_field, self.max_doc_chars)

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


class _FileCorpus(Corpus):
    """Files named by comma-separated globs, read in sorted order."""

    def __init__(self, spec: str, patterns: str, text_field: str, max_doc_chars: int):
        super().__init__(spec, text_field, max_doc_chars)
        self.patterns = patterns

    def sources(self) -> list[str]:
        files: set[str] = set()
        for pattern in filter(None, (p.strip() for p in self.patterns.split(","))):
            matches = glob_files(pattern)
            if not matches:
                raise InputError(f"no input files match {pattern!r}")
            files.update(matches)
        if not files:
            raise InputError(f"no input file patterns in {self.spec!r}")
        return sorted(files)


class JsonlCorpus(_FileCorpus):
    """JSON Lines files (`.gz` decompressed), read as bytes so bad UTF-8 is caught per line."""

    @staticmethod
    def _open_file(path: str) -> BinaryIO:
        stream = open_read(path)
        if not path.endswith(".gz"):
            return stream
        unpacked = gzip.GzipFile(fileobj=stream, mode="rb")
        unpacked.myfileobj = stream  # GzipFile closes `myfileobj` with itself
        return unpacked

    def count(self, source: str, first_global: int, every: int) -> tuple[int, dict[int, int]]:
        # Newlines are counted with numpy on 1 MiB chunks: no per-line Python work.
        offsets: dict[int, int] = {}
        boundary = (-first_global) % every  # first local line that starts a shard
        newlines, position, last_byte = 0, 0, 10
        with self._open_file(source) as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
                while boundary <= newlines + len(ends):
                    if boundary > 0:  # line `boundary` starts right after newline `boundary - 1`
                        offsets[boundary] = position + int(ends[boundary - newlines - 1]) + 1
                    boundary += every
                newlines += len(ends)
                position += len(chunk)
                last_byte = chunk[-1]
        count = newlines + (1 if last_byte != 10 else 0)
        return count, {line: offset for line, offset in offsets.items() if line < count}

    def _open(self, segment: Segment) -> BinaryIO:
        stream = self._open_file(segment.source)
        if segment.byte_offset is not None:
            stream.seek(segment.byte_offset)  # gzip: decompresses forward to the offset
        else:
            for _ in range(segment.start):
                stream.readline()
        return stream

    def _next(self, stream: BinaryIO) -> bytes | None:
        return stream.readline() or None

    def decode(self, raw: RawRecord) -> Document:
        source, line, data = raw
        utf8_error = None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            utf8_error = f"byte 0x{data[e.start]:02x} at offset {e.start} of the line"
            text = data.decode("utf-8", "surrogateescape")  # to find the field it is in
        if not text.strip():
            raise BadRecordError(source, line, None, MALFORMED_JSON, "blank line")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            if utf8_error:
                raise BadRecordError(source, line, None, INVALID_UTF8, utf8_error) from None
            raise BadRecordError(
                source, line, None, MALFORMED_JSON, f"{e.msg} at column {e.colno}"
            ) from None
        if not isinstance(record, dict):
            raise BadRecordError(
                source,
                line,
                None,
                NOT_AN_OBJECT,
                f"expected a JSON object, got {type(record).__name__}",
            )
        if utf8_error or _SURROGATE_ESCAPE.search(data):
            field = _first_field_with_surrogates(record)
            if field is not None or utf8_error:
                detail = utf8_error or "escape decodes to a lone surrogate"
                raise BadRecordError(source, line, field or None, INVALID_UTF8, detail)
        text = self._text(record, source, line)
        return Document(source, line, record, text)


class TFRecordCorpus(_FileCorpus):
    """TFRecord files of tf.train.Example; the text is a one-value bytes feature."""

    def _dataset(self, source: str):
        tf = tf_module()
        compression = "GZIP" if source.endswith(".gz") else ""
        return tf.data.TFRecordDataset(source, compression_type=compression)

    def count(self, source: str, first_global: int, every: int) -> tuple[int, dict[int, int]]:
        dataset = self._dataset(source)
        return int(dataset.reduce(np.int64(0), lambda n, _: n + 1)), {}

    def _open(self, segment: Segment) -> Iterator[bytes]:
        return iter(self._dataset(segment.source).skip(segment.start).as_numpy_iterator())

    def decode(self, raw: RawRecord) -> Document:
        source, line, data = raw
        from google.protobuf.message import DecodeError

        example = tf_module().train.Example()
        try:
            example.ParseFromString(data)
        except DecodeError as e:
            raise BadRecordError(source, line, None, MALFORMED_EXAMPLE, str(e)) from None
        features = example.features.feature
        if self.text_field not in features:
            raise BadRecordError(source, line, self.text_field, MISSING_FIELD, "no such feature")
        text_feature = features[self.text_field]
        kind = text_feature.WhichOneof("kind")
        values = list(getattr(text_feature, kind).value) if kind else []
        if kind != "bytes_list" or len(values) != 1:
            raise BadRecordError(
                source,
                line,
                self.text_field,
                NON_STRING_FIELD,
                f"expected a bytes feature with one value, got {kind or 'an empty feature'} "
                f"with {len(values)} values",
            )
        text = _decode_text_bytes(values[0], source, line, self.text_field)
        text = _check_text(text, source, line, self.text_field, self.max_doc_chars)
        record = {}
        for name in sorted(features):
            feature = features[name]
            kind = feature.WhichOneof("kind")
            items = _jsonable(list(getattr(feature, kind).value)) if kind else []
            record[name] = items[0] if len(items) == 1 else items
        record[self.text_field] = text
        return Document(source, line, record, text)


class TfdsCorpus(Corpus):
    """A TFDS split, read in file order; `<name>[/<config>][:<version>]:<split>`.

    Shards are read by absolute split slices ("train[1000:2000]"). Datasets without split
    metadata (e.g. under tfds.testing.mock_data) are counted by iteration and read by skipping.
    """

    def __init__(
        self,
        spec: str,
        body: str,
        text_field: str,
        max_doc_chars: int,
        data_dir: str | None = None,
        download: bool = False,
    ):
        super().__init__(spec, text_field, max_doc_chars)
        match = _TFDS_SPEC.match(body)
        if not match:
            raise InputError(f"bad TFDS input {spec!r}: expected 'tfds:<name>[/<config>]:<split>'")
        self.name, self.split = match.group("name"), match.group("split")
        self.data_dir, self.download = data_dir, download
        self._pieces: list[tuple[str, int, int]] | None = None
        self._prepared = False

    def _tfds(self):
        tf_module()
        import tensorflow_datasets as tfds

        if self.download and not self._prepared:
            tfds.builder(self.name, data_dir=self.data_dir).download_and_prepare()
        self._prepared = True
        return tfds

    def _load(self, split: str):
        tfds = self._tfds()
        try:
            return tfds.load(
                self.name,
                split=split,
                data_dir=self.data_dir,
                download=False,
                shuffle_files=False,
                read_config=tfds.ReadConfig(interleave_cycle_length=1),
            )
        except AssertionError as e:  # TFDS reports "could not find data" as an AssertionError
            raise InputError(
                f"{self.spec}: {e}. Prepare it first, pass --tfds_data_dir, or pass "
                "--tfds_download to let the scoring job download and prepare it"
            ) from None

    def sources(self) -> list[str]:
        return [self.spec]

    def count(self, source: str, first_global: int, every: int) -> tuple[int, dict[int, int]]:
        tfds = self._tfds()
        splits = tfds.builder(self.name, data_dir=self.data_dir).info.splits
        if splits:
            instructions = tfds.core.ReadInstruction.from_spec(self.split).to_absolute(splits)
            self._pieces = [  # None bounds mean the split's start and end
                (
                    i.splitname,
                    i.from_ or 0,
                    splits[i.splitname].num_examples if i.to is None else i.to,
                )
                for i in instructions
            ]
            return sum(stop - start for _, start, stop in self._pieces), {}
        dataset = self._load(self.split)
        cardinality = int(dataset.cardinality())
        if cardinality >= 0:
            return cardinality, {}
        return int(dataset.reduce(np.int64(0), lambda n, _: n + 1)), {}

    def _slice_from(self, start: int) -> str | None:
        """The split expression for records [start, end) of the (possibly composite) split."""
        if self._pieces is None:
            return None
        parts, skipped = [], 0
        for name, first, stop in self._pieces:
            size = stop - first
            if start < skipped + size:
                parts.append(f"{name}[{first + max(0, start - skipped)}:{stop}]")
            skipped += size
        return "+".join(parts) if parts else None

    def _open(self, segment: Segment) -> Iterator[dict]:
        tfds = self._tfds()
        if self._pieces is None and segment.start > 0:
            self.count(segment.source, 0, 1)  # a fresh worker: learn the split's layout
        sliced = self._slice_from(segment.start) if segment.start > 0 else self.split
        dataset = self._load(sliced or self.split)
        if sliced is None and segment.start > 0:
            dataset = dataset.skip(segment.start)
        return iter(tfds.as_numpy(dataset))

    def decode(self, raw: RawRecord) -> Document:
        source, line, example = raw
        text = self._text(example, source, line)
        return Document(source, line, _jsonable(example), text)


class DemoCorpus(Corpus):
    """The embedded demo corpus (toxjax.demo_corpus); `demo` or `demo:<num_docs>`."""

    def __init__(self, spec: str, num_docs: int | None, text_field: str, max_doc_chars: int):
        super().__init__(spec, text_field, max_doc_chars)
        self.num_docs = num_docs
        self._records: list[dict] | None = None

    def _all(self) -> list[dict]:
        if self._records is None:
            from toxjax import demo_corpus

            num_docs = demo_corpus.DEFAULT_NUM_DOCS if self.num_docs is None else self.num_docs
            self._records = demo_corpus.generate(num_docs)
        return self._records

    def sources(self) -> list[str]:
        return [self.spec]

    def count(self, source: str, first_global: int, every: int) -> tuple[int, dict[int, int]]:
        return len(self._all()), {}

    def _open(self, segment: Segment) -> Iterator[dict]:
        return iter(self._all()[segment.start :])

    def decode(self, raw: RawRecord) -> Document:
        source, line, record = raw
        text = self._text(record, source, line)
        return Document(source, line, dict(record), text)


def open_corpus(
    input_spec: str,
    *,
    text_field: str = "text",
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
    tfds_data_dir: str | None = None,
    tfds_download: bool = False,
) -> Corpus:
    """`demo[:<num_docs>]` | `[jsonl:]<glob>[,<glob>...]` | `tfrecord:<glob>` | `tfds:<...>`.

    Unprefixed globs are JSONL unless every pattern names `.tfrecord` files.
    """
    if not text_field:
        raise ValueError("text_field must be a non-empty field name")
    if max_doc_chars < 1:
        raise ValueError(f"max_doc_chars must be >= 1, got {max_doc_chars}")
    kind, _, body = input_spec.partition(":")
    if kind == "demo":
        if body and not body.isdigit():
            raise InputError(f"bad demo input {input_spec!r}: expected 'demo' or 'demo:<num_docs>'")
        return DemoCorpus(input_spec, int(body) if body else None, text_field, max_doc_chars)
    if kind == "tfds":
        return TfdsCorpus(input_spec, body, text_field, max_doc_chars, tfds_data_dir, tfds_download)
    if kind == "tfrecord":
        return TFRecordCorpus(input_spec, body, text_field, max_doc_chars)
    if kind == "jsonl":
        return JsonlCorpus(input_spec, body, text_field, max_doc_chars)
    patterns = [p.strip() for p in input_spec.split(",") if p.strip()]
    if patterns and all(re.search(r"\.tfrecords?(\.gz)?$", p) for p in patterns):
        return TFRecordCorpus(input_spec, input_spec, text_field, max_doc_chars)
    return JsonlCorpus(input_spec, input_spec, text_field, max_doc_chars)
