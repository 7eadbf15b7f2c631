"""Decoder-only transformer (GPT or Llama style) in Flax linen, packing-aware and shardable.

One module family covers the paper's GPT models (learned positions, GELU, LayerNorm, tied
embeddings) and modern variants (RoPE, SwiGLU, RMSNorm, grouped-query attention). Parameters
carry logical axis names (`nn.with_logical_partitioning`) and activations logical constraints,
so `toxjax.model.partitioning` maps the same model onto any (data, fsdp, tensor) mesh.

Packing: `segment_ids` (seqio's "decoder_segment_ids", 0 = padding) keep attention inside one
document and `positions` ("decoder_positions") restart at 0 for every document, so a packed
row computes exactly what its documents would compute alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from toxjax.model import attention_ops

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
ACTIVATIONS = ("gelu", "swiglu")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")

# Logical names of activations, in the order of their dimensions.
BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_MLP = ("activation_batch", "activation_length", "activation_mlp")
BATCH_LENGTH_HEADS_KV = (
    "activation_batch",
    "activation_length",
    "activation_heads",
    "activation_kv",
)
BATCH_LENGTH_KVHEADS_KV = (
    "activation_batch",
    "activation_length",
    "activation_kv_heads",
    "activation_kv",
)
BATCH_LENGTH_VOCAB = ("activation_batch", "activation_length", "activation_vocab")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of `Decoder`; mirrors `config.model` (see toxjax/configs/default.py)."""

    num_layers: int = 2
    d_model: int = 128
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = -1  # -1: d_model // num_heads (resolved in __post_init__)
    mlp_dim: int = 512
    vocab_size: int = 384
    max_len: int = 256
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    positions: str = "learned"
    rope_theta: float = 10000.0
    activation: str = "gelu"
    tie_embeddings: bool = True
    use_bias: bool = True
    dropout_rate: float = 0.0
    init_std: float = 0.02
    param_dtype: str = "float32"
    dtype: str = "bfloat16"
    scan_layers: bool = True
    scan_unroll: int = 1  # layers per scan iteration; >= num_layers: no loop (fastest on CPU)
    remat_policy: str = "none"
    attention_chunks: int = 1  # causal query chunks of training attention (attention_ops.py)
    attention_scores_dtype: str = "float32"  # dtype the [q, k] scores are stored in

    def __post_init__(self) -> None:
        def bad(field: str, message: str) -> ValueError:
            return ValueError(f"config.model.{field}: {message}")

        for field, choices in (
            ("norm", NORMS),
            ("positions", POSITIONS),
            ("activation", ACTIVATIONS),
            ("remat_policy", REMAT_POLICIES),
            ("attention_scores_dtype", attention_ops.SCORES_DTYPES),
        ):
            if getattr(self, field) not in choices:
                raise bad(field, f"must be one of {choices}, got {getattr(self, field)!r}")
        for field in ("num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim"):
            if int(getattr(self, field)) < 1:
                raise bad(field, f"must be >= 1, got {getattr(self, field)}")
        for field in ("vocab_size", "max_len", "scan_unroll", "attention_chunks"):
            if int(getattr(self, field)) < 1:
                raise bad(field, f"must be >= 1, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise bad(
                "num_kv_heads",
                f"{self.num_kv_heads} must divide num_heads={self.num_heads} (grouped-query)",
            )
        if self.head_dim == -1:
            if self.d_model % self.num_heads:
                raise bad(
                    "head_dim",
                    f"-1 needs num_heads={self.num_heads} to divide d_model={self.d_model}",
                )
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        elif self.head_dim < 1:
            raise bad("head_dim", f"must be >= 1 or -1, got {self.head_dim}")
        if self.positions == "rope" and self.head_dim % 2:
            raise bad("head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise bad("dropout_rate", f"must be in [0, 1), got {self.dropout_rate}")
        for field in ("param_dtype", "dtype"):
            try:
                jnp.dtype(getattr(self, field))
            except TypeError as error:
                raise bad(field, f"unknown dtype {getattr(self, field)!r}") from error

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any]) -> ModelConfig:
        """Builds from `config.model`; an unknown key is an error, not silently ignored."""
        values = dict(model_config.items())
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config.model has unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)


def _init(std: float, axes: Sequence[str]) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), tuple(axes))


def constrain(x: jax.Array, logical_axes: Sequence[str]) -> jax.Array:
    """Logical sharding constraint that refuses names missing from the active rules.

    Flax silently leaves an unknown name unsharded; a typo would then cost memory at scale.
    """
    rules = nn.get_logical_axis_rules()
    if rules:
        known = {name for name, _ in rules}
        unknown = [name for name in logical_axes if name is not None and name not in known]
        if unknown:
            raise ValueError(
                f"activation logical axis name(s) {unknown} are not in config.logical_axis_rules"
            )
    return nn.with_logical_constraint(x, tuple(logical_axes))


class Projection(nn.Module):
    """Contracts the trailing `len(in_features)` dims of x with a named, sharded kernel."""

    in_features: tuple[int, ...]
    out_features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    use_bias: bool
    init_std: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        num_in = len(self.in_features)
        kernel = self.param(
            "kernel",
            _init(self.init_std, self.kernel_axes),
            (*self.in_features, *self.out_features),
            self.param_dtype,
        )
        contract = (tuple(range(x.ndim - num_in, x.ndim)), tuple(range(num_in)))
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ()))
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[num_in:]),
                self.out_features,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


def make_norm(cfg: ModelConfig, name: str) -> nn.Module:
    """LayerNorm (GPT) or RMSNorm (Llama); flax computes the statistics in float32."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(
            epsilon=cfg.norm_eps,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            scale_init=scale_init,
            name=name,
        )
    return nn.LayerNorm(
        epsilon=cfg.norm_eps,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        use_bias=cfg.use_bias,
        scale_init=scale_init,
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding of x [batch, length, heads, head_dim] at integer positions [b, l]."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [b, l, half]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with RoPE or none (learned positions).

    With `decode`, keys and values are appended to a "cache" collection of max_len slots, so a
    prompt can be prefilled at once and then extended a token at a time. A caller may also
    place a prompt cache shared by several rows in that collection (`cached_attention`).
    """

    cfg: ModelConfig
    decode: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None
    ) -> jax.Array:
        cfg = self.cfg
        d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

        def project(name: str, heads: int, heads_axis: str) -> jax.Array:
            return Projection(
                in_features=(d,),
                out_features=(heads, h),
                kernel_axes=("embed", heads_axis, "kv"),
                use_bias=cfg.use_bias,
                init_std=cfg.init_std,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.weight_dtype,
                name=name,
            )(x)

        query = constrain(project("query", n, "heads"), BATCH_LENGTH_HEADS_KV)
        key = constrain(project("key", k, "kv_heads"), BATCH_LENGTH_KVHEADS_KV)
        value = constrain(project("value", k, "kv_heads"), BATCH_LENGTH_KVHEADS_KV)
        if cfg.positions == "rope":
            query = apply_rope(query, positions, cfg.rope_theta)
            key = apply_rope(key, positions, cfg.rope_theta)

        batch, length = x.shape[:2]
        query_index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        key_index, key_segments = query_index, segment_ids
        if self.decode:
            if segment_ids is None:  # one document: only causality masks the cache
                segment_ids = jnp.ones((batch, length), jnp.int32)
            key, value, key_segments, start = self._update_cache(key, value, segment_ids)
            query_index = query_index + start
            slots = key.shape[2]
            key_index = jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (batch, slots))
        mask = attention_ops.attention_mask(query_index, key_index, segment_ids, key_segments)
        if self.decode:
            out = attention_ops.cached_attention(
                query, key, value, mask, segment_ids, self._shared_prefix()
            )
        else:
            # XLA implementation, softmax in float32, grouped-query heads natively; chunked, it
            # skips the keys the causal mask hides (as many chunks as divide the length).
            chunks = math.gcd(length, cfg.attention_chunks)
            out = attention_ops.causal_chunked_attention(
                query, key, value, mask, chunks, cfg.attention_scores_dtype
            )
        out = constrain(out, BATCH_LENGTH_HEADS_KV)
        return Projection(
            in_features=(n, h),
            out_features=(d,),
            kernel_axes=("heads", "kv", "embed"),
            use_bias=cfg.use_bias,
            init_std=cfg.init_std / math.sqrt(2 * cfg.num_layers),
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            name="out",
        )(out)

    def _shared_prefix(self) -> attention_ops.SharedPrefix | None:
        """A prompt cache shared by several rows, if the caller put one in the cache collection
        (prefix_key, prefix_value, prefix_segment_ids; see cached_attention)."""
        if not self.has_variable("cache", "prefix_key"):
            return None
        return tuple(
            self.get_variable("cache", name)
            for name in ("prefix_key", "prefix_value", "prefix_segment_ids")
        )

    def _update_cache(
        self, key: jax.Array, value: jax.Array, segment_ids: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Writes this call's keys/values at the cache index; returns the whole cache.

        Cached keys/values are stored [batch, kv_heads, slots, head_dim] (see
        `cached_attention`); the slot count is that of the cache arrays, so a caller may
        allocate fewer than max_len slots.
        """
        batch, length, kv_heads, head_dim = key.shape
        slots = self.cfg.max_len
        initialised = self.has_variable("cache", "cached_key")
        shape = (batch, kv_heads, slots, head_dim)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
        cached_segments = self.variable(
            "cache", "cached_segment_ids", jnp.zeros, (batch, slots), jnp.int32
        )
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        start = index.value
        if initialised:  # model.init only creates the (empty) cache
            for cached, new in ((cached_key, key), (cached_value, value)):
                cached.value = jax.lax.dynamic_update_slice(
                    cached.value, new.transpose(0, 2, 1, 3), (0, 0, start, 0)
                )
            cached_segments.value = jax.lax.dynamic_update_slice(
                cached_segments.value, segment_ids.astype(jnp.int32), (0, start)
            )
            index.value = start + length
        return cached_key.value, cached_value.value, cached_segments.value, start


class Mlp(nn.Module):
    """GELU MLP (GPT) or SwiGLU (Llama; `mlp_dim` is the size of each branch)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg

        def dense(name: str, features: int, axes: tuple[str, str], std: float) -> nn.Module:
            return Projection(
                in_features=(x.shape[-1] if axes[0] == "embed" else cfg.mlp_dim,),
                out_features=(features,),
                kernel_axes=axes,
                use_bias=cfg.use_bias,
                init_std=std,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.weight_dtype,
                name=name,
            )

        if cfg.activation == "swiglu":
            gate = dense("wi_gate", cfg.mlp_dim, ("embed", "mlp"), cfg.init_std)(x)
            up = dense("wi_up", cfg.mlp_dim, ("embed", "mlp"), cfg.init_std)(x)
            hidden = nn.silu(gate) * up
        else:
            hidden = nn.gelu(dense("wi", cfg.mlp_dim, ("embed", "mlp"), cfg.init_std)(x))
        hidden = constrain(hidden, BATCH_LENGTH_MLP)
        out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        return dense("wo", cfg.d_model, ("mlp", "embed"), out_std)(hidden)


class DecoderBlock(nn.Module):
    """Pre-norm block; returns (x, None) so the same module runs under nn.scan."""

    cfg: ModelConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None
    ) -> tuple[jax.Array, None]:
        cfg = self.cfg
        dropout = nn.Dropout(rate=cfg.dropout_rate)
        h = make_norm(cfg, "pre_attention_norm")(x)
        h = Attention(cfg, self.decode, name="attention")(h, positions, segment_ids)
        x = x + dropout(h, deterministic=self.deterministic)
        h = make_norm(cfg, "pre_mlp_norm")(x)
        h = Mlp(cfg, name="mlp")(h)
        x = x + dropout(h, deterministic=self.deterministic)
        return constrain(x, BATCH_LENGTH_EMBED), None


def _remat_policy(name: str) -> Any:
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots_saveable":
        return jax.checkpoint_policies.dots_saveable
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable


class Decoder(nn.Module):
    """tokens [b, l] int -> logits [b, l, vocab] float32.

    Decoding: `init(..., decode=True)` creates an empty "cache" collection for the batch size;
    `apply({"params": p, "cache": c}, tokens, decode=True, mutable=["cache"])` then consumes a
    prompt (prefill) or one token per call, positions continuing from the cache. Callers must
    stop at max_len cached tokens (writes past the end are clamped by XLA, not detected).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> jax.Array:
        cfg = self.cfg
        batch, length = tokens.shape
        if cfg.positions == "learned" and length > cfg.max_len:
            raise ValueError(f"sequence length {length} exceeds config.model.max_len={cfg.max_len}")
        if positions is None:
            positions = self._default_positions(batch, length, decode)
        d_model, vocab_size = cfg.d_model, cfg.vocab_size
        embedding = self._weight("token_embedding", ("vocab", "embed"), (vocab_size, d_model))
        # Gather from a replicated copy (FSDP gathers every weight anyway): a gather from a
        # vocab-sharded table makes XLA replicate its output, the worse choice.
        table = constrain(embedding.astype(cfg.compute_dtype), (None, None))
        x = jnp.take(table, tokens, axis=0)
        if cfg.positions == "learned":
            table = self._weight(
                "position_embedding", ("position", "embed"), (cfg.max_len, d_model)
            )
            table = constrain(table.astype(cfg.compute_dtype), (None, None))
            x = x + jnp.take(table, positions, axis=0)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
        x = constrain(x, BATCH_LENGTH_EMBED)
        x = self._blocks(x, positions, segment_ids, deterministic, decode)
        x = make_norm(cfg, "final_norm")(x)
        if cfg.tie_embeddings:
            head, equation = embedding, "bld,vd->blv"
        else:
            head = self._weight("lm_head", ("embed", "vocab"), (d_model, vocab_size))
            equation = "bld,dv->blv"
        logits = jnp.einsum(
            equation, x, head.astype(cfg.compute_dtype), preferred_element_type=jnp.float32
        )
        return constrain(logits, BATCH_LENGTH_VOCAB).astype(jnp.float32)

    def _default_positions(self, batch: int, length: int, decode: bool) -> jax.Array:
        """0..length-1 per row; decoding continues after the tokens already in the cache."""
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if decode:
            initialised = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            positions = positions + position.value
            if initialised:
                position.value = position.value + length
        return positions

    def _weight(self, name: str, axes: tuple[str, str], shape: tuple[int, int]) -> jax.Array:
        """A weight matrix with logical axes, initialised as every weight of the model."""
        return self.param(name, _init(self.cfg.init_std, axes), shape, self.cfg.weight_dtype)

    def _blocks(
        self,
        x: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array | None,
        deterministic: bool,
        decode: bool,
    ) -> jax.Array:
        """The decoder blocks: one scanned stack, or cfg.num_layers separate layers."""
        cfg = self.cfg
        block = DecoderBlock
        if cfg.remat_policy != "none" and not decode:  # decoding keeps no activations
            block = nn.remat(
                DecoderBlock,
                policy=_remat_policy(cfg.remat_policy),
                prevent_cse=not cfg.scan_layers,
            )
        if cfg.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                unroll=min(cfg.scan_unroll, cfg.num_layers),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(cfg, deterministic, decode, name="layers")(x, positions, segment_ids)
            return x
        for i in range(cfg.num_layers):
            layer = block(cfg, deterministic, decode, name=f"layers_{i}")
            x, _ = layer(x, positions, segment_ids)
        return x


def unscan_params(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """Scanned layout (params["layers"] stacked on axis 0) -> per-layer "layers_{i}" layout."""
    params = dict(params)
    stacked = params.pop("layers")
    for i in range(num_layers):
        params[f"layers_{i}"] = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stacked)
    return params


def scan_params(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """Inverse of `unscan_params`: stacks "layers_{i}" subtrees on a new leading axis."""
    params = dict(params)
    layers = [params.pop(f"layers_{i}") for i in range(num_layers)]
    params["layers"] = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *layers)
    return params


def count_params(cfg: ModelConfig) -> int:
    """Parameter count from the real model's shapes (jax.eval_shape: nothing is allocated)."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    variables = jax.eval_shape(
        lambda key: Decoder(cfg).init({"params": key}, tokens), jax.random.key(0)
    )
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables["params"]))
