"""Training attention: bfloat16 scores stay close, causal chunks equal the full call."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toxjax.model import attention_ops, decoder

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 16, 4, 2, 8
# Compiled, as in training: run eagerly, every chunk's slices and matmuls compile one by one.
chunked_attention = jax.jit(attention_ops.causal_chunked_attention, static_argnums=(4, 5))


def _inputs(seed: int = 0) -> tuple[jax.Array, ...]:
    keys = jax.random.split(jax.random.key(seed), 3)
    query = jax.random.normal(keys[0], (BATCH, LENGTH, HEADS, HEAD_DIM))
    key = jax.random.normal(keys[1], (BATCH, LENGTH, KV_HEADS, HEAD_DIM))
    value = jax.random.normal(keys[2], (BATCH, LENGTH, KV_HEADS, HEAD_DIM))
    # Two packed documents in row 0 (segments 1, 2), one in row 1; no padding.
    segments = jnp.array([[1] * 7 + [2] * 9, [1] * LENGTH], jnp.int32)
    index = jnp.broadcast_to(jnp.arange(LENGTH), (BATCH, LENGTH))
    mask = attention_ops.attention_mask(index, index, segments, segments)
    return query, key, value, mask


@pytest.mark.parametrize("num_chunks", [1, 2, 4, 8, 16])
def test_equals_the_full_masked_call(num_chunks):
    query, key, value, mask = _inputs()
    want = jax.nn.dot_product_attention(query, key, value, mask=mask)
    got = chunked_attention(query, key, value, mask, num_chunks)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_gradients_equal_the_full_masked_call():
    query, key, value, mask = _inputs(1)

    def loss(attention, q, k, v):
        return jnp.sum(jnp.sin(attention(q, k, v)))

    full = jax.grad(
        lambda q, k, v: loss(lambda *a: jax.nn.dot_product_attention(*a, mask=mask), q, k, v),
        argnums=(0, 1, 2),
    )(query, key, value)
    chunked = jax.grad(
        lambda q, k, v: loss(lambda *a: chunked_attention(*a, mask, 4), q, k, v),
        argnums=(0, 1, 2),
    )(query, key, value)
    for got, want in zip(chunked, full, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_skips_the_masked_triangle_in_compiled_flops():
    query, key, value, mask = _inputs()

    def flops(num_chunks: int) -> float:
        compiled = (
            jax.jit(attention_ops.causal_chunked_attention, static_argnums=4)
            .lower(query, key, value, mask, num_chunks)
            .compile()
        )
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        return float(analysis["flops"])

    # Score and value matmuls dominate: 8 chunks do (8 + 1) / 16 of the full work.
    assert flops(8) < 0.7 * flops(1)


@pytest.mark.parametrize("num_chunks", [0, 3])
def test_rejects_chunks_that_do_not_divide_the_length(num_chunks):
    query, key, value, mask = _inputs()
    with pytest.raises(ValueError, match="attention_chunks"):
        attention_ops.causal_chunked_attention(query, key, value, mask, num_chunks)


# A small grouped-query decoder in float32, so equalities are tight.
SMALL_GQA = decoder.ModelConfig(
    num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, vocab_size=50,
    max_len=32, dtype="float32",
)  # fmt: skip


def _logits(config, params, tokens, segments=None) -> jax.Array:
    return jax.jit(decoder.Decoder(config).apply)(params, tokens, segment_ids=segments)


def test_decoder_logits_do_not_depend_on_the_chunks():
    config = SMALL_GQA
    tokens = jax.random.randint(jax.random.key(2), (2, 24), 0, 50)
    segments = jnp.array([[1] * 10 + [2] * 14, [1] * 24], jnp.int32)
    params = jax.jit(decoder.Decoder(config).init)(jax.random.key(3), tokens)
    want = _logits(config, params, tokens, segments)
    # 24 tokens: 16 chunks fall back to gcd(24, 16) = 8, 5 chunks to 1.
    for chunks in (4, 16, 5):
        chunked = dataclasses.replace(config, attention_chunks=chunks)
        got = _logits(chunked, params, tokens, segments)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_decoder_logits_with_bfloat16_scores_stay_close():
    config = SMALL_GQA
    tokens = jax.random.randint(jax.random.key(6), (2, 16), 0, 50)
    params = jax.jit(decoder.Decoder(config).init)(jax.random.key(7), tokens)
    want = _logits(config, params, tokens)
    bf16 = dataclasses.replace(config, attention_scores_dtype="bfloat16")
    got = _logits(bf16, params, tokens)
    np.testing.assert_allclose(got, want, atol=2e-2)
    assert float(jnp.max(jnp.abs(got - want))) > 0  # the decoder uses the setting


def test_config_rejects_zero_chunks():
    with pytest.raises(ValueError, match="attention_chunks"):
        decoder.ModelConfig(attention_chunks=0)


def test_bfloat16_scores_stay_close_to_float32():
    query, key, value, mask = _inputs(4)
    want = jax.nn.dot_product_attention(query, key, value, mask=mask)
    got = attention_ops.dot_product_attention(query, key, value, mask, "bfloat16")
    assert got.dtype == want.dtype
    # bfloat16 keeps 8 bits of mantissa: scores within ~0.4% relative, outputs within ~2e-2.
    np.testing.assert_allclose(got, want, atol=3e-2)
    assert float(jnp.max(jnp.abs(got - want))) > 0  # it is not the float32 path


def test_bfloat16_scores_chunked_equal_unchunked():
    query, key, value, mask = _inputs(5)
    want = attention_ops.dot_product_attention(query, key, value, mask, "bfloat16")
    got = chunked_attention(query, key, value, mask, 4, "bfloat16")
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_bfloat16_scores_store_half_the_bytes():
    query, key, value, mask = _inputs()

    def score_dtypes(scores_dtype: str) -> set[str]:
        jaxpr = jax.make_jaxpr(
            lambda q, k, v: attention_ops.dot_product_attention(q, k, v, mask, scores_dtype)
        )(query, key, value)
        return {
            str(eqn.outvars[0].aval.dtype)
            for eqn in jaxpr.jaxpr.eqns
            if eqn.primitive.name == "dot_general"
            and eqn.outvars[0].aval.size == BATCH * HEADS * LENGTH * LENGTH  # the scores
        }

    assert score_dtypes("bfloat16") == {"bfloat16"}
    assert score_dtypes("float32") == {"float32"}


def test_rejects_an_unknown_scores_dtype():
    query, key, value, mask = _inputs()
    with pytest.raises(ValueError, match="attention_scores_dtype"):
        attention_ops.dot_product_attention(query, key, value, mask, "float16")
    with pytest.raises(ValueError, match="attention_scores_dtype"):
        decoder.ModelConfig(attention_scores_dtype="float16")
