"""Detoxify checkpoint -> Flax params, cached next to the checkpoint as safetensors.

A Detoxify `.ckpt` is a torch file holding {"config": ..., "state_dict": ...} in transformers'
parameter names. It is read with `torch.load(weights_only=True)`, which unpickles only tensors
and plain containers: a checkpoint is code from the internet, and a weights-only load cannot
run any of it. Files that need more (custom classes pickled inside) fail with an error saying
so; `trust_pickle=True` then loads them as Detoxify does, for a file you trust.

The cache (`<checkpoint stem>.flax.safetensors`) holds the arrays and, in its metadata, the
source's sha256, the model class, the transformers config, the label names and where the
tokenizer lives, so later runs need neither torch nor the checkpoint's pickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from toxjax import fileio
from toxjax.scoring import encoders
from toxjax.scoring.encoders import EncoderConfig

CACHE_FORMAT = "toxjax-detoxify-flax/2"
CACHE_SUFFIX = ".flax.safetensors"
# Detoxify's renames of the Jigsaw label names (detoxify.detoxify.load_checkpoint).
LABEL_RENAMES = {
    "toxic": "toxicity",
    "identity_hate": "identity_attack",
    "severe_toxic": "severe_toxicity",
}
_BASE_PREFIX = {"bert": "bert", "roberta": "roberta", "albert": "albert"}
# Buffers some transformers versions saved with the weights; they carry no parameters.
_IGNORED = re.compile(r".*\.(position_ids|token_type_ids)$")


class ConversionError(ValueError):
    """A checkpoint that cannot become Flax params: names the file and the key."""


@dataclasses.dataclass(frozen=True)
class ConvertedModel:
    """Everything the JAX scorer needs: params, architecture, labels, tokenizer location."""

    params: dict[str, Any]
    config: EncoderConfig
    class_names: tuple[str, ...]
    tokenizer_name: str
    tokenizer_path: str
    source_sha256: str
    config_source: str = ""  # the huggingface_config_path the config came from ("" = none)


def cache_path(checkpoint_path: str) -> str:
    return checkpoint_path.removesuffix(".ckpt") + CACHE_SUFFIX


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with fileio.open_read(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str, *, trust_pickle: bool = False) -> Mapping[str, Any]:
    """The checkpoint dict, loaded weights-only unless the caller trusts the file."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        raise ConversionError(
            f"{path}: torch.load(weights_only=True) refused it, because the file pickles more "
            f"than tensors and plain containers ({str(error).splitlines()[0]}). If you trust "
            "the file, pass trust_pickle=True (make_scorer('detoxify-jax:...', "
            "trust_pickle=True)), which loads it as Detoxify itself does."
        ) from error
    if not isinstance(loaded, Mapping) or "config" not in loaded or "state_dict" not in loaded:
        found = sorted(loaded) if isinstance(loaded, Mapping) else type(loaded).__name__
        raise ConversionError(
            f"{path}: expected a dict with 'config' and 'state_dict', got {found}"
        )
    return loaded


def _module_map(architecture: str, num_layers: int) -> dict[str, tuple[str, ...]]:
    """transformers module name -> Flax param path; per-layer entries carry their index last."""
    base = _BASE_PREFIX[architecture]
    emb = f"{base}.embeddings"
    mapping: dict[str, tuple[str, ...]] = {
        f"{emb}.word_embeddings": ("embeddings", "word"),
        f"{emb}.position_embeddings": ("embeddings", "position"),
        f"{emb}.token_type_embeddings": ("embeddings", "token_type"),
        f"{emb}.LayerNorm": ("embeddings", "norm"),
    }
    if architecture == "albert":
        layer = f"{base}.encoder.albert_layer_groups.0.albert_layers.0"
        mapping.update(
            {
                f"{base}.encoder.embedding_hidden_mapping_in": ("embeddings", "projection"),
                f"{layer}.attention.query": ("shared_layer", "attention", "query"),
                f"{layer}.attention.key": ("shared_layer", "attention", "key"),
                f"{layer}.attention.value": ("shared_layer", "attention", "value"),
                f"{layer}.attention.dense": ("shared_layer", "attention", "output"),
                f"{layer}.attention.LayerNorm": ("shared_layer", "attention_norm"),
                f"{layer}.ffn": ("shared_layer", "intermediate"),
                f"{layer}.ffn_output": ("shared_layer", "output"),
                f"{layer}.full_layer_layer_norm": ("shared_layer", "output_norm"),
                f"{base}.pooler": ("pooler",),
                "classifier": ("classifier",),
            }
        )
        return mapping
    for i in range(num_layers):
        layer = f"{base}.encoder.layer.{i}"
        for hf_name, flax_path in (
            ("attention.self.query", ("attention", "query")),
            ("attention.self.key", ("attention", "key")),
            ("attention.self.value", ("attention", "value")),
            ("attention.output.dense", ("attention", "output")),
            ("attention.output.LayerNorm", ("attention_norm",)),
            ("intermediate.dense", ("intermediate",)),
            ("output.dense", ("output",)),
            ("output.LayerNorm", ("output_norm",)),
        ):
            mapping[f"{layer}.{hf_name}"] = ("layers", *flax_path, str(i))
    if architecture == "roberta":
        mapping["classifier.dense"] = ("head_dense",)
        mapping["classifier.out_proj"] = ("classifier",)
    else:
        mapping.update({f"{base}.pooler.dense": ("pooler",), "classifier": ("classifier",)})
    return mapping


def _leaf_name(module_path: tuple[str, ...], suffix: str) -> tuple[str, bool]:
    """Flax leaf name for a torch tensor suffix, and whether to transpose it."""
    kind = module_path[-1] if not module_path[-1].isdigit() else module_path[-2]
    if kind in ("word", "position", "token_type"):
        return "embedding", False
    if kind.endswith("norm"):
        return {"weight": "scale", "gamma": "scale", "bias": "bias", "beta": "bias"}[suffix], False
    return ("kernel", True) if suffix == "weight" else ("bias", False)


def convert_state_dict(
    state_dict: Mapping[str, Any], config: EncoderConfig, *, source: str
) -> dict[str, Any]:
    """transformers names -> the nested Flax params of encoders.SequenceClassifier."""
    modules = _module_map(config.architecture, config.num_hidden_layers)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unused = []
    for key, tensor in state_dict.items():
        module, _, suffix = key.rpartition(".")
        if module not in modules:
            if not _IGNORED.match(key):
                unused.append(key)
            continue
        array = tensor.detach().cpu().float().numpy() if hasattr(tensor, "detach") else tensor
        path = modules[module]
        leaf, transpose = _leaf_name(path, suffix)
        flat[(*path, leaf)] = np.ascontiguousarray(array.T if transpose else array, np.float32)
    if unused:  # transformers' from_pretrained ignores them too (e.g. an unused pooler)
        logging.warning(
            "%s: %d state_dict keys the classifier does not use, ignored: %s",
            source,
            len(unused),
            unused[:8],
        )
    params: dict[str, Any] = {}
    for path, array in flat.items():
        if path[-2].isdigit():  # a per-layer leaf: ("layers", ..., index, leaf)
            continue
        _set(params, path, array)
    if config.architecture != "albert":
        _stack_layers(params, flat, config.num_hidden_layers, source)
    return params


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _stack_layers(params: dict, flat: dict, num_layers: int, source: str) -> None:
    """Per-layer leaves stacked on a leading axis, the layout nn.scan expects."""
    groups: dict[tuple[str, ...], dict[int, np.ndarray]] = {}
    for path, array in flat.items():
        if path[-2].isdigit():
            groups.setdefault((*path[:-2], path[-1]), {})[int(path[-2])] = array
    for path, by_layer in groups.items():
        if sorted(by_layer) != list(range(num_layers)):
            missing = sorted(set(range(num_layers)) - set(by_layer))
            raise ConversionError(f"{source}: {'/'.join(path)} is missing for layers {missing}")
        _set(params, path, np.stack([by_layer[i] for i in range(num_layers)]))


def check_params(params: Mapping[str, Any], config: EncoderConfig, *, source: str) -> None:
    """Every parameter the Flax model needs exists with its shape: fails naming the first gap."""
    got = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    for key, shape in encoders.param_shapes(config).items():
        if key not in got:
            raise ConversionError(f"{source}: parameter {key} is missing from the checkpoint")
        if got[key] != shape:
            raise ConversionError(
                f"{source}: parameter {key} has shape {got[key]}, expected {shape}"
            )


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params -> {"a/b/c": array}, the safetensors key layout."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else key
        flat.update(flatten(value, name) if isinstance(value, Mapping) else {name: value})
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        _set(tree, tuple(name.split("/")), value)
    return tree


def hf_config(arch_args: Mapping[str, Any], huggingface_config_path: str | None) -> dict:
    """The transformers config the checkpoint was trained with, found as Detoxify finds it."""
    import transformers

    model_class = getattr(transformers, arch_args["model_name"])
    location = huggingface_config_path or arch_args["model_type"]
    config = model_class.config_class.from_pretrained(
        location, num_labels=int(arch_args["num_classes"])
    )
    return config.to_dict()


def convert_checkpoint(
    checkpoint_path: str,
    *,
    huggingface_config_path: str | None = None,
    trust_pickle: bool = False,
) -> ConvertedModel:
    """Reads a Detoxify checkpoint and returns its Flax form (no cache involved)."""
    loaded = read_checkpoint(checkpoint_path, trust_pickle=trust_pickle)
    try:
        arch_args = loaded["config"]["arch"]["args"]
        classes = loaded["config"]["dataset"]["args"]["classes"]
        model_name = arch_args["model_name"]
    except (KeyError, TypeError) as error:
        raise ConversionError(
            f"{checkpoint_path}: config lacks {error} (expected config.arch.args.model_name, "
            "model_type, num_classes and config.dataset.args.classes)"
        ) from error
    config = EncoderConfig.from_hf(model_name, hf_config(arch_args, huggingface_config_path))
    params = convert_state_dict(loaded["state_dict"], config, source=checkpoint_path)
    check_params(params, config, source=checkpoint_path)
    return ConvertedModel(
        params=params,
        config=config,
        class_names=tuple(LABEL_RENAMES.get(c, c) for c in classes),
        tokenizer_name=arch_args.get("tokenizer_name", "AutoTokenizer"),
        tokenizer_path=arch_args["model_type"],  # a huggingface_config_path is per run
        config_source=huggingface_config_path or "",
        source_sha256=file_sha256(checkpoint_path),
    )


def save_cache(path: str, model: ConvertedModel) -> None:
    from safetensors.numpy import save

    metadata = {
        "format": CACHE_FORMAT,
        "encoder_config": model.config.to_json(),
        "class_names": json.dumps(list(model.class_names)),
        "tokenizer_name": model.tokenizer_name,
        "tokenizer_path": model.tokenizer_path,
        "source_sha256": model.source_sha256,
        "config_source": model.config_source,
    }
    fileio.write_atomic(path, save(flatten(model.params), metadata=metadata))


def load_cache(path: str, source_sha256: str, config_source: str = "") -> ConvertedModel | None:
    """The cached conversion, or None when absent, of another format, of another file or
    converted with another huggingface_config_path."""
    from safetensors import safe_open
    from safetensors.numpy import load

    if not os.path.exists(path):
        return None
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
    if (
        metadata.get("format") != CACHE_FORMAT
        or metadata.get("source_sha256") != source_sha256
        or metadata.get("config_source", "") != config_source
    ):
        logging.info("%s is stale (other format, checkpoint or config): converting again", path)
        return None
    cached = ConvertedModel(
        params=unflatten(load(fileio.read_bytes(path))),
        config=EncoderConfig.from_json(metadata["encoder_config"]),
        class_names=tuple(json.loads(metadata["class_names"])),
        tokenizer_name=metadata["tokenizer_name"],
        tokenizer_path=metadata["tokenizer_path"],
        source_sha256=source_sha256,
        config_source=config_source,
    )
    check_params(cached.params, cached.config, source=path)  # a damaged cache fails here
    return cached


def load_converted(
    checkpoint_path: str,
    *,
    huggingface_config_path: str | None = None,
    trust_pickle: bool = False,
) -> ConvertedModel:
    """The Flax form of a checkpoint: from its cache when current, else converted and cached."""
    cached_at = cache_path(checkpoint_path)
    cached = load_cache(cached_at, file_sha256(checkpoint_path), huggingface_config_path or "")
    if cached is not None:
        return cached
    model = convert_checkpoint(
        checkpoint_path,
        huggingface_config_path=huggingface_config_path,
        trust_pickle=trust_pickle,
    )
    try:
        save_cache(cached_at, model)
        logging.info("cached the Flax conversion of %s at %s", checkpoint_path, cached_at)
    except OSError as error:  # A read-only checkpoint folder: convert on every load instead.
        logging.warning("could not cache the Flax conversion at %s: %s", cached_at, error)
    return model
