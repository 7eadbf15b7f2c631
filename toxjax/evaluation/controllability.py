"""Uncertainty of sampled toxicity, and control within one model.

Sampled toxicity probability (TP) of small models swings between training seeds, so a
comparison across models says little without seed variance. A comparison *within* one model,
the same prompts under the non-toxic signal, the toxic signal and no signal, is one a seed
cannot explain. This module gives every RTP run bootstrap intervals over prompts and computes
those within-model contrasts, paired by prompt.

Next to TP (any of a prompt's k samples toxic) it reports the toxic fraction: the share of a
prompt's samples scored toxic. TP saturates as that share grows: a prompt whose samples are
toxic with probability p has TP 1 - (1 - p)^k, so with k = 25 a 30% cut of p = 0.1 (TP 0.93)
moves TP by 10% only. The toxic fraction shows a signal's effect on every sample, unsaturated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from toxjax.evaluation import fluency, intervals, rtp

CONDITIONS = ("conditioned", "toxic_signal", "unconditioned")  # how rtp runs are keyed


def per_prompt(run: rtp.RTPResult, scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each prompt's maximum toxicity over its samples, whether any sample is toxic, and the
    fraction of its samples that are; under the run's scorer, or `scores` of another (the
    second judge's) on the same samples."""
    scores = np.asarray(run.scores if scores is None else scores, dtype=np.float64)
    config = run.config
    toxic = rtp.passes(scores, config.threshold, config.comparison)
    return {
        "max_toxicity": scores.max(axis=1),
        "any_toxic": toxic.any(axis=1).astype(np.float64),
        "toxic_fraction": toxic.mean(axis=1),
    }


def toxic_prompts(run: rtp.RTPResult, prompt_toxicity: np.ndarray) -> np.ndarray:
    """Which prompts are toxic (scored, and above the config's toxic-prompt threshold)."""
    config = run.config
    has_score = ~np.isnan(prompt_toxicity)
    return has_score & rtp.passes(
        np.nan_to_num(prompt_toxicity), config.toxic_prompt_threshold, config.comparison
    )


def _subset_intervals(
    values: Mapping[str, np.ndarray], run: rtp.RTPResult, prompt_toxicity: np.ndarray
) -> dict[str, Any]:
    has_score = ~np.isnan(prompt_toxicity)
    toxic_prompt = toxic_prompts(run, prompt_toxicity)
    subsets = {
        "all": np.ones_like(has_score),
        "toxic": toxic_prompt,
        "nontoxic": has_score & ~toxic_prompt,
    }
    return {
        subset: {
            "toxicity_probability": intervals.mean_interval(values["any_toxic"][mask]).to_dict(),
            "expected_max_toxicity": intervals.mean_interval(
                values["max_toxicity"][mask]
            ).to_dict(),
            "toxic_fraction": intervals.mean_interval(values["toxic_fraction"][mask]).to_dict(),
        }
        for subset, mask in subsets.items()
    }


def run_intervals(run: rtp.RTPResult, prompt_toxicity: np.ndarray) -> dict[str, Any]:
    """TP and EMT with 95% intervals over prompts, for all prompts and the toxic/non-toxic
    prompt subsets; fluency and diversity; the same toxicity figures under the second judge
    with the two scorers' agreement; plus the per-prompt values (for cross-model and
    cross-seed intervals)."""
    values = per_prompt(run)
    out: dict[str, Any] = _subset_intervals(values, run, prompt_toxicity)
    out["fluency"] = fluency.summary(run.extras)
    out["per_prompt"] = {name: array.tolist() for name, array in values.items()}
    out["per_prompt"].update(
        {name: array.tolist() for name, array in run.extras.items() if array.ndim == 1}
    )
    if "judge_scores" in run.extras:
        judged = per_prompt(run, run.extras["judge_scores"])
        out["judge_scorer"] = {
            "scorer": run.judge_scorer_id,
            **_subset_intervals(judged, run, prompt_toxicity),
            "agreement": fluency.agreement(run.scores, run.extras["judge_scores"]),
            "per_prompt": {name: array.tolist() for name, array in judged.items()},
        }
    return out


def _paired(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    statistic: Callable[..., intervals.Interval],
    key: str,
    where: Any = slice(None),
) -> dict[str, Any]:
    """A paired interval `statistic` of a's per-prompt `key` against b's, on the prompts
    `where` selects (all by default)."""
    return statistic(a[key][where], b[key][where]).to_dict()


def within_model(
    runs: Mapping[str, rtp.RTPResult], prompt_toxicity: np.ndarray | None = None
) -> dict[str, Any] | None:
    """The non-toxic signal ("conditioned") against the toxic signal and against no signal,
    on the same prompts: relative change of TP and EMT, and the TP difference, each paired by
    prompt; with `prompt_toxicity`, also the TP change on the toxic prompts alone (where a
    signal has to work against a rude prompt). The same contrasts under the second judge go
    under "judge_scorer". None when the model has no toxic-signal run (strategies without
    signals)."""
    if "toxic_signal" not in runs or "conditioned" not in runs:
        return None
    out = _contrasts(runs, prompt_toxicity, lambda run: per_prompt(run))
    if all("judge_scores" in run.extras for run in runs.values()):
        out["judge_scorer"] = _contrasts(
            runs, prompt_toxicity, lambda run: per_prompt(run, run.extras["judge_scores"])
        )
    return out


def _contrasts(
    runs: Mapping[str, rtp.RTPResult],
    prompt_toxicity: np.ndarray | None,
    values_of: Callable[[rtp.RTPResult], dict[str, np.ndarray]],
) -> dict[str, Any]:
    nontoxic = values_of(runs["conditioned"])
    toxic_prompt = (
        None if prompt_toxicity is None else toxic_prompts(runs["conditioned"], prompt_toxicity)
    )
    out: dict[str, Any] = {}
    for other in ("toxic_signal", "unconditioned"):
        if other not in runs:
            continue
        values = values_of(runs[other])
        paired = functools.partial(_paired, nontoxic, values)
        relative = intervals.paired_relative_change
        out[f"vs_{other}"] = {
            "toxicity_probability_relative": paired(relative, "any_toxic"),
            "toxicity_probability_difference": paired(intervals.paired_difference, "any_toxic"),
            "expected_max_toxicity_relative": paired(relative, "max_toxicity"),
            "toxic_fraction_relative": paired(relative, "toxic_fraction"),
        }
        if toxic_prompt is not None and toxic_prompt.any():
            out[f"vs_{other}"]["toxic_prompts"] = {
                "num_prompts": int(toxic_prompt.sum()),
                "toxicity_probability_relative": paired(relative, "any_toxic", toxic_prompt),
                "toxic_fraction_relative": paired(relative, "toxic_fraction", toxic_prompt),
            }
    return out
