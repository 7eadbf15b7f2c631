"""Tests for toxjax.scoring.scorer_specs: one spec string names every scorer."""

from __future__ import annotations

import pytest

from toxjax.scoring import detoxify_jax, scorer_specs, scorers


@pytest.mark.parametrize("spec", ["bogus", "detoxify:", "detoxify-jax:", "perspective"])
def test_make_scorer_rejects_unknown_specs(spec):
    with pytest.raises(ValueError, match="scorer spec|names no model"):
        scorer_specs.make_scorer(spec)


def test_each_prefix_builds_its_backend(checkpoint_path):
    assert isinstance(scorer_specs.make_scorer("offline"), scorers.OfflineScorer)
    torch_scorer = scorer_specs.make_scorer(f"detoxify:{checkpoint_path}", batch_size=4)
    jax_scorer = scorer_specs.make_scorer(f"detoxify-jax:{checkpoint_path}", batch_tokens=512)
    assert isinstance(torch_scorer, scorers.DetoxifyScorer) and torch_scorer.batch_size == 4
    assert isinstance(jax_scorer, detoxify_jax.DetoxifyJaxScorer)
    assert jax_scorer.batch_tokens == 512
    with pytest.raises(TypeError, match="takes no options"):
        scorer_specs.make_scorer("offline", batch_size=2)
