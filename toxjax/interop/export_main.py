"""The export command: `python -m toxjax.interop.export_main` or `toxjax-export`.

    toxjax-export --workdir=WORKDIR --output_dir=DIR [--step=N]

Writes a run's checkpoint as a transformers model (toxjax.interop.export): safetensors, config,
tokenizer and a model card naming the strategy and its inference prefix.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from toxjax.commands import run_command

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory (checkpoints/).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the transformers model is written.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The run's config file; default WORKDIR/config.json (written by toxjax-train)."
)
_VOCABULARY = flags.DEFINE_string(
    "vocabulary",
    "",
    "SentencePiece .model path or 'bytes'; default the vocabulary of config.data.task (needed "
    "when that task is registered by code this command does not run).",
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "",
    ["", "base", "meda", "inst", "filter"],
    "The run's strategy, for the model card; default the task's.",
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16", "float16"], "Dtype of the written weights."
)
_MAX_SHARD_MB = flags.DEFINE_integer(
    "max_shard_mb", 2048, "Largest safetensors file (MB); bigger models are sharded."
)
flags.mark_flags_as_required(["workdir", "output_dir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from toxjax.interop import export  # imports JAX: after flag parsing

    info = export.export_run(
        _WORKDIR.value,
        _OUTPUT_DIR.value,
        step=_STEP.value,
        config=_CONFIG.value,
        vocabulary=_VOCABULARY.value,
        strategy=_STRATEGY.value,
        dtype=_DTYPE.value,
        max_shard_bytes=_MAX_SHARD_MB.value << 20,
    )
    summary = {key: info[key] for key in ("step", "strategy", "inference_prefix", "architecture")}
    print(json.dumps({"output_dir": _OUTPUT_DIR.value, **summary}))


def run() -> None:
    """Console-script entry point (toxjax-export)."""
    run_command(main, __name__)


if __name__ == "__main__":
    run()
