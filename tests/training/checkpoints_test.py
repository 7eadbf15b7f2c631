"""Tests for toxjax.training.checkpoints: sharded round trip, rotation, mismatches, warm start,
damaged checkpoints, SIGTERM."""

import logging
import os
import pathlib
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


def test_cpu_saves_write_replicated_arrays_without_slicing_them(tmp_path, monkeypatch):
    """Replica-parallel saving slices each replicated array with eager ops compiled on first use;
    on CPU devices, whose memory is host memory, the save copies replica 0's shard instead."""
    slices = []
    slice_in_dim = jax.lax.slice_in_dim
    monkeypatch.setattr(
        jax.lax, "slice_in_dim", lambda *a, **k: slices.append(a) or slice_in_dim(*a, **k)
    )
    replicated = NamedSharding(_mesh(), PartitionSpec())
    state = jax.device_put(_state(), replicated)
    checkpointer = checkpoints.Checkpointer(str(tmp_path), async_save=False)
    assert checkpointer.save(3, state, _meta(), force=True)
    restored, _ = checkpointer.restore(3, _abstract(state, _mesh()))
    checkpointer.close()
    assert slices == []
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


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


def _truncate_data(step_dir: pathlib.Path) -> None:
    """Cut every array data file of a step in half (a full disk, an interrupted copy)."""
    files = [path for path in step_dir.glob("state/**/d/*") if path.is_file()]
    assert files, f"no data files under {step_dir}"
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def _delete_data(step_dir: pathlib.Path) -> None:
    for path in step_dir.glob("state/**/d/*"):
        path.unlink()


def _delete_array_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "state" / "_METADATA").unlink()


def _delete_meta(step_dir: pathlib.Path) -> None:
    (step_dir / "meta" / "metadata").unlink()


def _save_steps(directory: pathlib.Path, steps=(1, 2)) -> dict[int, _State]:
    """One state per step, each with its own params (step 1: +1, step 2: +2, ...)."""
    checkpointer = checkpoints.Checkpointer(str(directory), max_to_keep=None)
    states = {}
    for step in steps:
        state = _state()
        states[step] = state.replace(
            step=jnp.array(step, jnp.int32),
            params=jax.tree.map(lambda x, shift=step: x + shift, state.params),
        )
        assert checkpointer.save(step, states[step], _meta(), force=True)
    checkpointer.close()
    return states


@pytest.mark.parametrize(
    "damage", [_truncate_data, _delete_data, _delete_array_metadata, _delete_meta]
)
def test_damaged_latest_step_falls_back_and_is_set_aside(tmp_path, caplog, damage):
    states = _save_steps(tmp_path)
    damage(tmp_path / "2")
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    abstract = _abstract(_state(), _mesh())
    with caplog.at_level(logging.WARNING):
        state, meta, step = checkpointer.restore_latest(abstract, MODEL_CONFIG)
    assert step == 1 and int(state.step) == 1 and meta == _meta()
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(states[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert f"resume: checkpoint {tmp_path} step 2 cannot be restored" in caplog.text
    assert "trying step 1" in caplog.text
    # Our warning is one readable line, not TensorStore's JSON. (Orbax may log that JSON
    # itself, from its own threads and at its own timing: only our records are checked.)
    ours = "\n".join(record.getMessage() for record in caplog.records if record.name == "absl")
    assert "cannot be restored" in ours and "tensorstore_spec" not in ours
    # The damaged step is kept for inspection but no longer listed, so step 2 saves afresh.
    assert (tmp_path / "2.corrupt").is_dir()
    assert f"Moved the damaged checkpoint {tmp_path / '2'} to {tmp_path / '2.corrupt'}" in (
        caplog.text
    )
    assert checkpointer.all_steps() == [1]
    assert checkpointer.save(2, states[2], _meta(), force=True)
    checkpointer.close()
    reopened = checkpoints.Checkpointer(str(tmp_path))
    state, _, step = reopened.restore_latest(abstract, MODEL_CONFIG)
    assert step == 2
    np.testing.assert_array_equal(state.params["norm"]["scale"], states[2].params["norm"]["scale"])
    reopened.close()


def test_no_restorable_step_names_the_directory_and_each_step(tmp_path):
    _save_steps(tmp_path)
    _delete_data(tmp_path / "1")
    _truncate_data(tmp_path / "2")
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    with pytest.raises(checkpoints.CheckpointRestoreError) as error:
        checkpointer.restore_latest(_abstract(_state(), _mesh()), MODEL_CONFIG)
    assert error.value.directory == str(tmp_path)
    assert sorted(error.value.errors) == [1, 2]
    message = str(error.value)
    assert f"no checkpoint in {tmp_path} could be restored (tried steps [2, 1])" in message
    assert "\n  step 2: " in message and "\n  step 1: " in message
    assert "tensorstore_spec" not in message
    assert checkpointer.all_steps() == [1, 2]  # nothing is moved when nothing restores
    checkpointer.close()


def test_a_different_model_is_not_mistaken_for_damage(tmp_path):
    _save_steps(tmp_path)
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    with pytest.raises(checkpoints.CheckpointMismatchError, match="scan_layers"):
        checkpointer.restore_latest(
            _abstract(_state(), _mesh()), {**MODEL_CONFIG, "scan_layers": False}
        )
    assert checkpointer.all_steps() == [1, 2]
    checkpointer.close()


def test_params_restore_of_a_damaged_checkpoint(tmp_path, caplog):
    states = _save_steps(tmp_path / checkpoints.CHECKPOINT_SUBDIR)
    directory = tmp_path / checkpoints.CHECKPOINT_SUBDIR
    _truncate_data(directory / "2")
    abstract_params = _abstract(_state(), _mesh()).params
    # The latest: falls back to step 1 with a warning naming step 2; nothing is moved (read-only).
    with caplog.at_level(logging.WARNING):
        params, step = checkpoints.restore_params(
            str(tmp_path), abstract_params, MODEL_CONFIG, what="evaluation"
        )
    assert step == 1
    np.testing.assert_array_equal(params["layers"]["kernel"], states[1].params["layers"]["kernel"])
    assert f"evaluation: checkpoint {directory} step 2 cannot be restored" in caplog.text
    assert (directory / "2").is_dir() and not (directory / "2.corrupt").exists()
    # An explicit step does not fall back to another one.
    with pytest.raises(
        checkpoints.CheckpointRestoreError,
        match=rf"evaluation: no checkpoint in {directory} could be restored \(tried steps \[2\]\)",
    ):
        checkpoints.restore_params(
            str(tmp_path), abstract_params, MODEL_CONFIG, step=2, what="evaluation"
        )
    _delete_data(directory / "1")
    with pytest.raises(checkpoints.CheckpointRestoreError, match=r"(?s)step 2: .*step 1: "):
        checkpoints.restore_params(str(tmp_path), abstract_params, MODEL_CONFIG)
