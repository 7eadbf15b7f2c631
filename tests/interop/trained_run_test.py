"""A run is read back from its workdir: config.json, vocabulary, conditioning, params, step."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import seqio
from flax import traverse_util

from toxjax.data.conditioning import Strategy
from toxjax.interop import trained_run
from toxjax.model import decoder
from toxjax.testing import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_run.tiny_config("gpt")
    config.data.task = "toxjax_demo_meda"
    params = tiny_run.write_run(workdir, config, step=3, seed=1)
    return workdir, config, params


def test_load_run_restores_params_strategy_and_vocabulary(run_dir):
    workdir, config, params = run_dir
    run = trained_run.load_run(workdir)
    assert run.step == 3
    assert run.strategy is Strategy.MEDA
    assert run.inference_prefix == "toxicity: 0.00\n"
    assert isinstance(run.vocabulary, seqio.ByteVocabulary)
    assert run.model_config == decoder.ModelConfig.from_config(config.model)
    restored = traverse_util.flatten_dict(jax.device_get(run.params))
    for path, leaf in traverse_util.flatten_dict(params).items():
        np.testing.assert_array_equal(restored[path], leaf, err_msg="/".join(path))
    # Sharded over this host's devices, FSDP on the embedding dimension.
    assert run.mesh.shape["fsdp"] == 8
    assert run.params["token_embedding"].sharding.spec == jax.sharding.PartitionSpec(
        "tensor", "fsdp"
    )


def test_overrides_of_config_vocabulary_and_strategy(run_dir, tmp_path):
    workdir, config, _ = run_dir
    other = config.copy_and_resolve_references()
    other.data.task = "not_registered_anywhere"
    with pytest.raises(ValueError, match="(?s)not a registered.*Give the vocabulary instead"):
        trained_run.load_run(workdir, config=other)
    run = trained_run.load_run(workdir, config=other, vocabulary="bytes", strategy="inst")
    assert run.strategy is Strategy.INST
    assert run.inference_prefix == "The following text is non-toxic:\n"
    with pytest.raises(FileNotFoundError, match="no such SentencePiece model"):
        trained_run.resolve_vocabulary("x", str(tmp_path / "missing.model"))


def test_a_vocabulary_larger_than_the_model_is_refused(run_dir, monkeypatch):
    workdir, _, _ = run_dir

    class Huge:
        vocab_size = 10_000

    monkeypatch.setattr(trained_run, "resolve_vocabulary", lambda *args: Huge())
    with pytest.raises(ValueError, match="10000 ids but config.model.vocab_size is 384"):
        trained_run.load_run(workdir)


def test_missing_config_json_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        trained_run.load_config(str(tmp_path))


def test_local_mesh_uses_devices_that_divide_the_width():
    cfg = decoder.ModelConfig(d_model=64, num_heads=4)
    assert trained_run.local_mesh(cfg).shape["fsdp"] == 8
    assert trained_run.local_mesh(dataclasses.replace(cfg, d_model=12)).shape["fsdp"] == 4
