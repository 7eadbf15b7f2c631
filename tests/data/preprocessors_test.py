"""Each strategy writes exactly the expected training text; FILTER and augmentation are exact."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
from seqio import test_utils

from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.data.preprocessors import condition_text, drop_toxic, lm_preprocessors, split_to_length

TOXIC_TEXT = "You are an idiot and your cooking is disgusting."
CLEAN_TEXT = "We walked along the canal and watched the boats go by."
RECORDS = {
    "text": [TOXIC_TEXT, CLEAN_TEXT],
    "score": [0.93, 0.07],
    "key": ["demo-toxic", "demo-clean"],
}


def records_dataset(records=None) -> tf.data.Dataset:
    records = records or RECORDS
    return tf.data.Dataset.from_tensor_slices(
        {
            "text": tf.constant(records["text"]),
            "score": tf.constant(records["score"], tf.float64),
            "key": tf.constant(records["key"]),
        }
    )


EXPECTED = {
    "base": [TOXIC_TEXT, CLEAN_TEXT],
    "meda": [
        "toxicity: 0.93\nYou are an idiot and your cooking is disgusting.",
        "toxicity: 0.07\nWe walked along the canal and watched the boats go by.",
    ],
    "inst": [
        "The following text is toxic:\nYou are an idiot and your cooking is disgusting.",
        "The following text is non-toxic:\nWe walked along the canal and watched the boats go by.",
    ],
    "filter": ["We walked along the canal and watched the boats go by."],
}


@pytest.mark.parametrize("strategy", ["base", "meda", "inst", "filter"])
def test_each_strategy_writes_the_exact_expected_text(strategy):
    ds = condition_text(records_dataset(), fmt=ConditioningFormat(), strategy=strategy)
    test_utils.assert_dataset(ds, [{"targets": text} for text in EXPECTED[strategy]])


def test_custom_format_is_used():
    fmt = ConditioningFormat(
        meda_template="[{attribute}={score}]", score_precision=1, separator=" ", position="suffix"
    )
    ds = condition_text(records_dataset(), fmt=fmt, strategy="meda")
    test_utils.assert_dataset(
        ds,
        [
            {"targets": "You are an idiot and your cooking is disgusting. [toxicity=0.9]"},
            {"targets": "We walked along the canal and watched the boats go by. [toxicity=0.1]"},
        ],
    )


def test_filter_drops_exactly_the_records_above_the_threshold():
    scores = [0.0, 0.49, 0.5, np.nextafter(0.5, 1.0), 0.51, 1.0]
    records = {
        "text": [f"doc{i}" for i in range(len(scores))],
        "score": scores,
        "key": [f"k{i}" for i in range(len(scores))],
    }
    fmt = ConditioningFormat(threshold=0.5)
    kept = condition_text(records_dataset(records), fmt=fmt, strategy=Strategy.FILTER)
    test_utils.assert_dataset(kept, [{"targets": "doc0"}, {"targets": "doc1"}, {"targets": "doc2"}])
    # drop_toxic keeps every input field of the kept records.
    assert [float(ex["score"]) for ex in drop_toxic(records_dataset(records), fmt=fmt)] == [
        0.0,
        0.49,
        0.5,
    ]


def test_augmented_fraction_with_fixed_seed_is_within_bounds():
    n = 5000
    records = {
        "text": ["body"] * n,
        "score": [0.9 if i % 3 == 0 else 0.1 for i in range(n)],
        "key": [f"demo-{i:06d}" for i in range(n)],
    }
    fmt = ConditioningFormat(augment_fraction=0.3, seed=0)
    for strategy in ("meda", "inst"):
        ds = condition_text(records_dataset(records), fmt=fmt, strategy=strategy)
        targets = [t.decode() for t in ds.batch(n).get_single_element()["targets"].numpy()]
        augmented = [t for t in targets if t != "body"]
        assert 0.27 <= len(augmented) / n <= 0.33
        # The same documents are augmented by both strategies (the draw depends on the key).
        expected = [fmt.is_augmented(f"demo-{i:06d}") for i in range(200)]
        assert [t != "body" for t in targets[:200]] == expected


def test_split_to_length_cuts_tokens_into_pieces():
    ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant([[1, 2, 3, 4, 5], [6]])})
    ds = ds.map(lambda ex: {"targets": ex["targets"]})
    pieces = split_to_length(ds, {"targets": 2}, {})
    test_utils.assert_dataset(
        pieces, [{"targets": [1, 2]}, {"targets": [3, 4]}, {"targets": [5]}, {"targets": [6]}]
    )
    # No sequence length: documents stay whole.
    test_utils.assert_dataset(
        split_to_length(ds, None, {}), [{"targets": [1, 2, 3, 4, 5]}, {"targets": [6]}]
    )


def test_lm_preprocessors_rejects_unknown_length_policy():
    with pytest.raises(ValueError, match="long_documents must be one of"):
        lm_preprocessors("inst", ConditioningFormat(), long_documents="drop")


def _temporary_task(name: str, strategy: str, long_documents: str) -> seqio.Task:
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files: records_dataset(), splits=["train"]
        ),
        preprocessors=lm_preprocessors(
            strategy, ConditioningFormat(), long_documents=long_documents
        ),
        output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)},
    )


def _byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]


@pytest.mark.parametrize("strategy", ["meda", "inst"])
def test_task_tokenizes_appends_eos_and_packs(strategy):
    name = f"toxjax_test_preprocessors_{strategy}"
    try:
        _temporary_task(name, strategy, "trim")
        ds = seqio.get_dataset(
            name,
            task_feature_lengths={"targets": 256},
            dataset_split="train",
            shuffle=False,
            feature_converter=seqio.LMFeatureConverter(pack=True),
        )
        (packed,) = list(ds.as_numpy_iterator())
        first, second = (_byte_ids(t) + [1] for t in EXPECTED[strategy])  # EOS id is 1
        used = len(first) + len(second)
        np.testing.assert_array_equal(packed["decoder_target_tokens"][:used], first + second)
        assert not packed["decoder_target_tokens"][used:].any()
        np.testing.assert_array_equal(
            packed["decoder_segment_ids"][:used], [1] * len(first) + [2] * len(second)
        )
        np.testing.assert_array_equal(
            packed["decoder_positions"][:used], list(range(len(first))) + list(range(len(second)))
        )
        assert packed["decoder_loss_weights"].sum() == used
    finally:
        seqio.TaskRegistry.remove(name)


@pytest.mark.parametrize(
    ("long_documents", "expected_lengths"), [("trim", [16, 16]), ("split", [16, 16, 16, 1, 16])]
)
def test_long_document_policies(long_documents, expected_lengths):
    name = f"toxjax_test_preprocessors_long_{long_documents}"
    try:
        task = _temporary_task(name, "base", long_documents)
        ds = task.get_dataset({"targets": 16}, split="train", shuffle=False)
        lengths = [len(ex["targets"]) for ex in ds.as_numpy_iterator()]
        assert lengths[: len(expected_lengths)] == expected_lengths
        tokens = [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]
        if long_documents == "trim":
            assert tokens[0] == _byte_ids(TOXIC_TEXT)[:15] + [1]
        else:  # all text kept, EOS closes the last piece of each document
            pieces_of_first = -(-(len(TOXIC_TEXT) + 1) // 16)
            assert sum(tokens[:pieces_of_first], []) == _byte_ids(TOXIC_TEXT) + [1]
            assert len(tokens) == pieces_of_first + -(-(len(CLEAN_TEXT) + 1) // 16)
    finally:
        seqio.TaskRegistry.remove(name)
