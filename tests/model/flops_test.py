"""Tests of analytic parameter counts, the FLOPs formula, peak figures and MFU."""

import dataclasses

import jax
import pytest

from toxjax.model import decoder, flops

# Hand-countable model: d=8, 2 heads of 4, 1 kv head, MLP 16, vocab 10, 6 positions, 2 layers.
HAND = decoder.ModelConfig(
    num_layers=2,
    d_model=8,
    num_heads=2,
    num_kv_heads=1,
    mlp_dim=16,
    vocab_size=10,
    max_len=6,
    dtype="float32",
)


def test_param_counts_by_hand():
    # embedding 10*8; positions 6*8; per layer: q 8*2*4 + k 8*1*4 + v 32 + out 2*4*8 = 192
    # kernels, biases 8 + 4 + 4 + 8 = 24; MLP 2*8*16 + 16 + 8 = 280; two LayerNorms 2*16 = 32.
    counts = flops.param_counts(HAND)
    assert counts["token_embedding"] == 80
    assert counts["position_embedding"] == 48
    assert counts["layers"] == 2 * (192 + 24 + 280 + 32)
    assert counts["final_norm"] == 16
    assert counts["lm_head"] == 0
    assert counts["total"] == 1200
    assert counts["non_embedding"] == 1200 - 80 - 48
    # Llama style: SwiGLU 3*8*16, RMSNorm 8, no biases, untied head 8*10, RoPE (no table).
    llama = dataclasses.replace(
        HAND,
        activation="swiglu",
        norm="rmsnorm",
        use_bias=False,
        tie_embeddings=False,
        positions="rope",
    )
    assert flops.param_count(llama) == 80 + 2 * (192 + 384 + 16) + 8 + 80


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation": "swiglu", "norm": "rmsnorm", "use_bias": False},
        {"tie_embeddings": False, "positions": "rope", "num_kv_heads": 2},
        {"norm": "layernorm", "use_bias": False, "head_dim": 6, "scan_layers": False},
    ],
)
def test_param_count_equals_model_shapes(overrides):
    cfg = dataclasses.replace(HAND, **overrides)
    assert flops.param_count(cfg) == decoder.count_params(cfg)


def test_train_flops_per_token_by_hand():
    # Matmul weights: 2 layers * (192 attention + 256 MLP) + 8*10 head = 976 -> 6 * 976.
    # Attention: 12 * layers 2 * heads 2 * head_dim 4 * seq 6 = 1152.
    assert flops.matmul_params_per_token(HAND) == 976
    assert flops.train_flops_per_token(HAND, seq_len=6) == 6 * 976 + 1152
    assert flops.train_flops_per_step(HAND, seq_len=6, global_batch_size=3) == 3 * 6 * 7008
    # A GPT-2-small-like model: close to the classic 6N + 12 L d T estimate.
    gpt = decoder.ModelConfig(
        num_layers=12,
        d_model=768,
        num_heads=12,
        num_kv_heads=12,
        mlp_dim=3072,
        vocab_size=51200,
        max_len=2048,
    )
    n_matmul = 12 * 12 * 768**2 + 768 * 51200
    assert flops.train_flops_per_token(gpt, 2048) == 6 * n_matmul + 12 * 12 * 768 * 2048


@dataclasses.dataclass
class FakeDevice:
    device_kind: str
    platform: str = "tpu"


@pytest.mark.parametrize(
    ("kind", "peak"),
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5e", 197e12),
        ("TPU v5", 459e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
    ],
)
def test_peak_flops_table(kind, peak):
    platform = "gpu" if kind.startswith("NVIDIA") else "tpu"
    assert flops.peak_flops_per_device(FakeDevice(kind, platform)) == peak


def test_cpu_peak_is_the_host_figure_shared_by_its_devices():
    cpu = jax.local_devices()[0]
    assert flops.peak_flops_per_device(cpu, cpu_peak_flops=8e9) == 8e9 / jax.local_device_count()
    measured = flops.measure_matmul_flops(n=256, reps=3)
    assert 1e8 < measured < 1e14


def test_mfu():
    assert flops.mfu(4e12, step_time_s=2.0, num_devices=4, peak_flops_per_device=1e12) == 0.5
    with pytest.raises(ValueError, match="step_time_s"):
        flops.mfu(1.0, step_time_s=0.0, num_devices=1, peak_flops_per_device=1.0)
