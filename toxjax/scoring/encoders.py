"""Flax ports of the encoder classifiers behind Detoxify: BERT, RoBERTa / XLM-R and ALBERT.

The maths follows transformers' PyTorch classes (post-LayerNorm blocks, absolute positions,
the same poolers and heads), so a converted checkpoint gives the same logits to float32
rounding. Layers are scanned (ALBERT's one shared layer is applied in a loop), so a 12-layer
model compiles one block per input shape.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ARCHITECTURES = ("bert", "roberta", "albert")
# transformers class name -> architecture; XLM-R is RoBERTa with another vocabulary.
MODEL_CLASSES = {
    "BertForSequenceClassification": "bert",
    "RobertaForSequenceClassification": "roberta",
    "XLMRobertaForSequenceClassification": "roberta",
    "AlbertForSequenceClassification": "albert",
}
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The fields of a transformers config that the forward pass depends on."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    num_labels: int
    embedding_size: int  # ALBERT factorises embeddings; others: = hidden_size

    @classmethod
    def from_hf(cls, model_class: str, hf_config: Mapping[str, Any]) -> EncoderConfig:
        """Reads a transformers config dict; rejects settings this port does not implement."""
        if model_class not in MODEL_CLASSES:
            raise ValueError(
                f"model class {model_class!r} has no Flax port; supported: {sorted(MODEL_CLASSES)}"
            )
        architecture = MODEL_CLASSES[model_class]
        position_type = hf_config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type={position_type!r}: only 'absolute'")
        if hf_config["hidden_act"] not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={hf_config['hidden_act']!r} has no port; known: {sorted(ACTIVATIONS)}"
            )
        if architecture == "albert" and hf_config.get("num_hidden_groups", 1) != 1:
            raise ValueError("ALBERT with num_hidden_groups != 1 is not ported")
        num_labels = hf_config.get("num_labels") or len(hf_config.get("id2label", {}))
        return cls(
            architecture=architecture,
            vocab_size=int(hf_config["vocab_size"]),
            hidden_size=int(hf_config["hidden_size"]),
            num_hidden_layers=int(hf_config["num_hidden_layers"]),
            num_attention_heads=int(hf_config["num_attention_heads"]),
            intermediate_size=int(hf_config["intermediate_size"]),
            hidden_act=str(hf_config["hidden_act"]),
            max_position_embeddings=int(hf_config["max_position_embeddings"]),
            type_vocab_size=int(hf_config["type_vocab_size"]),
            layer_norm_eps=float(hf_config["layer_norm_eps"]),
            pad_token_id=int(hf_config.get("pad_token_id") or 0),
            num_labels=int(num_labels),
            embedding_size=int(
                hf_config.get("embedding_size", 128)
                if architecture == "albert"
                else hf_config["hidden_size"]
            ),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EncoderConfig:
        return cls(**json.loads(text))


def _layer_norm(config: EncoderConfig, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it: the fast E[x^2] - E[x]^2 drifts by ~1e-6.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the unpadded keys, with its output projection."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
        config = self.config
        heads = config.num_attention_heads
        head_dim = config.hidden_size // heads
        batch, length, _ = hidden.shape

        def project(name: str) -> jax.Array:
            out = nn.Dense(config.hidden_size, name=name)(hidden)
            return out.reshape(batch, length, heads, head_dim)

        context = jax.nn.dot_product_attention(
            project("query"), project("key"), project("value"), mask=mask[:, None, None, :]
        )
        return nn.Dense(config.hidden_size, name="output")(context.reshape(batch, length, -1))


class EncoderLayer(nn.Module):
    """One post-LayerNorm transformer block (BERT's and ALBERT's share this shape)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, mask: jax.Array) -> tuple[jax.Array, None]:
        config = self.config
        attended = SelfAttention(config, name="attention")(hidden, mask)
        hidden = _layer_norm(config, "attention_norm")(hidden + attended)
        inner = nn.Dense(config.intermediate_size, name="intermediate")(hidden)
        inner = ACTIVATIONS[config.hidden_act](inner)
        out = nn.Dense(config.hidden_size, name="output")(inner)
        return _layer_norm(config, "output_norm")(hidden + out), None


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm (and ALBERT's projection up)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        config = self.config
        if config.architecture == "roberta":
            # RoBERTa counts positions from pad+1 over non-pad tokens only.
            not_pad = (input_ids != config.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(not_pad, axis=1) * not_pad + config.pad_token_id
        else:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        width = config.embedding_size
        embedded = (
            nn.Embed(config.vocab_size, width, name="word")(input_ids)
            + nn.Embed(config.max_position_embeddings, width, name="position")(positions)
            + nn.Embed(config.type_vocab_size, width, name="token_type")(token_type_ids)
        )
        embedded = _layer_norm(config, "norm")(embedded)
        if config.architecture == "albert":
            embedded = nn.Dense(config.hidden_size, name="projection")(embedded)
        return embedded


class SequenceClassifier(nn.Module):
    """Encoder plus the architecture's classification head; returns logits [batch, labels]."""

    config: EncoderConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array
    ) -> jax.Array:
        config = self.config
        hidden = Embeddings(config, name="embeddings")(input_ids, token_type_ids)
        mask = attention_mask.astype(bool)
        if config.architecture == "albert":
            shared = EncoderLayer(config, name="shared_layer")
            for _ in range(config.num_hidden_layers):
                hidden, _ = shared(hidden, mask)
        else:
            layers = nn.scan(
                EncoderLayer,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=nn.broadcast,
                length=config.num_hidden_layers,
            )
            hidden, _ = layers(config, name="layers")(hidden, mask)
        first = hidden[:, 0]
        # BERT and ALBERT: tanh pooler then a linear classifier; RoBERTa: a two-layer head.
        pooler_name = "head_dense" if config.architecture == "roberta" else "pooler"
        pooled = jnp.tanh(nn.Dense(config.hidden_size, name=pooler_name)(first))
        return nn.Dense(config.num_labels, name="classifier")(pooled)


def param_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} of every parameter, without allocating any (the converter's check)."""
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(
        lambda: SequenceClassifier(config).init(jax.random.PRNGKey(0), ids, ids, ids)
    )["params"]
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        flat["/".join(p.key for p in path)] = tuple(leaf.shape)
    return flat
