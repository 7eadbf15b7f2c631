"""A finished (or running) training run read back: its config, vocabulary, conditioning, params.

The exporter and the lm-evaluation-harness adapter start from a workdir alone: the config is
the config.json that toxjax.main writes there (or a config given instead), the vocabulary is
the task's (or a SentencePiece .model / "bytes" given instead, for a task registered by code
this process does not run), the conditioning is the task's (`tasks.conditioning_for`, or a
strategy given instead), and the params are restored params-only, straight into a mesh over
this host's devices (FSDP over as many devices as divide d_model).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections

from toxjax import fileio
from toxjax.data import input_pipeline, tasks
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.model import decoder, partitioning
from toxjax.training import checkpoints

CONFIG_FILE = "config.json"  # written by toxjax.main.record_config
BYTES = "bytes"


@dataclasses.dataclass
class TrainedRun:
    """Everything a consumer of a run's checkpoint needs."""

    workdir: str
    config: ml_collections.ConfigDict
    model_config: decoder.ModelConfig
    vocabulary: Any
    strategy: Strategy
    fmt: ConditioningFormat
    mesh: jax.sharding.Mesh
    rules: partitioning.LogicalRules
    params: Any
    step: int

    @property
    def inference_prefix(self) -> str:
        return self.fmt.inference_prefix(self.strategy)

    @property
    def inference_suffix(self) -> str:
        """What goes after a prompt (SEGMENT's aligned token; "" for the paper's strategies)."""
        return self.fmt.inference_suffix(self.strategy)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's resolved config from WORKDIR/config.json."""
    path = fileio.join(workdir, CONFIG_FILE)
    if not fileio.exists(path):
        raise FileNotFoundError(
            f"{path} not found: a workdir written by toxjax.main holds it; otherwise give the "
            "run's config file"
        )
    return ml_collections.ConfigDict(fileio.read_json(path))


def resolve_vocabulary(task_name: str, spec: str = "") -> Any:
    """The task's vocabulary, or `spec`: "bytes" (seqio.ByteVocabulary) or a .model path."""
    import seqio

    if spec == BYTES:
        return seqio.ByteVocabulary()
    if spec:
        if not fileio.exists(spec):
            raise FileNotFoundError(f"vocabulary {spec!r}: no such SentencePiece model")
        return seqio.SentencePieceVocabulary(spec)
    try:
        task = input_pipeline.get_task(task_name)
    except ValueError as error:
        raise ValueError(
            f"{error}\nGive the vocabulary instead (a SentencePiece .model path or "
            f"{BYTES!r}) and the strategy the run was trained with"
        ) from None
    return task.output_features["targets"].vocabulary


def local_mesh(model_config: decoder.ModelConfig) -> jax.sharding.Mesh:
    """FSDP over the largest number of this host's devices that divides d_model."""
    devices = jax.local_devices()
    count = math.gcd(len(devices), model_config.d_model)
    mesh_config = {
        "ici": {"data": 1, "fsdp": count, "tensor": 1},
        "dcn": {"data": 1, "fsdp": 1, "tensor": 1},
    }
    return partitioning.create_mesh(mesh_config, devices[:count])


def load_run(
    workdir: str,
    *,
    step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
    vocabulary: str = "",
    strategy: str = "",
) -> TrainedRun:
    """Reads a run (see module docstring); `step` defaults to the latest checkpoint."""
    config = config if config is not None else load_config(workdir)
    model_config = decoder.ModelConfig.from_config(config.model)
    tasks.import_task_modules(config)
    vocab = resolve_vocabulary(config.data.task, vocabulary)
    if int(vocab.vocab_size) > model_config.vocab_size:
        raise ValueError(
            f"the vocabulary has {vocab.vocab_size} ids but config.model.vocab_size is "
            f"{model_config.vocab_size}: not this run's vocabulary"
        )
    chosen, fmt = tasks.resolve_conditioning(config.data.task, strategy)
    mesh = local_mesh(model_config)
    rules = partitioning.logical_rules(config)
    params, restored = checkpoints.restore_run_params(
        config, workdir, step=step, mesh=mesh, rules=rules
    )
    return TrainedRun(
        workdir=workdir,
        config=config,
        model_config=model_config,
        vocabulary=vocab,
        strategy=chosen,
        fmt=fmt,
        mesh=mesh,
        rules=rules,
        params=params,
        step=int(restored),
    )
