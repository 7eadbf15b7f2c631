"""Our Decoder and transformers' GPT-2 / Llama on the exported tensors compute the same logits.

Random tiny models (every weight, bias and norm scale random) of each architecture, written
with hf_layout + hf_checkpoint and loaded by transformers (float32): logits agree within 1e-4
on random tokens, on right-padded rows (attention_mask) and on packed rows (our segment ids
and restarting positions; transformers' position_ids, from which it builds the same
block-diagonal causal mask). The tensors map back to exactly our params.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import traverse_util

from toxjax.interop import hf_checkpoint, hf_layout
from toxjax.model import decoder
from toxjax.testing import tiny_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
STD = 0.2  # weights N(0, 0.2): logits of a few units, as in a trained model
CASES = {
    "gpt_scanned_tied": ("gpt", {}),
    "gpt_unscanned_untied": ("gpt", {"scan_layers": False, "tie_embeddings": False}),
    "llama_gqa_untied": ("llama", {}),
    "llama_bias_tied_head_dim": (
        "llama",
        {"use_bias": True, "tie_embeddings": True, "head_dim": 8},
    ),
}


def _write(directory: str, cfg: decoder.ModelConfig, flat: dict) -> None:
    sizes = {
        name: hf_checkpoint.tensor_bytes(shape, np.float32)
        for name, shape in hf_layout.hf_tensor_shapes(cfg).items()
    }
    config = hf_layout.hf_config(cfg, bos_id=1, eos_id=1, pad_id=0, dtype="float32")
    # A small shard size, so the sharded layout (index.json) is what transformers reads.
    hf_checkpoint.write_checkpoint(
        directory, config, hf_layout.export_tensors(flat, cfg), sizes, max_shard_bytes=200_000
    )


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(model config, our params, the transformers model loaded from the export)."""
    style, overrides = CASES[request.param]
    config = tiny_run.tiny_config(style, **overrides)
    cfg = decoder.ModelConfig.from_config(config.model)
    params = tiny_run.random_params(config, seed=len(request.param), std=STD)
    directory = str(tmp_path_factory.mktemp(request.param))
    _write(directory, cfg, traverse_util.flatten_dict(params))
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    return request.param, cfg, params, model, directory


def _ours(cfg, params, tokens, **kwargs) -> np.ndarray:
    return np.asarray(decoder.Decoder(cfg).apply({"params": params}, tokens, **kwargs))


def _theirs(model, tokens, **kwargs) -> np.ndarray:
    tensors = {k: torch.tensor(np.asarray(v), dtype=torch.long) for k, v in kwargs.items()}
    with torch.no_grad():
        out = model(torch.tensor(tokens, dtype=torch.long), use_cache=False, **tensors)
    return out.logits.numpy()


def test_logits_match_on_random_tokens(case):
    name, cfg, params, model, _ = case
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, cfg.max_len), np.int32)
    ours = _ours(cfg, params, tokens)
    delta = np.abs(ours - _theirs(model, tokens)).max()
    print(f"{name}: max |delta logit| {delta:.3g} (random tokens; logit std {ours.std():.2f})")
    assert delta < TOLERANCE


def test_logits_match_on_padded_rows(case):
    name, cfg, params, model, _ = case
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, 259, (3, 24), np.int32)
    lengths = np.array([24, 17, 5])
    mask = (np.arange(24)[None] < lengths[:, None]).astype(np.int32)
    tokens = tokens * mask
    ours = _ours(cfg, params, tokens, segment_ids=mask)
    theirs = _theirs(model, tokens, attention_mask=mask)
    delta = np.abs(ours - theirs)[mask.astype(bool)].max()
    print(f"{name}: max |delta logit| {delta:.3g} (right-padded rows)")
    assert delta < TOLERANCE


def test_logits_match_on_packed_rows(case):
    name, cfg, params, model, _ = case
    rng = np.random.default_rng(2)
    lengths = [(9, 7, 4), (12, 8, 0)]  # documents per row; the rest is padding (segment 0)
    width = 24
    segments = np.zeros((2, width), np.int32)
    positions = np.zeros((2, width), np.int32)
    for row, docs in enumerate(lengths):
        start = 0
        for index, length in enumerate(d for d in docs if d):
            segments[row, start : start + length] = index + 1
            positions[row, start : start + length] = np.arange(length)
            start += length
    tokens = rng.integers(3, 259, (2, width), np.int32) * (segments > 0)
    ours = _ours(cfg, params, tokens, segment_ids=segments, positions=positions)
    theirs = _theirs(model, tokens, position_ids=positions)
    delta = np.abs(ours - theirs)[segments > 0].max()
    print(f"{name}: max |delta logit| {delta:.3g} (packed rows)")
    assert delta < TOLERANCE


def test_export_maps_back_to_identical_params(case):
    _, cfg, params, _, directory = case
    checkpoint = hf_checkpoint.Checkpoint(directory)
    try:
        for path, leaf in traverse_util.flatten_dict(params).items():
            rebuilt = hf_layout.import_leaf(checkpoint.read, cfg, path)
            np.testing.assert_array_equal(rebuilt, leaf, err_msg="/".join(path))
    finally:
        checkpoint.close()


def test_transformers_config_implies_our_model_fields(case):
    _, cfg, _, _, directory = case
    implied = hf_layout.model_fields(hf_checkpoint.read_config(directory))
    for field, value in implied.items():
        assert getattr(cfg, field) == value, field


def test_the_export_of_a_bias_free_gpt_has_zero_biases_and_equal_logits(tmp_path):
    config = tiny_run.tiny_config("gpt", use_bias=False)
    cfg = decoder.ModelConfig.from_config(config.model)
    params = tiny_run.random_params(config)
    _write(str(tmp_path), cfg, traverse_util.flatten_dict(params))
    checkpoint = hf_checkpoint.Checkpoint(str(tmp_path))
    assert not np.any(checkpoint.read("transformer.h.0.attn.c_attn.bias"))
    assert not np.any(checkpoint.read("transformer.ln_f.bias"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 16), np.int32)
    assert np.abs(_ours(cfg, params, tokens) - _theirs(model.eval(), tokens)).max() < TOLERANCE


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"positions": "rope"}, "no transformers architecture"),
        ({"num_kv_heads": 2}, "num_kv_heads=2 != num_heads=4"),
        ({"head_dim": 8}, r"head_dim \* num_heads = 32 != d_model=64"),
    ],
)
def test_configs_without_an_architecture_are_refused(overrides, message):
    cfg = dataclasses.replace(decoder.ModelConfig(d_model=64, num_heads=4), **overrides)
    with pytest.raises(ValueError, match=message):
        hf_layout.architecture(cfg)


@pytest.mark.parametrize(
    "hf, message",
    [
        ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
        ({"model_type": "gpt2", "activation_function": "gelu"}, "activation_function='gelu'"),
        ({"model_type": "llama", "rope_scaling": {"rope_type": "yarn"}}, "rope type 'yarn'"),
        ({"model_type": "llama", "attention_bias": True}, "attention_bias != mlp_bias"),
    ],
)
def test_transformers_settings_we_do_not_compute_are_refused(hf, message):
    with pytest.raises(ValueError, match=message):
        hf_layout.model_fields(hf)


def test_scanned_leaves_are_read_per_layer():
    cfg = decoder.ModelConfig(d_model=8, num_heads=2, num_kv_heads=2, mlp_dim=16, vocab_size=16)
    stacked = np.arange(2 * 8 * 16, dtype=np.float32).reshape(2, 8, 16)
    flat = {("layers", "mlp", "wi", "kernel"): stacked}
    assert np.array_equal(hf_layout._layer_leaf(flat, cfg, 1, ("mlp", "wi", "kernel")), stacked[1])
    assert jax.tree.leaves(hf_layout.layer_names(cfg)) == ["layers"]
