"""Tests of the sharded-state memory estimate against hand computations."""

import json
import subprocess
import sys

import pytest

from toxjax.configs import gpt_1p3b, gpt_8p3b
from toxjax.model import decoder, flops, memory

F32 = 4  # bytes


def fsdp_only_split(config) -> tuple[int, int]:
    """(parameters with an "embed" dim, parameters replicated) for a GPT config, by hand.

    Replicated (no fsdp-mapped dim): both LayerNorms (4d), the q/k/v biases (3d, on
    heads/kv) and the MLP input bias (m) of every layer, plus the final LayerNorm (2d).
    """
    model = config.model
    d, m = model.d_model, model.mlp_dim
    replicated = model.num_layers * (7 * d + m) + 2 * d
    total = flops.param_count(decoder.ModelConfig.from_config(model))
    return total - replicated, replicated


def test_1p3b_on_256_way_fsdp():
    config = gpt_1p3b.get_config()
    report = memory.state_memory(config, {"data": 1, "fsdp": 256, "tensor": 1})
    sharded, replicated = fsdp_only_split(config)
    assert sharded % 256 == 0
    params = F32 * (sharded // 256 + replicated)
    per_device = report["per_device_bytes"]
    assert per_device["params"] == params
    assert per_device["opt_state"] == 2 * params + 4  # AdamW mu, nu + int32 count
    assert per_device["step"] == 4
    assert per_device["total"] == 3 * params + 8
    assert report["global_bytes"]["params"] == F32 * report["param_count"]
    assert report["num_devices"] == 256
    # About 1/256 of the 15.8 GB state (1.3B * 12 bytes).
    assert 0.06 < per_device["total"] / 2**30 < 0.07


def test_1p3b_non_divisible_fsdp_pads_up():
    config = gpt_1p3b.get_config()
    report = memory.state_memory(config, {"data": 1, "fsdp": 1000, "tensor": 1})
    sharded, replicated = fsdp_only_split(config)
    d = config.model.d_model
    # Every sharded array splits its d=2048 "embed" dim into ceil(2048 / 1000) = 3 rows.
    assert report["per_device_bytes"]["params"] == F32 * (sharded // d * 3 + replicated)


def test_8p3b_on_fsdp_times_tensor():
    config = gpt_8p3b.get_config()
    report = memory.state_memory(
        config, {"data": -1, "fsdp": 64, "tensor": 8}, num_devices=1024, include_grads=True
    )
    assert report["mesh"] == {"data": 2, "fsdp": 64, "tensor": 8}
    model = config.model
    d, m, v, layers = model.d_model, model.mlp_dim, model.vocab_size, model.num_layers
    heads = model.num_heads * (d // model.num_heads)
    # Per layer: q, k, v, out and both MLP kernels are split 64 * 8 = 512 ways; q/k/v biases
    # (heads) and the MLP input bias (mlp) 8 ways; out and MLP output biases (embed) 64 ways;
    # LayerNorms replicated.
    per_layer = (4 * d * heads + 2 * d * m) / 512 + (3 * heads + m) / 8 + 2 * d / 64 + 4 * d
    elements = layers * per_layer + v * d / 512 + model.max_len * d / 64 + 2 * d
    assert elements == int(elements)
    params = F32 * int(elements)
    per_device = report["per_device_bytes"]
    assert per_device["params"] == per_device["grads"] == params
    assert per_device["total"] == 4 * params + 8
    # Close to 1/512 of the whole state; what is replicated or split 8/64 ways adds ~7%.
    ratio = per_device["total"] / report["global_bytes"]["total"]
    assert 1 / 512 < ratio < 1.1 / 512


def test_parse_mesh():
    assert memory.parse_mesh("fsdp:16,tensor:4") == {"data": 1, "fsdp": 16, "tensor": 4}
    with pytest.raises(ValueError, match="'seq:2'"):
        memory.parse_mesh("data:2,seq:2")
    with pytest.raises(ValueError, match="not an integer"):
        memory.parse_mesh("data:x")


def test_command_line_with_config_override():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "toxjax.model.memory_main",
            "--config=toxjax/configs/gpt_1p3b.py",
            "--mesh=data:1,fsdp:256,tensor:1",
            "--config.model.num_layers=12",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    config = gpt_1p3b.get_config()
    config.model.num_layers = 12
    expected = memory.state_memory(config, {"data": 1, "fsdp": 256, "tensor": 1})
    assert report == json.loads(json.dumps(expected))
    # The override took effect: 12 of the 24 layers.
    assert report["param_count"] == flops.param_count(decoder.ModelConfig.from_config(config.model))
    assert report["param_count"] < flops.param_count(
        decoder.ModelConfig.from_config(gpt_1p3b.get_config().model)
    )
