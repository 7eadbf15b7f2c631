"""The study command: `python -m toxjax.study` or `toxjax-study`."""

from __future__ import annotations

import logging as logging_lib
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from toxjax.commands import run_command
from toxjax.distributed import maybe_initialize_distributed
from toxjax.study import experiment

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Study config (toxjax/configs/demo.py, toxjax/configs/study_paper.py:<strategy>,<size>); "
    "override fields with --config.x=y.",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory: scored/, <strategy>/, results.*")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ("auto", "true", "false"),
    "Call jax.distributed.initialize() (see toxjax.main).",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show tqdm progress bars.")
_PREPARE_ONLY = flags.DEFINE_bool(
    "prepare_only",
    False,
    "Only score the corpus and build the vocabulary (run once before parallel "
    "per-strategy jobs that share the workdir).",
)
flags.mark_flags_as_required(["config", "workdir"])


class _DropLibraryInfo(logging_lib.Filter):
    """Drops INFO lines from orbax (dozens per checkpoint) so the study's progress stays
    readable; their warnings and errors still show."""

    def filter(self, record: logging_lib.LogRecord) -> bool:
        return record.levelno > logging_lib.INFO or "/orbax/" not in record.pathname


def quiet_checkpoint_logs() -> None:
    logging.get_absl_handler().addFilter(_DropLibraryInfo())


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected command-line arguments: {argv[1:]}")
    quiet_checkpoint_logs()
    maybe_initialize_distributed(_DISTRIBUTED.value)
    experiment.run_study(
        _CONFIG.value,
        _WORKDIR.value,
        progress=_PROGRESS.value,
        prepare_only=_PREPARE_ONLY.value,
    )


def run() -> None:
    """Console-script entry point (toxjax-study)."""
    run_command(main, __name__)
