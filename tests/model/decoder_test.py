"""Tests of the decoder: shapes, packing isolation, positions, GQA, scan/remat and names."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toxjax.model import attention_ops, decoder

# Small enough to compile in about a second on 2 cores; float32 so equalities are tight.
SMALL = decoder.ModelConfig(
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=4,
    mlp_dim=64,
    vocab_size=50,
    max_len=32,
    dtype="float32",
)
RULE_NAMES = {
    "activation_batch",
    "activation_length",
    "activation_embed",
    "activation_mlp",
    "activation_heads",
    "activation_kv_heads",
    "activation_kv",
    "activation_vocab",
    "embed",
    "mlp",
    "heads",
    "kv_heads",
    "kv",
    "vocab",
    "layers",
    "norm",
    "position",
}


# Tiny models spend their time compiling, not running: compile at low XLA optimisation.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def small(**overrides) -> decoder.ModelConfig:
    return dataclasses.replace(SMALL, **overrides)


def run(fn, *args):
    """jit fn, compile it for args quickly, run it."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def abstract_variables(cfg: decoder.ModelConfig):
    tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return jax.eval_shape(
        lambda key: decoder.Decoder(cfg).init({"params": key}, tokens), jax.random.key(0)
    )


def random_params(cfg: decoder.ModelConfig, seed: int = 0):
    """Host-side random weights (norm scales near 1): no init graph to compile."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        value = rng.normal(0.0, 0.1, leaf.shape)
        if jax.tree_util.keystr(path).endswith("['scale']"):
            value += 1.0
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract_variables(cfg))["params"])


def logits(cfg: decoder.ModelConfig, params, tokens, positions=None, segment_ids=None):
    model = decoder.Decoder(cfg)
    return run(
        lambda p, t, pos, seg: model.apply({"params": p}, t, positions=pos, segment_ids=seg),
        params,
        tokens,
        positions,
        segment_ids,
    )


def tokens_of(seed: int, length: int, vocab: int = 50, batch: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 1, vocab)


def test_forward_shapes_and_dtypes():
    cfg = small(dtype="bfloat16")
    abstract = nn.unbox(abstract_variables(cfg))["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(abstract))
    out = logits(cfg, random_params(cfg), tokens_of(0, 10, batch=3))
    assert out.shape == (3, 10, cfg.vocab_size)
    assert out.dtype == jnp.float32
    assert bool(jnp.isfinite(out).all())


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # GPT: learned positions
        {"positions": "rope", "num_kv_heads": 2, "activation": "swiglu", "norm": "rmsnorm"},
    ],
    ids=["learned", "rope_gqa"],
)
def test_packed_documents_match_documents_alone(overrides):
    """Packing must neither leak attention across documents nor shift positions."""
    cfg = small(**overrides)
    doc_a, doc_b = tokens_of(1, 7)[0], tokens_of(2, 5)[0]
    width = 16
    padded = lambda *parts: jnp.concatenate(  # noqa: E731
        [*parts, jnp.zeros(width - sum(len(p) for p in parts), jnp.int32)]
    )
    # Row 0: both documents packed. Rows 1-2: each alone. Row 3: packed, no segment isolation.
    tokens = jnp.stack([padded(doc_a, doc_b), padded(doc_a), padded(doc_b), padded(doc_a, doc_b)])
    packed_positions = padded(jnp.arange(7), jnp.arange(5))
    positions = jnp.stack(
        [packed_positions, jnp.arange(width), jnp.arange(width), packed_positions]
    )
    packed_segments = padded(jnp.ones(7, jnp.int32), jnp.full(5, 2, jnp.int32))
    segment_ids = jnp.stack(
        [packed_segments, padded(jnp.ones(7, jnp.int32)), padded(jnp.ones(5, jnp.int32)),
         padded(jnp.ones(12, jnp.int32))]
    )  # fmt: skip
    out = logits(cfg, random_params(cfg), tokens, positions, segment_ids)
    np.testing.assert_allclose(out[0, :7], out[1, :7], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(out[0, 7:12], out[2, :5], atol=2e-5, rtol=1e-5)
    # Without isolation the second document does see the first: the mask is what isolates.
    assert not np.allclose(out[3, 7:12], out[2, :5], atol=1e-3)


def test_rope_depends_on_relative_positions_only():
    tokens = jnp.tile(tokens_of(3, 9), (2, 1))
    positions = jnp.stack([jnp.arange(9), jnp.arange(9) + 5])  # same text, shifted positions
    rope = small(positions="rope")
    assert "position_embedding" not in random_params(rope)
    out = logits(rope, random_params(rope), tokens, positions)
    np.testing.assert_allclose(out[0], out[1], atol=2e-5, rtol=1e-5)
    learned = small(positions="learned")
    learned_params = random_params(learned)
    assert learned_params["position_embedding"].shape == (learned.max_len, learned.d_model)
    out = logits(learned, learned_params, tokens, positions)
    assert not np.allclose(out[0], out[1], atol=1e-3)


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    gqa = small(num_kv_heads=2, scan_layers=False)
    params = random_params(gqa)
    key_kernel = params["layers_0"]["attention"]["key"]["kernel"]
    assert key_kernel.shape == (gqa.d_model, 2, gqa.head_dim)
    group = gqa.num_heads // gqa.num_kv_heads
    mha_params = dict(params)
    for i in range(gqa.num_layers):
        attention = dict(params[f"layers_{i}"]["attention"])
        for name in ("key", "value"):
            attention[name] = {
                "kernel": jnp.repeat(attention[name]["kernel"], group, axis=1),
                "bias": jnp.repeat(attention[name]["bias"], group, axis=0),
            }
        mha_params[f"layers_{i}"] = {**params[f"layers_{i}"], "attention": attention}
    tokens = tokens_of(4, 11)
    np.testing.assert_allclose(
        logits(gqa, params, tokens),
        logits(small(num_kv_heads=4, scan_layers=False), mha_params, tokens),
        atol=2e-5,
        rtol=1e-5,
    )


def test_scanned_and_unscanned_layers_give_the_same_logits():
    scanned = small()
    params = random_params(scanned)
    assert params["layers"]["mlp"]["wi"]["kernel"].shape == (2, 32, 64)
    unscanned_params = decoder.unscan_params(params, scanned.num_layers)
    # The unscanned model's own layout is exactly this, and scan_params inverts the conversion.
    own = nn.unbox(abstract_variables(small(scan_layers=False)))["params"]
    assert jax.tree_util.tree_map(jnp.shape, unscanned_params) == jax.tree_util.tree_map(
        lambda leaf: leaf.shape, own
    )
    restacked = decoder.scan_params(unscanned_params, scanned.num_layers)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, restacked, params))
    tokens = tokens_of(5, 10)
    np.testing.assert_allclose(
        logits(scanned, params, tokens),
        logits(small(scan_layers=False), unscanned_params, tokens),
        atol=2e-5,
        rtol=1e-5,
    )


def test_unrolled_scan_matches_rolled_scan():
    """scan_unroll changes the loop, not the parameters or the maths."""
    tokens = tokens_of(12, 8, batch=2)
    params = random_params(small())
    unrolled = [small(scan_unroll=n) for n in (2, 3)]  # all layers; more than num_layers
    for cfg in unrolled:
        assert jax.tree_util.tree_map(jnp.shape, random_params(cfg)) == jax.tree_util.tree_map(
            jnp.shape, params
        )

    def losses_and_grads(p):
        return [
            jax.value_and_grad(
                lambda q, m=decoder.Decoder(cfg): m.apply({"params": q}, tokens).std()
            )(p)
            for cfg in (small(), *unrolled)
        ]

    (reference_loss, reference_grads), *others = run(losses_and_grads, params)
    for loss, grads in others:
        np.testing.assert_allclose(loss, reference_loss, rtol=1e-6)
        for got, want in zip(
            jax.tree_util.tree_leaves(grads),
            jax.tree_util.tree_leaves(reference_grads),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_remat_policies_keep_values_and_gradients():
    tokens = tokens_of(6, 8, batch=2)
    policies = decoder.REMAT_POLICIES
    params = random_params(small(num_layers=1))

    def all_losses_and_grads(p):
        results = []
        for policy in policies:
            model = decoder.Decoder(small(num_layers=1, remat_policy=policy))
            loss = lambda q, m=model: m.apply({"params": q}, tokens).std()  # noqa: E731
            results.append(jax.value_and_grad(loss)(p))
        return results

    (reference_loss, reference_grads), *others = run(all_losses_and_grads, params)
    assert float(jnp.abs(reference_grads["layers"]["mlp"]["wi"]["kernel"]).max()) > 0
    for policy, (loss, grads) in zip(policies[1:], others, strict=True):
        np.testing.assert_allclose(loss, reference_loss, rtol=1e-6, err_msg=policy)
        for got, want in zip(
            jax.tree_util.tree_leaves(grads),
            jax.tree_util.tree_leaves(reference_grads),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5, err_msg=policy)


def test_gradients_finite_with_dropout_and_dropout_is_active():
    cfg = small(dropout_rate=0.2, tie_embeddings=False, use_bias=False)
    params = random_params(cfg)
    assert "lm_head" in params and "bias" not in params["layers"]["mlp"]["wi"]
    model = decoder.Decoder(cfg)
    tokens = tokens_of(7, 8, batch=2)

    def train_logits(p, rng):
        return model.apply({"params": p}, tokens, deterministic=False, rngs={"dropout": rng})

    def check(p):
        loss = lambda q: -jnp.mean(jax.nn.log_softmax(train_logits(q, jax.random.key(1)))[..., 0])  # noqa: E731
        eval_logits = model.apply({"params": p}, tokens)
        return jax.grad(loss)(p), train_logits(p, jax.random.key(2)), eval_logits

    grads, train_out, eval_out = run(check, params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert all(float(jnp.abs(g).max()) > 0 for g in leaves)
    assert not np.allclose(train_out, eval_out, atol=1e-3)


def test_every_parameter_has_known_logical_names():
    cfg = small(positions="learned", activation="swiglu", tie_embeddings=False)
    specs = nn.get_partition_spec(abstract_variables(cfg))["params"]
    flat = jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )[0]
    assert len(flat) > 10
    for path, spec in flat:
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert set(spec) <= RULE_NAMES, (path, spec)
        if "layers" in jax.tree_util.keystr(path):
            assert spec[0] == "layers", path
    assert specs["token_embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    assert specs["lm_head"] == jax.sharding.PartitionSpec("embed", "vocab")
    mlp = specs["layers"]["mlp"]
    assert mlp["wi_gate"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "mlp")
    assert mlp["wo"]["kernel"] == jax.sharding.PartitionSpec("layers", "mlp", "embed")


def test_unknown_activation_axis_is_an_error():
    rules = tuple((name, None) for name in sorted(RULE_NAMES - {"activation_mlp"}))
    with nn.logical_axis_rules(rules), pytest.raises(ValueError, match="activation_mlp"):
        abstract_variables(small())


def test_config_validation():
    with pytest.raises(ValueError, match="config.model.norm"):
        small(norm="batchnorm")
    with pytest.raises(ValueError, match="num_kv_heads"):
        small(num_kv_heads=3)
    with pytest.raises(ValueError, match="config.model.scan_unroll"):
        small(scan_unroll=0)
    with pytest.raises(ValueError, match="unknown field"):
        decoder.ModelConfig.from_config({"d_model": 8, "num_head": 2})
    assert decoder.ModelConfig.from_config({"d_model": 64, "num_heads": 8}).head_dim == 8
    too_long = jax.ShapeDtypeStruct((1, 9), jnp.int32)
    with pytest.raises(ValueError, match="max_len"):
        jax.eval_shape(
            lambda: decoder.Decoder(small(max_len=8)).init({"params": jax.random.key(0)}, too_long)
        )


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unscanned"])
def test_cached_decoding_matches_full_forward(scan_layers):
    """Prefill 5 tokens, then decode 4 one at a time: the logits of a full forward pass."""
    cfg = small(
        num_kv_heads=2, positions="rope" if scan_layers else "learned", scan_layers=scan_layers
    )
    params = random_params(cfg)
    model = decoder.Decoder(cfg)
    tokens = tokens_of(9, 9, batch=2)
    abstract_cache = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, tokens[:, :1], decode=True)["cache"]
    )
    cache = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), abstract_cache)

    def extend(p, c, t):
        out, variables = model.apply({"params": p, "cache": c}, t, decode=True, mutable=["cache"])
        return out, variables["cache"]

    prefill_logits, cache = run(extend, params, cache, tokens[:, :5])
    step = jax.jit(extend).lower(params, cache, tokens[:, 5:6]).compile(FAST_COMPILE)
    decoded = [prefill_logits]
    for i in range(5, 9):
        out, cache = step(params, cache, tokens[:, i : i + 1])
        decoded.append(out)
    np.testing.assert_allclose(
        jnp.concatenate(decoded, axis=1), logits(cfg, params, tokens), atol=2e-5, rtol=1e-5
    )


@pytest.mark.parametrize("length", [1, 3])
def test_shared_prefix_attention_equals_attention_over_each_rows_whole_cache(length):
    """cached_attention with a prompt prefix shared by 3 rows each == the same rows attending
    to their own copy of the prefix in front of their cache (grouped-query heads, padded
    prefix slots, queries of several tokens)."""
    prompts, copies, kv_heads, group, head_dim, own_slots, prefix_slots = 2, 3, 2, 2, 8, 5, 6
    rows = prompts * copies
    keys = jax.random.split(jax.random.key(0), 5)
    query = jax.random.normal(keys[0], (rows, length, kv_heads * group, head_dim))
    key, value = (jax.random.normal(k, (rows, kv_heads, own_slots, head_dim)) for k in keys[1:3])
    prefix_key, prefix_value = (
        jax.random.normal(k, (prompts, kv_heads, prefix_slots, head_dim)) for k in keys[3:5]
    )
    prefix_segments = jnp.asarray([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], jnp.int32)
    segments = jnp.ones((rows, length), jnp.int32)
    mask = attention_ops.attention_mask(
        jnp.broadcast_to(jnp.arange(length) + 1, (rows, length)),
        jnp.broadcast_to(jnp.arange(own_slots), (rows, own_slots)),
        segments,
        jnp.ones((rows, own_slots), jnp.int32).at[0, 0].set(0),  # row 0 cannot see slot 0
    )
    attend = jax.jit(attention_ops.cached_attention)  # eagerly, every op compiles alone
    shared = attend(query, key, value, mask, segments, (prefix_key, prefix_value, prefix_segments))
    whole_key = jnp.concatenate([prefix_key.repeat(copies, axis=0), key], axis=2)
    whole_value = jnp.concatenate([prefix_value.repeat(copies, axis=0), value], axis=2)
    visible = (prefix_segments.repeat(copies, axis=0) == 1)[:, None, None, :]
    whole_mask = jnp.concatenate([jnp.broadcast_to(visible, (*mask.shape[:3], 6)), mask], -1)
    expected = attend(query, whole_key, whole_value, whole_mask, segments)
    np.testing.assert_allclose(shared, expected, atol=1e-6, rtol=1e-5)
