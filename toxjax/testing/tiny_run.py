"""Tiny GPT- and Llama-style runs written to disk without training (interop tests).

`tiny_config(style)` is toxjax/configs/tiny.py at test size; `write_run` writes what toxjax.main and
a training run leave in a workdir - config.json and a checkpoint - with random params drawn on
host (no compilation): every weight, bias and norm scale is random, so a wrong mapping of
any of them shows.
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from toxjax import fileio
from toxjax.configs import tiny
from toxjax.training import checkpoints, train

STYLES = ("gpt", "llama")


def tiny_config(style: str = "gpt", **model: object) -> ml_collections.ConfigDict:
    """toxjax/configs/tiny.py shrunk (width 64, 2 layers, 64 tokens); "llama": RoPE, RMSNorm,
    SwiGLU, 4 query / 2 key-value heads, no biases, untied embeddings. Float32 compute."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    config = tiny.get_config()
    config.model.d_model = 64
    config.model.num_heads = 4
    config.model.num_kv_heads = 4
    config.model.mlp_dim = 128
    config.model.max_len = 64
    config.model.dtype = "float32"
    if style == "llama":
        config.model.positions = "rope"
        config.model.norm = "rmsnorm"
        config.model.activation = "swiglu"
        config.model.num_kv_heads = 2
        config.model.mlp_dim = 96
        config.model.use_bias = False
        config.model.tie_embeddings = False
    for field, value in model.items():
        config.model[field] = value
    config.data.seq_len = config.model.max_len
    config.data.global_batch_size = 8
    config.train.num_steps = 4
    config.train.log_every = 1
    config.train.async_checkpointing = False
    config.optim.warmup_steps = 0
    return config


def random_params(config: ml_collections.ConfigDict, seed: int = 0, std: float = 0.05) -> dict:
    """Host params of config.model's shapes: N(0, std) weights and biases, norm scales
    1 + N(0, 0.1)."""
    setup = train.create_setup(config)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in traverse_util.flatten_dict(setup.abstract_state.params).items():
        noise = rng.normal(size=leaf.shape)
        value = 1.0 + 0.1 * noise if path[-1] == "scale" else std * noise
        flat[path] = value.astype(leaf.dtype)
    return traverse_util.unflatten_dict(flat)


def write_run(
    workdir: str, config: ml_collections.ConfigDict, *, step: int = 1, seed: int = 0
) -> dict:
    """config.json and checkpoint `step` with random params (returned, on host)."""
    setup = train.create_setup(config)
    params = random_params(config, seed)
    state = train.TrainState(
        step=np.asarray(step, np.int32),
        params=params,
        opt_state=_zeros(setup.abstract_state.opt_state),
    )
    checkpointer = checkpoints.Checkpointer(
        fileio.join(workdir, checkpoints.CHECKPOINT_SUBDIR), async_save=False
    )
    meta = {"step": step, "model_config": setup.model_config_dict, "data": {}}
    checkpointer.save(step, state, meta, force=True)
    checkpointer.close()
    as_json = json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)
    fileio.write_atomic(fileio.join(workdir, "config.json"), as_json.encode())
    return params


def _zeros(tree: object) -> object:
    return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), tree)
