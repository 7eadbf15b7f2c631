"""A SeqIO data source over the scored shards written by `toxjax.scoring.job`.

Each example is {"text": tf.string, "score": tf.float64, "key": tf.string}: the document, the
configured attribute's score and a stable document key (the record's "id", else the digest of
its text). The key drives both the hash-based validation split and the per-document
augmentation draw, so both are reproducible across runs, hosts and shard layouts.

Files are read through toxjax.fileio (local paths and gs:// alike). Hosts shard by file
(seqio.ShardInfo), so no host reads a record another host reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from toxjax import fileio
from toxjax.data.conditioning import stable_doc_key
from toxjax.scoring.corpora import get_field
from toxjax.scoring.segments import check_ends
from toxjax.tf_import import import_tensorflow

MANIFEST = "manifest.json"
TRAIN = "train"
VALIDATION = "validation"
DEFAULT_VALIDATION_FRACTION = 0.05
# Per-split directories, or one directory split by key hash.
ScoredSpec = str | Mapping[str, str]

OUTPUT_SIGNATURE = {
    "text": tf.TensorSpec([], tf.string),
    "score": tf.TensorSpec([], tf.float64),
    "key": tf.TensorSpec([], tf.string),
}


# With segments (SEGMENT tasks): each segment's end offset (characters) and score.
SEGMENT_SIGNATURE = {
    "segment_ends": tf.TensorSpec([None], tf.int64),
    "segment_scores": tf.TensorSpec([None], tf.float64),
}

_READ_BATCH = 256
_BATCH_SIGNATURE = {
    name: tf.TensorSpec([None], spec.dtype) for name, spec in OUTPUT_SIGNATURE.items()
}
_SEGMENT_BATCH_SIGNATURE = {
    name: tf.RaggedTensorSpec([None, None], spec.dtype, ragged_rank=1, row_splits_dtype=tf.int64)
    for name, spec in SEGMENT_SIGNATURE.items()
}


class ScoredDataError(ValueError):
    """A scored directory or record cannot be used; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class ScoredShard:
    path: str
    num_records: int


@dataclasses.dataclass(frozen=True)
class ScoredCorpus:
    """What a scored directory's manifest promises, checked for the attribute we need."""

    directory: str
    scorer: str
    attributes: tuple[str, ...]
    text_field: str
    shards: tuple[ScoredShard, ...]
    segment: str = ""  # how the scoring job cut documents into scored segments ("": it did not)

    @property
    def num_records(self) -> int:
        return sum(shard.num_records for shard in self.shards)


def _join(directory: str, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.join(directory, path)


def load_scored_corpus(directory: str, attribute: str | None = "toxicity") -> ScoredCorpus:
    """Reads and checks `directory/manifest.json`; raises ScoredDataError saying what is wrong.

    attribute=None skips the attribute check (for readers of the text alone).
    """
    manifest_path = _join(directory, MANIFEST)
    if not fileio.exists(manifest_path):
        raise ScoredDataError(
            f"{manifest_path}: no scoring manifest. Score the corpus first: "
            f"python -m toxjax.scoring --input=... --output_dir={directory}"
        )
    try:
        manifest = fileio.read_json(manifest_path)
    except fileio.FileFormatError as e:
        raise ScoredDataError(str(e)) from None
    if not isinstance(manifest, dict):
        raise ScoredDataError(f"{manifest_path}: expected a JSON object")

    def field(name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in manifest:
            raise ScoredDataError(f"{manifest_path}: field {name!r} missing")
        if not isinstance(manifest[name], kind):
            raise ScoredDataError(f"{manifest_path}: field {name!r} has the wrong type")
        return manifest[name]

    if field("complete", bool) is not True:
        raise ScoredDataError(
            f"{manifest_path}: field 'complete' is false: scoring of {directory} did not "
            "finish. Rerun the same toxjax.scoring command to complete it (finished shards "
            "are kept)."
        )
    attributes = tuple(field("attributes", list))
    if attribute is not None and attribute not in attributes:
        raise ScoredDataError(
            f"{manifest_path}: field 'attributes' lacks {attribute!r} (scorer "
            f"{manifest.get('scorer')!r} wrote {list(attributes)}); choose one of them as the "
            "conditioning attribute or rescore with a scorer that has it"
        )
    shards = []
    for index, entry in enumerate(field("shards", list)):
        where = f"{manifest_path}: field 'shards[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ScoredDataError(f"{where}.path' missing or not a string")
        num_records = entry.get("num_records")
        if not isinstance(num_records, int) or num_records < 0:
            raise ScoredDataError(f"{where}.num_records' missing or not a count")
        shards.append(ScoredShard(_join(directory, entry["path"]), num_records))
    return ScoredCorpus(
        directory=directory,
        scorer=str(manifest.get("scorer", "")),
        attributes=attributes,
        text_field=str(manifest.get("text_field", "text")),
        shards=tuple(shards),
        segment=str(manifest.get("segment", "")),
    )


def iter_scored_records(
    path: str,
    *,
    attribute: str | None,
    text_field: str = "text",
    expected_records: int | None = None,
) -> Iterator[tuple[str, float, str]]:
    """(text, score, key) for each line of one scored shard, validating every record.

    attribute=None reads texts and keys only (score NaN), e.g. to train a vocabulary.
    """
    for _, _, text, score, key in _checked_records(path, attribute, text_field, expected_records):
        yield text, score, key


def _checked_records(
    path: str, attribute: str | None, text_field: str, expected_records: int | None
) -> Iterator[tuple[str, dict[str, Any], str, float, str]]:
    """(where, record, text, score, key) per line: the shared core of the two readers."""
    if not fileio.exists(path):
        raise ScoredDataError(f"{path}: scored shard listed in the manifest does not exist")
    count = 0
    for line_number, record in _shard_lines(path):
        where = f"{path}:{line_number}"
        text, score, key = checked_fields(record, attribute, text_field, where)
        count += 1
        yield where, record, text, score, key
    if expected_records is not None and count != expected_records:
        raise ScoredDataError(
            f"{path}: holds {count} records but the manifest lists num_records="
            f"{expected_records}: the shard was truncated or rewritten after scoring"
        )


def checked_fields(
    record: dict[str, Any], attribute: str | None, text_field: str, where: str
) -> tuple[str, float, str]:
    """(text, score, key) of one scored record; `where` ("path:line") heads every error."""
    try:
        text = get_field(record, text_field)
    except KeyError:
        raise ScoredDataError(f"{where}: field {text_field!r} missing") from None
    if not isinstance(text, str):
        raise ScoredDataError(f"{where}: field {text_field!r} is not a string")
    score = math.nan if attribute is None else _score(record, attribute, where)
    doc_id = record.get("id")
    key = stable_doc_key(text) if doc_id is None else str(doc_id)
    return text, float(score), key


def segment_fields(
    record: dict[str, Any], attribute: str, text: str, where: str
) -> tuple[list[int], list[float]]:
    """A record's segment ends and scores, checked against its text and each other."""
    ends = record.get("segment_ends")
    problem = check_ends(ends, len(text))
    if problem:
        raise ScoredDataError(f"{where}: field 'segment_ends' {problem}")
    scores = (record.get("segment_scores") or {}).get(attribute)
    if not isinstance(scores, list) or len(scores) != len(ends):
        raise ScoredDataError(
            f"{where}: field 'segment_scores.{attribute}' is not a list of {len(ends)} scores"
        )
    if any(
        isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s)
        for s in scores
    ):
        raise ScoredDataError(f"{where}: field 'segment_scores.{attribute}' holds a non-number")
    return ends, [float(s) for s in scores]


def iter_segmented_records(
    path: str, *, attribute: str, text_field: str = "text", expected_records: int | None = None
) -> Iterator[tuple[str, float, str, list[int], list[float]]]:
    """(text, score, key, segment ends, segment scores) for each line of one scored shard."""
    for where, record, text, score, key in _checked_records(
        path, attribute, text_field, expected_records
    ):
        ends, scores = segment_fields(record, attribute, text, where)
        yield text, score, key, ends, scores


def _shard_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """fileio.read_jsonl, its errors raised as ScoredDataError (what the data layer raises)."""
    try:
        yield from fileio.read_jsonl(path, allow_empty=True)
    except fileio.FileFormatError as e:
        raise ScoredDataError(str(e)) from None


def _score(record: dict[str, Any], attribute: str, where: str) -> float:
    scores = record.get("scores")
    if not isinstance(scores, dict):
        raise ScoredDataError(f"{where}: field 'scores' missing or not an object")
    if attribute not in scores:
        raise ScoredDataError(
            f"{where}: field 'scores.{attribute}' missing (scores has {sorted(scores)})"
        )
    score = scores[attribute]
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise ScoredDataError(f"{where}: field 'scores.{attribute}' is not a number")
    if not math.isfinite(score):
        raise ScoredDataError(f"{where}: field 'scores.{attribute}' is {score}")
    return float(score)


def in_validation(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic held-out draw on the doc key, independent of the augmentation draw."""
    if fraction <= 0.0:
        return False
    digest = hashlib.sha256(f"split:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


class ScoredShardsSource(seqio.DataSource):
    """SeqIO source over scored shards: per-split directories or one directory split by key.

    `scored` may be a zero-argument callable returning a directory, resolved on first use, so
    registering a task costs nothing (the demo tasks score their corpus only when read).
    """

    def __init__(
        self,
        scored: ScoredSpec | Callable[[], str],
        *,
        attribute: str = "toxicity",
        validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
        split_seed: int = 0,
        segments: bool = False,
    ):
        """segments=True also yields each document's segment ends and scores (SEGMENT tasks);
        the scored directories must then come from a --segment scoring run."""
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        if isinstance(scored, Mapping):
            if not scored:
                raise ValueError("scored: the split -> directory mapping is empty")
            splits: Sequence[str] = tuple(scored)
        else:
            splits = (TRAIN, VALIDATION) if validation_fraction > 0 else (TRAIN,)
        self._scored = scored
        self._attribute = attribute
        self._validation_fraction = validation_fraction
        self._split_seed = split_seed
        self._segments = segments
        self._corpora: dict[str, ScoredCorpus] = {}
        super().__init__(splits=splits, caching_permitted=True)

    @property
    def attribute(self) -> str:
        return self._attribute

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def __repr__(self) -> str:
        return (
            f"ScoredShardsSource(scored={self._scored!r}, attribute={self._attribute!r}, "
            f"validation_fraction={self._validation_fraction}, split_seed={self._split_seed}, "
            f"segments={self._segments})"
        )

    def directory(self, split: str) -> str:
        """The scored directory holding `split` (resolving a lazy spec on first call)."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this source has {list(self.splits)}")
        if isinstance(self._scored, Mapping):
            return self._scored[split]
        if callable(self._scored):
            self._scored = self._scored()
        return self._scored

    def corpus(self, split: str) -> ScoredCorpus:
        directory = self.directory(split)
        if directory not in self._corpora:
            corpus = load_scored_corpus(directory, self._attribute)
            if self._segments and not corpus.segment:
                raise ScoredDataError(
                    f"{_join(directory, MANIFEST)}: no field 'segment': the corpus was scored "
                    "without segment scores, which SEGMENT needs. Rescore it with "
                    "python -m toxjax.scoring ... --segment=sentence"
                )
            self._corpora[directory] = corpus
        return self._corpora[directory]

    def list_shards(self, split: str) -> Sequence[str]:
        return [shard.path for shard in self.corpus(split).shards]

    def num_input_examples(self, split: str) -> int | None:
        if isinstance(self._scored, Mapping):
            return self.corpus(split).num_records
        return None  # the hash split's sizes are only known after reading every key

    @property
    def segments(self) -> bool:
        return self._segments

    def keeps(self, split: str) -> Callable[[str], bool]:
        """Whether a document key belongs to `split` (always, for per-split directories)."""
        if isinstance(self._scored, Mapping):
            return lambda key: True
        fraction, seed = self._validation_fraction, self._split_seed
        want_validation = split == VALIDATION
        return lambda key: in_validation(key, fraction, seed) == want_validation

    def iter_split(self, split: str) -> Iterator[tuple[str, float, str]]:
        """(text, score, key) of a split in manifest order, in plain Python (checks, analyses)."""
        corpus, keep = self.corpus(split), self.keeps(split)
        for shard in corpus.shards:
            for text, score, key in iter_scored_records(
                shard.path,
                attribute=self._attribute,
                text_field=corpus.text_field,
                expected_records=shard.num_records,
            ):
                if keep(key):
                    yield text, score, key

    def get_dataset(
        self,
        split: str = TRAIN,
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,  # unused, part of the interface
        use_cached: bool = False,  # unused
        num_epochs: int | None = 1,  # unused
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs
        import_tensorflow()  # before this pipeline's first TF op
        corpus, keep = self.corpus(split), self.keeps(split)
        shards = list(corpus.shards)
        if shard_info is not None and shard_info.num_shards > 1:
            if len(shards) < shard_info.num_shards:
                raise ValueError(
                    f"{corpus.directory} has {len(shards)} shard files, fewer than the "
                    f"{shard_info.num_shards} hosts reading it; rescore with a smaller "
                    "records_per_shard"
                )
            shards = shards[shard_info.index :: shard_info.num_shards]
        if not shards:
            raise ScoredDataError(f"{corpus.directory}/{MANIFEST}: field 'shards' is empty")
        expected = {shard.path: shard.num_records for shard in shards}
        attribute, text_field, segments = self._attribute, corpus.text_field, self._segments
        reader = iter_segmented_records if segments else iter_scored_records
        signature = {**_BATCH_SIGNATURE, **(_SEGMENT_BATCH_SIGNATURE if segments else {})}

        def read_shard(path_bytes: bytes) -> Iterator[dict[str, Any]]:
            # Batches of records cross the Python/TF boundary: per-record crossings cost ~5x.
            path = path_bytes.decode("utf-8")
            records = reader(
                path, attribute=attribute, text_field=text_field, expected_records=expected[path]
            )
            while chunk := list(itertools.islice(records, _READ_BATCH)):
                kept = [record for record in chunk if keep(record[2])]
                if kept:
                    yield _batch(kept, segments)

        def shard_dataset(path: tf.Tensor) -> tf.data.Dataset:
            batches = tf.data.Dataset.from_generator(
                read_shard, args=(path,), output_signature=signature
            )
            return batches.unbatch()

        files = tf.data.Dataset.from_tensor_slices(tf.constant([s.path for s in shards]))
        if shuffle:
            files = files.shuffle(len(shards), seed=seed)
        return files.interleave(
            shard_dataset,
            cycle_length=min(16, len(shards)),
            block_length=16,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )


def _batch(records: list[tuple], segments: bool) -> dict[str, Any]:
    """Columns of a batch of records; segment columns as ragged rows."""
    columns = list(zip(*records, strict=True))
    batch: dict[str, Any] = {"text": list(columns[0]), "score": list(columns[1])}
    batch["key"] = list(columns[2])
    if segments:
        for name, values, dtype in (
            ("segment_ends", columns[3], tf.int64),
            ("segment_scores", columns[4], tf.float64),
        ):
            flat = [value for row in values for value in row]
            lengths = [len(row) for row in values]
            batch[name] = tf.RaggedTensor.from_row_lengths(
                tf.constant(flat, dtype), tf.constant(lengths, tf.int64)
            )
    return batch
