"""Tests of the log-likelihood engine and held-out perplexity against plain forward passes."""

import jax
import numpy as np
import pytest

from toxjax.data import vocab
from toxjax.inference import loglik
from toxjax.inference.requests import LoglikelihoodRequest, call_loglikelihood
from toxjax.model import decoder
from toxjax.testing.small_decoder import (
    CFG,
    FAST_COMPILE,
    RULES,
    VOCAB,
    init_params,
    one_device_mesh,
)

START = vocab.START_ID


def forward(params, tokens: np.ndarray, **kwargs) -> np.ndarray:
    """Log-softmax of a plain forward pass (compiled once per call)."""
    fn = jax.jit(
        lambda p, t, kw: jax.nn.log_softmax(
            decoder.Decoder(CFG).apply({"params": p}, t, **kw), axis=-1
        )
    )
    return np.asarray(
        fn.lower(params, tokens, kwargs).compile(FAST_COMPILE)(params, tokens, kwargs)
    )


REQUESTS = [
    LoglikelihoodRequest("The cat sat on the", " mat"),
    LoglikelihoodRequest("Question: is it raining?\nAnswer:", " no"),
    LoglikelihoodRequest("Trailing space ", "moves"),  # scored as " moves"
    LoglikelihoodRequest("", "Starts at START"),
    LoglikelihoodRequest("long context " * 5, " end of it"),  # truncated; its space moves
    LoglikelihoodRequest("x", " y"),
]


def expected_sequences() -> list[tuple[list[int], int]]:
    """Byte tokens by hand: START + context + continuation, last max_len + 1 kept."""
    out = []
    for request in REQUESTS:
        context, continuation = request.context, request.continuation
        if context.endswith(" "):
            context, continuation = context[:-1], " " + continuation
        ids = [START, *VOCAB.encode(context), *VOCAB.encode(continuation)]
        out.append((ids[-(CFG.max_len + 1) :], len(VOCAB.encode(continuation))))
    return out


def test_loglikelihood_equals_sum_of_token_log_probs_of_a_forward_pass():
    params = init_params(scale=8.0)  # sharper distributions, so argmax hits happen
    engine = loglik.make_loglikelihood_fn(
        params, CFG, VOCAB, one_device_mesh(), RULES, batch_size=2, compiler_options=FAST_COMPILE
    )
    results = call_loglikelihood(engine, REQUESTS, task="test")
    sequences = expected_sequences()
    batch = np.zeros((len(sequences), CFG.max_len), np.int32)
    for row, (sequence, _) in enumerate(sequences):
        batch[row, : len(sequence) - 1] = sequence[:-1]
    log_probs = forward(params, batch)
    for row, ((sequence, count), result) in enumerate(zip(sequences, results, strict=True)):
        positions = np.arange(len(sequence) - 1 - count, len(sequence) - 1)
        targets = np.asarray(sequence[-count:])
        token_log_probs = log_probs[row, positions, targets]
        assert result.num_tokens == count
        np.testing.assert_allclose(result.logprob, token_log_probs.sum(), rtol=1e-4, atol=1e-4)
        is_greedy = bool(np.all(log_probs[row, positions].argmax(-1) == targets))
        assert result.is_greedy == is_greedy
    assert len(sequences[4][0]) == CFG.max_len + 1  # the long context really was truncated
    # Request order is kept although the engine sorts by length.
    assert [r.num_tokens for r in results] == [4, 3, 6, 15, 11, 2]


def test_errors_name_the_request():
    engine = loglik.make_loglikelihood_fn(
        init_params(1.0), CFG, VOCAB, one_device_mesh(), RULES, batch_size=2
    )
    with pytest.raises(ValueError, match="request 1: continuation has 40 tokens"):
        engine([LoglikelihoodRequest("a", " b"), LoglikelihoodRequest("a", "z" * 40)])
    with pytest.raises(ValueError, match="request 0: continuation '' encodes to no tokens"):
        engine([LoglikelihoodRequest("a", "")])
    # Perplexity-style scoring (truncate): nothing to score is 0 over 0 tokens, not an error.
    empty, whole = engine(
        [LoglikelihoodRequest("a", "", truncate=True), LoglikelihoodRequest("a", " b")]
    )
    assert (empty.logprob, empty.num_tokens) == (0.0, 0) and whole.num_tokens == 2


def test_truncated_requests_score_the_first_window_after_the_whole_context():
    params = init_params(scale=8.0)
    engine = loglik.make_loglikelihood_fn(
        params, CFG, VOCAB, one_device_mesh(), RULES, batch_size=2, compiler_options=FAST_COMPILE
    )
    long_text = "abcdefghij" * 5  # 50 byte tokens > max_len 32
    (result,) = engine([LoglikelihoodRequest("sig:", long_text, truncate=True)])
    # START and the whole 4-token context stay and the first 33 - 5 = 28 text tokens are scored.
    assert result.num_tokens == CFG.max_len + 1 - 5
    (shorter,) = engine([LoglikelihoodRequest("sig:", long_text[:28])])
    np.testing.assert_allclose(result.logprob, shorter.logprob, rtol=1e-5)
    (fits,) = engine([LoglikelihoodRequest("sig:", "short", truncate=True)])
    assert fits.num_tokens == 5  # nothing cut when the text fits


def test_encode_pair_follows_the_harness():
    ab = [START, *VOCAB.encode("ab")]  # every context starts from the training start id
    assert loglik.encode_pair(VOCAB, "ab ", "c") == (ab, VOCAB.encode(" c"))
    # The harness moves all trailing whitespace (str.rstrip()), newlines included.
    assert loglik.encode_pair(VOCAB, "ab\n ", "c") == (ab, VOCAB.encode("\n c"))
    assert loglik.encode_pair(VOCAB, "", "c") == ([START], VOCAB.encode("c"))


def test_heldout_perplexity_equals_the_mean_cross_entropy_of_its_batches():
    params = init_params(scale=1.0)
    kwargs = dict(split="validation", seq_len=32, batch_size=4, num_batches=2)
    result = loglik.heldout_perplexity(
        params,
        CFG,
        one_device_mesh(),
        RULES,
        task_name="toxjax_demo_base",
        compiler_options=FAST_COMPILE,
        **kwargs,
    )
    batches = list(loglik.heldout_batches("toxjax_demo_base", **kwargs))
    assert result["num_batches"] == len(batches) == 2
    ce_sum, weight_sum = 0.0, 0.0
    for batch in batches:
        log_probs = forward(
            params,
            batch["decoder_input_tokens"],
            positions=batch["decoder_positions"],
            segment_ids=batch["decoder_segment_ids"],
        )
        targets = batch["decoder_target_tokens"]
        picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        ce_sum -= float((picked * batch["decoder_loss_weights"]).sum())
        weight_sum += float(batch["decoder_loss_weights"].sum())
    assert result["num_tokens"] == int(weight_sum) > 0
    np.testing.assert_allclose(result["perplexity"], np.exp(ce_sum / weight_sum), rtol=1e-4)
    # A freshly initialised model is close to uniform over its 264 ids.
    assert 200 < result["perplexity"] < 330


def test_scoring_a_document_reads_what_training_read():
    """The engine's log-likelihood of a document equals the one in its packed training row:
    both start from START at position 0 (a context-free EOS start would not match)."""
    params = init_params(scale=8.0)
    (batch,) = loglik.heldout_batches(
        "toxjax_demo_base", split="validation", seq_len=32, batch_size=4, num_batches=1
    )
    first = batch["decoder_segment_ids"][0] == 1
    assert batch["decoder_input_tokens"][0, 0] == START
    targets = batch["decoder_target_tokens"][0][first]
    log_probs = forward(
        params,
        batch["decoder_input_tokens"][:1],
        positions=batch["decoder_positions"][:1],
        segment_ids=batch["decoder_segment_ids"][:1],
    )
    picked = log_probs[0, np.arange(len(targets)), targets]
    text_tokens = targets[:-1] if targets[-1] == 1 else targets  # EOS ends a whole document
    engine = loglik.make_loglikelihood_fn(
        params, CFG, VOCAB, one_device_mesh(), RULES, batch_size=2, compiler_options=FAST_COMPILE
    )
    (result,) = engine([LoglikelihoodRequest("", VOCAB.decode(text_tokens.tolist()))])
    assert result.num_tokens == len(text_tokens) > 3
    np.testing.assert_allclose(result.logprob, picked[: len(text_tokens)].sum(), rtol=1e-4)
