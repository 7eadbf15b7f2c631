"""Entry point: python -m toxjax.main --config=configs/tiny.py --workdir=DIR --mode=train.

Thin on purpose (lm1b shape): flags, multi-process start-up, config record, then train.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from toxjax import fileio

MODES = ("train", "eval", "train_and_eval")
IMPLEMENTED_MODES = ("train",)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py); override fields with --config.x=y."
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, TensorBoard, data cache.")
flags.DEFINE_enum(
    "mode",
    "train",
    MODES,
    "What to run. Only 'train' exists so far; evaluation lands with the evaluation issue.",
)
flags.DEFINE_enum(
    "distributed",
    "auto",
    ("auto", "true", "false"),
    "Call jax.distributed.initialize(): 'auto' does so when the environment names several "
    "processes (multi-worker TPU VM, SLURM, JAX_COORDINATOR_ADDRESS, Open MPI).",
)
flags.mark_flags_as_required(["config", "workdir"])


def is_multi_process_environment(environ: Mapping[str, str] | None = None) -> bool:
    """True where jax.distributed.initialize() can auto-detect several processes."""
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES"):
        if int(env.get(count_var, "1") or "1") > 1:
            return True
    hostnames = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hostnames.split(",") if h.strip()]) > 1


def maybe_initialize_distributed(mode: str, environ: Mapping[str, str] | None = None) -> bool:
    """Start JAX's multi-process runtime (must precede any other JAX call); True if started."""
    if mode == "false" or (mode == "auto" and not is_multi_process_environment(environ)):
        return False
    jax.distributed.initialize()
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def record_config(config, workdir: str) -> None:
    """The resolved config, printed and saved (config.json / config.txt) by process 0."""
    text = str(config)
    logging.info("Resolved config:\n%s", text)
    if jax.process_index() != 0:
        return
    fileio.make_dirs(workdir)
    fileio.write_atomic(fileio.join(workdir, "config.txt"), text.encode())
    as_json = json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)
    fileio.write_atomic(fileio.join(workdir, "config.json"), as_json.encode())


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected command-line arguments: {argv[1:]}")
    if FLAGS.mode not in IMPLEMENTED_MODES:
        raise app.UsageError(
            f"--mode={FLAGS.mode} is not available yet: evaluation lands with the evaluation "
            f"issue; use --mode=train"
        )
    maybe_initialize_distributed(FLAGS.distributed)
    # Imported after jax.distributed.initialize(): nothing may touch the backend before it.
    from toxjax import train

    config = FLAGS.config
    record_config(config, FLAGS.workdir)
    train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
