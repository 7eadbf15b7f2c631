"""A small random decoder on one device: what the log-likelihood and steering tests score with.

Compiles in a second or two on CPU, and its parameters can be scaled (`init_params(0.0)` is a
uniform model) so tests can reason about its outputs.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from toxjax.configs import default as default_config
from toxjax.model import decoder, partitioning

CFG = decoder.ModelConfig(
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    vocab_size=264,
    max_len=32,
    dtype="float32",
)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
RULES = partitioning.logical_rules(default_config.get_config())  # the shipped rules
VOCAB = seqio.ByteVocabulary()


@functools.cache
def _initial() -> Any:
    init = jax.jit(lambda key: decoder.Decoder(CFG).init({"params": key}, jnp.zeros((1, 4), int)))
    return nn.unbox(init(jax.random.key(7))["params"])


@functools.cache
def init_params(scale: float) -> Any:
    """The one random init with every matrix scaled by `scale` (vectors kept)."""
    scaled = jax.jit(lambda params: jax.tree.map(lambda x: x * scale if x.ndim > 1 else x, params))
    return scaled(_initial())


def one_device_mesh() -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
