"""The input formats of toxjax.scoring.corpora: JSON Lines, Parquet, TFRecord, TFDS and the demo
corpus.

Each reader only knows how to count, seek and decode its format; the shared behaviour (range
reads that stream in order, field access, text validation) lives in corpora.Corpus, and
open_corpus picks the reader from the input spec. Parquet (how FineWeb, Dolma and RedPajama
ship) is counted from each file's footer and seeks by row group, so planning reads no data and
a shard reads only the row groups it needs.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import gzip
import json
import os
import re
from collections.abc import Collection, Iterator
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from toxjax.fileio import glob_files, is_url, open_read
from toxjax.scoring.corpora import (
    DEFAULT_MAX_DOC_CHARS,
    INVALID_UTF8,
    MALFORMED_EXAMPLE,
    MALFORMED_JSON,
    MISSING_FIELD,
    NON_STRING_FIELD,
    NOT_AN_OBJECT,
    BadRecordError,
    Corpus,
    Document,
    InputError,
    RawRecord,
    Segment,
    check_text,
    decode_text_bytes,
)
from toxjax.tf_import import import_tensorflow

_CHUNK_BYTES = 1 << 20
# A JSON escape that may decode to a lone surrogate (which UTF-8 cannot encode).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# "<name>[/<config>][:<version>]:<split>"; the split may hold colons ("train[10:20]").
_TFDS_SPEC = re.compile(r"^(?P<name>[^:\[\]]+(?::[\d*]+\.[\d*]+\.[\d*]+)?):(?P<split>.+)$")
# Parquet rows turned into Python objects at a time: a whole row group could be ~1 GB of text.
_PARQUET_BATCH_ROWS = 1024


def _jsonable(value: Any) -> Any:
    """numpy/bytes/Arrow values (TFDS, TFRecord, Parquet) as JSON values; non-UTF-8 bytes as
    base64, dates and times as ISO 8601, decimals as exact strings, durations in seconds."""
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
    if isinstance(value, list | tuple):  # tuples: the (key, value) pairs of a Parquet map
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
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


def _count_by_iteration(dataset) -> int:
    """Records of a tf.data pipeline whose size is not recorded anywhere."""
    return int(dataset.reduce(np.int64(0), lambda n, _: n + 1))


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
        tf = import_tensorflow()
        compression = "GZIP" if source.endswith(".gz") else ""
        return tf.data.TFRecordDataset(source, compression_type=compression)

    def count(self, source: str, first_global: int, every: int) -> tuple[int, dict[int, int]]:
        return _count_by_iteration(self._dataset(source)), {}

    def _open(self, segment: Segment) -> Iterator[bytes]:
        return iter(self._dataset(segment.source).skip(segment.start).as_numpy_iterator())

    def decode(self, raw: RawRecord) -> Document:
        source, line, data = raw
        from google.protobuf.message import DecodeError

        example = import_tensorflow().train.Example()
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
        text = decode_text_bytes(values[0], source, line, self.text_field)
        text = check_text(text, source, line, self.text_field, self.max_doc_chars)
        record = {}
        for name in sorted(features):
            feature = features[name]
            kind = feature.WhichOneof("kind")
            items = _jsonable(list(getattr(feature, kind).value)) if kind else []
            record[name] = items[0] if len(items) == 1 else items
        record[self.text_field] = text
        return Document(source, line, record, text)


class _UnreadableValue(NamedTuple):
    """A Parquet row with a string that is not UTF-8: decoded into an INVALID_UTF8 record."""

    field: str
    detail: str


def _invalid_utf8_value(column: Any, path: str) -> _UnreadableValue | None:
    """The first field (dotted into structs) of a one-row Arrow column that is not UTF-8."""
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        for index in range(column.type.num_fields):
            name = column.type.field(index).name
            found = _invalid_utf8_value(column.field(index), f"{path}.{name}")
            if found is not None:
                return found
        return None
    try:
        column.to_pylist()
    except UnicodeDecodeError as e:
        return _UnreadableValue(path, f"byte 0x{e.object[e.start]:02x} at offset {e.start}")
    return None


def _is_json_type(arrow_type: Any) -> bool:
    """Whether Arrow's to_pylist already gives JSON values for the type (so _jsonable's
    per-value walk, most of the reading time on wide rows, can be skipped)."""
    import pyarrow as pa

    types = pa.types
    if types.is_struct(arrow_type):
        return all(_is_json_type(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if types.is_list(arrow_type) or types.is_large_list(arrow_type):
        return _is_json_type(arrow_type.value_type)
    if types.is_fixed_size_list(arrow_type) or types.is_dictionary(arrow_type):
        return _is_json_type(arrow_type.value_type)
    simple = (types.is_string, types.is_large_string, types.is_integer, types.is_floating)
    return any(test(arrow_type) for test in (*simple, types.is_boolean, types.is_null))


def _parquet_rows(batch: Any, convert: list[str]) -> list[dict[str, Any] | _UnreadableValue]:
    """A record batch as row dicts, the `convert` columns made JSON values; a row holding
    invalid UTF-8 (Arrow checks it only when converting) becomes one bad record instead of
    failing the whole batch."""
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        rows = []
        for index in range(batch.num_rows):
            row = batch.slice(index, 1)
            try:
                rows.append(row.to_pylist()[0])
            except UnicodeDecodeError:
                names = enumerate(row.schema.names)
                found = (_invalid_utf8_value(row.column(i), name) for i, name in names)
                rows.append(next(filter(None, found), None) or _UnreadableValue("", "not UTF-8"))
    for name in convert:
        for row in rows:
            if isinstance(row, dict):
                row[name] = _jsonable(row[name])
    return rows


def _next_batch(batches: Iterator[Any], source: str, sizes: list[int], position: int) -> Any:
    """The next record batch, or None; unreadable data stops the run naming file and row group
    (a corrupt page cannot be skipped like a bad record: its rows cannot be told apart)."""
    import pyarrow as pa

    try:
        return next(batches, None)
    except (pa.ArrowException, OSError) as e:
        group, first = 0, 0
        while group < len(sizes) - 1 and first + sizes[group] <= position:
            first, group = first + sizes[group], group + 1
        raise InputError(
            f"{source}: unreadable Parquet data in row group {group} (records "
            f"{first + 1}-{first + sizes[group]}): {e}"
        ) from None


class ParquetCorpus(_FileCorpus):
    """Parquet files; one row is one record, every column kept (structs as nested objects).

    Counts come from the footer and a range read starts at the row group holding its first
    row, so neither planning nor a shard read in the middle of a file reads earlier data.
    """

    @staticmethod
    def _parquet_file(source: str) -> Any:
        """The file with its footer read; a file that cannot be read stops the run, naming it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not is_url(source) and os.path.isdir(source):  # Spark writes "x.parquet/" folders
            raise InputError(f"{source}: a directory; name its files, e.g. '{source}/*.parquet'")
        try:
            return pq.ParquetFile(open_read(source) if is_url(source) else source)
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
                raise InputError(f"{source}: cannot open: {e}") from None
            raise InputError(
                f"{source}: not a Parquet file or truncated (footer unreadable): {e}"
            ) from None

    def count(self, source: str, first_global: int, every: int) -> tuple[int, dict[int, int]]:
        file = self._parquet_file(source)
        try:
            return file.metadata.num_rows, {}
        finally:
            file.close(force=True)  # force: also a URL's file object, which we opened

    def _open(self, segment: Segment) -> Iterator[dict[str, Any] | _UnreadableValue]:
        return self._rows(segment.source, segment.start)

    def _rows(self, source: str, start: int) -> Iterator[dict[str, Any] | _UnreadableValue]:
        """Rows from `start` on, decoded a batch at a time; the file closes with the iterator."""
        file = self._parquet_file(source)
        try:
            metadata = file.metadata
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            group, position = 0, 0  # the row group holding row `start`, and its first row
            while group < len(sizes) and position + sizes[group] <= start:
                position, group = position + sizes[group], group + 1
            if group == len(sizes):
                return  # the file shrank since planning: Corpus.read reports it
            groups = list(range(group, len(sizes)))
            batches = file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=groups)
            text_column = self._text_column(file.schema_arrow.names)
            convert = [  # the text column is converted by decode, once its text is checked
                field.name
                for field in file.schema_arrow
                if not _is_json_type(field.type) and field.name != text_column
            ]
            while (batch := _next_batch(batches, source, sizes, position)) is not None:
                skip = max(0, start - position)
                position += batch.num_rows
                if skip < batch.num_rows:
                    yield from _parquet_rows(batch.slice(skip), convert)
        finally:
            file.close(force=True)

    def decode(self, raw: RawRecord) -> Document:
        source, line, row = raw
        if isinstance(row, _UnreadableValue):
            raise BadRecordError(source, line, row.field or None, INVALID_UTF8, row.detail)
        text = self._text(row, source, line)  # before _jsonable, which base64s non-UTF-8 bytes
        column = self._text_column(row)
        row[column] = _jsonable(row[column])
        return Document(source, line, row, text)

    def _text_column(self, names: Collection[str]) -> str:
        """The column holding the text field (a dotted path leads into a struct column)."""
        return self.text_field if self.text_field in names else self.text_field.split(".")[0]


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
        import_tensorflow()
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
        return _count_by_iteration(dataset), {}

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
    """The embedded demo corpus (toxjax.datasets.template_corpus); `demo` or `demo:<num_docs>`."""

    def __init__(self, spec: str, num_docs: int | None, text_field: str, max_doc_chars: int):
        super().__init__(spec, text_field, max_doc_chars)
        self.num_docs = num_docs
        self._records: list[dict] | None = None

    def _all(self) -> list[dict]:
        if self._records is None:
            from toxjax.datasets import template_corpus

            num_docs = template_corpus.DEFAULT_NUM_DOCS if self.num_docs is None else self.num_docs
            self._records = template_corpus.generate(num_docs)
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
    """`demo[:<num_docs>]` | `real` | `[jsonl:]<glob>[,<glob>...]` | `parquet:<glob>` |
    `tfrecord:<glob>` | `tfds:<...>`.

    Unprefixed globs are JSONL unless every pattern names `.parquet` (or every one `.tfrecord`)
    files.
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
    if kind == "real":
        if body:
            raise InputError(f"bad input {input_spec!r}: the packaged real-text corpus is 'real'")
        from toxjax.datasets import real_corpus

        path = real_corpus.packaged_path(real_corpus.CORPUS_FILE)
        return JsonlCorpus(input_spec, path, text_field, max_doc_chars)
    if kind == "tfds":
        return TfdsCorpus(input_spec, body, text_field, max_doc_chars, tfds_data_dir, tfds_download)
    if kind == "tfrecord":
        return TFRecordCorpus(input_spec, body, text_field, max_doc_chars)
    if kind == "jsonl":
        return JsonlCorpus(input_spec, body, text_field, max_doc_chars)
    if kind == "parquet":
        return ParquetCorpus(input_spec, body, text_field, max_doc_chars)
    patterns = [p.strip() for p in input_spec.split(",") if p.strip()]
    if patterns and all(p.endswith(".parquet") for p in patterns):
        return ParquetCorpus(input_spec, input_spec, text_field, max_doc_chars)
    if patterns and all(re.search(r"\.tfrecords?(\.gz)?$", p) for p in patterns):
        return TFRecordCorpus(input_spec, input_spec, text_field, max_doc_chars)
    return JsonlCorpus(input_spec, input_spec, text_field, max_doc_chars)
