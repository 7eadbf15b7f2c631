"""Zero-shot utility tasks scored by log-likelihood, with lm-evaluation-harness conventions.

Multiple choice: every choice becomes the continuation `" " + choice` of the task's context;
`acc` picks the choice with the highest summed log-likelihood, `acc_norm` the highest
log-likelihood divided by the choice's length in characters (`len(choice)`, the delimiter
space excluded, as the harness computes `completion_len`).

LAMBADA: context = the passage without its last (space-separated) word, continuation =
`" " + last word`; `acc` = greedy decoding reproduces every target token (`is_greedy`).
Two perplexities, because conventions differ:
- `perplexity`: per token, exp(-sum of target log-probs / sum of target tokens). Tokens are
  the engine's (bytes for `seqio.ByteVocabulary`), so it is comparable only across models
  sharing a vocabulary.
- `perplexity_per_target`: the harness' figure, exp(-mean over passages of the target's
  summed log-prob) - a per-word perplexity, independent of the tokenizer.

Prompts follow the harness task files: PIQA "Question: {goal}\\nAnswer:", ARC
"Question: {question}\\nAnswer:", BoolQ "{passage}\\nQuestion: {question}?\\nAnswer:" with
choices no/yes, HellaSwag "{activity_label}: {context}" with the harness' bracket clean-up
(TFDS stores ctx_a and ctx_b already joined, so ctx_b is not re-capitalised as in the harness),
Winogrande partial scoring (context = sentence up to the blank with the option, continuation =
the rest of the sentence; `acc` only, the continuation being the same for both options).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from toxjax.inference.requests import (
    LoglikelihoodFn,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    as_text,
    call_loglikelihood,
    iter_tfds_examples,
    nested_field,
    text_field,
)


@dataclasses.dataclass(frozen=True)
class MultipleChoiceExample:
    """One question: a request per choice, the gold index, and `acc_norm` lengths (or None)."""

    requests: tuple[LoglikelihoodRequest, ...]
    gold: int
    norm_lengths: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class UtilityTask:
    """A TFDS-backed task: where its data lives and how an example becomes requests."""

    name: str
    tfds_name: str
    split: str
    kind: str  # "multiple_choice" | "lambada"
    build: Callable[[Mapping[str, Any], str, int], Any]


def choice_example(
    context: str, choices: Sequence[str], gold: int, *, source: str, record: int
) -> MultipleChoiceExample:
    """The harness' multiple-choice layout: continuation " " + choice, acc_norm by len(choice)."""
    if not 0 <= gold < len(choices):
        raise ValueError(
            f"{source}: record {record}: label {gold} is not an index into its {len(choices)} "
            "choices (unlabelled split?)"
        )
    return MultipleChoiceExample(
        requests=tuple(LoglikelihoodRequest(context, " " + choice) for choice in choices),
        gold=int(gold),
        norm_lengths=tuple(max(len(choice), 1) for choice in choices),
    )


# ----- example builders, one per task (example: decoded TFDS numpy dict) -----


def _text(example: Mapping[str, Any], field: str, source: str, record: int) -> str:
    return text_field(example, field, source=source, record=record)


def _int(example: Mapping[str, Any], field: str, source: str, record: int) -> int:
    return int(nested_field(example, field, source=source, record=record))


def piqa_example(example: Mapping[str, Any], source: str, record: int) -> MultipleChoiceExample:
    goal = _text(example, "goal", source, record)
    choices = [_text(example, f, source, record) for f in ("sol1", "sol2")]
    gold = _int(example, "label", source, record)
    return choice_example(f"Question: {goal}\nAnswer:", choices, gold, source=source, record=record)


def hellaswag_preprocess(text: str) -> str:
    """The harness' clean-up of WikiHow artefacts ("[title]", "[step]", double spaces)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_example(
    example: Mapping[str, Any], source: str, record: int
) -> MultipleChoiceExample:
    label = _text(example, "activity_label", source, record)
    context = _text(example, "context", source, record)
    endings = nested_field(example, "endings", source=source, record=record)
    choices = [
        hellaswag_preprocess(as_text(e, source=source, record=record, field=f"endings[{i}]"))
        for i, e in enumerate(endings)
    ]
    gold = _int(example, "label", source, record)
    query = hellaswag_preprocess(f"{label}: {context}")
    return choice_example(query, choices, gold, source=source, record=record)


def winogrande_example(
    example: Mapping[str, Any], source: str, record: int
) -> MultipleChoiceExample:
    sentence = _text(example, "sentence", source, record)
    options = [_text(example, f, source, record) for f in ("option1", "option2")]
    gold = _int(example, "label", source, record)  # ClassLabel names ["1", "2"] -> 0 / 1
    if sentence.count("_") != 1:
        raise ValueError(
            f"{source}: record {record}: field 'sentence' must hold exactly one '_' blank, "
            f"got {sentence!r}"
        )
    if gold not in (0, 1):
        raise ValueError(f"{source}: record {record}: label {gold} is not 0 or 1")
    blank = sentence.index("_")
    continuation = " " + sentence[blank + 1 :].strip()
    requests = tuple(
        LoglikelihoodRequest(sentence[:blank] + option, continuation) for option in options
    )
    return MultipleChoiceExample(requests=requests, gold=gold, norm_lengths=None)


def arc_example(example: Mapping[str, Any], source: str, record: int) -> MultipleChoiceExample:
    question = _text(example, "question", source, record)
    texts = nested_field(example, "choices.text", source=source, record=record)
    labels = [int(x) for x in nested_field(example, "choices.label", source=source, record=record)]
    choices = [
        as_text(t, source=source, record=record, field=f"choices.text[{i}]")
        for i, t in enumerate(texts)
    ]
    answer = _int(example, "answerKey", source, record)
    if len(labels) != len(choices) or labels.count(answer) != 1:
        raise ValueError(
            f"{source}: record {record}: answerKey {answer} must match exactly one of the "
            f"choice labels {labels}"
        )
    context = f"Question: {question}\nAnswer:"
    return choice_example(context, choices, labels.index(answer), source=source, record=record)


def boolq_example(example: Mapping[str, Any], source: str, record: int) -> MultipleChoiceExample:
    passage = _text(example, "passage", source, record)
    question = _text(example, "question", source, record)
    answer = bool(nested_field(example, "answer", source=source, record=record))
    context = f"{passage}\nQuestion: {question}?\nAnswer:"
    return choice_example(context, ["no", "yes"], int(answer), source=source, record=record)


def lambada_request(example: Mapping[str, Any], source: str, record: int) -> LoglikelihoodRequest:
    passage = _text(example, "passage", source, record).strip()  # TFDS keeps the newline
    context, _, last_word = passage.rpartition(" ")
    if not context or not last_word:
        raise ValueError(
            f"{source}: record {record}: field 'passage' needs at least two words, got {passage!r}"
        )
    return LoglikelihoodRequest(context, " " + last_word)


TASKS: dict[str, UtilityTask] = {
    task.name: task
    for task in (
        UtilityTask("lambada", "lambada", "test", "lambada", lambada_request),
        UtilityTask("piqa", "piqa", "validation", "multiple_choice", piqa_example),
        UtilityTask("hellaswag", "hellaswag", "validation", "multiple_choice", hellaswag_example),
        UtilityTask(
            "winogrande", "winogrande", "validation", "multiple_choice", winogrande_example
        ),
        UtilityTask("arc_easy", "ai2_arc/ARC-Easy", "test", "multiple_choice", arc_example),
        UtilityTask("bool_q", "bool_q", "validation", "multiple_choice", boolq_example),
    )
}
DEFAULT_TASKS = ("lambada", "piqa", "hellaswag", "winogrande", "arc_easy")


# ----- metrics (pure) -----


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return math.nan, math.nan
    stderr = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    return float(values.mean()), stderr


def multiple_choice_metrics(
    examples: Sequence[MultipleChoiceExample], logprobs: Sequence[Sequence[float]]
) -> dict[str, float | int]:
    """acc (argmax log-likelihood) and, where every example has lengths, acc_norm."""
    if len(examples) != len(logprobs):
        raise ValueError(f"{len(examples)} examples but {len(logprobs)} log-prob lists")
    correct, correct_norm = [], []
    for example, lls in zip(examples, logprobs, strict=True):
        lls = np.asarray(lls, dtype=np.float64)
        correct.append(float(np.argmax(lls) == example.gold))
        if example.norm_lengths is not None:
            normalised = lls / np.asarray(example.norm_lengths, dtype=np.float64)
            correct_norm.append(float(np.argmax(normalised) == example.gold))
    metrics: dict[str, float | int] = {"num_examples": len(examples)}
    metrics["acc"], metrics["acc_stderr"] = _mean_and_stderr(np.asarray(correct))
    if examples and len(correct_norm) == len(examples):
        metrics["acc_norm"], metrics["acc_norm_stderr"] = _mean_and_stderr(np.asarray(correct_norm))
    return metrics


def lambada_metrics(results: Sequence[LoglikelihoodResult]) -> dict[str, float | int]:
    """acc from is_greedy; per-token and per-target perplexity (see module docstring)."""
    logprobs = np.asarray([r.logprob for r in results], dtype=np.float64)
    tokens = np.asarray([r.num_tokens for r in results], dtype=np.float64)
    metrics: dict[str, float | int] = {"num_examples": len(results)}
    metrics["acc"], metrics["acc_stderr"] = _mean_and_stderr(
        np.asarray([float(r.is_greedy) for r in results])
    )
    if results:
        metrics["perplexity"] = math.exp(-logprobs.sum() / tokens.sum())
        metrics["perplexity_per_target"] = math.exp(-logprobs.mean())
    else:
        metrics["perplexity"] = metrics["perplexity_per_target"] = math.nan
    return metrics


# ----- running -----


def score_multiple_choice(
    examples: Sequence[MultipleChoiceExample], loglikelihood_fn: LoglikelihoodFn, *, task: str
) -> dict[str, float | int]:
    """All choices of all examples in ONE engine call, then the metrics."""
    flat = [request for example in examples for request in example.requests]
    results = call_loglikelihood(loglikelihood_fn, flat, task=task)
    logprobs, start = [], 0
    for example in examples:
        count = len(example.requests)
        logprobs.append([r.logprob for r in results[start : start + count]])
        start += count
    return multiple_choice_metrics(examples, logprobs)


def build_examples(
    task: UtilityTask | str, examples: Iterable[Mapping[str, Any]], *, source: str | None = None
) -> list[Any]:
    """Example builder over decoded examples (TFDS numpy dicts or plain dicts)."""
    task = TASKS[task] if isinstance(task, str) else task
    source = source or f"tfds:{task.tfds_name}:{task.split}"
    return [task.build(example, source, index) for index, example in enumerate(examples)]


def evaluate_task(
    name: str,
    loglikelihood_fn: LoglikelihoodFn,
    *,
    limit: int | None = None,
    split: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Reads the first `limit` examples of the task's TFDS split and scores them."""
    if name not in TASKS:
        raise ValueError(f"unknown utility task {name!r}; known: {sorted(TASKS)}")
    task = TASKS[name]
    split = split or task.split
    source = f"tfds:{task.tfds_name}:{split}"
    raw = iter_tfds_examples(task.tfds_name, split, limit=limit, data_dir=data_dir)
    built = build_examples(task, raw, source=source)
    if task.kind == "lambada":
        metrics = lambada_metrics(call_loglikelihood(loglikelihood_fn, built, task=name))
    else:
        metrics = score_multiple_choice(built, loglikelihood_fn, task=name)
    return {"task": name, "source": source, **metrics}
