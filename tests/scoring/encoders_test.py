"""Tests for toxjax.scoring.encoders: the Flax encoder classifiers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toxjax.scoring import encoders

BASE = {
    "vocab_size": 40,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 1,
    "num_labels": 3,
}


@pytest.mark.parametrize("model_class", sorted(encoders.MODEL_CLASSES))
def test_padding_never_changes_a_texts_logits(model_class):
    """The bucketed scorer pads windows to a few lengths: the logits must not notice."""
    config = encoders.EncoderConfig.from_hf(model_class, {**BASE, "embedding_size": 8})
    model = encoders.SequenceClassifier(config)
    tokens = np.asarray([[2, 7, 9, 11, 3]], np.int32)
    params = model.init(jax.random.PRNGKey(0), tokens, tokens, 0 * tokens)["params"]

    def logits(padded_length: int) -> np.ndarray:
        ids = np.full((1, padded_length), config.pad_token_id, np.int32)
        ids[0, :5] = tokens[0]
        mask = (np.arange(padded_length) < 5).astype(np.int32)[None]
        return np.asarray(model.apply({"params": params}, ids, mask, 0 * ids))

    np.testing.assert_allclose(logits(16), logits(5), atol=1e-5)
    np.testing.assert_allclose(logits(48), logits(5), atol=1e-5)
    assert logits(5).shape == (1, 3)


def test_layers_are_scanned_and_albert_shares_one():
    bert = encoders.EncoderConfig.from_hf("BertForSequenceClassification", BASE)
    albert = encoders.EncoderConfig.from_hf("AlbertForSequenceClassification", BASE)
    assert encoders.param_shapes(bert)["layers/attention/query/kernel"] == (2, 16, 16)
    assert encoders.param_shapes(albert)["shared_layer/attention/query/kernel"] == (16, 16)
    assert "embeddings/projection/kernel" in encoders.param_shapes(albert)


def test_roberta_positions_start_after_the_pad_id():
    config = encoders.EncoderConfig.from_hf("RobertaForSequenceClassification", BASE)
    model = encoders.Embeddings(config)
    ids = jnp.asarray([[5, 6, 1, 1]])
    params = model.init(jax.random.PRNGKey(0), ids, 0 * ids)["params"]
    position_table = params["position"]["embedding"]
    # Zero word/type tables leave LayerNorm(position row): rows 2, 3 then the pad's row 1.
    params = jax.tree_util.tree_map(jnp.zeros_like, params) | {}
    params["position"] = {"embedding": position_table}
    params["norm"] = {"scale": jnp.ones(16), "bias": jnp.zeros(16)}
    out = model.apply({"params": params}, ids, 0 * ids)
    norm = encoders.nn.LayerNorm(epsilon=1e-12, use_fast_variance=False)
    expected = norm.apply({"params": params["norm"]}, position_table[jnp.asarray([2, 3, 1, 1])])
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


@pytest.mark.parametrize(
    "model_class, change, message",
    [
        ("GPT2ForSequenceClassification", {}, "has no Flax port"),
        ("BertForSequenceClassification", {"position_embedding_type": "relative_key"}, "only"),
        ("BertForSequenceClassification", {"hidden_act": "swish"}, "hidden_act='swish'"),
        ("AlbertForSequenceClassification", {"num_hidden_groups": 2}, "num_hidden_groups"),
    ],
)
def test_unported_settings_are_rejected(model_class, change, message):
    with pytest.raises(ValueError, match=message):
        encoders.EncoderConfig.from_hf(model_class, {**BASE, **change})


def test_config_json_round_trip():
    config = encoders.EncoderConfig.from_hf("XLMRobertaForSequenceClassification", BASE)
    assert encoders.EncoderConfig.from_json(config.to_json()) == config
    assert config.architecture == "roberta" and config.embedding_size == 16
