"""Which token ids top-k and top-p (nucleus) sampling keep: boolean masks over the vocabulary.

A module of their own because two callers need them: the sampler (`sampling.sample_next`) and
guided decoding (`guidance`, whose DExperts form keeps the positive distribution's nucleus),
and the sampler imports guidance. Ties are broken by token id (lower id first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_mask(logits: jax.Array, *, top_k: int = 0, top_p: jax.Array | float = 1.0) -> jax.Array:
    """Boolean mask [..., vocab] of the ids top-k then top-p keep.

    Ids are ranked by logit, ties by lower id, so the kept set is a prefix of that ranking:
    the first min(k, ...) ids, then the shortest prefix whose renormalised probability reaches
    top_p (at least one id is always kept). Without top-k no sort is needed (`nucleus_mask`).
    """
    logits = jnp.where(logits == 0, 0.0, logits.astype(jnp.float32))  # -0.0 ties with 0.0
    if top_k == 0:
        return nucleus_mask(logits, top_p)
    vocab = logits.shape[-1]
    order = jnp.argsort(-logits, axis=-1, stable=True)
    ranked = jnp.take_along_axis(logits, order, axis=-1).astype(jnp.float32)
    rank = jnp.arange(vocab)
    keep = rank < top_k
    probs = jax.nn.softmax(jnp.where(keep, ranked, -jnp.inf), axis=-1)
    cumulative = jnp.cumsum(probs, axis=-1)
    before = jnp.concatenate([jnp.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], axis=-1)
    keep = keep & ((before < top_p) | (rank == 0))
    return jnp.put_along_axis(jnp.zeros(keep.shape, bool), order, keep, axis=-1, inplace=False)


def _ordered_bits(x: jax.Array) -> jax.Array:
    """uint32 keys ordered like the float32 values (IEEE bits, negatives flipped)."""
    x = jnp.where(x == 0, 0.0, x.astype(jnp.float32))  # -0.0 ties with 0.0
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def nucleus_mask(logits: jax.Array, top_p: jax.Array | float) -> jax.Array:
    """`filter_mask` without top-k, by a search instead of sorting the vocabulary.

    A sort of every row's vocabulary at every step costs more than the model itself on CPU
    (and a rows x vocab sort per step on accelerators). The cut logit v (that of the last
    kept id in ranked order) is the largest logit whose "mass of ids >= it" reaches top_p;
    a 4-way search over the float's ordered bit pattern finds it exactly in 16 passes of 3
    masses (the sums of 32 halvings in half the sequential steps, whose fixed costs dominate
    on CPU). Ids above v are kept; ids tied at v, in id order while the mass before is < top_p.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    keys = _ordered_bits(logits)
    top_p = jnp.asarray(top_p, jnp.float32)

    def quarter(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        low, high = bounds  # invariant: mass(keys >= low) >= top_p; the answer is <= high
        middle = low + ((high - low + 1) >> 1)
        splits = (low + ((middle - low + 1) >> 1), middle, middle + ((high - middle + 1) >> 1))
        above = keys[..., None, :] >= jnp.stack(splits, axis=-1)[..., None]  # [..., 3, vocab]
        mass = jnp.sum(jnp.where(above, probs[..., None, :], 0.0), axis=-1)
        reached = [mass[..., i] >= top_p for i in range(3)]  # true, then false, along splits
        for split, hit in zip(splits, reached, strict=True):
            low = jnp.where(hit, split, low)
        for split, hit in zip(splits[::-1], reached[::-1], strict=True):
            high = jnp.where(hit, high, split - 1)
        return low, high

    bounds = (jnp.min(keys, axis=-1), jnp.max(keys, axis=-1))
    cut, _ = jax.lax.fori_loop(0, 16, quarter, bounds)
    cut = cut[..., None]
    above = keys > cut
    tied = keys == cut
    mass_above = jnp.sum(jnp.where(above, probs, 0.0), axis=-1, keepdims=True)

    def tie_rank() -> jax.Array:  # position of each tied id among the tied ids
        return jnp.cumsum(tied, axis=-1) - 1

    several_tied = jnp.any(jnp.sum(tied, axis=-1) > 1)
    rank = jax.lax.cond(several_tied, tie_rank, lambda: jnp.zeros(tied.shape, jnp.int32))
    before = mass_above + rank.astype(jnp.float32) * probs
    first = jnp.logical_not(jnp.any(above, axis=-1, keepdims=True)) & (rank == 0)
    return above | (tied & ((before < top_p) | first))
