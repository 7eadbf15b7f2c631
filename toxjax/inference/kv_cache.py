"""The decode cache of `toxjax.inference.sampling`: empty caches laid out like the model's, a
prompt batch's cache shared as a prefix by each prompt's samples, and the per-layer twin of a
scanned model (which decodes without copying its whole cache every step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from toxjax.model import decoder

PyTree = Any
CACHE_KV = ("cached_key", "cached_value")
CACHE_SEGMENTS = "cached_segment_ids"

# Logical axes of cached keys/values [batch, kv_heads, slots, head_dim] (decoder.Attention).
CACHE_KV_AXES = ("activation_batch", "activation_kv_heads", "activation_length", "activation_kv")


def _empty_kv(shape: Sequence[int], dtype: Any) -> jax.Array:
    """Zeros laid out like the model's cache (a leading layer axis, if any, unsharded)."""
    axes = (None,) * (len(shape) - 4) + CACHE_KV_AXES
    return decoder.constrain(jnp.zeros(tuple(shape), dtype), axes)


def init_cache(model: decoder.Decoder, batch: int, cache_len: int) -> PyTree:
    """An empty decode cache of `cache_len` slots for `batch` rows (traceable, under jit too)."""
    one = jnp.zeros((1, 1), jnp.int32)
    template = jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.key(0)}, one, positions=one, segment_ids=one + 1, decode=True
        )["cache"]
    )

    def empty(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = str(getattr(path[-1], "key", path[-1]))
        if name in CACHE_KV:  # [..., batch, kv_heads, slots, head_dim]
            shape = (*leaf.shape[:-4], batch, leaf.shape[-3], cache_len, leaf.shape[-1])
            return _empty_kv(shape, leaf.dtype)
        if name == CACHE_SEGMENTS:  # [..., batch, slots]
            return jnp.zeros((*leaf.shape[:-2], batch, cache_len), leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(empty, template)


def share_prompt_cache(prompt_cache: PyTree, num_samples: int, steps: int) -> PyTree:
    """Decode cache for `num_samples` rows per prompt: the prompts' keys/values become a
    shared prefix (read once per prompt, see attention_ops.cached_attention) and each row gets an
    empty cache of `steps` slots for its own tokens."""

    def convert(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return node
        if "cached_key" not in node:
            return {name: convert(child) for name, child in node.items()}
        key, segments = node["cached_key"], node["cached_segment_ids"]
        rows = key.shape[-4] * num_samples
        kv_shape = (*key.shape[:-4], rows, key.shape[-3], steps, key.shape[-1])
        return {
            "prefix_key": key,
            "prefix_value": node["cached_value"],
            "prefix_segment_ids": segments,
            "cached_key": _empty_kv(kv_shape, key.dtype),
            "cached_value": _empty_kv(kv_shape, key.dtype),
            "cached_segment_ids": jnp.zeros((*segments.shape[:-2], rows, steps), segments.dtype),
            "cache_index": jnp.zeros_like(node["cache_index"]),
        }

    return convert(prompt_cache)


def unscanned(model: decoder.Decoder, params: PyTree) -> tuple[decoder.Decoder, PyTree]:
    """The per-layer twin of a scanned model (traceable; XLA hoists the slicing out of loops).

    Under nn.scan every layer slices its cache out of the layer-stacked arrays and stacks it
    back, copying the whole cache at each decode step; separate layers update in place.
    """
    if not model.cfg.scan_layers:
        return model, params
    cfg = dataclasses.replace(model.cfg, scan_layers=False)
    return decoder.Decoder(cfg), decoder.unscan_params(params, cfg.num_layers)
