"""toxjax.training.optim: decay mask, schedule, loss sums, z-loss, gradient accumulation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from toxjax.training import optim


def _optim_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "learning_rate": 1e-2,
            "warmup_steps": 10,
            "end_lr_ratio": 0.1,
            "b1": 0.9,
            "b2": 0.95,
            "eps": 1e-8,
            "weight_decay": 0.1,
            "grad_clip_norm": 1.0,
            "grad_accum_steps": 1,
            "max_microbatch_per_device": 32,
            "z_loss": 0.0,
        }
    )
    config.update(overrides)
    return config


def _toy_params() -> dict:
    """Names mirror a scanned decoder: stacked layers make biases and norm scales 2-D."""
    return {
        "embed": {"embedding": jnp.ones((6, 4))},
        "pos_embed": {"embedding": jnp.ones((8, 4))},
        "layers": {
            "attention": {"query": {"kernel": jnp.ones((2, 4, 4)), "bias": jnp.ones((2, 4))}},
            "pre_attention_norm": {"scale": jnp.ones((2, 4)), "bias": jnp.ones((2, 4))},
            "mlp": {"wi": {"kernel": jnp.ones((2, 4, 8))}},
        },
        "final_norm": {"scale": jnp.ones((4,))},
        "lone_vector": jnp.ones((4,)),
    }


def test_weight_decay_mask_excludes_norms_and_biases():
    mask = optim.weight_decay_mask(_toy_params())
    assert mask["embed"]["embedding"] is True
    assert mask["pos_embed"]["embedding"] is True
    assert mask["layers"]["attention"]["query"]["kernel"] is True
    assert mask["layers"]["mlp"]["wi"]["kernel"] is True
    assert mask["layers"]["attention"]["query"]["bias"] is False  # 2-D because scanned
    assert mask["layers"]["pre_attention_norm"]["scale"] is False
    assert mask["layers"]["pre_attention_norm"]["bias"] is False
    assert mask["final_norm"]["scale"] is False
    assert mask["lone_vector"] is False


def test_weight_decay_mask_sees_through_logical_partitioning_boxes():
    params = _toy_params()
    boxed = jax.tree.map(lambda x: nn.LogicallyPartitioned(x, (None,) * x.ndim), params)
    mask = optim.weight_decay_mask(boxed)
    assert mask["layers"]["attention"]["query"]["bias"] is False
    assert mask["layers"]["attention"]["query"]["kernel"] is True
    assert mask == optim.weight_decay_mask(params)


def test_weight_decay_only_shrinks_masked_in_params():
    """With zero gradients the Adam step is 0, so any change is weight decay alone."""
    config = _optim_config(grad_clip_norm=0.0, warmup_steps=0)
    tx, _ = optim.create_optimizer(config, num_steps=10)
    params = _toy_params()
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)
    new = optax.apply_updates(params, updates)
    expected_decayed = 1.0 - 1e-2 * 0.1
    np.testing.assert_allclose(new["layers"]["attention"]["query"]["kernel"], expected_decayed)
    np.testing.assert_allclose(new["embed"]["embedding"], expected_decayed)
    np.testing.assert_array_equal(new["layers"]["attention"]["query"]["bias"], 1.0)
    np.testing.assert_array_equal(new["final_norm"]["scale"], 1.0)


def test_schedule_warmup_then_cosine_to_end_ratio():
    schedule = optim.learning_rate_schedule(_optim_config(), num_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 0.5e-2, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(60)), (1e-2 + 1e-3) / 2, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(110)), 1e-3, rtol=1e-5)
    values = [float(schedule(s)) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_schedule_without_warmup_starts_at_peak():
    schedule = optim.learning_rate_schedule(_optim_config(warmup_steps=0), num_steps=50)
    np.testing.assert_allclose(float(schedule(0)), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(50)), 1e-3, rtol=1e-5)


def test_schedule_rejects_nonpositive_steps():
    with pytest.raises(ValueError, match="num_steps"):
        optim.learning_rate_schedule(_optim_config(), num_steps=0)


def test_cross_entropy_sums_ignore_zero_weight_tokens():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7))
    targets = jnp.array([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]])
    weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], jnp.float32)
    objective, metrics = optim.cross_entropy_sums(logits, targets, weights)
    log_probs = jax.nn.log_softmax(logits)
    expected = -sum(
        float(log_probs[b, t, targets[b, t]]) for b in range(2) for t in range(5) if weights[b, t]
    )
    np.testing.assert_allclose(float(objective), expected, rtol=1e-5)
    assert float(metrics["weight_sum"]) == 5.0
    # Changing logits where the weight is 0 leaves the loss untouched.
    other = logits.at[0, 4].set(100.0)
    np.testing.assert_allclose(
        float(optim.cross_entropy_sums(other, targets, weights)[0]), float(objective), rtol=1e-6
    )


def test_z_loss_adds_squared_log_partition_and_pulls_it_to_zero():
    logits = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 6)) + 3.0
    targets = jnp.zeros((3, 4), jnp.int32)
    weights = jnp.ones((3, 4))
    without, metrics0 = optim.cross_entropy_sums(logits, targets, weights, z_loss=0.0)
    with_z, metrics = optim.cross_entropy_sums(logits, targets, weights, z_loss=1e-2)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    np.testing.assert_allclose(float(metrics0["z_loss_sum"]), 0.0)
    np.testing.assert_allclose(float(with_z - without), 1e-2 * float(jnp.sum(log_z**2)), rtol=1e-5)
    # Cross-entropy is shift invariant; only the z-loss sees the shift, and its gradient with
    # respect to a common shift is positive while log(Z) > 0 (so descent lowers log Z).
    shift_grad = jax.grad(
        lambda c: optim.cross_entropy_sums(logits + c, targets, weights, z_loss=1e-2)[0]
    )(0.0)
    assert float(shift_grad) > 0
    ce_shift_grad = jax.grad(lambda c: optim.cross_entropy_sums(logits + c, targets, weights)[0])(
        0.0
    )
    np.testing.assert_allclose(float(ce_shift_grad), 0.0, atol=1e-4)


def _toy_loss(params, batch, index):
    del index
    logits = jnp.tanh(batch["inputs"] @ params["w1"]) @ params["w2"]
    return optim.cross_entropy_sums(logits, batch["targets"], batch["weights"], z_loss=1e-3)


def test_gradient_accumulation_equals_full_batch_step():
    key = jax.random.PRNGKey(2)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {
        "w1": jax.random.normal(k1, (5, 16)) * 0.5,
        "w2": jax.random.normal(k2, (16, 9)) * 0.5,
    }
    batch = {
        "inputs": jax.random.normal(k3, (8, 3, 5)),
        "targets": jax.random.randint(k4, (8, 3), 0, 9),
        "weights": jnp.tile(jnp.array([1.0, 1.0, 0.0]), (8, 1)).at[0, 2].set(1.0),
    }
    tx, _ = optim.create_optimizer(_optim_config(warmup_steps=0), num_steps=10)

    def step(num_micro):
        grads, metrics = optim.accumulate_gradients(_toy_loss, params, batch, num_micro)
        grads = jax.tree.map(lambda g: g / metrics["weight_sum"], grads)
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates), grads, metrics

    full_params, full_grads, full_metrics = jax.jit(lambda: step(1))()
    acc_params, acc_grads, acc_metrics = jax.jit(lambda: step(4))()
    for name in params:
        np.testing.assert_allclose(acc_grads[name], full_grads[name], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(acc_params[name], full_params[name], rtol=1e-5, atol=1e-7)
    for name in full_metrics:
        np.testing.assert_allclose(acc_metrics[name], full_metrics[name], rtol=1e-5)


def test_split_microbatches_is_strided_and_checks_divisibility():
    batch = {"x": jnp.arange(6)}
    micro = optim.split_microbatches(batch, 3)
    np.testing.assert_array_equal(micro["x"], [[0, 3], [1, 4], [2, 5]])
    with pytest.raises(ValueError, match="grad_accum_steps=4"):
        optim.split_microbatches(batch, 4)


@pytest.mark.parametrize(
    ("steps", "limit", "batch", "shards", "want"),
    [
        (1, 32, 512, 4, 1),  # explicit counts are kept
        (8, 32, 512, 4, 8),
        (-1, 32, 512, 4, 4),  # 128 per shard -> 4 micro-batches of 32
        (-1, 32, 512, 64, 1),  # 8 per shard already fit: no accumulation on a large slice
        (-1, 32, 96, 1, 3),  # 96 -> 3 x 32
        (-1, 40, 96, 1, 3),  # ceil(96 / 40) = 3 divides 96
        (-1, 30, 100, 1, 4),  # ceil(100 / 30) = 4 divides 100 -> 25 each
        (-1, 30, 98, 1, 7),  # 4, 5 and 6 do not divide 98; 7 does (14 each)
    ],
)
def test_resolve_grad_accum_steps(steps, limit, batch, shards, want):
    config = _optim_config(grad_accum_steps=steps, max_microbatch_per_device=limit)
    got = optim.resolve_grad_accum_steps(config, batch, shards)
    assert got == want
    if steps == -1:
        assert batch // shards % got == 0 and batch // shards // got <= limit


def test_resolve_grad_accum_steps_rejects_a_bad_limit():
    config = _optim_config(grad_accum_steps=-1, max_microbatch_per_device=0)
    with pytest.raises(ValueError, match="max_microbatch_per_device"):
        optim.resolve_grad_accum_steps(config, 64, 4)
