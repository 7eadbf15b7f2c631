"""Attention ops of the decoder: the packing-aware causal mask, full-sequence attention in plain
XLA (training and log-likelihood scoring), and attention over a decode cache.

Full-sequence attention: the precision of its scores, and causal chunks. XLA's attention
(jax.nn.dot_product_attention's "xla" implementation) writes the [b, heads, q, k] scores to
memory, and on TPU that traffic, not the matmuls, is the cost: compiled for v5p, attention is
about half of the 1.3B config's step time at sequence 2048 while its matmuls are a tenth of the
step's FLOPs (README, section 3, "Train"). Two levers, both plain XLA so that libtpu's cost
model still projects them (a Pallas kernel such as splash attention gets no estimate from
libtpu 0.0.42 and would count as free):

- scores in bfloat16 (MaxText's default, float32_qk_product and float32_logits off): the
  score matrix is stored at half the bytes; the softmax itself still runs in float32.
- causal query chunks: chunk i attends only to keys up to its own end, skipping the masked
  upper triangle, (n + 1) / 2n of the score work with the same result.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SCORES_DTYPES = ("float32", "bfloat16")


def attention_mask(
    query_index: jax.Array,
    key_index: jax.Array,
    query_segments: jax.Array | None,
    key_segments: jax.Array | None,
) -> jax.Array:
    """[b, 1, q, k] boolean: causal in sequence index AND same packed document.

    Indices (not the per-document positions) decide causality so it also holds across the
    boundary of two packed documents; taking indices as arguments lets a decode cache reuse it.
    """
    mask = query_index[:, :, None] >= key_index[:, None, :]
    if query_segments is not None and key_segments is not None:
        mask = mask & (query_segments[:, :, None] == key_segments[:, None, :])
    return mask[:, None, :, :]


SharedPrefix = tuple[jax.Array, jax.Array, jax.Array]  # keys, values, segment ids
_MASKED = 0.7 * float(np.finfo(np.float32).min)  # as jax.nn.dot_product_attention


def cached_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    query_segments: jax.Array,
    prefix: SharedPrefix | None = None,
) -> jax.Array:
    """Attention of query [b, q, heads, h] over a cache laid out [b, kv_heads, slots, h].

    Same maths as jax.nn.dot_product_attention (scale 1/sqrt(h), float32 logits and softmax,
    query heads grouped [kv_heads, group]), but with the cache's batch and head axes leading,
    XLA contracts it in place (a [b, slots, kv_heads, h] cache was transposed whole in every
    layer at every decode step: 2.6x slower per step on CPU at 84 slots).

    prefix: keys/values [p, kv_heads, prefix_slots, h] and segment ids [p, prefix_slots] of p
    prompts, each shared by b // p consecutive rows (several samples of one prompt), which
    attend to it in front of their own cache, one softmax over both. The prompt is read once
    per prompt, by plain batched matmuls over [p, kv_heads, rows of p x group x q, ...]
    (contracting the rows' [p, c, ...] layout directly made XLA transpose and recompute the
    prefix logits in each fusion reading them: ~5% of a CPU decode step).
    """
    batch, length, heads, head_dim = query.shape
    kv_heads = key.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    grouped = query.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum("bqkgh,bksh->bkgqs", grouped, key, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None], logits * scale, _MASKED)
    if prefix is None:
        probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
        out = jnp.einsum("bkgqs,bksh->bqkgh", probs, value)
        return out.reshape(batch, length, heads, head_dim)
    prefix_key, prefix_value, prefix_segments = prefix
    prompts, _, prefix_slots, _ = prefix_key.shape
    copies, group = batch // prompts, heads // kv_heads
    blocks = (prompts, kv_heads, copies, group, length)  # the prefix matmuls' row order
    shared = grouped.reshape(prompts, copies, length, kv_heads, group, head_dim)
    shared = shared.transpose(0, 3, 1, 4, 2, 5).reshape(prompts, kv_heads, -1, head_dim)
    shared_logits = jnp.einsum(
        "pkmh,pksh->pkms", shared, prefix_key, preferred_element_type=jnp.float32
    ).reshape(*blocks, prefix_slots)
    segments = query_segments.reshape(prompts, 1, copies, 1, length, 1)
    visible = segments == prefix_segments[:, None, None, None, None, :]
    shared_logits = jnp.where(visible, shared_logits * scale, _MASKED)
    shared_logits = jnp.swapaxes(shared_logits, 1, 2).reshape(*logits.shape[:-1], prefix_slots)
    probs = jax.nn.softmax(jnp.concatenate([shared_logits, logits], axis=-1), axis=-1)
    probs = probs.astype(value.dtype)
    out = jnp.einsum("bkgqs,bksh->bqkgh", probs[..., prefix_slots:], value)
    shared_probs = probs[..., :prefix_slots].reshape(prompts, copies, *probs.shape[1:-1], -1)
    shared_probs = jnp.swapaxes(shared_probs, 1, 2).reshape(prompts, kv_heads, -1, prefix_slots)
    shared_out = jnp.einsum("pkms,pksh->pkmh", shared_probs, prefix_value)
    shared_out = shared_out.reshape(*blocks, head_dim).transpose(0, 2, 4, 1, 3, 5)
    return (out + shared_out.reshape(out.shape)).reshape(batch, length, heads, head_dim)


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

    mask [b, 1, t, t] must never let query i see a key j > i (attention_mask over
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
