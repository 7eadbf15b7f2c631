"""Rebuilds the demo prompt file: `python -m toxjax.scoring.prompt_file_main --output=...`."""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from toxjax.commands import run_command
from toxjax.scoring import prompt_file

_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSONL file.")
_SCORER = flags.DEFINE_string("scorer", "offline", "toxjax.scoring.scorer_specs.make_scorer spec.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", prompt_file.DEFAULT_NUM_PROMPTS, "Prompts.")
_SEED = flags.DEFINE_integer("seed", prompt_file.PROMPT_SEED, "Held-out corpus seed.")
flags.mark_flags_as_required(["output"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unknown arguments {argv[1:]}")
    count = prompt_file.write_demo_prompts(
        _OUTPUT.value, _SCORER.value, num_prompts=_NUM_PROMPTS.value, seed=_SEED.value
    )
    print(f"wrote {count} prompts to {_OUTPUT.value}")


def run() -> None:
    """Console-script entry point (toxjax-demo-prompts)."""
    run_command(main, __name__)


if __name__ == "__main__":
    run()
