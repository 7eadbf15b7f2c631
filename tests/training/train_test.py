"""Tests for toxjax.training.train: sharded == single device, real sharding, early config errors."""

import copy
import dataclasses
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import seqio
import tensorflow as tf
from jax.sharding import PartitionSpec

from toxjax.configs import tiny
from toxjax.data import input_pipeline
from toxjax.training import checkpoints, optim, train

TASK = "train_test_task"


def _register_task() -> None:
    if TASK in seqio.TaskRegistry.names():
        return

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices({"targets": [f"doc {i}" for i in range(40)]})

    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)},
    )


_register_task()


LEARNING_RATE = 1e-3


def _config(**mesh) -> ml_collections.ConfigDict:
    """A smaller-than-tiny model: the tests check mechanics, and compile time is the cost."""
    config = tiny.get_config()
    config.model.d_model = 64
    config.model.num_heads = 4
    config.model.num_kv_heads = 2  # grouped-query attention: shards kv_heads too
    config.model.mlp_dim = 128
    config.model.max_len = 16
    config.model.dtype = "float32"  # tight tolerance between layouts
    config.data.task = TASK
    config.data.seq_len = 16
    config.data.global_batch_size = 8
    config.optim.warmup_steps = 0  # learning rate > 0 at step 0, so step 1 moves params
    config.optim.learning_rate = LEARNING_RATE
    config.optim.z_loss = 1e-4
    config.train.num_steps = 10
    config.mesh.ici = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, **mesh})
    return config


def _batch(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """A packed-looking batch: two documents per row, padding at the end, weights 0 there."""
    rng = np.random.default_rng(0)
    batch_size, length = config.data.global_batch_size, config.data.seq_len
    targets = rng.integers(3, 259, (batch_size, length)).astype(np.int32)
    segments = np.ones((batch_size, length), np.int32)
    segments[:, length // 2 :] = 2
    segments[:, -3:] = 0
    positions = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)]).astype(
        np.int32
    )
    positions = np.tile(positions, (batch_size, 1)) * (segments > 0)
    inputs = np.where(positions == 0, 0, np.roll(targets, 1, axis=1)).astype(np.int32)
    return {
        "decoder_target_tokens": targets * (segments > 0),
        "decoder_input_tokens": inputs * (segments > 0),
        "decoder_loss_weights": (segments > 0).astype(np.int32),
        "decoder_segment_ids": segments,
        "decoder_positions": positions.astype(np.int32),
    }


@pytest.fixture(scope="module")
def two_layouts():
    """Two steps on one device and on a (data=2, fsdp=2, tensor=2) mesh, same start."""
    single_config = _config()
    mesh_config = _config(data=2, fsdp=2, tensor=2)
    single = train.create_setup(single_config, devices=jax.devices()[:1])
    sharded = train.create_setup(mesh_config)
    state = train.create_train_state(single, train.init_rng(single_config))
    # Through host memory: a device-to-device put may alias buffers that donation deletes.
    sharded_state = jax.device_put(jax.device_get(state), sharded.state_shardings)
    batch = _batch(single_config)
    results = {}
    for name, setup, current in (("single", single, state), ("sharded", sharded, sharded_state)):
        step = train.make_train_step(setup)
        placed = jax.device_put(batch, setup.batch_sharding)
        metrics = []
        for _ in range(2):
            current, step_metrics = step(current, placed)
            metrics.append(jax.device_get(step_metrics))
        results[name] = (current, metrics)
    return sharded, results


@pytest.mark.slow
def test_sharded_step_equals_single_device(two_layouts):
    _, results = two_layouts
    single_state, single_metrics = results["single"]
    sharded_state, sharded_metrics = results["sharded"]
    for one, many in zip(single_metrics, sharded_metrics, strict=True):
        for name in ("loss", "z_loss", "grad_norm", "learning_rate", "target_tokens"):
            np.testing.assert_allclose(many[name], one[name], rtol=1e-5, err_msg=name)
    assert single_metrics[1]["loss"] != single_metrics[0]["loss"]  # the step changed params
    assert int(sharded_state.step) == int(single_state.step) == 2
    flat_single = jax.tree_util.tree_flatten_with_path(single_state)[0]
    flat_sharded = jax.tree.leaves(sharded_state)
    for (path, one), many in zip(flat_single, flat_sharded, strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:
            # Softmax ignores a shift shared by all keys, so this gradient is exactly 0 and
            # what is left is rounding noise, which Adam normalises to +-lr in either layout.
            # Both layouts must still leave it (nearly) where it started: zeros.
            assert np.max(np.abs(np.asarray(many))) < 1e-4 and np.max(np.abs(one)) < 1e-4
            continue
        # Adam divides by sqrt(v): where |g| is tiny its rounding differences are amplified
        # up to ~lr per step. So: nearly every element within rtol and 1e-4 of the leaf's own
        # scale; the rare amplified one (how rare depends on the CPU's XLA kernels) within
        # lr per step. A layout bug moves many elements, or one by more than that.
        one, many = np.asarray(one), np.asarray(many)
        atol = 1e-4 * float(np.max(np.abs(one))) if one.size else 0.0
        off = ~np.isclose(many, one, rtol=1e-5, atol=atol)
        assert off.sum() <= max(1, off.size // 1000), f"{name}: {off.sum()} of {off.size} off"
        np.testing.assert_allclose(many, one, rtol=0, atol=2 * LEARNING_RATE, err_msg=name)


@pytest.mark.slow
def test_state_is_really_sharded_by_the_rules(two_layouts):
    setup, results = two_layouts
    state, _ = results["sharded"]
    params = state.params
    # Rules: vocab -> tensor, embed -> fsdp, mlp -> tensor, heads/kv_heads -> tensor.
    assert params["token_embedding"].sharding.spec == PartitionSpec("tensor", "fsdp")
    assert params["layers"]["mlp"]["wi"]["kernel"].sharding.spec == PartitionSpec(
        None, "fsdp", "tensor"
    )
    assert params["layers"]["attention"]["key"]["kernel"].sharding.spec == PartitionSpec(
        None, "fsdp", "tensor", None
    )
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        spec = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
        local = leaf.addressable_shards[0].data.shape
        for dim, axes in enumerate(spec):
            if axes is not None:
                assert local[dim] < leaf.shape[dim], jax.tree_util.keystr(path)
        if leaf.ndim >= 2 and "norm" not in jax.tree_util.keystr(path):
            assert local != leaf.shape, f"{jax.tree_util.keystr(path)} is not split at all"
    # Adam moments live exactly where their parameters live.
    adam = state.opt_state[1][0]
    for moment in (adam.mu, adam.nu):
        for param, value in zip(jax.tree.leaves(params), jax.tree.leaves(moment), strict=True):
            assert value.sharding == param.sharding
    # The abstract state (used for restores) carries the same shardings as the live one.
    for abstract, live in zip(
        jax.tree.leaves(setup.abstract_state), jax.tree.leaves(state), strict=True
    ):
        assert abstract.sharding == live.sharding


@pytest.fixture
def no_compilation(monkeypatch):
    """Any attempt to build a jitted function fails the test: errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a function was compiled before the configuration error")

    monkeypatch.setattr(train.partitioning, "PartitionedFunction", refuse)


def test_mesh_that_does_not_divide_devices_fails_early(no_compilation, tmp_path):
    config = _config(data=3, fsdp=-1)
    with pytest.raises(ValueError, match=r"config.mesh.ici .*3 does not divide 8"):
        train.train_and_evaluate(config, str(tmp_path))
    config = _config(data=3)
    with pytest.raises(ValueError, match=r"config.mesh.ici .*multiply to 3, but there are 8"):
        train.train_and_evaluate(config, str(tmp_path))


def test_unknown_logical_axis_fails_early(no_compilation, tmp_path):
    config = _config(data=2, fsdp=2, tensor=2)
    config.logical_axis_rules = [rule for rule in config.logical_axis_rules if rule[0] != "mlp"]
    with pytest.raises(ValueError, match=r"logical axis names missing.*\['mlp'\]"):
        train.train_and_evaluate(config, str(tmp_path))


def test_vocabulary_smaller_than_the_task_fails_early(no_compilation, tmp_path):
    config = _config(data=8)
    config.model.vocab_size = 128
    with pytest.raises(ValueError, match=r"vocabulary mismatch.*259 ids.*vocab_size=128"):
        train.train_and_evaluate(config, str(tmp_path))


def test_batch_not_divisible_by_data_devices_fails_early(no_compilation, tmp_path):
    config = _config(data=8)
    config.data.global_batch_size = 12
    with pytest.raises(ValueError, match="global_batch_size=12 is not divisible by the 8"):
        train.train_and_evaluate(config, str(tmp_path))


def _write_checkpoint(
    workdir: str, config: ml_collections.ConfigDict, steps: tuple[int, ...] = (3,)
) -> None:
    """Checkpoints of `config`'s shapes, written from host zeros (no compilation)."""
    setup = train.create_setup(config)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), setup.abstract_state)
    checkpointer = checkpoints.Checkpointer(f"{workdir}/{checkpoints.CHECKPOINT_SUBDIR}")
    for step in steps:
        state = zeros.replace(step=np.asarray(step, np.int32))
        checkpointer.save(step, state, {"model_config": setup.model_config_dict}, force=True)
    checkpointer.close()


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "scan_layers",
            False,
            (
                r"(?s)config.model.scan_layers: checkpoint has True.*"
                r"params/layers/attention/key/kernel: in checkpoint, not in model.*unscan_params"
            ),
        ),
        (
            "mlp_dim",
            256,
            (
                r"(?s)config.model.mlp_dim: checkpoint has 128.*"
                r"params/layers/mlp/wi/kernel: checkpoint shape \(2, 64, 128\), model shape "
                r"\(2, 64, 256\)"
            ),
        ),
    ],
)
def test_checkpoint_of_another_model_fails_before_compilation(
    no_compilation, tmp_path, field, value, message
):
    config = _config(data=8)
    _write_checkpoint(str(tmp_path), config)
    changed = copy.deepcopy(config)
    changed.model[field] = value
    with pytest.raises(checkpoints.CheckpointMismatchError, match=message):
        train.train_and_evaluate(changed, str(tmp_path))


def test_warm_start_from_another_model_fails_before_compilation(no_compilation, tmp_path):
    source = tmp_path / "source"
    _write_checkpoint(str(source), _config(data=8))
    config = _config(data=8)
    config.model.d_model = 32
    config.train.warm_start_from = str(source)

    def warm_start(abstract_params, model_config):
        return checkpoints.restore_params_for_warm_start(
            str(source), abstract_params, model_config
        )[0]

    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"(?s)warm start.*d_model"):
        train.train_and_evaluate(config, str(tmp_path / "run"), warm_start_fn=warm_start)


def test_warm_start_from_needs_a_warm_start_fn_from_the_caller(tmp_path):
    config = _config(data=8)
    config.train.warm_start_from = str(tmp_path / "source")
    with pytest.raises(ValueError, match=r"warm_start_from.*needs a warm_start_fn"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_validate_config_rejects_bad_accumulation_and_lengths():
    config = _config()
    model_config = train.decoder.ModelConfig.from_config(config.model)
    config.optim.grad_accum_steps = 3
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        train.validate_config(config, model_config)
    config.optim.grad_accum_steps = 1
    config.data.seq_len = 64
    with pytest.raises(ValueError, match="seq_len=64 exceeds config.model.max_len=16"):
        train.validate_config(config, model_config)
    config.data.seq_len = 12
    chunked = dataclasses.replace(model_config, attention_chunks=8)
    with pytest.raises(ValueError, match="attention_chunks=8 must divide config.data.seq_len=12"):
        train.validate_config(config, chunked)
    config.optim.grad_accum_steps = -1  # auto is accepted here and resolved per mesh
    train.validate_config(config, dataclasses.replace(model_config, attention_chunks=4))


def test_tiny_config_uses_the_demo_task_vocabulary_sizes():
    """The shipped tiny config must pass the vocabulary check of the demo task it names."""
    config = tiny.get_config()
    if config.data.task not in seqio.TaskRegistry.names():
        input_pipeline.get_task(config.data.task)  # imports toxjax.data.tasks
    assert input_pipeline.check_vocabulary(config.data.task, config.model.vocab_size) <= 384


def _short_run(config: ml_collections.ConfigDict, num_steps: int) -> ml_collections.ConfigDict:
    config = copy.deepcopy(config)
    config.train.num_steps = num_steps
    config.train.checkpoint_every = 2
    config.train.keep_checkpoints = 10
    config.train.log_every = 100  # metrics fetched only at step 1, checkpoint saves and the end
    config.train.cpu_peak_flops = 3.6e11  # skip the matmul measurement
    return config


def test_divergence_stops_at_the_first_bad_step_and_saves_nothing_after_it(tmp_path, monkeypatch):
    """Learning rate 1e-3 for steps 1-4, then 1e30: step 5's update overflows the params."""
    monkeypatch.setattr(
        optim,
        "learning_rate_schedule",
        lambda optim_config, num_steps: lambda count: jnp.where(count < 4, 1e-3, 1e30),
    )
    config = _short_run(_config(data=8), num_steps=10)
    with pytest.raises(train.NonFiniteLossError) as error:
        train.train_and_evaluate(config, str(tmp_path))
    directory = tmp_path / checkpoints.CHECKPOINT_SUBDIR
    # Found at the step-6 save, and named exactly: step 5 (the first with a non-finite metric).
    assert error.value.step == 5
    assert error.value.values["param_norm"] == float("inf")
    message = str(error.value)
    assert "training diverged at step 5" in message and "param_norm inf" in message
    assert f"the latest checkpoint is step 4 in {directory}" in message
    log = {}
    with open(tmp_path / train.TRAIN_LOG) as f:
        for line in f:
            record = json.loads(line)
            log[record["step"]] = record
    assert sorted(log) == [1, 2, 3, 4, 5, 6]  # every fetched step is logged before raising
    assert np.isnan(log[6]["loss"])
    # Step 6 (a save step) was not saved: the latest checkpoint is the last finite one.
    checkpointer = checkpoints.Checkpointer(str(directory))
    assert checkpointer.all_steps() == [2, 4]
    setup = train.create_setup(config)
    state, _ = checkpointer.restore(4, setup.abstract_state)
    checkpointer.close()
    assert int(state.step) == 4
    for leaf in jax.tree.leaves(state):
        assert np.all(np.isfinite(np.asarray(leaf)))


def _truncate_data(step_dir: pathlib.Path) -> None:
    files = [path for path in step_dir.glob("state/**/d/*") if path.is_file()]
    assert files
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def test_resume_falls_back_from_a_damaged_latest_checkpoint(tmp_path, caplog):
    config = _short_run(_config(data=8), num_steps=4)
    _write_checkpoint(str(tmp_path), config, steps=(2, 4))
    directory = tmp_path / checkpoints.CHECKPOINT_SUBDIR
    _truncate_data(directory / "4")
    with caplog.at_level(logging.INFO):
        state = train.train_and_evaluate(config, str(tmp_path))
    assert f"resume: checkpoint {directory} step 4 cannot be restored" in caplog.text
    assert f"Resumed from {directory} step 2" in caplog.text
    assert int(state.step) == 4
    # Steps 3-4 were trained again and step 4 saved afresh: not skipped as already saved.
    assert (directory / "4.corrupt").is_dir()
    checkpointer = checkpoints.Checkpointer(str(directory))
    assert checkpointer.all_steps() == [2, 4]
    restored, _ = checkpointer.restore(4, train.create_setup(config).abstract_state)
    checkpointer.close()
    assert int(restored.step) == 4


def test_resume_with_no_restorable_checkpoint_names_the_directory(no_compilation, tmp_path):
    config = _short_run(_config(data=8), num_steps=4)
    _write_checkpoint(str(tmp_path), config, steps=(2, 4))
    directory = tmp_path / checkpoints.CHECKPOINT_SUBDIR
    for step in (2, 4):
        for path in (directory / str(step)).glob("state/**/d/*"):
            path.unlink()
    with pytest.raises(
        checkpoints.CheckpointRestoreError,
        match=rf"(?s)resume: no checkpoint in {directory} could be restored.*step 4: .*step 2: ",
    ):
        train.train_and_evaluate(config, str(tmp_path))
