"""Rebuilds the packaged real-text data: `python -m toxjax.datasets.real_corpus_main
--source=RAW_DIR --output=toxjax/assets/real`, RAW_DIR a folder of the raw source files in the
layout toxjax.datasets.real_corpus describes."""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app, flags

from toxjax.commands import run_command
from toxjax.datasets import real_corpus

_SOURCE = flags.DEFINE_string(
    "source", None, "Folder of the raw sources, laid out as toxjax.datasets.real_corpus describes."
)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the packaged data.")
flags.mark_flags_as_required(["source", "output"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unknown arguments {argv[1:]}")
    manifest = real_corpus.build(_SOURCE.value, _OUTPUT.value)
    print(json.dumps({"counts": manifest["counts"], "skipped": manifest["skipped"]}, indent=2))


def run() -> None:
    """Console-script entry point (toxjax-real-corpus)."""
    run_command(main, __name__)


if __name__ == "__main__":
    run()
