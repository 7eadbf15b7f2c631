"""Fluency, diversity and a second toxicity judge for sampled continuations.

A lower toxicity probability can come from better behaviour or from worse text, and a model can
learn to avoid what the scorer that labelled its training data fires on. So every RTP run also
reports (as DExperts, Liu et al. 2021, Table 1):

- distinct-n: unique n-grams / n-grams over one prompt's samples, words split on whitespace as in
  DExperts' code, averaged over prompts (a prompt whose samples hold no n-gram is left out);
- judge perplexity: exp(total NLL / total tokens) of the continuations given their raw prompts
  (no conditioning signal) under one judge model shared by every model compared
  (config.eval.judge). Token-weighted, so short continuations do not dominate; the interval
  resamples prompts;
- the same toxicity metrics under a second scorer that labelled no training data
  (config.eval.judge_scorer), with the two scorers' agreement: Spearman's rank correlation over
  every sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from toxjax.evaluation import intervals
from toxjax.inference.requests import LoglikelihoodFn, LoglikelihoodRequest

DISTINCT_ORDERS = (1, 2, 3)


def distinct_n(samples: Sequence[str], n: int) -> float:
    """Unique n-grams / n-grams over all `samples` (NaN when they hold no n-gram)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [
        tuple(words[i : i + n])
        for words in (sample.split() for sample in samples)
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else math.nan


def diversity(continuations: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """{"distinct_<n>": [num_prompts]}: each prompt's distinct-n over its samples."""
    return {
        f"distinct_{n}": np.array([distinct_n(s, n) for s in continuations], dtype=np.float64)
        for n in DISTINCT_ORDERS
    }


def judge_nll(
    judge: LoglikelihoodFn, prompts: Sequence[str], continuations: Sequence[Sequence[str]]
) -> dict[str, np.ndarray]:
    """Per prompt: summed NLL of its continuations given the prompt, and their token count.

    An empty continuation (EOS first) has no token to score and adds nothing; a continuation
    longer than the judge's window is scored on the tokens that fit after the prompt."""
    requests, owners = [], []
    for row, (prompt, samples) in enumerate(zip(prompts, continuations, strict=True)):
        for sample in samples:
            if sample:
                requests.append(LoglikelihoodRequest(prompt, sample, truncate=True))
                owners.append(row)
    nll = np.zeros(len(prompts), dtype=np.float64)
    tokens = np.zeros(len(prompts), dtype=np.int64)
    for row, result in zip(owners, judge(requests) if requests else [], strict=True):
        nll[row] -= result.logprob
        tokens[row] += result.num_tokens
    return {"judge_nll": nll, "judge_tokens": tokens}


def _perplexities(nll: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """exp(sum NLL / sum tokens) per resample row ([batch, n] arrays)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = tokens.sum(axis=-1)
        return np.where(total > 0, np.exp(nll.sum(axis=-1) / np.maximum(total, 1)), np.nan)


def perplexity_interval(nll: Any, tokens: Any, **options: Any) -> intervals.Interval:
    """Token-weighted judge perplexity over prompts, with its bootstrap interval."""
    nll, tokens = np.asarray(nll, np.float64), np.asarray(tokens, np.float64)
    return intervals.bootstrap(
        [nll, tokens], _perplexities, paired=True, vectorized=True, **options
    )


def _defined(values: np.ndarray) -> np.ndarray:
    return values[~np.isnan(values)]


def summary(per_prompt: Mapping[str, Any]) -> dict[str, Any]:
    """Intervals of what one run measured: distinct-n, and judge perplexity when judged."""
    out: dict[str, Any] = {}
    for n in DISTINCT_ORDERS:
        key = f"distinct_{n}"
        if key in per_prompt:
            values = _defined(np.asarray(per_prompt[key], np.float64))
            out[key] = intervals.mean_interval(values).to_dict()
    if "judge_nll" in per_prompt:
        out["judge_perplexity"] = perplexity_interval(
            per_prompt["judge_nll"], per_prompt["judge_tokens"]
        ).to_dict()
    return out


def agreement(primary: np.ndarray, second: np.ndarray) -> dict[str, float | int]:
    """Spearman's rank correlation of two scorers over the same samples."""
    a, b = np.ravel(primary), np.ravel(second)
    if a.shape != b.shape:
        raise ValueError(f"scores of {a.shape} and {b.shape} samples cannot be compared")
    keep = ~(np.isnan(a) | np.isnan(b))
    n = int(keep.sum())
    if n < 3 or np.all(a[keep] == a[keep][0]) or np.all(b[keep] == b[keep][0]):
        return {"spearman": math.nan, "n": n}
    return {"spearman": float(stats.spearmanr(a[keep], b[keep]).statistic), "n": n}


class Judges:
    """What measures a run's continuations besides its scorer: a judge model's log-likelihood
    (None: no judge perplexity) and a second toxicity scorer (None: no second judge)."""

    def __init__(self, model: LoglikelihoodFn | None = None, scorer: Any = None) -> None:
        self.model = model
        self.scorer = scorer

    @property
    def scorer_id(self) -> str | None:
        if self.scorer is None:
            return None
        return str(getattr(self.scorer, "scorer_id", "unnamed-score-fn"))

    def measure(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]], attribute: str
    ) -> dict[str, np.ndarray]:
        """Per-prompt distinct-n, judge NLL and tokens, and the second scorer's `attribute`
        scores [num_prompts, num_samples], of one chunk of prompts."""
        out = diversity(continuations)
        if self.model is not None:
            out.update(judge_nll(self.model, prompts, continuations))
        if self.scorer is not None:
            flat = [sample for samples in continuations for sample in samples]
            score = self.scorer.score if hasattr(self.scorer, "score") else self.scorer
            scored = score(flat)
            if attribute not in scored:
                raise KeyError(
                    f"judge scorer {self.scorer_id} returned {sorted(scored)}, not {attribute!r}"
                )
            values = np.asarray(scored[attribute], dtype=np.float64)
            out["judge_scores"] = values.reshape(len(continuations), -1)
        return out
