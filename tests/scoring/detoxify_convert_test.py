"""Tests for toxjax.scoring.detoxify_convert: checkpoint -> Flax params, and its cache."""

from __future__ import annotations

import datetime
import os

import numpy as np
import pytest
import torch

from toxjax.scoring import detoxify_convert, encoders
from toxjax.testing import detoxify_checkpoint


@pytest.fixture
def own_checkpoint(tmp_path) -> str:
    """A private checkpoint: these tests write, corrupt and re-cache it."""
    return detoxify_checkpoint.build_tiny_detoxify_checkpoint(str(tmp_path), layers=2)


def test_conversion_maps_every_tensor_with_its_transpose(own_checkpoint):
    converted = detoxify_convert.convert_checkpoint(own_checkpoint)
    state = torch.load(own_checkpoint, weights_only=True)["state_dict"]
    params = converted.params
    np.testing.assert_array_equal(
        params["layers"]["attention"]["query"]["kernel"][1],
        state["bert.encoder.layer.1.attention.self.query.weight"].numpy().T,
    )
    np.testing.assert_array_equal(
        params["embeddings"]["norm"]["scale"], state["bert.embeddings.LayerNorm.weight"].numpy()
    )
    np.testing.assert_array_equal(params["classifier"]["bias"], state["classifier.bias"].numpy())
    flat = detoxify_convert.flatten(params)
    assert {k: v.shape for k, v in flat.items()} == encoders.param_shapes(converted.config)
    assert converted.class_names[0] == "toxicity"  # Detoxify's rename of "toxic"
    assert converted.config.num_hidden_layers == 2


def test_cache_is_written_next_to_the_checkpoint_and_reused(own_checkpoint, monkeypatch):
    first = detoxify_convert.load_converted(own_checkpoint)
    cached = own_checkpoint.removesuffix(".ckpt") + ".flax.safetensors"
    assert os.path.exists(cached)

    def no_torch_load(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(detoxify_convert, "read_checkpoint", no_torch_load)
    second = detoxify_convert.load_converted(own_checkpoint)
    assert second.config == first.config and second.class_names == first.class_names
    for key, value in detoxify_convert.flatten(first.params).items():
        np.testing.assert_array_equal(detoxify_convert.flatten(second.params)[key], value)


def test_a_changed_checkpoint_is_converted_again(own_checkpoint):
    detoxify_convert.load_converted(own_checkpoint)
    loaded = torch.load(own_checkpoint, weights_only=True)
    loaded["state_dict"]["classifier.bias"] += 1.0
    torch.save(loaded, own_checkpoint)
    again = detoxify_convert.load_converted(own_checkpoint)
    np.testing.assert_allclose(
        again.params["classifier"]["bias"], loaded["state_dict"]["classifier.bias"].numpy()
    )


def test_pickled_objects_need_trust(own_checkpoint):
    loaded = torch.load(own_checkpoint, weights_only=True)
    loaded["config"]["trained_on"] = datetime.date(2021, 1, 1)  # not a weights-only type
    torch.save(loaded, own_checkpoint)
    with pytest.raises(detoxify_convert.ConversionError) as raised:
        detoxify_convert.convert_checkpoint(own_checkpoint)
    assert own_checkpoint in str(raised.value) and "trust_pickle=True" in str(raised.value)
    trusted = detoxify_convert.convert_checkpoint(own_checkpoint, trust_pickle=True)
    assert trusted.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: c["state_dict"].pop("bert.encoder.layer.1.output.dense.weight"), "layers [1]"),
        (lambda c: c["state_dict"].pop("bert.pooler.dense.bias"), "pooler/bias is missing"),
        (lambda c: c["config"].pop("dataset"), "config.dataset.args.classes"),
        (lambda c: c.pop("state_dict"), "'config' and 'state_dict'"),
    ],
)
def test_damaged_checkpoints_name_file_and_key(own_checkpoint, damage, message):
    loaded = torch.load(own_checkpoint, weights_only=True)
    damage(loaded)
    torch.save(loaded, own_checkpoint)
    with pytest.raises(detoxify_convert.ConversionError) as raised:
        detoxify_convert.convert_checkpoint(own_checkpoint)
    assert own_checkpoint in str(raised.value) and message in str(raised.value)


def test_old_buffers_are_ignored(own_checkpoint):
    loaded = torch.load(own_checkpoint, weights_only=True)
    loaded["state_dict"]["bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(loaded, own_checkpoint)
    assert detoxify_convert.convert_checkpoint(own_checkpoint).config.num_labels == 6


def test_unused_keys_are_ignored_with_a_warning_as_transformers_does(own_checkpoint, caplog):
    loaded = torch.load(own_checkpoint, weights_only=True)
    loaded["state_dict"]["lm_head.bias"] = torch.zeros(3)
    torch.save(loaded, own_checkpoint)
    with caplog.at_level("WARNING"):
        converted = detoxify_convert.convert_checkpoint(own_checkpoint)
    assert converted.config.num_labels == 6
    assert "lm_head.bias" in caplog.text and own_checkpoint in caplog.text


def test_a_cache_converted_with_another_config_source_is_redone(own_checkpoint, tmp_path):
    first = detoxify_convert.load_converted(own_checkpoint)
    assert first.config_source == ""
    config_dir = os.path.dirname(first.tokenizer_path)  # the checkpoint's own config folder
    again = detoxify_convert.load_converted(
        own_checkpoint, huggingface_config_path=os.path.join(config_dir, "tiny-bert")
    )
    assert again.config_source.endswith("tiny-bert")
    assert again.tokenizer_path == first.tokenizer_path  # the checkpoint's, never the run's
