"""A SeqIO data source over the scored shards written by `toxjax.scoring.job`.

Each example is {"text": tf.string, "score": tf.float64, "key": tf.string} (what each field
is: toxjax.data.scored_data), plus each segment's end and score for SEGMENT tasks.
Hosts shard by file (seqio.ShardInfo), so no host reads a record another host reads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from toxjax.data.scored_data import (
    DEFAULT_VALIDATION_FRACTION,
    MANIFEST,
    TRAIN,
    VALIDATION,
    ScoredCorpus,
    ScoredDataError,
    ScoredSpec,
    in_validation,
    iter_scored_records,
    iter_segmented_records,
    load_scored_corpus,
)
from toxjax.tf_import import import_tensorflow

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
                    f"{directory}/{MANIFEST}: no field 'segment': the corpus was scored "
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

        @tf.autograph.experimental.do_not_convert  # plain ops: nothing for AutoGraph to rewrite
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
