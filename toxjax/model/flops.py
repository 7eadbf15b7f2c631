"""Analytic parameter counts, training FLOPs and model FLOPs utilisation (MFU).

FLOPs are *model* FLOPs (PaLM, Chowdhery et al. 2022, appendix B): rematerialisation is not
counted, so MFU compares configurations fairly whatever they recompute.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from toxjax.model.decoder import ModelConfig

# Dense bfloat16 peak FLOP/s per chip. First matching substring of the lower-cased
# device_kind wins, so the more specific names come first ("tpu v5 lite" before "tpu v5").
PEAK_FLOPS_BY_DEVICE_KIND: tuple[tuple[str, float], ...] = (
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports itself as "TPU v5"
    ("tpu v4", 275e12),
    ("h200", 989e12),
    ("h100", 989e12),  # SXM; dense, no sparsity
    ("a100", 312e12),
)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by part; must equal the model's own shapes exactly (tested)."""
    d, h, m, v = cfg.d_model, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    n, k = cfg.num_heads, cfg.num_kv_heads
    bias = cfg.use_bias
    attention = d * n * h + 2 * d * k * h + n * h * d
    attention += (n * h + 2 * k * h + d) if bias else 0
    if cfg.activation == "swiglu":
        mlp = 3 * d * m + ((2 * m + d) if bias else 0)
    else:
        mlp = 2 * d * m + ((m + d) if bias else 0)
    norm = d * (2 if cfg.norm == "layernorm" and bias else 1)
    counts = {
        "token_embedding": v * d,
        "position_embedding": cfg.max_len * d if cfg.positions == "learned" else 0,
        "layers": cfg.num_layers * (attention + mlp + 2 * norm),
        "final_norm": norm,
        "lm_head": 0 if cfg.tie_embeddings else d * v,
    }
    counts["total"] = sum(counts.values())
    counts["non_embedding"] = (
        counts["total"]
        - counts["token_embedding"]
        - counts["position_embedding"]
        - counts["lm_head"]
    )
    return counts


def param_count(cfg: ModelConfig) -> int:
    """Total number of parameters, analytically."""
    return param_counts(cfg)["total"]


def matmul_params_per_token(cfg: ModelConfig) -> int:
    """Weights each token multiplies through: all block kernels plus the output projection."""
    d, h, m = cfg.d_model, cfg.head_dim, cfg.mlp_dim
    n, k = cfg.num_heads, cfg.num_kv_heads
    attention = d * n * h + 2 * d * k * h + n * h * d
    mlp = (3 if cfg.activation == "swiglu" else 2) * d * m
    return cfg.num_layers * (attention + mlp) + d * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """6 * N_matmul + 12 * num_layers * num_heads * head_dim * seq_len.

    N_matmul = matmul_params_per_token (block kernels + lm head, tied or not; embedding
    lookups, norms, biases and softmax are not matmuls and are left out). The forward pass costs
    2 FLOPs per weight, backward twice that: 6 N. Attention scores QK^T and the weighted sum AV
    each cost 2 * num_heads * head_dim * seq_len per token and layer in the forward pass, times
    3 for training: 12 L n h T. As in PaLM, the causal half is not discounted.
    """
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return float(6 * matmul_params_per_token(cfg) + attention)


def train_flops_per_step(cfg: ModelConfig, seq_len: int, global_batch_size: int) -> float:
    return train_flops_per_token(cfg, seq_len) * seq_len * global_batch_size


@functools.lru_cache(maxsize=8)
def measure_matmul_flops(
    n: int = 2048, dtype: Any = jnp.float32, reps: int = 5, device: Any = None
) -> float:
    """Achieved FLOP/s of a jitted n x n matmul: median of `reps` runs after a warmup.

    The realistic peak on CPU, where no datasheet figure applies (~360 GFLOP/s in float32 on
    2 cores). XLA:CPU uses every core for one device, so this is the whole host's figure.
    """
    device = device or jax.local_devices()[0]
    keys = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(keys[0], (n, n), dtype), device)
    b = jax.device_put(jax.random.normal(keys[1], (n, n), dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile and warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


def peak_flops_per_device(device: Any = None, cpu_peak_flops: float = 0.0) -> float:
    """Peak FLOP/s of one device: datasheet bf16 for TPUs/GPUs, a measured matmul on CPU.

    On CPU all local devices share the host's cores, so the host figure (`cpu_peak_flops`, or
    measured when 0) is divided among them: MFU then compares against the host as a whole.
    """
    device = device or jax.local_devices()[0]
    if device.platform == "cpu":
        host = cpu_peak_flops if cpu_peak_flops > 0 else measure_matmul_flops(device=device)
        return host / jax.local_device_count(backend="cpu")
    kind = device.device_kind.lower()
    for pattern, peak in PEAK_FLOPS_BY_DEVICE_KIND:
        if pattern in kind:
            return peak
    logging.warning(
        "No datasheet peak for device_kind %r; using a measured bfloat16 matmul instead.",
        device.device_kind,
    )
    return measure_matmul_flops(n=4096, dtype=jnp.bfloat16, device=device)


def mfu(
    flops_per_step: float, step_time_s: float, num_devices: int, peak_flops_per_device: float
) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak."""
    if step_time_s <= 0 or num_devices < 1 or peak_flops_per_device <= 0:
        raise ValueError(
            f"mfu needs step_time_s > 0, num_devices >= 1 and a positive peak; got "
            f"{step_time_s}, {num_devices}, {peak_flops_per_device}"
        )
    return flops_per_step / (step_time_s * num_devices * peak_flops_per_device)
