"""toxjax.data.input_pipeline: step-addressed batches, host shards, cache reuse, checks."""

import dataclasses
import os

import jax
import ml_collections
import numpy as np
import pytest
import seqio
import tensorflow as tf

from toxjax.data import input_pipeline

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


def _doc_ids(cache: input_pipeline.PackedCache) -> set[int]:
    """Documents present in a cache, read back from the '<NNN>' markers in the tokens."""
    found = set()
    vocab = seqio.ByteVocabulary()
    tokens = np.asarray(cache.arrays["decoder_target_tokens"])
    segments = np.asarray(cache.arrays["decoder_segment_ids"])
    for row, seg in zip(tokens, segments, strict=True):
        for segment in np.unique(seg[seg > 0]):
            text = vocab.decode([int(t) for t in row[seg == segment] if t > 2])
            found.add(int(text[1:4]))
    return found


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> input_pipeline.PackedCache:
    return input_pipeline.materialize(
        TASK, "train", SEQ_LEN, 0, str(tmp_path_factory.mktemp("cache")), progress=False
    )


def test_cache_holds_packed_features_of_every_document(cache):
    assert cache.num_rows > 0
    assert set(cache.arrays) == set(input_pipeline.FEATURES)
    for array in cache.arrays.values():
        assert array.shape == (cache.num_rows, SEQ_LEN)
    # Packing put several short documents into one row.
    assert cache.num_rows < NUM_DOCS
    assert np.max(cache.arrays["decoder_segment_ids"]) > 1
    assert _doc_ids(cache) == set(range(NUM_DOCS))


def test_batch_of_a_step_is_identical_across_pipelines_and_materialisations(cache, tmp_path):
    again = input_pipeline.materialize(TASK, "train", SEQ_LEN, 0, str(tmp_path), progress=False)
    first = input_pipeline.StepIndexedBatches(cache, batch_size=4, seed=7)
    second = input_pipeline.StepIndexedBatches(again, batch_size=4, seed=7)
    # Ask in different orders: the answer depends on the step only.
    later = {step: second.batch(step) for step in (9, 3, 0, 5)}
    for step in (0, 3, 5, 9):
        batch = first.batch(step)
        for name in input_pipeline.FEATURES:
            np.testing.assert_array_equal(batch[name], later[step][name])


def test_each_epoch_visits_every_row_once_in_a_seed_dependent_order(cache):
    batch_size = 3
    batches = input_pipeline.StepIndexedBatches(cache, batch_size=batch_size, seed=1)
    steps = 2 * cache.num_rows // batch_size + 1
    rows = np.concatenate([batches.row_indices(s) for s in range(steps)])
    first_epoch, second_epoch = rows[: cache.num_rows], rows[cache.num_rows : 2 * cache.num_rows]
    assert sorted(first_epoch) == list(range(cache.num_rows))
    assert sorted(second_epoch) == list(range(cache.num_rows))
    assert list(first_epoch) != list(second_epoch)
    other_seed = input_pipeline.StepIndexedBatches(cache, batch_size=batch_size, seed=2)
    assert list(other_seed.row_indices(0)) != list(batches.row_indices(0))
    assert batches.position(steps)["epoch"] == steps * batch_size // cache.num_rows


def test_host_shards_hold_disjoint_documents(tmp_path):
    shards = [
        input_pipeline.materialize(
            TASK, "train", SEQ_LEN, 0, str(tmp_path), shard_index=i, num_shards=2, progress=False
        )
        for i in range(2)
    ]
    ids = [_doc_ids(shard) for shard in shards]
    assert ids[0] and ids[1]
    assert ids[0].isdisjoint(ids[1])
    assert ids[0] | ids[1] == set(range(NUM_DOCS))


def test_cache_is_reused_without_touching_seqio(cache, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("seqio.get_dataset called although the cache exists")

    monkeypatch.setattr(seqio, "get_dataset", fail)
    parent = os.path.dirname(cache.directory)
    reused = input_pipeline.materialize(TASK, "train", SEQ_LEN, 0, parent, progress=False)
    assert reused.directory == cache.directory
    np.testing.assert_array_equal(
        reused.arrays["decoder_target_tokens"], cache.arrays["decoder_target_tokens"]
    )
    # No temporary directories are left behind by the atomic write.
    assert not [name for name in os.listdir(parent) if ".tmp-" in name]


def test_max_rows_limits_the_cache(tmp_path):
    small = input_pipeline.materialize(
        TASK, "train", SEQ_LEN, 0, str(tmp_path), max_rows=3, progress=False
    )
    assert small.num_rows == 3


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
        shard_index=shard, num_shards=2, local_batch_size=8, global_batch_size=16
    )


def test_train_pipeline_builds_sharded_global_batches(cache):
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "tensor"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    layout = input_pipeline.get_data_layout(sharding, global_batch_size=8, seq_len=SEQ_LEN)
    assert (layout.shard_index, layout.num_shards, layout.local_batch_size) == (0, 1, 8)
    batches = input_pipeline.StepIndexedBatches(cache, layout.local_batch_size, seed=0)
    pipeline = input_pipeline.TrainPipeline(batches, layout, sharding, SEQ_LEN)
    batch = pipeline(2)
    expected = batches.batch(2)
    for name in input_pipeline.FEATURES:
        assert batch[name].shape == (8, SEQ_LEN)
        assert batch[name].sharding == sharding
        assert batch[name].addressable_shards[0].data.shape == (2, SEQ_LEN)
        np.testing.assert_array_equal(np.asarray(batch[name]), expected[name])
    assert pipeline.position(2)["next_step"] == 2


def test_empty_split_is_a_clear_error(tmp_path):
    name = "input_pipeline_test_empty"
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                    {"targets": tf.constant([], tf.string)}
                ),
                splits=["train"],
            ),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
            output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)},
        )
    with pytest.raises(ValueError, match=r"'input_pipeline_test_empty' split 'train'.*no examples"):
        input_pipeline.materialize(name, "train", SEQ_LEN, 0, str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == []  # the temporary directory was removed


def test_cache_dir_is_local_even_for_a_gcs_workdir(tmp_path):
    data = ml_collections.ConfigDict({"cache_dir": ""})
    assert input_pipeline.resolve_cache_dir(data, str(tmp_path)) == str(tmp_path / "data_cache")
    remote = input_pipeline.resolve_cache_dir(data, "gs://bucket/run")
    assert "://" not in remote and os.path.isabs(remote)
    data.cache_dir = "gs://bucket/cache"
    with pytest.raises(ValueError, match="config.data.cache_dir='gs://bucket/cache'.*local"):
        input_pipeline.resolve_cache_dir(data, str(tmp_path))


def test_cooldown_switches_streams_at_its_step_and_stays_step_indexed(cache):
    """The last batches come from the cooldown stream, indexed from its own step 0, so a
    fresh pipeline (a resumed run) gives every step's batch again, across the switch."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    layout = input_pipeline.get_data_layout(sharding, global_batch_size=4, seq_len=SEQ_LEN)
    assert input_pipeline.cooldown_start(10, 0.2) == 8  # data steps 8 and 9 of 0..9
    with pytest.raises(ValueError, match="cooldown_fraction"):
        input_pipeline.cooldown_start(10, 1.0)

    def pipeline():
        main = input_pipeline.StepIndexedBatches(cache, 4, seed=0)
        cool = input_pipeline.StepIndexedBatches(cache, 4, seed=7)  # another order: tellable
        return (
            main,
            cool,
            input_pipeline.TrainPipeline(main, layout, sharding, SEQ_LEN, cooldown=(8, cool)),
        )

    main, cool, first = pipeline()
    tokens = "decoder_target_tokens"
    np.testing.assert_array_equal(first.local_batch(7)[tokens], main.batch(7)[tokens])
    np.testing.assert_array_equal(first.local_batch(8)[tokens], cool.batch(0)[tokens])
    np.testing.assert_array_equal(first.local_batch(9)[tokens], cool.batch(1)[tokens])
    assert not np.array_equal(first.local_batch(8)[tokens], main.batch(8)[tokens])
    _, _, resumed = pipeline()
    for step in (6, 8, 9):
        np.testing.assert_array_equal(
            np.asarray(resumed(step)[tokens]), np.asarray(first(step)[tokens])
        )
    assert first.position(9)["cooldown_start"] == 8
    assert first.position(9)["cooldown_rows_consumed_this_host"] == 4
