"""Signal loss masking: exactly the signal tokens (start piece through separator) lose their
loss weight, per packed segment, and the training pipeline applies it per batch."""

import numpy as np
import pytest
import seqio

from toxjax.data import input_pipeline, signal_mask
from toxjax.data.conditioning import ConditioningFormat
from toxjax.data.vocab import train_vocabulary
from toxjax.datasets import template_corpus

FMT = ConditioningFormat(mask_signal_loss=True)
START, OTHER_START, SEP = 90, 91, 7  # ids standing in for signal pieces


def test_signal_positions_by_hand():
    # Two packed segments: [signal 90, 5, 6, SEP, text 8, 9] and [91, SEP, 10] then padding.
    targets = np.array([[START, 5, 6, SEP, 8, 9, OTHER_START, SEP, 10, 0]])
    segments = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 0]])
    inside = signal_mask.signal_positions(targets, segments, [START, OTHER_START], SEP)
    assert inside.astype(int).tolist() == [[1, 1, 1, 1, 0, 0, 1, 1, 0, 0]]
    # A separator in ordinary text (no signal before it in its segment) is left alone, and a
    # signal cut off by the end of its segment does not leak into the next one.
    targets = np.array([[8, SEP, 9, START, 5, 6, 8, SEP, 9]])
    segments = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2]])
    inside = signal_mask.signal_positions(targets, segments, [START], SEP)
    assert inside.astype(int).tolist() == [[0, 0, 0, 1, 1, 0, 0, 0, 0]]


def test_mask_zeroes_only_signal_weights():
    batch = {
        "decoder_target_tokens": np.array([[START, 5, SEP, 8, 0]]),
        "decoder_segment_ids": np.array([[1, 1, 1, 1, 0]]),
        "decoder_loss_weights": np.array([[1, 1, 1, 1, 0]]),
        "decoder_input_tokens": np.array([[0, START, 5, SEP, 0]]),
    }
    masked = signal_mask.SignalLossMask([START], SEP)(batch)
    assert masked["decoder_loss_weights"].tolist() == [[0, 0, 0, 1, 0]]
    assert masked["decoder_input_tokens"] is batch["decoder_input_tokens"]  # still input


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> seqio.SentencePieceVocabulary:
    texts = [d["text"] for d in template_corpus.generate(300)]
    prefix = str(tmp_path_factory.mktemp("spm") / "mask")
    return seqio.SentencePieceVocabulary(
        train_vocabulary(texts, prefix, vocab_size=400, fmt=FMT, progress=False)
    )


@pytest.mark.parametrize("strategy, score", [("inst", 0.9), ("inst", 0.1), ("meda", 0.37)])
def test_real_vocabulary_masks_exactly_the_signal(vocab, strategy, score):
    start_ids, separator_id = signal_mask.signal_piece_ids(vocab, FMT)
    text = "You are rude.\nSecond line stays."  # a newline inside the text stays a target
    signal_ids = vocab.encode(FMT.condition(strategy, "", score, "k"))
    ids = vocab.encode(FMT.condition(strategy, text, score, "k"))
    assert ids[: len(signal_ids)] == signal_ids  # the signal tokenizes alike with text after it
    # SentencePiece's dummy prefix ("▁", which every document starts with, tagged or not)
    # stays a target; from the signal's first piece through the separator is masked.
    lead = int(vocab.tokenizer.id_to_piece(ids[0]) == "▁")
    targets = np.array([ids])
    inside = signal_mask.signal_positions(targets, np.ones_like(targets), start_ids, separator_id)
    expected = [False] * lead + [True] * (len(signal_ids) - lead)
    assert inside[0].tolist() == expected + [False] * (len(ids) - len(signal_ids))


def test_byte_vocabulary_cannot_mask():
    with pytest.raises(ValueError, match="SentencePiece vocabulary"):
        signal_mask.signal_piece_ids(seqio.ByteVocabulary(), FMT)


def test_training_pipeline_applies_the_transform_per_batch():
    class Rows:  # RowStreams' interface, one row per step
        step = 0

        def next_rows(self):
            self.step += 1
            return {
                "decoder_target_tokens": np.array([[START, SEP, 7 + self.step]]),
                "decoder_segment_ids": np.ones((1, 3), np.int32),
                "decoder_loss_weights": np.ones((1, 3), np.int32),
            }

        def get_state(self):
            return {"0": self.step}

    import jax

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    layout = input_pipeline.DataLayout(
        shard_index=0, num_shards=1, local_batch_size=1, global_batch_size=1, rows=(0,)
    )
    pipeline = input_pipeline.TrainPipeline(
        Rows(), layout, sharding, 3, transform=signal_mask.SignalLossMask([START], SEP)
    )
    pipeline(step=0), pipeline(step=1)
    batch = pipeline(step=2)
    assert np.asarray(batch["decoder_loss_weights"]).tolist() == [[0, 0, 1]]
    assert np.asarray(batch["decoder_target_tokens"]).tolist() == [[START, SEP, 10]]
