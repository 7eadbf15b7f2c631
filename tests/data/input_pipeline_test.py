"""toxjax.data.input_pipeline: row streams, process-count independence, exact resume, checks."""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
import pytest
import seqio
import tensorflow as tf

from toxjax.data import input_pipeline, task_documents, vocab

TASK = "input_pipeline_test_task"
NUM_DOCS = 60
SEQ_LEN = 32


def _docs() -> list[str]:
    return [f"<{i:03d}> " + "ab" * (i % 7) for i in range(NUM_DOCS)]


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"targets": _docs()})


def _register() -> None:
    if TASK in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(_dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={
            "targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True, dtype=tf.int32)
        },
    )


_register()


def _doc_ids(batch: dict[str, np.ndarray], row: int) -> list[int]:
    """Documents of one packed row, in order, read back from their '<NNN>' markers."""
    vocab = seqio.ByteVocabulary()
    tokens, segments = batch["decoder_target_tokens"][row], batch["decoder_segment_ids"][row]
    found = []
    for segment in range(1, int(segments.max()) + 1):
        text = vocab.decode([int(t) for t in tokens[segments == segment] if t > 2])
        found.append(int(text[1:4]))
    return found


def _config(task: str = TASK, batch: int = 8, **data) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "data": {
                "task": task,
                "split": "train",
                "seq_len": SEQ_LEN,
                "seed": 0,
                "global_batch_size": batch,
                "packing_bins": 2,
                **data,
            },
            "model": {"vocab_size": 384},
            "train": {"num_steps": 10},
        }
    )


def _sharding(num_devices: int = 1) -> jax.sharding.NamedSharding:
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _read(pipeline: input_pipeline.TrainPipeline, steps) -> list[dict[str, np.ndarray]]:
    return [pipeline.local_batch(step) for step in steps]


def _assert_same(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        for name in input_pipeline.FEATURES:
            np.testing.assert_array_equal(a[name], b[name])


def test_each_row_packs_its_own_stream_of_the_shuffled_documents():
    """Row r reads documents r, r + B, r + 2B, ... of the epoch order, packed in order (one
    packing bin keeps their order); an epoch visits every document once."""
    num_streams, steps = 4, 12
    streams = input_pipeline.RowStreams(TASK, "train", SEQ_LEN, 0, range(4), num_streams, 1)
    batches = [streams.next_rows() for _ in range(steps)]
    order = task_documents.task_documents(TASK, "train", SEQ_LEN, 0)
    for row in range(num_streams):
        read = [doc for batch in batches for doc in _doc_ids(batch, row)]
        expected = [
            int(seqio.ByteVocabulary().decode([int(t) for t in order[i] if t > 2])[1:4])
            for i in range(row, row + num_streams * len(read), num_streams)
        ]
        assert read == expected
    first_epoch = [int(seqio.ByteVocabulary().decode(list(order[i]))[1:4]) for i in range(NUM_DOCS)]
    assert sorted(first_epoch) == list(range(NUM_DOCS))
    assert max(int(b["decoder_segment_ids"].max()) for b in batches) > 1  # really packed


def test_features_equal_seqio_lm_feature_converter():
    """A packed row's features are what seqio.LMFeatureConverter(pack=True) makes of it."""
    streams = input_pipeline.RowStreams(TASK, "train", SEQ_LEN, 0, range(3), 3, 2)
    batch = streams.next_rows()
    for row in range(3):
        targets = batch["decoder_target_tokens"][row]
        segments = batch["decoder_segment_ids"][row]
        inputs = seqio.utils.make_autoregressive_inputs(
            tf.constant(targets), sequence_id=tf.constant(segments), bos_id=vocab.START_ID
        )
        np.testing.assert_array_equal(batch["decoder_input_tokens"][row], inputs.numpy())
        np.testing.assert_array_equal(batch["decoder_loss_weights"][row], targets != 0)
        first = targets[segments == 1]
        converted = next(
            seqio.LMFeatureConverter(pack=True, bos_id=vocab.START_ID)(
                tf.data.Dataset.from_tensors({"targets": first}), {"targets": SEQ_LEN}
            ).as_numpy_iterator()
        )
        length = len(first)
        for name in input_pipeline.FEATURES:
            np.testing.assert_array_equal(batch[name][row][:length], converted[name][:length])


def test_global_batch_does_not_depend_on_the_number_of_processes():
    """Two hosts feeding rows 0-3 and 4-7 read together what one host feeding 0-7 reads."""
    whole = input_pipeline.RowStreams(TASK, "train", SEQ_LEN, 0, range(8), 8, 2)
    halves = [
        input_pipeline.RowStreams(TASK, "train", SEQ_LEN, 0, rows, 8, 2)
        for rows in (range(4), range(4, 8))
    ]
    for _ in range(6):
        together = whole.next_rows()
        parts = [half.next_rows() for half in halves]
        for name in input_pipeline.FEATURES:
            np.testing.assert_array_equal(
                together[name], np.concatenate([part[name] for part in parts])
            )


def test_resume_from_the_saved_state_reads_the_uninterrupted_batches():
    sharding = _sharding()
    uninterrupted = input_pipeline.create_train_pipeline(_config(), sharding)
    expected = _read(uninterrupted, range(12))
    saved = json.loads(json.dumps(uninterrupted.state(5)))  # what the checkpoint JSON holds
    assert saved["next_step"] == 5 and len(saved["main"]) == 8
    resumed = input_pipeline.create_train_pipeline(_config(), sharding)
    resumed.restore(saved, 5, "test checkpoint")
    _assert_same(_read(resumed, range(5, 12)), expected[5:])
    replayed = input_pipeline.create_train_pipeline(_config(), sharding)
    replayed.restore({}, 5, "an old checkpoint")  # no stream state: replays the input
    _assert_same(_read(replayed, range(5, 12)), expected[5:])
    with pytest.raises(ValueError, match="already read"):
        resumed.local_batch(3)


def test_another_seed_or_batch_size_does_not_take_a_saved_state(caplog):
    first = input_pipeline.create_train_pipeline(_config(), _sharding())
    _read(first, range(3))
    other = input_pipeline.create_train_pipeline(_config(seed=1), _sharding())
    other.restore(first.state(3), 3, "ckpt")
    assert "replaying 3 steps" in caplog.text and "'seed': (0, 1)" in caplog.text


def test_train_pipeline_builds_sharded_global_batches():
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "tensor"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    pipeline = input_pipeline.create_train_pipeline(_config(), sharding)
    assert pipeline.layout.rows == tuple(range(8))
    reference = input_pipeline.create_train_pipeline(_config(), _sharding())
    for step in range(3):
        batch, expected = pipeline(step), reference.local_batch(step)
        for name in input_pipeline.FEATURES:
            assert batch[name].shape == (8, SEQ_LEN)
            assert batch[name].sharding == sharding
            assert batch[name].addressable_shards[0].data.shape == (2, SEQ_LEN)
            np.testing.assert_array_equal(np.asarray(batch[name]), expected[name])


def test_corpus_smaller_than_one_batch_is_refused():
    with pytest.raises(ValueError, match=f"{NUM_DOCS} documents, fewer than one batch"):
        input_pipeline.create_train_pipeline(_config(batch=NUM_DOCS + 4), _sharding())


def test_cooldown_switches_streams_at_its_step_and_resumes_across_it():
    assert input_pipeline.cooldown_start(10, 0.2) == 8  # data steps 8 and 9 of 0..9
    with pytest.raises(ValueError, match="cooldown_fraction"):
        input_pipeline.cooldown_start(10, 1.0)
    config = _config(cooldown_fraction=0.2, cooldown_task=TASK)
    with_cooldown = _read(input_pipeline.create_train_pipeline(config, _sharding()), range(10))
    plain = _read(input_pipeline.create_train_pipeline(_config(), _sharding()), range(10))
    _assert_same(with_cooldown[:8], plain[:8])
    # The cooldown's streams start at its first step: its batch 8 is a fresh stream's batch 0.
    _assert_same(with_cooldown[8:9], plain[:1])
    first = input_pipeline.create_train_pipeline(config, _sharding())
    _read(first, range(9))
    resumed = input_pipeline.create_train_pipeline(config, _sharding())
    resumed.restore(first.state(9), 9, "ckpt")
    _assert_same(_read(resumed, [9]), with_cooldown[9:])


def test_vocabulary_check_fails_clearly_when_model_vocab_is_too_small():
    assert input_pipeline.check_vocabulary(TASK, 384) == seqio.ByteVocabulary().vocab_size
    with pytest.raises(ValueError, match=r"vocabulary mismatch.*config.model.vocab_size=100"):
        input_pipeline.check_vocabulary(TASK, 100)


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="config.data.task='no_such_task'"):
        input_pipeline.get_task("no_such_task")


@dataclasses.dataclass(frozen=True)
class _FakeDevice:
    id: int
    process_index: int


class _FakeSharding:
    """Four processes, two devices each; processes (0, 1) and (2, 3) are tensor replicas."""

    def devices_indices_map(self, shape):
        rows_per_replica_group = shape[0] // 2
        per_device = rows_per_replica_group // 2
        mapping = {}
        for process in range(4):
            group = process // 2
            for local in range(2):
                start = group * rows_per_replica_group + local * per_device
                mapping[_FakeDevice(process * 2 + local, process)] = (
                    slice(start, start + per_device),
                    slice(None),
                )
        return mapping


@pytest.mark.parametrize("process, shard", [(0, 0), (1, 0), (2, 1), (3, 1)])
def test_data_layout_gives_replicas_the_same_shard(monkeypatch, process, shard):
    monkeypatch.setattr(jax, "process_index", lambda: process)
    layout = input_pipeline.get_data_layout(_FakeSharding(), global_batch_size=16, seq_len=8)
    assert layout == input_pipeline.DataLayout(
        shard_index=shard,
        num_shards=2,
        local_batch_size=8,
        global_batch_size=16,
        rows=tuple(range(8 * shard, 8 * shard + 8)),
    )


def _seqio_packed(documents: list[list[int]], seq_len: int) -> list[dict[str, np.ndarray]]:
    dataset = tf.data.Dataset.from_generator(
        lambda: ({"targets": np.asarray(doc, np.int32)} for doc in documents),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)},
    )
    return list(
        seqio.utils.trim_and_pack_dataset(dataset, {"targets": seq_len}).as_numpy_iterator()
    )


@pytest.mark.parametrize(
    "documents",
    [
        [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]],  # packs, then starts a new row
        [[3] * 9, [4, 4], [], [5] * 8, [6] * 3],  # longer than a row (trimmed); empty documents
        [[7, 0, 8, 9], [1, 2, 3, 0], [4]],  # a 0 inside: seqio keeps only the non-zero count
        [[i + 1] * (i % 5) for i in range(21)],  # several windows of seq_len documents
        [[], []],  # nothing but empty documents: one all-zero row
    ],
)
def test_pack_like_seqio_equals_seqio_trim_and_pack(documents):
    seq_len = 8
    got = list(
        input_pipeline.pack_like_seqio([np.asarray(d, np.int32) for d in documents], seq_len)
    )
    want = _seqio_packed(documents, seq_len)
    assert len(got) == len(want)
    for row, expected in zip(got, want, strict=True):
        assert row.keys() == expected.keys()
        for name in row:
            np.testing.assert_array_equal(row[name], expected[name], err_msg=name)
            assert row[name].dtype == np.int32


@pytest.mark.parametrize("strategy", ["base", "meda", "inst", "filter", "inst_mix"])
def test_heldout_batches_equal_seqio_get_dataset(strategy):
    """The held-out evaluation's batches are seqio.get_dataset's with LMFeatureConverter."""
    from toxjax.data import demo_tasks
    from toxjax.inference import loglik

    task, seq_len, batch_size = f"{demo_tasks.DEMO_NAME}_{strategy}", 64, 8
    got = list(loglik.heldout_batches(task, seq_len=seq_len, batch_size=batch_size, num_batches=-1))
    converter = seqio.LMFeatureConverter(pack=True, bos_id=vocab.START_ID)
    dataset = seqio.get_dataset(task, {"targets": seq_len}, converter, "validation", verbose=False)
    want = list(dataset.batch(batch_size).as_numpy_iterator())
    assert len(got) == len(want) > 1
    for batch, expected in zip(got, want, strict=True):
        rows = len(expected["decoder_target_tokens"])
        for name in input_pipeline.FEATURES:
            np.testing.assert_array_equal(batch[name][:rows], expected[name], err_msg=name)
            assert not batch[name][rows:].any()  # the last batch is filled with zero rows
