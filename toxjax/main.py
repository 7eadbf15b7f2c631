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

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py); override fields with --config.x=y."
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, TensorBoard, data cache.")
flags.DEFINE_enum(
    "mode",
    "train",
    MODES,
    "train; eval (the latest checkpoint, or --eval_step / --checkpoint_dir); train_and_eval "
    "(evaluates every config.train.eval_every steps and at the end).",
)
flags.DEFINE_integer("eval_step", None, "--mode=eval: the checkpoint step; default the latest.")
flags.DEFINE_string(
    "checkpoint_dir", None, "--mode=eval: the run directory holding checkpoints; default WORKDIR."
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
    maybe_initialize_distributed(FLAGS.distributed)
    # Imported after jax.distributed.initialize(): nothing may touch the backend before it.
    from toxjax import train
    from toxjax.evaluation import loop

    config, workdir = FLAGS.config, FLAGS.workdir
    record_config(config, workdir)
    if FLAGS.mode == "eval":
        loop.evaluate_checkpoint(
            config, workdir, step=FLAGS.eval_step, checkpoint_dir=FLAGS.checkpoint_dir
        )
        return
    eval_fn = None
    if FLAGS.mode == "train_and_eval":
        eval_fn = lambda params, step: loop.evaluate(params, config, step=step, workdir=workdir)
    train.train_and_evaluate(config, workdir, eval_fn=eval_fn)


if __name__ == "__main__":
    app.run(main)
