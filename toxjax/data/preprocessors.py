"""SeqIO preprocessors that turn scored documents into LM targets for one data strategy.

Input examples are those of `toxjax.data.scored_data` ({"text", "score", "key"}, plus
"segment_ends" and "segment_scores" for SEGMENT); output examples
are {"targets": ...} for `seqio.LMFeatureConverter`. All conditioning is delegated to a
`ConditioningFormat`, so the training text and the evaluation prefix cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import seqio
import tensorflow as tf

from toxjax.data.conditioning import ConditioningFormat, Strategy

TARGETS = "targets"
# How documents longer than the sequence are handled: keep the first sequence (every training
# sequence starts with its signal), or cut them into sequences (no text lost; only the first
# piece carries the signal).
LONG_DOCUMENT_MODES = ("trim", "split")

Preprocessor = Callable[..., tf.data.Dataset]

# The map functions below are plain TensorFlow ops (their branches are on Python values), so
# AutoGraph has nothing to rewrite; left to it, transpiling them took about 0.3 s of every
# process's first held-out pipeline build.
_no_autograph = tf.autograph.experimental.do_not_convert


def drop_toxic(dataset: tf.data.Dataset, *, fmt: ConditioningFormat) -> tf.data.Dataset:
    """FILTER: keeps documents scored at or below the threshold (the same rule INST uses)."""
    return dataset.filter(_no_autograph(lambda ex: tf.logical_not(fmt.tf_is_toxic(ex["score"]))))


def condition_text(
    dataset: tf.data.Dataset,
    *,
    fmt: ConditioningFormat,
    strategy: Strategy | str,
    output_feature: str = TARGETS,
) -> tf.data.Dataset:
    """Writes the strategy's signal into each document's text, as `output_feature`."""
    strategy = Strategy.parse(strategy)
    if strategy is Strategy.FILTER:
        dataset = drop_toxic(dataset, fmt=fmt)

    @_no_autograph
    def conditioned(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if strategy is Strategy.SEGMENT:
            text = fmt.tf_condition_segments(
                ex["text"], ex["segment_ends"], ex["segment_scores"], ex["key"]
            )
        else:
            text = fmt.tf_condition(strategy, ex["text"], ex["score"], ex["key"])
        return {output_feature: text}

    return dataset.map(conditioned, num_parallel_calls=tf.data.AUTOTUNE)


def split_to_length(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
    feature: str = TARGETS,
) -> tf.data.Dataset:
    """Cuts each token sequence into consecutive pieces of at most `sequence_length[feature]`.

    Run after EOS is appended, so the EOS ends the last piece. Without a sequence length (e.g.
    inspecting a task) documents are left whole.
    """
    del output_features  # part of the SeqIO preprocessor signature
    if not sequence_length or sequence_length.get(feature) is None:
        return dataset
    length = int(sequence_length[feature])

    @_no_autograph
    def pieces(ex: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
        tokens = ex[feature]
        size = tf.size(tokens, out_type=tf.int64)
        starts = tf.range(0, tf.maximum(size, 1), length, dtype=tf.int64)
        splits = tf.concat([starts, tf.reshape(size, [1])], axis=0)
        chunks = tf.RaggedTensor.from_row_splits(tokens, splits)
        return tf.data.Dataset.from_tensor_slices({feature: chunks})

    return dataset.flat_map(pieces)


def lm_preprocessors(
    strategy: Strategy | str,
    fmt: ConditioningFormat,
    *,
    long_documents: str = "trim",
    output_feature: str = TARGETS,
) -> list[Preprocessor | seqio.CacheDatasetPlaceholder]:
    """The full preprocessor list of an LM task for one strategy.

    Conditioning and tokenization are deterministic, so they sit before the cache point; EOS
    and the length policy depend on the run's sequence length and come after it.
    """
    if long_documents not in LONG_DOCUMENT_MODES:
        raise ValueError(
            f"long_documents must be one of {LONG_DOCUMENT_MODES}, got {long_documents!r}"
        )
    steps: list[Preprocessor | seqio.CacheDatasetPlaceholder] = [
        functools.partial(
            condition_text,
            fmt=fmt,
            strategy=Strategy.parse(strategy),
            output_feature=output_feature,
        ),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
    ]
    if long_documents == "trim":
        steps.append(seqio.preprocessors.append_eos_after_trim)
    else:
        steps += [
            seqio.preprocessors.append_eos,
            functools.partial(split_to_length, feature=output_feature),
        ]
    return steps
