"""The scoring command: `python -m toxjax.scoring` or `toxjax-score`.

Local runs score in this process (or, started on each worker of a multi-process JAX run, in
all of them together: multiprocess_job.py); any other --runner builds the same job as a Beam
pipeline, and the argv absl does not know is passed to Beam's PipelineOptions.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from toxjax import fileio
from toxjax.commands import run_command
from toxjax.distributed import maybe_initialize_distributed
from toxjax.scoring import corpus_summary, job, multiprocess_job
from toxjax.scoring.corpora import DEFAULT_MAX_DOC_CHARS, BadRecordError, InputError
from toxjax.scoring.run_manifest import HISTOGRAM, OutputConflictError
from toxjax.workdir_lock import WorkdirInUseError

_INPUT = flags.DEFINE_string(
    "input",
    None,
    "demo[:<num_docs>] | [jsonl:]<glob>[,<glob>] (.jsonl or .jsonl.gz) | [parquet:]<glob> "
    "(unprefixed when every glob ends in .parquet) | tfrecord:<glob> | "
    "tfds:<name>[/<config>]:<split>",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Directory (local or gs://) for shards and manifest."
)
_SCORER = flags.DEFINE_string(
    "scorer",
    "offline",
    "offline | detoxify:<model type or .ckpt> (torch) | detoxify-jax:<the same> (Flax).",
)
_RUNNER = flags.DEFINE_enum(
    "runner", "local", job.RUNNERS, "local (this process) or an Apache Beam runner."
)
flags.DEFINE_string("text_field", "text", "Field holding the text; dotted for nested JSON.")
flags.DEFINE_integer("records_per_shard", 1000, "Input records per output shard.")
flags.DEFINE_enum("on_bad_record", "error", job.ON_BAD_RECORD, "Stop on a bad record, or skip it.")
flags.DEFINE_integer("max_doc_chars", DEFAULT_MAX_DOC_CHARS, "Longer texts are bad.")
flags.DEFINE_integer("score_batch_size", 256, "Texts per scorer call.")
flags.DEFINE_float("threshold", 0.5, "The summary's 'toxic' threshold (score > threshold).")
flags.DEFINE_string("attribute", "toxicity", "The summary's main attribute.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir for tfds: inputs.")
flags.DEFINE_bool("tfds_download", False, "Let TFDS download and prepare a tfds: input.")
flags.DEFINE_string(
    "segment", "", "Also score segments: '' (no) | sentence | chunk:<chars> (SEGMENT strategy)."
)
flags.DEFINE_float("shard_delay_s", 0.0, "Testing only: pause before committing each shard.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ("auto", "true", "false"),
    "--runner=local: call jax.distributed.initialize() and split the shards over the "
    "processes ('auto': when the environment names several, as on a multi-worker TPU VM).",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an existing output of a different run.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["input", "output_dir"])
FLAGS = flags.FLAGS
PROG = "toxjax.scoring"


def main(argv: list[str]) -> None:
    pipeline_args = argv[1:]
    # Every ScoreOptions field has a flag of the same name.
    options = job.ScoreOptions(
        **{field.name: FLAGS[field.name].value for field in dataclasses.fields(job.ScoreOptions)}
    )
    args = (_INPUT.value, _OUTPUT_DIR.value, _SCORER.value)
    try:
        if _RUNNER.value == "local":
            if pipeline_args:
                raise app.UsageError(
                    f"unknown arguments {pipeline_args}; Beam pipeline options need --runner"
                )
            # Before anything touches JAX (a detoxify-jax scorer, the workdir lock).
            started = maybe_initialize_distributed(_DISTRIBUTED.value)
            score = multiprocess_job.score_corpus if started else job.score_corpus
            manifest = score(*args, options, overwrite=_OVERWRITE.value, progress=_PROGRESS.value)
        else:
            if _DISTRIBUTED.value == "true":
                raise app.UsageError("--distributed=true needs --runner=local")
            # Only a Beam run pays for importing Beam (about 2 s of every local run's start).
            from toxjax.scoring import beam_job

            manifest = beam_job.score_corpus_beam(
                *args,
                options,
                runner=_RUNNER.value,
                pipeline_args=pipeline_args,
                overwrite=_OVERWRITE.value,
            )
    except (
        BadRecordError,
        InputError,
        OutputConflictError,
        job.ConfigError,
        multiprocess_job.OtherProcessError,  # its own log names the error
        WorkdirInUseError,  # another run scores into --output_dir
        fileio.DiskFullError,
    ) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(corpus_summary.format_summary(manifest["summary"], _OUTPUT_DIR.value))
    print(f"Histogram: {fileio.join(_OUTPUT_DIR.value, HISTOGRAM)}")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flags; the rest of argv is left for Beam's PipelineOptions."""
    try:
        return FLAGS(argv, known_only=True)
    except flags.Error as e:
        print(f"{PROG}: flags error: {e}\nPass --help to see the flags.", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    """Console-script entry point (toxjax-score)."""
    run_command(main, __name__, flags_parser=_parse_flags)
