"""Warm start from transformers GPT-2 / Llama directories: exact, sharded, checked up front."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
import seqio
from flax import traverse_util

from toxjax.interop import hf_checkpoint, hf_import, hf_layout, hf_tokenizer
from toxjax.model import decoder, partitioning
from toxjax.testing import tiny_run
from toxjax.training import checkpoints, train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _export(directory: str, config: ml_collections.ConfigDict, params: dict, **hf_overrides):
    """Our params written as a transformers directory (what toxjax-export writes)."""
    cfg = decoder.ModelConfig.from_config(config.model)
    sizes = {
        n: hf_checkpoint.tensor_bytes(s, np.float32)
        for n, s in hf_layout.hf_tensor_shapes(cfg).items()
    }
    hf = {**hf_layout.hf_config(cfg, bos_id=1, eos_id=1, pad_id=0, dtype="float32"), **hf_overrides}
    tensors = hf_layout.export_tensors(traverse_util.flatten_dict(params), cfg)
    hf_checkpoint.write_checkpoint(directory, hf, tensors, sizes, max_shard_bytes=300_000)


def _abstract(config: ml_collections.ConfigDict):
    cfg = decoder.ModelConfig.from_config(config.model)
    mesh = partitioning.create_mesh(config.mesh)
    return partitioning.abstract_params(cfg, mesh, partitioning.logical_rules(config)), cfg


def _config(style: str, **model) -> ml_collections.ConfigDict:
    config = tiny_run.tiny_config(style, **model)
    config.mesh.ici = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
    return config


@pytest.mark.parametrize(
    "style, model",
    [("gpt", {}), ("gpt", {"scan_layers": False}), ("llama", {}), ("llama", {"use_bias": True})],
)
def test_import_of_an_export_gives_back_identical_sharded_params(tmp_path, style, model):
    config = _config(style, **model)
    params = tiny_run.random_params(config, seed=7)
    _export(str(tmp_path), config, params)
    abstract, cfg = _abstract(config)
    imported, step = hf_import.warm_start_params(str(tmp_path), abstract, config.model.to_dict())
    assert step == 0
    flat_abstract = traverse_util.flatten_dict(abstract)
    for path, leaf in traverse_util.flatten_dict(imported).items():
        assert leaf.sharding == flat_abstract[path].sharding, path
        assert leaf.dtype == flat_abstract[path].dtype
    expected = traverse_util.flatten_dict(params)
    got = traverse_util.flatten_dict(jax.device_get(imported))
    assert set(got) == set(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg="/".join(path))
    fields = hf_import.model_config_fields(str(tmp_path))
    assert all(getattr(cfg, name) == value for name, value in fields.items())


def test_a_smaller_transformers_vocabulary_is_padded_with_zero_rows(tmp_path):
    small = _config("llama", vocab_size=300)
    params = tiny_run.random_params(small, seed=1)
    _export(str(tmp_path), small, params)
    config = _config("llama")  # vocab_size 384
    abstract, _ = _abstract(config)
    imported, _ = hf_import.warm_start_params(str(tmp_path), abstract, config.model.to_dict())
    embedding = np.asarray(imported["token_embedding"])
    np.testing.assert_array_equal(embedding[:300], params["token_embedding"])
    assert not embedding[300:].any()
    head = np.asarray(imported["lm_head"])
    np.testing.assert_array_equal(head[:, :300], params["lm_head"])
    assert not head[:, 300:].any()


def _problems(directory: str, config: ml_collections.ConfigDict, task: str = "") -> str:
    checkpoint = hf_checkpoint.Checkpoint(directory)
    with pytest.raises(checkpoints.CheckpointMismatchError) as raised:
        hf_import.check_transformers_dir(checkpoint, config.model.to_dict(), task, "test")
    checkpoint.close()
    return str(raised.value)


def test_config_mismatches_are_listed_together(tmp_path):
    config = _config("llama")
    _export(
        str(tmp_path), config, tiny_run.random_params(config), vocab_size=512, rms_norm_eps=1e-6
    )
    message = _problems(str(tmp_path), config)
    assert "config.model.vocab_size: the transformers model has 512, config has 384" in message
    assert "more ids than the model embeds" in message
    assert "config.model.norm_eps: the transformers model has 1e-06" in message


def test_unsupported_models_are_named(tmp_path):
    config = _config("gpt")
    _export(str(tmp_path), config, tiny_run.random_params(config), model_type="mistral")
    assert "model_type 'mistral' is not supported" in _problems(str(tmp_path), config)


def test_missing_extra_and_nonzero_bias_tensors_are_named(tmp_path):
    config = _config("gpt")
    params = tiny_run.random_params(config)
    _export(str(tmp_path), config, params)
    no_bias = _config("gpt", use_bias=False)
    message = _problems(str(tmp_path), no_bias)
    assert (
        "transformer.h.0.attn.c_attn.bias: non-zero bias, but config.model.use_bias=False"
        in message
    )
    # Drop a tensor, add one.
    import safetensors.numpy

    path = os.path.join(tmp_path, "model.safetensors")
    index = os.path.join(tmp_path, hf_checkpoint.INDEX)
    tensors = {}
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    for file in files:
        tensors.update(safetensors.numpy.load_file(os.path.join(tmp_path, file)))
        os.remove(os.path.join(tmp_path, file))
    os.remove(index)
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    tensors["transformer.h.1.mlp.extra.weight"] = np.zeros(3, np.float32)
    safetensors.numpy.save_file(tensors, path)
    message = _problems(str(tmp_path), config)
    assert "transformer.h.1.mlp.c_fc.weight: missing (expected shape (64, 128))" in message
    assert "transformer.h.1.mlp.extra.weight: in the transformers model, not in ours" in message


def test_a_tokenizer_other_than_the_tasks_is_refused(tmp_path, tmp_path_factory):
    config = _config("gpt")
    config.data.task = "toxjax_demo_inst"  # byte vocabulary
    _export(str(tmp_path), config, tiny_run.random_params(config))
    from toxjax.data.vocab import iter_texts, train_vocabulary

    prefix = str(tmp_path_factory.mktemp("spm") / "spm")
    model = train_vocabulary(
        iter_texts("demo"), prefix, vocab_size=384, max_docs=200, progress=False
    )
    hf_tokenizer.save_tokenizer(
        seqio.SentencePieceVocabulary(model), str(tmp_path), model_max_length=64
    )
    message = _problems(str(tmp_path), config, config.data.task)
    assert "tokenizer.json encodes differently from the vocabulary of config.data.task" in message
    # The task's own tokenizer passes.
    hf_tokenizer.save_tokenizer(seqio.ByteVocabulary(), str(tmp_path), model_max_length=64)
    checkpoint = hf_checkpoint.Checkpoint(str(tmp_path))
    hf_import.check_transformers_dir(checkpoint, config.model.to_dict(), config.data.task, "test")


@pytest.fixture
def no_compilation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a function was compiled before the configuration error")

    monkeypatch.setattr(train.partitioning, "PartitionedFunction", refuse)


def test_train_fails_before_compiling_on_a_mismatched_transformers_model(tmp_path, no_compilation):
    source = _config("gpt", d_model=32)
    _export(str(tmp_path / "hf"), source, tiny_run.random_params(source))
    config = _config("gpt")
    config.data.task = "toxjax_demo_inst"
    config.train.warm_start_from = str(tmp_path / "hf")
    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"(?s)warm start.*d_model"):
        train.train_and_evaluate(
            config, str(tmp_path / "run"), warm_start_fn=hf_import.warm_starter(config)
        )


def _transformers_model(style: str, config: ml_collections.ConfigDict):
    """A random transformers model of config.model's shapes, built with transformers."""
    cfg = decoder.ModelConfig.from_config(config.model)
    torch.manual_seed(0)
    if style == "gpt":
        hf_config = transformers.GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.max_len,
            n_embd=cfg.d_model,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.mlp_dim,
            bos_token_id=1,
            eos_token_id=1,
        )
        return transformers.GPT2LMHeadModel(hf_config)
    hf_config = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_len,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
    )
    return transformers.LlamaForCausalLM(hf_config)


@pytest.mark.slow
@pytest.mark.parametrize("style", ["gpt", "llama"])
def test_continued_pretraining_of_a_transformers_model(tmp_path, style):
    """A random transformers model (built here, no download) continues training with INST."""
    config = tiny_run.tiny_config(style)
    config.data.task = "toxjax_demo_inst"
    config.train.num_steps = 8
    config.optim.learning_rate = 1e-3
    model = _transformers_model(style, config)
    model.save_pretrained(str(tmp_path / "hf"))
    config.train.warm_start_from = str(tmp_path / "hf")
    state = train.train_and_evaluate(
        config, str(tmp_path / "run"), warm_start_fn=hf_import.warm_starter(config)
    )
    with open(tmp_path / "run" / train.TRAIN_LOG) as f:
        losses = [json.loads(line)["loss"] for line in f]
    assert len(losses) == 8
    print(f"{style}: losses {np.round(losses, 3).tolist()}")
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05
    # The run started from the transformers weights, not from a fresh init.
    first = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    name = "transformer.wte.weight" if style == "gpt" else "model.embed_tokens.weight"
    # Eight Adam steps of at most ~1e-3 each; a fresh init would differ by ~0.1.
    assert np.abs(np.asarray(state.params["token_embedding"]) - first[name]).max() < 0.02
