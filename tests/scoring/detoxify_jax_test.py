"""Tests for toxjax.scoring.detoxify_jax: the Flax Detoxify scorer against `Detoxify.predict`."""

from __future__ import annotations

import importlib.metadata
import random

import jax
import numpy as np
import pytest
from detoxify import detoxify as detoxify_module
from jax.sharding import Mesh

from toxjax.scoring import detoxify_jax, scorer_specs, scorers
from toxjax.testing import detoxify_checkpoint

# The bar: the JAX port scores as Detoxify does to 1e-4 (measured: ~2e-7).
TOLERANCE = {"rtol": 0.0, "atol": 1e-4}
LONG_WORDS = 1100  # > 512 tokens: two full windows and a part
TEXTS = [
    "hello you idiot",
    "",
    "a nice garden by the river",
    "stupid loser " * 20,
    "xyzzy quux!",
    "i think the weather is lovely",
]


def words_text(num_tokens: int, seed: int) -> str:
    """A text of exactly `num_tokens` WordPiece tokens (each vocabulary word is one)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(detoxify_checkpoint.WORDS) for _ in range(num_tokens))


def predict(reference, texts: list[str]) -> np.ndarray:
    """Detoxify.predict as [texts, labels] (it returns floats for a one-item list)."""
    out = reference.predict(texts)
    return np.stack([np.atleast_1d(np.asarray(out[c])) for c in reference.class_names], 1)


def as_matrix(scorer: scorers.Scorer, result: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([result[a] for a in scorer.attributes], 1)


@pytest.fixture(scope="module")
def jax_first(checkpoint_path) -> detoxify_jax.DetoxifyJaxScorer:
    """Scores the first 512-token window only: what Detoxify.predict does."""
    return detoxify_jax.DetoxifyJaxScorer(checkpoint_path, aggregate="first")


def test_scores_equal_detoxify_predict_including_empty_and_long(jax_first, reference):
    texts = [*TEXTS, words_text(LONG_WORDS, seed=1)]
    got = as_matrix(jax_first, jax_first.score(texts))
    assert jax_first.attributes == tuple(reference.class_names)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, predict(reference, texts), **TOLERANCE)
    assert np.ptp(got[:, 0]) > 0.01  # the random model tells texts apart


@pytest.mark.parametrize("texts", [["just one text"], [""], [words_text(700, seed=2)]])
def test_one_item_lists_equal_predict(jax_first, reference, texts):
    got = as_matrix(jax_first, jax_first.score(texts))
    assert got.shape == (1, len(jax_first.attributes))
    np.testing.assert_allclose(got, predict(reference, texts), **TOLERANCE)


def test_empty_list_gives_empty_arrays(jax_first):
    result = jax_first.score([])
    assert set(result) == set(jax_first.attributes)
    assert all(v.shape == (0,) and v.dtype == np.float32 for v in result.values())


def test_long_documents_aggregate_windows_as_the_torch_wrapper(checkpoint_path):
    texts = [words_text(LONG_WORDS, seed=3), "short", words_text(40, seed=4)]
    for kwargs in ({}, {"aggregate": "mean"}, {"max_length": 16, "stride": 4}):
        torch_scores = scorers.DetoxifyScorer(checkpoint_path, **kwargs)
        jax_scores = detoxify_jax.DetoxifyJaxScorer(checkpoint_path, **kwargs)
        np.testing.assert_allclose(
            as_matrix(jax_scores, jax_scores.score(texts)),
            as_matrix(torch_scores, torch_scores.score(texts)),
            **TOLERANCE,
        )


@pytest.mark.parametrize("architecture", ["roberta", "xlm-roberta", "albert"])
def test_every_detoxify_family_equals_predict(tmp_path, architecture):
    checkpoint = detoxify_checkpoint.build_tiny_detoxify_checkpoint(
        str(tmp_path), architecture=architecture, layers=2, model_type_name=architecture
    )
    reference = detoxify_module.Detoxify(checkpoint=checkpoint)
    scorer = detoxify_jax.DetoxifyJaxScorer(checkpoint, aggregate="first")
    texts = [*TEXTS, words_text(600, seed=5)]
    got = as_matrix(scorer, scorer.score(texts))
    np.testing.assert_allclose(got, predict(reference, texts), **TOLERANCE)
    assert np.ptp(got[:, 0]) > 1e-3


def test_sharded_scoring_equals_single_device(checkpoint_path):
    assert jax.device_count() == 8
    sharded = detoxify_jax.DetoxifyJaxScorer(checkpoint_path)
    single = detoxify_jax.DetoxifyJaxScorer(
        checkpoint_path, mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",))
    )
    assert (sharded.data_shards, single.data_shards) == (8, 1)
    texts = [*TEXTS, *(words_text(n, seed=n) for n in (3, 30, 90, 200, 520, 1500))]
    np.testing.assert_allclose(
        as_matrix(sharded, sharded.score(texts)),
        as_matrix(single, single.score(texts)),
        rtol=0,
        atol=1e-6,
    )


def test_a_training_mesh_splits_batches_over_data_and_fsdp(checkpoint_path):
    devices = np.asarray(jax.devices()).reshape(2, 2, 2)
    scorer = detoxify_jax.DetoxifyJaxScorer(
        checkpoint_path, mesh=Mesh(devices, ("data", "fsdp", "tensor"))
    )
    assert scorer.data_shards == 4
    assert all(rows % 4 == 0 for rows in (scorer.batch_rows(16, 1), scorer.batch_rows(512, 9)))


def test_batches_use_few_static_shapes(checkpoint_path):
    scorer = detoxify_jax.DetoxifyJaxScorer(checkpoint_path, batch_tokens=2048)
    lengths = np.random.default_rng(0).integers(3, 513, size=500)
    plan = scorer.batches(lengths)
    covered = np.concatenate([rows for _, rows in plan])
    assert sorted(covered.tolist()) == list(range(500))  # every window, once
    shapes = set()
    for bucket, rows in plan:
        padded_rows = scorer.batch_rows(bucket, len(rows))
        shapes.add((padded_rows, bucket))
        assert padded_rows % scorer.data_shards == 0 and len(rows) <= padded_rows
        assert padded_rows * bucket <= max(2048, scorer.data_shards * bucket)  # the budget
        assert (lengths[rows] <= bucket).all()
        smaller = [b for b in scorer.buckets if b < bucket]
        assert not smaller or (lengths[rows] > smaller[-1]).all()
    # Full batches share one shape per bucket; only each bucket's last batch may be smaller.
    assert len(shapes) <= 2 * len(scorer.buckets)


def test_scorer_id_names_model_version_and_backend(checkpoint_path):
    jax_scorer = scorer_specs.make_scorer(f"detoxify-jax:{checkpoint_path}")
    torch_scorer = scorer_specs.make_scorer(f"detoxify:{checkpoint_path}")
    version = importlib.metadata.version("detoxify")
    assert jax_scorer.scorer_id == f"{torch_scorer.name}@{version}:jax"
    assert torch_scorer.scorer_id == f"{torch_scorer.name}@{version}:torch"


def test_bad_settings_and_missing_files_are_rejected(checkpoint_path, tmp_path):
    with pytest.raises(ValueError, match="max_length must be in"):
        detoxify_jax.DetoxifyJaxScorer(checkpoint_path, max_length=600)
    with pytest.raises(ValueError, match="aggregate must be one of"):
        detoxify_jax.DetoxifyJaxScorer(checkpoint_path, aggregate="median")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        detoxify_jax.DetoxifyJaxScorer(str(tmp_path / "nope.ckpt"))


def test_released_model_without_network_names_the_ways_out(monkeypatch, tmp_path):
    import torch

    def no_network(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError) as raised:
        detoxify_jax.DetoxifyJaxScorer("original")
    message = str(raised.value)
    assert "'original'" in message and "name resolution" in message
    assert "detoxify-jax:/path/to/model.ckpt" in message and "--scorer=offline" in message


@pytest.mark.slow
def test_bert_base_sized_checkpoint_equals_predict(tmp_path):
    checkpoint = detoxify_checkpoint.build_tiny_detoxify_checkpoint(
        str(tmp_path), hidden=768, layers=12, heads=12, model_type_name="bert-base-random"
    )
    reference = detoxify_module.Detoxify(checkpoint=checkpoint)
    # One device and a short bucket beside the full window: every padded row costs a 110M-parameter
    # forward on 2 CPU cores (sharding and bucketing have their own tests).
    one_device = Mesh(np.asarray(jax.local_devices()[:1]), ("data",))
    scorer = detoxify_jax.DetoxifyJaxScorer(
        checkpoint, aggregate="first", buckets=(64, 512), mesh=one_device
    )
    long_text = words_text(LONG_WORDS, seed=6)  # a full 512-token window
    got = as_matrix(scorer, scorer.score([*TEXTS, long_text]))
    # The reference pads a batch to its longest text: the long one alone, the short ones apart.
    want = np.concatenate([predict(reference, TEXTS), predict(reference, [long_text])])
    np.testing.assert_allclose(got, want, **TOLERANCE)
    one = as_matrix(scorer, scorer.score([""]))
    np.testing.assert_allclose(one, predict(reference, [""]), **TOLERANCE)
