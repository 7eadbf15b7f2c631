"""Optimizer, learning-rate schedule, loss and gradient accumulation for the train step.

Kept free of model and mesh code so each piece can be tested on a toy problem: the train step
composes them (loss -> accumulated gradients -> clipped AdamW update).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any
# loss_fn(params, micro_batch, micro_index) -> (objective_sum, {name: summed metric}).
SummedLossFn = Callable[[PyTree, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]

# Leaf names that are never decayed: decaying a norm gain or a bias towards 0 only hurts.
_NO_DECAY_LEAF_NAMES = frozenset({"bias", "scale", "gamma", "beta"})


def learning_rate_schedule(
    optim_config: ml_collections.ConfigDict, num_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to peak * end_lr_ratio at num_steps."""
    peak = float(optim_config.learning_rate)
    if num_steps < 1:
        raise ValueError(f"config.train.num_steps must be >= 1, got {num_steps}")
    warmup_steps = int(optim_config.warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"config.optim.warmup_steps must be >= 0, got {warmup_steps}")
    warmup_steps = min(warmup_steps, num_steps - 1) if num_steps > 1 else 0
    end_value = peak * float(optim_config.end_lr_ratio)
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(peak, decay_steps=num_steps, alpha=end_value / peak)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=num_steps,
        end_value=end_value,
    )


def _path_names(path: tuple) -> list[str]:
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return names


def weight_decay_mask(params: PyTree) -> PyTree:
    """True where decoupled weight decay applies: matrices and embeddings, not norms or biases.

    Decided by name first (a scanned stack of biases is 2-D, so ndim alone would decay it), then by
    ndim for unnamed vectors.
    """

    def decays(path: tuple, leaf: Any) -> bool:
        if isinstance(leaf, nn.meta.AxisMetadata):  # boxed params, as seen by tx.init at setup
            leaf = leaf.unbox()
        names = [name.lower() for name in _path_names(path)]
        if names and names[-1] in _NO_DECAY_LEAF_NAMES:
            return False
        if any("norm" in name for name in names):
            return False
        return jnp.ndim(leaf) >= 2

    return jax.tree_util.tree_map_with_path(
        decays, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)
    )


def create_optimizer(
    optim_config: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clipping followed by AdamW with a masked weight decay."""
    schedule = learning_rate_schedule(optim_config, num_steps)
    parts = []
    if float(optim_config.grad_clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_config.grad_clip_norm)))
    parts.append(
        optax.adamw(
            learning_rate=schedule,
            b1=float(optim_config.b1),
            b2=float(optim_config.b2),
            eps=float(optim_config.eps),
            weight_decay=float(optim_config.weight_decay),
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*parts), schedule


def cross_entropy_sums(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sums (not means) so micro-batches add up to exactly the full-batch value.

    Returns (objective_sum, metrics) where objective = cross-entropy + z_loss * log(Z)^2 per token
    and metrics holds ce_sum, z_loss_sum, weight_sum and correct_sum.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    label_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[
        ..., 0
    ]
    ce = log_z - label_logits
    z_term = z_loss * jnp.square(log_z)
    ce_sum = jnp.sum(ce * weights)
    z_sum = jnp.sum(z_term * weights)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    metrics = {
        "ce_sum": ce_sum,
        "z_loss_sum": z_sum,
        "weight_sum": jnp.sum(weights),
        "correct_sum": jnp.sum(correct * weights),
    }
    return ce_sum + z_sum, metrics


def resolve_grad_accum_steps(
    optim_config: ml_collections.ConfigDict, global_batch: int, batch_shards: int
) -> int:
    """config.optim.grad_accum_steps, with -1 (auto) made concrete for this mesh.

    Auto: the fewest micro-batches that keep each batch shard's share of a micro-batch at or
    under max_microbatch_per_device, among counts that split the batch evenly over the shards.
    """
    steps = int(optim_config.grad_accum_steps)
    if steps != -1:
        return steps
    limit = int(optim_config.max_microbatch_per_device)
    if limit < 1:
        raise ValueError(f"config.optim.max_microbatch_per_device must be >= 1, got {limit}")
    per_shard = global_batch // batch_shards
    for steps in range(max(1, math.ceil(per_shard / limit)), per_shard + 1):
        if per_shard % steps == 0:
            return steps
    raise ValueError(
        f"config.optim.grad_accum_steps=-1: no micro-batch count splits "
        f"config.data.global_batch_size={global_batch} evenly over {batch_shards} batch shards"
    )


def split_microbatches(batch: Mapping[str, jax.Array], num_microbatches: int) -> dict:
    """[B, ...] -> [n, B/n, ...] with micro-batch i = rows i, i+n, i+2n, ...

    Strided rather than contiguous so every micro-batch stays spread over all data-parallel
    devices (a contiguous slice would live on 1/n of them).
    """

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % num_microbatches:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by "
                f"config.optim.grad_accum_steps={num_microbatches}"
            )
        x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {name: split(value) for name, value in batch.items()}


def accumulate_gradients(
    loss_fn: SummedLossFn,
    params: PyTree,
    batch: Mapping[str, jax.Array],
    num_microbatches: int,
) -> tuple[PyTree, dict[str, jax.Array]]:
    """Summed gradients and summed metrics over micro-batches, in one traced computation.

    Runs inside the jitted train step (a lax.scan), so one call is one optimizer step and only
    one micro-batch of activations is live at a time. Because loss_fn returns sums, dividing the
    result by the total weight equals the full-batch gradient.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches <= 1:
        (_, metrics), grads = grad_fn(params, batch, jnp.zeros((), jnp.int32))
        return grads, metrics

    micro = split_microbatches(batch, num_microbatches)
    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(lambda: loss_fn(params, first, jnp.zeros((), jnp.int32))[1])
    zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes)

    def body(carry, inputs):
        grad_acc, metric_acc = carry
        micro_batch, index = inputs
        (_, metrics), grads = grad_fn(params, micro_batch, index)
        grad_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
        metric_acc = jax.tree.map(lambda a, m: a + m.astype(jnp.float32), metric_acc, metrics)
        return (grad_acc, metric_acc), None

    indices = jnp.arange(num_microbatches, dtype=jnp.int32)
    (grads, metrics), _ = jax.lax.scan(body, (zero_grads, zero_metrics), (micro, indices))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    return grads, metrics
