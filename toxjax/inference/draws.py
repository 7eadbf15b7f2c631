"""Random draws of the sampler, bit for bit those of jax.random, without its CPU slow paths.

jax lowers threefry2x32 to a rolled 5-iteration loop on CPU (small code, slow draws) and
jnp.argmax to a (value, index) reduction that XLA's CPU backend does not vectorise; together
they cost as much per decode step as several layers of a small model. Here the 20 rounds are
unrolled and the argmax is a max then a min over ids. Keys other than threefry (or a
non-partitionable threefry) take jax's own functions, so results never depend on the path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """jax's threefry2x32_p, unrolled; key [..., 2] uint32 broadcasts against x1 and x2."""
    ks = (key[..., :1], key[..., 1:], key[..., :1] ^ key[..., 1:] ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))) ^ x1
        x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _is_threefry(keys: jax.Array) -> bool:
    return str(jax.random.key_impl(keys)) == "threefry2x32"


def fold_in(keys: jax.Array, data: jax.Array | int) -> jax.Array:
    """`vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)` for keys [rows]."""
    if not _is_threefry(keys):
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)
    data = jnp.full((keys.shape[0], 1), data, jnp.uint32)  # threefry_seed(data) = (0, data)
    folded = threefry2x32(jax.random.key_data(keys), 0 * data, data)
    return jax.random.wrap_key_data(jnp.concatenate(folded, axis=-1))


def categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """`vmap(jax.random.categorical)(keys, logits)` for logits [rows, vocab] (int32 ids).

    The Gumbel-max draw with jax.random.gumbel's noise: bits of counters 0..vocab-1 (the
    partitionable layout), uniform on [tiny, 1), -log(-log u); then the first maximum.
    """
    if not (_is_threefry(keys) and jax.config.jax_threefry_partitionable):
        return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
    ids = jnp.arange(logits.shape[-1], dtype=jnp.uint32)
    bits1, bits2 = threefry2x32(jax.random.key_data(keys), 0 * ids, ids)
    mantissa = ((bits1 ^ bits2) >> np.uint32(9)) | np.uint32(0x3F800000)  # [1, 2)
    tiny = np.float32(np.finfo(np.float32).tiny)
    uniform = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0) + tiny
    noisy = logits - jnp.log(-jnp.log(jnp.maximum(tiny, uniform)))
    hit = (noisy == jnp.max(noisy, axis=-1, keepdims=True)) | jnp.isnan(noisy)  # as argmax
    return jnp.min(jnp.where(hit, ids.astype(jnp.int32), ids.size - 1), axis=-1)
