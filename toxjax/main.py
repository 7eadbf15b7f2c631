"""Entry point: python -m toxjax.main --config=toxjax/configs/tiny.py --workdir=DIR --mode=train.

Thin on purpose (lm1b shape): flags, multi-process start-up, the workdir's lock
(toxjax.workdir_lock), config record, then train.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from toxjax import fileio, workdir_lock
from toxjax.commands import run_command
from toxjax.distributed import maybe_initialize_distributed

MODES = ("train", "eval", "train_and_eval")

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file (toxjax/configs/*.py); override fields with --config.x=y.",
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs, TensorBoard, data cache."
)
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    MODES,
    "train; eval (the latest checkpoint, or --eval_step / --checkpoint_dir); train_and_eval "
    "(evaluates every config.train.eval_every steps and at the end).",
)
_EVAL_STEP = flags.DEFINE_integer(
    "eval_step", None, "--mode=eval: the checkpoint step; default the latest."
)
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "--mode=eval: the run directory holding checkpoints; default WORKDIR."
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ("auto", "true", "false"),
    "Call jax.distributed.initialize(): 'auto' does so when the environment names several "
    "processes (multi-worker TPU VM, SLURM, JAX_COORDINATOR_ADDRESS, Open MPI).",
)
flags.mark_flags_as_required(["config", "workdir"])


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


def train_or_evaluate(config, workdir: str, mode: str) -> None:
    """The run itself, with WORKDIR's lock held."""
    # Imported after jax.distributed.initialize(): nothing may touch the backend before it.
    from toxjax.evaluation.evaluator import Evaluator
    from toxjax.interop import hf_import, judge
    from toxjax.training import train

    record_config(config, workdir)
    if mode == "eval":
        Evaluator(config, workdir, judge_loader=judge.load_judge).evaluate_checkpoint(
            step=_EVAL_STEP.value, checkpoint_dir=_CHECKPOINT_DIR.value
        )
        return
    # One evaluator for the whole run, built before training so that bad prompt or label
    # files fail first; its compiled engines are reused at every eval step.
    evaluator = (
        Evaluator(config, workdir, judge_loader=judge.load_judge)
        if mode == "train_and_eval"
        else None
    )
    train.train_and_evaluate(
        config, workdir, eval_fn=evaluator, warm_start_fn=hf_import.warm_starter(config)
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected command-line arguments: {argv[1:]}")
    maybe_initialize_distributed(_DISTRIBUTED.value)
    # One run per workdir: a second one is refused before it writes anything.
    with workdir_lock.hold(_WORKDIR.value):
        train_or_evaluate(_CONFIG.value, _WORKDIR.value, _MODE.value)


def run() -> None:
    """Console-script entry point (toxjax-train)."""
    run_command(main, __name__)


if __name__ == "__main__":
    run()
