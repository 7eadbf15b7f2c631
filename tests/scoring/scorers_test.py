"""Tests for toxjax.scoring.scorers, against the real Detoxify class on a tiny random checkpoint."""

from __future__ import annotations

import importlib.metadata
import random
import re
import urllib.error

import numpy as np
import pytest
import torch
from detoxify import detoxify as detoxify_module

from toxjax.scoring import scorer_specs, scorers
from toxjax.testing import detoxify_checkpoint

ORIGINAL_ATTRIBUTES = (
    "toxicity",
    "severe_toxicity",
    "obscene",
    "threat",
    "insult",
    "identity_attack",
)
TEXTS = [
    "hello you idiot",
    "",
    "a nice garden by the river",
    "the day of the music and coffee",
    "stupid loser " * 20,
    "xyzzy quux!",
    "i think the weather is lovely",
]
# Tight: the same weights and inputs, only the padding length differs between the two.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="session")
def scorer(checkpoint_path) -> scorers.DetoxifyScorer:
    return scorers.DetoxifyScorer(checkpoint_path, batch_size=3)


def predict(reference: detoxify_module.Detoxify, texts: list[str]) -> dict[str, np.ndarray]:
    return {k: np.atleast_1d(np.asarray(v)) for k, v in reference.predict(texts).items()}


def words_text(num_tokens: int, seed: int) -> tuple[str, list[str]]:
    """A text of exactly `num_tokens` tokens: each vocabulary word is one WordPiece token."""
    rng = random.Random(seed)
    words = [rng.choice(detoxify_checkpoint.WORDS) for _ in range(num_tokens)]
    return " ".join(words), words


# --- OfflineScorer -------------------------------------------------------------------------


def test_offline_scorer_separates_offensive_from_neutral():
    offline = scorer_specs.make_scorer("offline")
    offensive = ["you are a fucking idiot", "shut up you stupid bitch", "this is shit"]
    neutral = ["the weather is lovely today", "we planted tomatoes in the garden"]
    result = offline.score(offensive + neutral)
    assert set(result) == {"toxicity"}
    assert result["toxicity"].min() >= 0.0 and result["toxicity"].max() <= 1.0
    assert result["toxicity"][: len(offensive)].min() > 0.5
    assert result["toxicity"][len(offensive) :].max() < 0.5


@pytest.mark.parametrize("texts", [[], [""], ["one short sentence"]])
def test_offline_scorer_edge_cases(texts):
    result = scorers.OfflineScorer().score(texts)
    assert result["toxicity"].dtype == np.float32
    assert result["toxicity"].shape == (len(texts),)


def test_offline_scorer_id_names_package_version():
    offline = scorers.OfflineScorer()
    assert offline.attributes == ("toxicity",)
    version = importlib.metadata.version("alt-profanity-check")
    assert offline.scorer_id == f"profanity_check@{version}"


def test_scorers_reject_non_string_texts():
    offline = scorers.OfflineScorer()
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        offline.score(["fine", None])
    with pytest.raises(TypeError, match="one str"):
        offline.score("not a list")


# --- DetoxifyScorer: equality with Detoxify.predict -----------------------------------------


def test_scores_equal_detoxify_predict(scorer, reference):
    result = scorer.score(TEXTS)
    expected = predict(reference, TEXTS)
    assert scorer.attributes == ORIGINAL_ATTRIBUTES
    for attribute in ORIGINAL_ATTRIBUTES:
        assert result[attribute].dtype == np.float32
        np.testing.assert_allclose(result[attribute], expected[attribute], **TOLERANCE)
    # The tiny model must tell texts apart, or the equality above would prove little.
    assert np.ptp(result["toxicity"]) > 0.01


@pytest.mark.parametrize("texts", [["just one text"], [""]])
def test_one_item_lists_equal_predict(scorer, reference, texts):
    result = scorer.score(texts)
    expected = reference.predict(texts)  # A float per label for a one-item list.
    for attribute in ORIGINAL_ATTRIBUTES:
        assert result[attribute].shape == (1,)
        np.testing.assert_allclose(result[attribute], [expected[attribute]], **TOLERANCE)


def test_empty_list_gives_empty_arrays(scorer):
    result = scorer.score([])
    assert set(result) == set(ORIGINAL_ATTRIBUTES)
    assert all(v.shape == (0,) and v.dtype == np.float32 for v in result.values())


def test_batching_order_does_not_change_scores(scorer):
    texts = TEXTS + [words_text(n, seed=n)[0] for n in (3, 40, 9, 120, 1)]
    permutation = np.random.default_rng(0).permutation(len(texts))
    straight = scorer.score(texts)
    shuffled = scorer.score([texts[i] for i in permutation])
    for attribute in ORIGINAL_ATTRIBUTES:
        np.testing.assert_allclose(
            shuffled[attribute], straight[attribute][permutation], **TOLERANCE
        )


# --- DetoxifyScorer: windows over long documents --------------------------------------------


def window_scores(reference, words: list[str], content: int, step: int) -> np.ndarray:
    """Scores each window independently through Detoxify.predict: [windows, attributes]."""
    chunks = [" ".join(words[i : i + content]) for i in range(0, len(words) - content + step, step)]
    expected = predict(reference, chunks)
    return np.stack([expected[a] for a in ORIGINAL_ATTRIBUTES], axis=1)


def test_long_document_score_is_max_over_windows(checkpoint_path, reference):
    windowed = scorers.DetoxifyScorer(checkpoint_path, max_length=16, batch_size=2)
    document, words = words_text(40, seed=1)
    assert len(reference.tokenizer(document)["input_ids"]) == 42  # 40 words + [CLS] [SEP].
    per_window = window_scores(reference, words, content=14, step=14)
    assert per_window.shape[0] == 3
    result = windowed.score(["short one", document])
    got = np.array([result[a][1] for a in ORIGINAL_ATTRIBUTES])
    np.testing.assert_allclose(got, per_window.max(axis=0), **TOLERANCE)
    # Not merely the first window: this document's windows disagree.
    assert np.abs(per_window[1:] - per_window[0]).max() > 1e-3


def test_documents_longer_than_512_tokens_are_windowed(scorer, reference):
    document, words = words_text(1100, seed=2)
    per_window = window_scores(reference, words, content=510, step=510)
    result = scorer.score([document])
    got = np.array([result[a][0] for a in ORIGINAL_ATTRIBUTES])
    np.testing.assert_allclose(got, per_window.max(axis=0), **TOLERANCE)


def test_mean_and_first_aggregation(checkpoint_path, reference):
    document, words = words_text(40, seed=3)
    per_window = window_scores(reference, words, content=14, step=14)
    mean = scorers.DetoxifyScorer(checkpoint_path, max_length=16, aggregate="mean")
    first = scorers.DetoxifyScorer(checkpoint_path, max_length=16, aggregate="first")
    mean_result, first_result = mean.score([document, "hi"]), first.score([document, "hi"])
    for i, attribute in enumerate(ORIGINAL_ATTRIBUTES):
        np.testing.assert_allclose(mean_result[attribute][0], per_window[:, i].mean(), rtol=1e-5)
        np.testing.assert_allclose(first_result[attribute][0], per_window[0, i], **TOLERANCE)


def test_stride_makes_windows_overlap(checkpoint_path, reference):
    document, words = words_text(40, seed=4)
    overlapping = scorers.DetoxifyScorer(checkpoint_path, max_length=16, stride=4)
    inputs, doc_index = overlapping.windows([document])
    assert doc_index.tolist() == [0, 0, 0, 0]  # Windows start at words 0, 10, 20, 30.
    per_window = window_scores(reference, words, content=14, step=10)
    result = overlapping.score([document])
    got = np.array([result[a][0] for a in ORIGINAL_ATTRIBUTES])
    np.testing.assert_allclose(got, per_window.max(axis=0), **TOLERANCE)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_length": 600}, "max_length must be in"),
        ({"max_length": 2}, "max_length must be in"),
        ({"stride": 14, "max_length": 16}, "stride must be in"),
        ({"aggregate": "median"}, "aggregate must be one of"),
        ({"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_window_settings_are_rejected(checkpoint_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        scorers.DetoxifyScorer(checkpoint_path, **kwargs)


# --- DetoxifyScorer: devices, ids and loading errors -----------------------------------------


def test_cpu_device(checkpoint_path):
    on_cpu = scorer_specs.make_scorer(f"detoxify:{checkpoint_path}", device="cpu")
    assert on_cpu.device == torch.device("cpu")
    assert next(on_cpu.model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("device", ["gpu7", "not a device"])
def test_unknown_device_gives_clear_error(checkpoint_path, device):
    with pytest.raises(ValueError, match=f"Unknown torch device '{device}'"):
        scorers.DetoxifyScorer(checkpoint_path, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_gives_clear_error(checkpoint_path):
    with pytest.raises(ValueError, match="no CUDA device"):
        scorers.DetoxifyScorer(checkpoint_path, device="cuda:0")


def test_checkpoint_scorer_id_has_digest_and_settings(checkpoint_path):
    version = importlib.metadata.version("detoxify")
    default = scorer_specs.make_scorer(f"detoxify:{checkpoint_path}")
    pattern = rf"detoxify-ckpt-[0-9a-f]{{12}}@{re.escape(version)}:torch"
    assert re.fullmatch(pattern, default.scorer_id)
    custom = scorers.DetoxifyScorer(checkpoint_path, max_length=64, aggregate="mean")
    digest = default.name.removeprefix("detoxify-ckpt-")
    assert (
        custom.scorer_id == f"detoxify-ckpt-{digest}+max_length=64+aggregate=mean@{version}:torch"
    )


def test_model_type_scorer_id_and_loading(monkeypatch, reference):
    calls = []

    def fake_load_checkpoint(model_type="original", checkpoint=None, device="cpu", **_):
        calls.append((model_type, checkpoint, device))
        return reference.model, reference.tokenizer, list(reference.class_names)

    monkeypatch.setattr(detoxify_module, "load_checkpoint", fake_load_checkpoint)
    unbiased = scorer_specs.make_scorer("detoxify:unbiased-small")
    assert calls == [("unbiased-small", None, "cpu")]
    version = importlib.metadata.version("detoxify")
    assert unbiased.scorer_id == f"detoxify-unbiased-small@{version}:torch"


def test_missing_weights_error_names_both_ways_out(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(detoxify_module.torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError) as raised:
        scorer_specs.make_scorer("detoxify:original")
    message = str(raised.value)
    assert "'original'" in message and "name resolution" in message
    assert "detoxify:/path/to/model.ckpt" in message
    assert "--scorer=offline" in message


def test_unknown_model_and_missing_file_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown Detoxify model 'originall'"):
        scorers.DetoxifyScorer("originall")
    missing = str(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        scorer_specs.make_scorer(f"detoxify:{missing}")


def test_unloadable_checkpoint_error_names_file_and_offline_scorer(tmp_path):
    broken = tmp_path / "broken.ckpt"
    torch.save({"state_dict": {}}, broken)
    with pytest.raises(RuntimeError) as raised:
        scorers.DetoxifyScorer(str(broken))
    assert str(broken) in str(raised.value)
    assert "--scorer=offline" in str(raised.value)
