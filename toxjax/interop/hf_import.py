"""Warm start from a transformers GPT-2 or Llama directory, read straight into the sharded state.

`config.train.warm_start_from` names either another toxjax run (orbax, as before) or a
transformers model directory (config.json with a model_type, safetensors weights). For the
latter, before anything is compiled or read into memory:
- the transformers config must imply the configured model (every parameter-shaping field,
  plus norm_eps and rope_theta, which change the function computed); a smaller transformers
  vocabulary is accepted and padded with zero rows up to config.model.vocab_size (the usual
  Megatron-style padding), a larger one is an error;
- every expected tensor must be there with the expected shape, and nothing else (buffers
  aside; a GPT-2's biases may be absent from a use_bias=False model only if they are zero);
- a tokenizer.json next to the weights must encode the task's signal strings and a probe text
  to the ids the task's vocabulary gives (continued pretraining needs the same tokenizer).
All problems are reported together as one CheckpointMismatchError. Then each param leaf is
built on host from its tensors (hf_layout.import_leaf) and placed with
jax.make_array_from_callback into its sharding: nothing is whole on a device, and the host
holds one leaf at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from toxjax import fileio
from toxjax.interop import hf_checkpoint, hf_layout, hf_tokenizer
from toxjax.model import decoder
from toxjax.training import checkpoints

# Fields compared beyond checkpoints.PARAMETER_FIELDS: they change outputs, not shapes.
NUMERIC_FIELDS = ("norm_eps", "rope_theta")
_PROBE = "A probe sentence, with digits 0.25 and\nnew lines.  Double  spaces too."


def is_transformers_dir(path: str) -> bool:
    """True when `path` holds a transformers config.json (one with a model_type)."""
    try:
        config = hf_checkpoint.read_config(path)
    except (OSError, ValueError):
        return False
    return config is not None and "model_type" in config


def _config_problems(hf_config: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    try:
        implied = hf_layout.model_fields(hf_config)
    except ValueError as error:
        return [str(error)]
    problems = []
    for field, value in implied.items():
        mine = ours.get(field)
        if field not in (*checkpoints.PARAMETER_FIELDS, *NUMERIC_FIELDS) or mine == value:
            continue
        if field == "vocab_size" and value < mine:
            logging.warning(
                "transformers vocabulary %d < config.model.vocab_size %d: rows %d.. are zero",
                value,
                mine,
                value,
            )
            continue
        if field == "max_len" and ours.get("positions") == "rope":
            continue  # no position table: a different context length changes no shape
        if field == "use_bias" and hf_config.get("model_type") == hf_layout.GPT2:
            continue  # GPT-2 always has biases: a use_bias=False model takes them if zero
        hint = " (more ids than the model embeds)" if field == "vocab_size" else ""
        problems.append(
            f"config.model.{field}: the transformers model has {value!r}, config has "
            f"{mine!r}{hint}; set --config.model.{field}={value}"
        )
    return problems


def _resolve(checkpoint: hf_checkpoint.Checkpoint, name: str) -> str | None:
    """The checkpoint's name for `name` (GPT-2 checkpoints may omit "transformer.")."""
    for candidate in (name, name.removeprefix("transformer.")):
        if candidate in checkpoint.shapes:
            return candidate
    return None


def _tensor_problems(
    checkpoint: hf_checkpoint.Checkpoint, cfg: decoder.ModelConfig, hf_vocab: int
) -> list[str]:
    """Missing, misshapen and unexpected tensors (zero biases a use_bias=False model lacks
    are fine)."""
    expected = hf_layout.hf_tensor_shapes(cfg)
    problems, seen = [], set()
    for name, shape in expected.items():
        if name in ("transformer.wte.weight", "model.embed_tokens.weight", "lm_head.weight"):
            shape = (hf_vocab, *shape[1:])
        found = _resolve(checkpoint, name)
        if found is None:
            if not _is_missing_bias(cfg, name):
                problems.append(f"{name}: missing (expected shape {shape})")
            continue
        seen.add(found)
        if checkpoint.shapes[found] != shape:
            problems.append(f"{name}: shape {checkpoint.shapes[found]}, expected {shape}")
        elif _is_missing_bias(cfg, name) and np.any(checkpoint.read(found) != 0):
            problems.append(f"{name}: non-zero bias, but config.model.use_bias=False")
    for name in sorted(set(checkpoint.shapes) - seen):
        if hf_checkpoint.is_buffer(name) or (name == "lm_head.weight" and cfg.tie_embeddings):
            continue
        problems.append(f"{name}: in the transformers model, not in ours")
    return problems


def _is_missing_bias(cfg: decoder.ModelConfig, name: str) -> bool:
    return not cfg.use_bias and name.endswith(".bias")


def _tokenizer_problems(directory: str, task_name: str) -> list[str]:
    """A tokenizer.json beside the weights must encode like the task's vocabulary."""
    path = fileio.join(directory, "tokenizer.json")
    if not task_name or not fileio.exists(path):
        return []
    from tokenizers import Tokenizer

    from toxjax.data import input_pipeline, tasks

    vocabulary = input_pipeline.get_task(task_name).output_features["targets"].vocabulary
    try:
        strategy, fmt = tasks.conditioning_for(task_name)
        texts = [*fmt.signal_strings(), fmt.inference_prefix(strategy) + _PROBE]
    except ValueError:
        texts = []
    tokenizer = Tokenizer.from_str(fileio.read_text(path))
    mismatches = hf_tokenizer.encoding_mismatches(vocabulary, tokenizer, [*texts, _PROBE])
    if not mismatches:
        return []
    return [
        f"tokenizer.json encodes differently from the vocabulary of config.data.task="
        f"{task_name!r} (register a task whose vocabulary is the checkpoint's tokenizer):\n    "
        + "\n    ".join(mismatches)
    ]


def check_transformers_dir(
    checkpoint: hf_checkpoint.Checkpoint, model_config: Mapping[str, Any], task_name: str, what: str
) -> None:
    """CheckpointMismatchError listing every problem (see module docstring)."""
    cfg = decoder.ModelConfig.from_config(model_config)
    problems = _config_problems(checkpoint.config, dataclasses.asdict(cfg))  # head_dim resolved
    if not problems:
        try:
            hf_layout.architecture(cfg)
            hf_vocab = int(checkpoint.config["vocab_size"])
            problems += _tensor_problems(checkpoint, cfg, hf_vocab)
        except ValueError as error:
            problems.append(str(error))
    problems += _tokenizer_problems(checkpoint.directory, task_name)
    if problems:
        raise checkpoints.CheckpointMismatchError(
            f"transformers model {checkpoint.directory} ({what}) does not match the configured "
            "model:\n- " + "\n- ".join(problems)
        )


def restore_transformers_params(
    path: str,
    abstract_params: Any,
    model_config: Mapping[str, Any],
    *,
    task_name: str = "",
    what: str = "warm start",
) -> Any:
    """Params of a transformers GPT-2/Llama directory, checked, in abstract_params' shardings."""
    checkpoint = hf_checkpoint.Checkpoint(path)
    try:
        check_transformers_dir(checkpoint, model_config, task_name, what)
        cfg = decoder.ModelConfig.from_config(model_config)

        def read(name: str, part: int, parts: int) -> np.ndarray:
            return checkpoint.read(_resolve(checkpoint, name), part, parts)

        placed = {}
        for leaf_path, abstract in traverse_util.flatten_dict(abstract_params).items():
            host = hf_layout.import_leaf(read, cfg, leaf_path)
            host = _pad_rows(host, abstract.shape, leaf_path).astype(abstract.dtype)
            placed[leaf_path] = jax.make_array_from_callback(
                abstract.shape, abstract.sharding, lambda index, host=host: host[index]
            )
    finally:
        checkpoint.close()
    logging.info("Read %d params (%s) from transformers model %s", len(placed), what, path)
    return traverse_util.unflatten_dict(placed)


def _pad_rows(host: np.ndarray, shape: tuple[int, ...], path: tuple[str, ...]) -> np.ndarray:
    """Zero vocabulary rows (columns of lm_head) up to the configured vocab_size."""
    if tuple(host.shape) == tuple(shape):
        return host
    axis = 1 if path[-1] == "lm_head" else 0
    widths = [(0, 0)] * host.ndim
    widths[axis] = (0, shape[axis] - host.shape[axis])
    return np.pad(host, widths)


def warm_start_params(
    path: str, abstract_params: Any, model_config: Mapping[str, Any], *, task_name: str = ""
) -> tuple[Any, int]:
    """(params, source step) for config.train.warm_start_from: a transformers directory (step
    0) or another toxjax run (checkpoints.restore_params_for_warm_start)."""
    if not is_transformers_dir(path):
        return checkpoints.restore_params_for_warm_start(path, abstract_params, model_config)
    what = f"warm start from config.train.warm_start_from={path!r}"
    params = restore_transformers_params(
        path, abstract_params, dict(model_config), task_name=task_name, what=what
    )
    return params, 0


def warm_starter(config: ml_collections.ConfigDict) -> Callable[[Any, dict[str, Any]], Any] | None:
    """train.train_and_evaluate's warm_start_fn for config.train.warm_start_from (None if unset)."""
    path = config.train.get("warm_start_from", "")
    if not path:
        return None

    def warm_start(abstract_params: Any, model_config: dict[str, Any]) -> Any:
        params, _ = warm_start_params(
            path, abstract_params, model_config, task_name=config.data.task
        )
        return params

    return warm_start


def model_config_fields(path: str) -> dict[str, Any]:
    """config.model fields a transformers directory implies (to write a config for it)."""
    config = hf_checkpoint.read_config(path)
    if config is None:
        raise FileNotFoundError(f"{path}: no config.json")
    fields = hf_layout.model_fields(config)
    known = {field.name for field in dataclasses.fields(decoder.ModelConfig)}
    return {name: value for name, value in fields.items() if name in known}
