"""The vocabulary command: `python -m toxjax.data.vocab_main` or `toxjax-vocab`.

Trains a SentencePiece model on a scored directory (or any scoring input) with every
conditioning signal kept as one piece.
"""

from __future__ import annotations

import json

from absl import app, flags

from toxjax.commands import run_command
from toxjax.data import vocab
from toxjax.data.conditioning import ConditioningFormat

_INPUT = flags.DEFINE_string(
    "input", None, "Scored directory, or a toxjax.scoring input (demo, JSONL)."
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output prefix: writes PREFIX.model and PREFIX.vocab."
)
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 32000, "Number of pieces (incl. pad, eos, unk, bytes)."
)
_MODEL_TYPE = flags.DEFINE_enum(
    "model_type", "unigram", list(vocab.MODEL_TYPES), "SentencePiece algorithm."
)
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "Text field of raw (unscored) inputs.")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "Read at most this many documents; 0 = all.")
_CONDITIONING = flags.DEFINE_string(
    "conditioning", "{}", "JSON of ConditioningFormat fields whose signals must stay whole."
)
flags.mark_flags_as_required(["input", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unknown arguments {argv[1:]}")
    fmt = ConditioningFormat.from_dict(json.loads(_CONDITIONING.value))
    path = vocab.train_vocabulary(
        vocab.iter_texts(_INPUT.value, text_field=_TEXT_FIELD.value),
        _OUTPUT.value,
        vocab_size=_VOCAB_SIZE.value,
        fmt=fmt,
        model_type=_MODEL_TYPE.value,
        max_docs=_MAX_DOCS.value or None,
    )
    print(path)


def run() -> None:
    """Console-script entry point (toxjax-vocab)."""
    run_command(main, __name__)


if __name__ == "__main__":
    run()
