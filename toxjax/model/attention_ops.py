"""Full-sequence self-attention in plain XLA: the precision of its scores, and causal chunks.

Used by training and log-likelihood scoring (decoding attends over its cache in the decoder).
XLA's attention (jax.nn.dot_product_attention's "xla" implementation) writes the [b, heads,
q, k] scores to memory, and on TPU that traffic, not the matmuls, is the cost: compiled for
v5p, attention is about half of the 1.3B config's step time at sequence 2048 while its matmuls
are a tenth of the step's FLOPs (README, section 3, "Train"). Two levers, both plain XLA
so that libtpu's cost model still projects them (a Pallas kernel such as splash attention gets
no estimate from libtpu 0.0.42 and would count as free):

- scores in bfloat16 (MaxText's default, float32_qk_product and float32_logits off): the
  score matrix is stored at half the bytes; the softmax itself still runs in float32.
- causal query chunks: chunk i attends only to keys up to its own end, skipping the masked
  upper triangle, (n + 1) / 2n of the score work with the same result.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SCORES_DTYPES = ("float32", "bfloat16")


def dot_product_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, scores_dtype: str
) -> jax.Array:
    """query [b, t, heads, h], key/value [b, s, kv_heads, h], mask [b, 1, t, s] -> [b, t, heads, h].

    float32: jax.nn.dot_product_attention itself. bfloat16: the same maths (grouped-query
    heads, 1/sqrt(h) scale, a masked row of nothing but masked keys averages them all) with the
    scores stored in bfloat16, the query scaled before the product, softmax in float32.
    """
    if scores_dtype == "float32":
        return jax.nn.dot_product_attention(query, key, value, mask=mask)
    if scores_dtype != "bfloat16":
        raise ValueError(
            f"config.model.attention_scores_dtype must be one of {SCORES_DTYPES}, "
            f"got {scores_dtype!r}"
        )
    batch, length, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    scaled = (query * (1.0 / math.sqrt(head_dim))).astype(jnp.bfloat16)
    grouped = scaled.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum(
        "bqkgh,bskh->bkgqs", grouped, key.astype(jnp.bfloat16), preferred_element_type=jnp.bfloat16
    )
    masked = 0.7 * float(jnp.finfo(jnp.bfloat16).min)  # as jax.nn.dot_product_attention
    scores = jnp.where(mask[:, :, None], scores, jnp.asarray(masked, jnp.bfloat16))
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgqs,bskh->bqkgh", probs, value)
    return out.reshape(batch, length, heads, head_dim)


def causal_chunked_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    num_chunks: int,
    scores_dtype: str = "float32",
) -> jax.Array:
    """dot_product_attention for a causal-by-index mask, in num_chunks query chunks.

    mask [b, 1, t, t] must never let query i see a key j > i (decoder.attention_mask over
    indices 0..t-1, where every query also sees itself). A row a caller's mask hides entirely
    would average its chunk's prefix instead of every value; the decoder's mask has none.
    num_chunks must divide t; 1 is one call over the full mask.
    """
    length = query.shape[1]
    if num_chunks < 1 or length % num_chunks:
        raise ValueError(
            f"config.model.attention_chunks={num_chunks} must be >= 1 and divide the sequence "
            f"length {length}"
        )
    if num_chunks == 1:
        return dot_product_attention(query, key, value, mask, scores_dtype)
    size = length // num_chunks
    outputs = []
    for chunk in range(num_chunks):
        start, end = chunk * size, (chunk + 1) * size
        outputs.append(
            dot_product_attention(
                query[:, start:end],
                key[:, :end],
                value[:, :end],
                mask[:, :, start:end, :end],
                scores_dtype,
            )
        )
    return jnp.concatenate(outputs, axis=1)
