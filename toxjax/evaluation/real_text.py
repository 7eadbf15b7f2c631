"""Metrics on real, human-written text that work at any model size (the real-text study).

One call, `evaluate_real_text`, scores a model on the packaged held-out sets of
toxjax.datasets.real_corpus (or any files in the same layout), all through one LoglikelihoodFn:
    heldout_clean   perplexity of the same raw clean documents for every model
    cloze           LAMBADA-style last-word prediction on held-out book paragraphs
    steerability    how the strategy's non-toxic signal moves real RTP continuations
                    (toxjax.evaluation.steering)
    detection       generative-classifier AUC next to the yes/no prompted AUC, per task

Every model is scored as it is deployed: the strategy's inference prefix (non-toxic signal;
none for BASE and FILTER) is context, never scored, so every model scores the very same text
tokens and perplexities compare across strategies. Every figure carries a 95% bootstrap
interval over documents, examples or prompts (toxjax.evaluation.intervals).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from toxjax import fileio
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.evaluation import bias, intervals, rtp, steering, utility_tasks
from toxjax.inference.requests import LoglikelihoodFn, LoglikelihoodRequest, call_loglikelihood

DETECTION_TASKS = ("paradetox", "tweets", "wikipedia")


def data_paths(spec: str) -> dict[str, str]:
    """config.eval.real_text: "packaged" (toxjax/assets/real) or a directory of that layout."""
    from toxjax.datasets import real_corpus

    directory = real_corpus.PACKAGED_DIR if spec == "packaged" else spec
    paths = {
        "heldout_clean": fileio.join(directory, real_corpus.HELDOUT_CLEAN_FILE),
        "cloze": fileio.join(directory, real_corpus.CLOZE_FILE),
    }
    for task in DETECTION_TASKS:
        path = fileio.join(directory, real_corpus.detection_file(task))
        if fileio.exists(path):
            paths[f"detection_{task}"] = path
    missing = [path for path in paths.values() if not fileio.exists(path)]
    if missing:
        raise FileNotFoundError(f"config.eval.real_text={spec!r}: missing {missing}")
    return paths


def check_inputs(spec: str) -> dict[str, str]:
    """Reads every file of config.eval.real_text once, so a missing or malformed one fails
    (naming the file and line) before any model is trained; returns data_paths(spec)."""
    paths = data_paths(spec)
    read_texts(paths["heldout_clean"])
    read_cloze(paths["cloze"])
    for name, path in paths.items():
        if name.startswith("detection_"):
            read_labelled(path)
    return paths


def _report_skips(path: str, skipped: Counter[str]) -> dict[str, int]:
    for reason, count in skipped.items():
        logging.warning("%s: skipped %d records: %s", path, count, reason)
    return dict(skipped)


def read_labelled(path: str) -> tuple[list[bias.LabeledText], dict[str, int]]:
    """{"text", "label"} records; empty texts and labels outside {0, 1} are counted, skipped
    and reported (file and line in the log), never silently dropped."""
    examples, skipped = [], Counter()
    for line, record in fileio.read_jsonl(path):
        text, label = record.get("text"), record.get("label")
        if not isinstance(text, str) or not text.strip():
            skipped["empty or missing 'text'"] += 1
            logging.warning("%s:%d: field 'text' is empty or missing: skipped", path, line)
        elif isinstance(label, bool) or label not in (0, 1):
            skipped["'label' not 0 or 1"] += 1
            logging.warning("%s:%d: field 'label' is %r, not 0 or 1: skipped", path, line, label)
        else:
            examples.append(bias.LabeledText(text, int(label)))
    return examples, _report_skips(path, skipped)


def read_texts(path: str, field: str = "text") -> tuple[list[str], dict[str, int]]:
    """Non-empty `field` strings of a JSONL file, with a count of the empty ones."""
    texts, skipped = [], Counter()
    for line, record in fileio.read_jsonl(path):
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            skipped[f"empty or missing {field!r}"] += 1
            logging.warning("%s:%d: field %r is empty or missing: skipped", path, line, field)
        else:
            texts.append(value)
    return texts, _report_skips(path, skipped)


def read_cloze(path: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(context, target) pairs; records missing either are counted and skipped."""
    pairs, skipped = [], Counter()
    for line, record in fileio.read_jsonl(path):
        context, target = record.get("context"), record.get("target")
        if not all(isinstance(v, str) and v.strip() for v in (context, target)):
            skipped["empty or missing 'context' or 'target'"] += 1
            logging.warning("%s:%d: empty or missing 'context'/'target': skipped", path, line)
        else:
            pairs.append((context, target))
    return pairs, _report_skips(path, skipped)


def _conditions(strategy: Strategy, nontoxic: str, toxic: str) -> dict[str, str] | None:
    """{"nontoxic", "toxic", "none"} of a conditioned strategy; None for BASE/FILTER."""
    if strategy in (Strategy.BASE, Strategy.FILTER):
        return None
    return {"nontoxic": nontoxic, "toxic": toxic, "none": ""}


def signal_prefixes(strategy: Strategy, fmt: ConditioningFormat) -> dict[str, str] | None:
    """{"nontoxic", "toxic", "none"} prefixes of a conditioned strategy; None for BASE/FILTER."""
    return _conditions(strategy, fmt.inference_prefix(strategy), fmt.toxic_prefix(strategy))


def signal_suffixes(strategy: Strategy, fmt: ConditioningFormat) -> dict[str, str] | None:
    """The same conditions' suffixes (signals placed after the prompt, e.g. SEGMENT's)."""
    return _conditions(strategy, fmt.inference_suffix(strategy), fmt.toxic_suffix(strategy))


def heldout_clean(
    loglikelihood_fn: LoglikelihoodFn, documents: Sequence[str], prefix: str
) -> dict[str, Any]:
    """Token-level perplexity of raw documents given the deployment prefix, with a bootstrap
    interval over documents (the ratio of summed log-likelihoods to summed tokens)."""
    # Documents longer than the model's window are scored on their first window's tokens.
    requests = [LoglikelihoodRequest(prefix, text, truncate=True) for text in documents]
    results = call_loglikelihood(loglikelihood_fn, requests, task="heldout_clean")
    nll = -np.asarray([r.logprob for r in results], dtype=np.float64)
    tokens = np.asarray([r.num_tokens for r in results], dtype=np.float64)

    def perplexity(n: np.ndarray, t: np.ndarray) -> float:
        return math.exp(n.sum() / t.sum())

    interval = intervals.bootstrap((nll, tokens), perplexity, paired=True)
    return {
        "perplexity": interval.estimate,
        "perplexity_interval": interval.to_dict(),
        "num_documents": len(documents),
        "num_tokens": int(tokens.sum()),
        "prefix": prefix,
    }


def cloze(
    loglikelihood_fn: LoglikelihoodFn, pairs: Sequence[tuple[str, str]], prefix: str
) -> dict[str, Any]:
    """LAMBADA conventions (utility_tasks.lambada_metrics): acc = greedy decoding reproduces
    the whole target word; plus the target's perplexity."""
    requests = [LoglikelihoodRequest(prefix + context, " " + target) for context, target in pairs]
    results = call_loglikelihood(loglikelihood_fn, requests, task="cloze")
    metrics = utility_tasks.lambada_metrics(results)
    correct = np.asarray([float(r.is_greedy) for r in results])
    return {**metrics, "acc_interval": intervals.mean_interval(correct).to_dict()}


def detection(
    loglikelihood_fn: LoglikelihoodFn,
    examples: Sequence[bias.LabeledText],
    *,
    task: str,
    signals: Mapping[str, str] | None,
    prompted_config: bias.BiasPromptConfig,
) -> dict[str, Any]:
    """The yes/no prompted AUC (every strategy) and the generative-classifier AUC (strategies
    with signals), both with bootstrap intervals over examples."""
    labels = np.asarray([x.label for x in examples], dtype=np.int64)
    scores = bias.yes_no_scores(
        examples, loglikelihood_fn, question=bias.TOXIC_QUESTION, config=prompted_config, task=task
    )
    prompted = intervals.auc_interval(labels, scores)
    report: dict[str, Any] = {
        "task": task,
        "num_examples": len(examples),
        "num_positive": int(labels.sum()),
        "prompted_auc": prompted.estimate,
        "prompted_auc_interval": prompted.to_dict(),
        "generative": None,
    }
    if signals is not None:
        report["generative"] = steering.generative_classifier(
            examples,
            loglikelihood_fn,
            toxic_signal=signals["toxic"],
            nontoxic_signal=signals["nontoxic"],
            task=task,
        )
    return report


def evaluate_real_text(
    loglikelihood_fn: LoglikelihoodFn,
    *,
    strategy: Strategy,
    fmt: ConditioningFormat,
    prompts: Sequence[rtp.Prompt],
    paths: Mapping[str, str],
    limit: int | None = None,
    prompted_config: bias.BiasPromptConfig = bias.BiasPromptConfig(),
) -> dict[str, Any]:
    """Every real-text metric of one model. paths: "heldout_clean", "cloze" and
    "detection_<task>" files (toxjax.datasets.real_corpus layout); limit caps each set (and the
    steerability prompts)."""
    # Documents and detection texts have no prompt: the signal goes in front of them, as
    # training writes it (for SEGMENT, its control token heads the text).
    prefix = fmt.text_prefix(strategy)
    signals, suffixes = signal_prefixes(strategy, fmt), signal_suffixes(strategy, fmt)
    out: dict[str, Any] = {
        "strategy": strategy.value,
        "signals": signals,
        "suffixes": suffixes,
        "skipped": {},
    }
    documents, out["skipped"]["heldout_clean"] = read_texts(paths["heldout_clean"])
    out["heldout_clean"] = heldout_clean(loglikelihood_fn, documents[:limit], prefix)
    pairs, out["skipped"]["cloze"] = read_cloze(paths["cloze"])
    out["cloze"] = cloze(loglikelihood_fn, pairs[:limit], prefix)
    out["steerability"] = (
        None
        if signals is None
        else steering.steerability(
            prompts[:limit], loglikelihood_fn, signals=signals, suffixes=suffixes
        )
    )
    # The generative classifier's contexts: each signal in front of the text, as trained.
    text_signals = _conditions(
        strategy, fmt.text_prefix(strategy), fmt.text_prefix(strategy, toxic=True)
    )
    out["detection"] = {}
    for name, path in sorted(paths.items()):
        if not name.startswith("detection_"):
            continue
        task = name[len("detection_") :]
        examples, out["skipped"][name] = read_labelled(path)
        out["detection"][task] = detection(
            loglikelihood_fn,
            examples[:limit],
            task=task,
            signals=text_signals,
            prompted_config=prompted_config,
        )
    return out
