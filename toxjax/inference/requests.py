"""The model-facing interfaces every evaluation is written against, plus shared data plumbing.

The evaluations (RealToxicityPrompts, utility tasks, bias detection) never touch a model: they
turn examples into `LoglikelihoodRequest`s or prompts, hand them to an engine in ONE call (so
the engine can bucket and pack them as it likes), and compute metrics from what comes back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from absl import logging

from toxjax.tf_import import import_tensorflow


@dataclasses.dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score `continuation` given `context`; the model sees context + continuation as one text.

    truncate: a continuation longer than the engine's window is cut to the tokens that fit
    after the whole context (the result's num_tokens says how many were scored) instead of
    failing, and one that adds no token (merged into the context's last piece) scores 0 over
    0 tokens; for perplexity-style scoring of documents, never for answers that must be whole.
    """

    context: str
    continuation: str
    truncate: bool = False


@dataclasses.dataclass(frozen=True)
class LoglikelihoodResult:
    """Sum of the continuation's token log-probs, and whether greedy decoding reproduces it."""

    logprob: float
    is_greedy: bool
    num_tokens: int


class LoglikelihoodFn(Protocol):
    """One result per request, in request order."""

    def __call__(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]: ...


class GenerateFn(Protocol):
    """`num_samples` continuations (without the prompt) for every prompt, in prompt order.

    Prompts arrive already prefixed with the conditioning signal. Sampling settings
    (max new tokens, top-p, temperature) are bound into the engine, e.g. from
    `RTPConfig.sampling_kwargs()`.
    """

    def __call__(self, prompts: Sequence[str], num_samples: int) -> list[list[str]]: ...


class ScoreFn(Protocol):
    """`Scorer.score` (toxjax.scoring.scorers): texts in, {attribute: float array} out."""

    def __call__(self, texts: Sequence[str]) -> Mapping[str, np.ndarray]: ...


def call_loglikelihood(
    loglikelihood_fn: LoglikelihoodFn, requests: Sequence[LoglikelihoodRequest], *, task: str
) -> list[LoglikelihoodResult]:
    """Calls the engine once and checks its answer, so engine bugs fail here, named."""
    logging.info("%s: scoring %d log-likelihood requests", task, len(requests))
    results = list(loglikelihood_fn(list(requests)))
    if len(results) != len(requests):
        raise ValueError(
            f"{task}: loglikelihood_fn returned {len(results)} results for {len(requests)} requests"
        )
    for index, result in enumerate(results):
        if not isinstance(result, LoglikelihoodResult):
            raise TypeError(
                f"{task}: loglikelihood_fn result {index} is {type(result).__name__}, "
                "expected LoglikelihoodResult"
            )
        if math.isnan(result.logprob) or result.logprob > 1e-4:
            raise ValueError(
                f"{task}: loglikelihood_fn result {index} has logprob {result.logprob}, "
                "expected a log-probability (<= 0)"
            )
        if result.num_tokens < 1:
            raise ValueError(
                f"{task}: loglikelihood_fn result {index} scored {result.num_tokens} tokens for "
                f"continuation {requests[index].continuation!r}; expected >= 1"
            )
    return results


# ----- TFDS reading (shared by every TFDS-backed task) -----


def iter_tfds_examples(
    name: str,
    split: str,
    *,
    limit: int | None = None,
    data_dir: str | None = None,
    download: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yields numpy examples of a prepared TFDS dataset, at most `limit` of them, in order."""
    import_tensorflow()
    import tensorflow_datasets as tfds

    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as error:  # TFDS signals "not prepared" with an assertion.
        raise FileNotFoundError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared under "
            f"{builder.data_dir!r}: run `tfds build {name}` (manual downloads may apply) or pass "
            f"download=True / the data_dir that holds it. Cause: {error}"
        ) from error
    if limit is not None:
        dataset = dataset.take(limit)
    yield from tfds.as_numpy(dataset)


def record_label(record: int | str) -> str:
    """ "record 7" for an index, or a caller's own label such as "line 8"."""
    return f"record {record}" if isinstance(record, int) else str(record)


def as_text(value: Any, *, source: str, record: int | str, field: str) -> str:
    """Decodes a TFDS text feature (bytes) or passes a str through, with a named error."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{source}: {record_label(record)}: field {field!r} is not UTF-8"
            ) from error
    if isinstance(value, str):
        return value
    raise ValueError(
        f"{source}: {record_label(record)}: field {field!r} must be text, "
        f"got {type(value).__name__}"
    )


def nested_field(example: Mapping[str, Any], path: str, *, source: str, record: int | str) -> Any:
    """`example['a']['b']` for path 'a.b', with an error naming the missing field."""
    value: Any = example
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ValueError(f"{source}: {record_label(record)}: missing field {path!r}")
        value = value[part]
    return value


def text_field(example: Mapping[str, Any], path: str, *, source: str, record: int | str) -> str:
    """`nested_field` decoded as text."""
    value = nested_field(example, path, source=source, record=record)
    return as_text(value, source=source, record=record, field=path)
