"""Scorer specs: the one string that names a scorer in flags and configs.

offline                          alt-profanity-check, shipped in its wheel (no network)
detoxify:<type or .ckpt path>    Detoxify in PyTorch (its own model and tokenizer)
detoxify-jax:<type or .ckpt>     the same checkpoint converted to Flax, sharded over devices
heldout-judge                    a classifier fit on the packaged judge_train.jsonl: human labels
                                 that labelled no training data (toxjax.scoring.judge_classifier)
heldout-judge:<labels.jsonl>     the same fit on your own {"text", "label": 0|1} JSON lines
"""

from __future__ import annotations

from toxjax.scoring import detoxify_jax, judge_classifier, scorers

OFFLINE_SPEC = "offline"
DETOXIFY_PREFIX = "detoxify:"
DETOXIFY_JAX_PREFIX = "detoxify-jax:"
JUDGE_SPEC = "heldout-judge"
JUDGE_PREFIX = "heldout-judge:"
_MODEL_TYPES = "<original|unbiased|multilingual|original-small|unbiased-small>"


def make_scorer(spec: str, **kwargs) -> scorers.Scorer:
    """Builds a scorer from a command-line spec; kwargs go to the scorer's constructor."""
    if spec == OFFLINE_SPEC:
        if kwargs:
            raise TypeError(f"make_scorer('offline') takes no options, got {sorted(kwargs)}")
        return scorers.OfflineScorer()
    if spec == JUDGE_SPEC:
        return judge_classifier.JudgeScorer(**kwargs)
    for prefix, scorer_cls, example in (
        (DETOXIFY_PREFIX, scorers.DetoxifyScorer, "original"),
        (DETOXIFY_JAX_PREFIX, detoxify_jax.DetoxifyJaxScorer, "original"),
        (JUDGE_PREFIX, judge_classifier.JudgeScorer, "/path/to/labels.jsonl"),
    ):
        if spec.startswith(prefix):
            target = spec[len(prefix) :]
            if not target:
                raise ValueError(
                    f"make_scorer: {spec!r} names no model or file; use e.g. '{prefix}{example}'"
                )
            return scorer_cls(target, **kwargs)
    raise ValueError(
        f"make_scorer: unknown scorer spec {spec!r}; expected 'offline', "
        f"'detoxify:{_MODEL_TYPES}', 'detoxify:/path/to/model.ckpt', the same with "
        f"'detoxify-jax:', '{JUDGE_SPEC}' or '{JUDGE_PREFIX}/path/to/labels.jsonl'"
    )
