"""Tests for toxjax.training.checkpoints: sharded round trip, rotation, mismatches, warm start, SIGTERM."""

import os
import signal
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from toxjax.training import checkpoints


@flax.struct.dataclass
class _State:
    step: jax.Array
    params: Any
    opt_state: Any


MODEL_CONFIG = {"num_layers": 2, "d_model": 8, "scan_layers": True, "vocab_size": 16}


def _mesh() -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("fsdp", "tensor"))


def _params(width: int = 8) -> dict:
    return {
        "layers": {"kernel": jnp.arange(2 * width * 4, dtype=jnp.float32).reshape(2, width, 4)},
        "embedding": jnp.ones((16, width)),
        "norm": {"scale": jnp.full((width,), 2.0)},
    }


def _state(width: int = 8) -> _State:
    params = _params(width)
    tx = optax.adamw(1e-3)
    return _State(step=jnp.array(3, jnp.int32), params=params, opt_state=tx.init(params))


def _abstract(state: _State, mesh: jax.sharding.Mesh) -> _State:
    def spec(x):
        if x.ndim == 3:
            return NamedSharding(mesh, PartitionSpec(None, "fsdp", "tensor"))
        if x.ndim == 2:
            return NamedSharding(mesh, PartitionSpec(None, "fsdp"))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=spec(x)), state)


def _meta(model_config=MODEL_CONFIG) -> dict:
    return {"model_config": dict(model_config), "data": {"next_step": 3}}


def test_round_trip_restores_into_requested_shardings(tmp_path):
    mesh = _mesh()
    state = _state()
    checkpointer = checkpoints.Checkpointer(str(tmp_path), max_to_keep=3)
    assert checkpointer.latest_step() is None
    assert checkpointer.save(3, state, _meta(), force=True)
    checkpointer.close()

    reopened = checkpoints.Checkpointer(str(tmp_path))
    assert reopened.latest_step() == 3
    abstract = _abstract(state, mesh)
    restored, meta = reopened.restore(3, abstract)
    assert meta == _meta()
    for got, want, target in zip(
        jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert got.sharding == target.sharding
    kernel = restored.params["layers"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (2, 2, 2)
    reopened.close()


def test_keeps_last_k_and_respects_the_interval(tmp_path):
    checkpointer = checkpoints.Checkpointer(
        str(tmp_path), save_every=2, max_to_keep=2, async_save=True
    )
    state = _state()
    started = [step for step in range(1, 8) if checkpointer.save(step, state, _meta())]
    checkpointer.wait()
    assert started == [2, 4, 6]
    assert checkpointer.save(7, state, _meta(), force=True)
    assert not checkpointer.save(7, state, _meta(), force=True)  # already saved
    checkpointer.close()
    assert checkpoints.Checkpointer(str(tmp_path)).all_steps() == [6, 7]


def test_mismatched_scan_layers_is_reported_before_restore(tmp_path):
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    checkpointer.save(1, _state(), _meta(), force=True)
    checkpointer.wait()
    unscanned = {**MODEL_CONFIG, "scan_layers": False}
    abstract = _abstract(_state(), _mesh())
    with pytest.raises(
        checkpoints.CheckpointMismatchError, match=r"(?s)scan_layers.*unscan_params"
    ):
        checkpointer.check_compatible(1, abstract, unscanned)
    # Same config passes and returns the saved meta.
    assert checkpointer.check_compatible(1, abstract, MODEL_CONFIG)["data"] == {"next_step": 3}
    checkpointer.close()


def test_mismatched_shapes_name_each_array(tmp_path):
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    checkpointer.save(1, _state(width=8), _meta(), force=True)
    checkpointer.wait()
    wider = _abstract(_state(width=4), _mesh())
    # Even with a config that claims to match, the stored array metadata catches it.
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        checkpointer.check_compatible(1, wider, MODEL_CONFIG)
    message = str(error.value)
    assert "params/layers/kernel: checkpoint shape (2, 8, 4), model shape (2, 4, 4)" in message
    assert "params/embedding" in message
    checkpointer.close()


def test_missing_and_extra_arrays_are_reported():
    saved = {"params/a": ((2,), "float32"), "params/old": ((3,), "float32")}
    expected = {"params/a": ((2,), "float32"), "params/new": ((3,), "float32")}
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        checkpoints.check_compatible("x", None, {}, saved, expected)
    assert "params/old: in checkpoint, not in model" in str(error.value)
    assert "params/new: in model, not in checkpoint" in str(error.value)


def test_warm_start_restores_params_only(tmp_path):
    source = tmp_path / "source_run"
    checkpointer = checkpoints.Checkpointer(str(source / checkpoints.CHECKPOINT_SUBDIR))
    state = _state()
    checkpointer.save(5, state, _meta(), force=True)
    checkpointer.close()

    abstract_params = _abstract(state, _mesh()).params
    params, step = checkpoints.restore_params_for_warm_start(
        str(source), abstract_params, MODEL_CONFIG
    )
    assert step == 5
    assert set(params) == set(state.params)
    np.testing.assert_array_equal(params["layers"]["kernel"], state.params["layers"]["kernel"])
    assert params["layers"]["kernel"].sharding == abstract_params["layers"]["kernel"].sharding

    with pytest.raises(checkpoints.CheckpointMismatchError, match="d_model"):
        checkpoints.restore_params_for_warm_start(
            str(source), abstract_params, {**MODEL_CONFIG, "d_model": 4}
        )
    with pytest.raises(FileNotFoundError, match="warm_start_from"):
        checkpoints.restore_params_for_warm_start(str(tmp_path / "nope"), abstract_params, {})


def test_sigterm_sets_the_stop_flag_and_uninstall_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    stop = checkpoints.StopRequest().install()
    try:
        assert not stop.should_stop(0, None)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop(1, None)
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before
