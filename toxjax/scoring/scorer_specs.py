"""Scorer specs: the one string that names a scorer in flags and configs.

offline                          alt-profanity-check, shipped in its wheel (no network)
detoxify:<type or .ckpt path>    Detoxify in PyTorch (its own model and tokenizer)
detoxify-jax:<type or .ckpt>     the same checkpoint converted to Flax, sharded over devices
"""

from __future__ import annotations

from toxjax.scoring import detoxify_jax, scorers

OFFLINE_SPEC = "offline"
DETOXIFY_PREFIX = "detoxify:"
DETOXIFY_JAX_PREFIX = "detoxify-jax:"
_MODEL_TYPES = "<original|unbiased|multilingual|original-small|unbiased-small>"


def make_scorer(spec: str, **kwargs) -> scorers.Scorer:
    """Builds a scorer from a command-line spec; kwargs go to the scorer's constructor."""
    if spec == OFFLINE_SPEC:
        if kwargs:
            raise TypeError(f"make_scorer('offline') takes no options, got {sorted(kwargs)}")
        return scorers.OfflineScorer()
    for prefix, scorer_cls in (
        (DETOXIFY_PREFIX, scorers.DetoxifyScorer),
        (DETOXIFY_JAX_PREFIX, detoxify_jax.DetoxifyJaxScorer),
    ):
        if spec.startswith(prefix):
            target = spec[len(prefix) :]
            if not target:
                raise ValueError(
                    f"make_scorer: {spec!r} names no model; use e.g. '{prefix}original' or "
                    f"'{prefix}/path/to/model.ckpt'"
                )
            return scorer_cls(target, **kwargs)
    raise ValueError(
        f"make_scorer: unknown scorer spec {spec!r}; expected 'offline', "
        f"'detoxify:{_MODEL_TYPES}', 'detoxify:/path/to/model.ckpt' or the same with "
        "'detoxify-jax:'"
    )
