"""transformers checkpoint files: sharding as save_pretrained names it, parts, dtypes, errors."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from toxjax.interop import hf_checkpoint


def _tensors(dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.normal(size=(4, 6)).astype(dtype),
        "b.bias": rng.normal(size=(6,)).astype(dtype),
        "c.weight": rng.normal(size=(3, 2, 9)).astype(dtype),
    }


def _write(directory, tensors, max_shard_bytes) -> list[str]:
    sizes = {name: array.nbytes for name, array in tensors.items()}
    config = {"model_type": "gpt2"}
    return hf_checkpoint.write_checkpoint(
        str(directory), config, iter(tensors.items()), sizes, max_shard_bytes=max_shard_bytes
    )


def test_plan_shards_keeps_order_and_gives_big_tensors_their_own_shard():
    sizes = {"a": 40, "b": 30, "c": 100, "d": 10, "e": 10}
    assert hf_checkpoint.plan_shards(sizes, 80) == [["a", "b"], ["c"], ["d", "e"]]
    assert hf_checkpoint.plan_shards(sizes, 1000) == [["a", "b", "c", "d", "e"]]


def test_one_shard_is_model_safetensors(tmp_path):
    tensors = _tensors()
    assert _write(tmp_path, tensors, 1 << 20) == ["model.safetensors"]
    assert not (tmp_path / hf_checkpoint.INDEX).exists()
    checkpoint = hf_checkpoint.Checkpoint(str(tmp_path))
    assert checkpoint.config == {"model_type": "gpt2"}
    for name, array in tensors.items():
        np.testing.assert_array_equal(checkpoint.read(name), array)
    checkpoint.close()


def test_sharded_files_and_index_read_back_with_parts(tmp_path):
    tensors = _tensors()
    files = _write(tmp_path, tensors, 100)
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / hf_checkpoint.INDEX).read_text())
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())
    assert index["weight_map"]["c.weight"] == files[2]
    checkpoint = hf_checkpoint.Checkpoint(str(tmp_path))
    assert checkpoint.shapes == {name: a.shape for name, a in tensors.items()}
    for part in range(3):
        np.testing.assert_array_equal(
            checkpoint.read("c.weight", part, 3), tensors["c.weight"][..., 3 * part : 3 * part + 3]
        )
        np.testing.assert_array_equal(
            checkpoint.read("a.weight", part, 3), tensors["a.weight"][:, 2 * part : 2 * part + 2]
        )
    checkpoint.close()


def test_bfloat16_round_trips(tmp_path):
    tensors = _tensors(ml_dtypes.bfloat16)
    _write(tmp_path, tensors, 1 << 20)
    checkpoint = hf_checkpoint.Checkpoint(str(tmp_path))
    assert checkpoint.dtypes["a.weight"] == "BF16"
    read = checkpoint.read("a.weight")
    assert read.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(read, tensors["a.weight"])
    checkpoint.close()


def test_directories_without_safetensors_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf_checkpoint.Checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="only safetensors checkpoints are read"):
        hf_checkpoint.Checkpoint(str(tmp_path))


def test_buffers_are_recognised():
    assert hf_checkpoint.is_buffer("h.0.attn.bias")
    assert hf_checkpoint.is_buffer("model.layers.0.self_attn.rotary_emb.inv_freq")
    assert not hf_checkpoint.is_buffer("h.0.attn.c_attn.bias")
    assert hf_checkpoint.read_config("/nonexistent/dir") is None
