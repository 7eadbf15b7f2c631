"""Guided (contrastive) decoding: the combination against hand-computed values, scale 0 ==
unguided through the Generator, the sampler's guided distribution == the formula over two
separate forward passes, and guided results independent of batch size and sharding."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toxjax.inference import guidance, sampling
from toxjax.model import decoder, partitioning
from toxjax.testing import small_decoder

CFG = small_decoder.CFG


def sharpened_params():
    """Sharper than the init, so guidance moves tokens (made on first use, then cached)."""
    return small_decoder.init_params(4.0)


FAST_COMPILE = small_decoder.FAST_COMPILE

# p+ = [0.5, 0.3, 0.15, 0.05], p- = [0.1, 0.3, 0.3, 0.3], as unnormalised logits.
POSITIVE = np.log([[0.5, 0.3, 0.15, 0.05]]).astype(np.float32) + 3.0
NEGATIVE = np.log([[0.1, 0.3, 0.3, 0.3]]).astype(np.float32) - 1.0
LOG_RATIO = np.log([5.0, 1.0, 0.5, 1.0 / 6.0])  # log p+ - log p-


def combine(form: str, scale: float, top_p: float = 1.0) -> np.ndarray:
    fn = functools.partial(guidance.combine_logits, scale=scale, form=form, top_p=top_p)
    return np.asarray(jax.jit(fn)(jnp.asarray(POSITIVE), jnp.asarray(NEGATIVE)))


def test_cfg_adds_scale_times_the_log_ratio():
    expected = POSITIVE + 2.0 * LOG_RATIO  # Sanchez's gamma = 3: p+^3 / p-^2, renormalised
    np.testing.assert_allclose(combine("cfg", 2.0), expected, rtol=1e-6)
    probs = np.asarray(jax.nn.softmax(combine("cfg", 2.0)))[0]
    hand = np.array([0.5**3 / 0.1**2, 0.3**3 / 0.3**2, 0.15**3 / 0.3**2, 0.05**3 / 0.3**2])
    np.testing.assert_allclose(probs, hand / hand.sum(), rtol=1e-5)
    np.testing.assert_allclose(combine("cfg", 2.0, top_p=0.7), expected, rtol=1e-6)  # no nucleus


def test_dexperts_keeps_the_positive_nucleus_only():
    expected = POSITIVE + 1.5 * LOG_RATIO
    # p+ sorted: 0.5, 0.8, 0.95, 1.0 cumulative: p=0.7 keeps ids {0, 1}, p=0.9 {0, 1, 2}.
    for top_p, kept in ((0.7, 2), (0.9, 3), (1.0, 4)):
        out = combine("dexperts", 1.5, top_p)[0]
        np.testing.assert_allclose(out[:kept], expected[0, :kept], rtol=1e-6)
        assert np.all(out[kept:] == -np.inf), top_p


def test_scale_zero_returns_the_positive_logits_bit_for_bit_without_nan():
    positive = jnp.asarray([[1.5, -0.0, -jnp.inf, 2.0]])
    negative = jnp.asarray([[-jnp.inf, 0.5, -jnp.inf, 1.0]])
    out = guidance.combine_logits(positive, negative, scale=0.0, form="cfg", top_p=1.0)
    assert np.asarray(out).tobytes() == np.asarray(positive).tobytes()
    guided = np.asarray(
        guidance.combine_logits(positive, negative, scale=1.0, form="cfg", top_p=1.0)
    )
    assert not np.any(np.isnan(guided))
    assert guided[0, 2] == -np.inf  # ruled out by c+: stays out
    assert guided[0, 0] == 1.5  # ruled out by c- only: no guidance term, no infinity
    with pytest.raises(ValueError, match="form"):
        guidance.combine_logits(positive, negative, scale=1.0, form="pplm", top_p=1.0)
    with pytest.raises(ValueError, match="scale"):
        sampling.SamplingConfig(guidance_scale=-0.5)
    with pytest.raises(ValueError, match="form"):
        sampling.SamplingConfig(guidance_form="contrastive")


# ----- the sampler -----


def left_pad(prompts: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids) :] = ids
    return tokens, np.array([len(p) for p in prompts], np.int32)


RNG = np.random.default_rng(0)
POSITIVE_PROMPTS = [RNG.integers(3, 259, n).tolist() for n in (7, 2, 5)]
NEGATIVE_PROMPTS = [RNG.integers(3, 259, n).tolist() for n in (4, 6, 1)]  # other lengths
NUM_SAMPLES = 2


def guided_run(form: str, scale: float, use_cache: bool = True) -> dict[str, np.ndarray]:
    """The core function on positive prompts of width 8 and negatives of width 6."""
    config = sampling.SamplingConfig(
        max_new_tokens=5, top_p=0.9, guidance_scale=scale, guidance_form=form
    )
    fn = functools.partial(
        sampling.generate_tokens,
        model=decoder.Decoder(CFG),
        config=config,
        num_samples=NUM_SAMPLES,
        return_logits=True,
        use_cache=use_cache,
    )
    positive, lengths = left_pad(POSITIVE_PROMPTS, 8)
    negative, negative_lengths = left_pad(NEGATIVE_PROMPTS, 6)
    keys = np.arange(3, dtype=np.uint32)
    args = (sharpened_params(), positive, lengths, keys, np.int32(0), negative, negative_lengths)
    return jax.device_get(jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args))


def forward_log_probs(prompts: list[list[int]], tokens: np.ndarray, steps: int) -> np.ndarray:
    """log p [rows, steps, vocab] of each step from one plain forward pass per row (its prompt
    and the tokens sampled so far, right-padded: causal attention ignores what follows)."""
    rows = [prompts[r // NUM_SAMPLES] + tokens[r].tolist() for r in range(len(tokens))]
    width = max(len(r) for r in rows)
    batch = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
    logits = np.asarray(jax.jit(decoder.Decoder(CFG).apply)({"params": sharpened_params()}, batch))
    starts = [len(prompts[r // NUM_SAMPLES]) - 1 for r in range(len(rows))]
    picked = np.stack([logits[r, s : s + steps] for r, s in enumerate(starts)])
    return np.asarray(jax.nn.log_softmax(picked, axis=-1))


def test_guided_distribution_is_the_formula_over_two_separate_forward_passes():
    """Every step: softmax(returned logits) == softmax(log p+ + s (log p+ - log p-)), with
    p+ and p- from plain forward passes of each condition's prompt followed by the SAME
    sampled tokens (positions from each prompt's own length); moving probability toward the
    ids c+ favours over c-."""
    scale = 1.5
    out = guided_run("cfg", scale)
    steps = out["tokens"].shape[1]
    plus = forward_log_probs(POSITIVE_PROMPTS, out["tokens"], steps)
    minus = forward_log_probs(NEGATIVE_PROMPTS, out["tokens"], steps)
    expected = jax.nn.softmax(plus + scale * (plus - minus), axis=-1)
    got = jax.nn.softmax(out["logits"], axis=-1)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    ratio = plus - minus
    favoured = np.argmax(ratio, axis=-1, keepdims=True)
    disfavoured = np.argmin(ratio, axis=-1, keepdims=True)
    p_plus = np.exp(plus)
    assert np.all(np.take_along_axis(got, favoured, -1) > np.take_along_axis(p_plus, favoured, -1))
    assert np.all(
        np.take_along_axis(got, disfavoured, -1) < np.take_along_axis(p_plus, disfavoured, -1)
    )
    recomputed = guided_run("cfg", scale, use_cache=False)  # the cache-free path guides too
    np.testing.assert_array_equal(recomputed["tokens"], out["tokens"])
    np.testing.assert_allclose(recomputed["logits"], out["logits"], atol=1e-4, rtol=1e-4)


def test_dexperts_distribution_is_the_formula_on_the_positive_nucleus():
    scale = 1.5
    out = guided_run("dexperts", scale)
    steps = out["tokens"].shape[1]
    plus = forward_log_probs(POSITIVE_PROMPTS, out["tokens"], steps)
    minus = forward_log_probs(NEGATIVE_PROMPTS, out["tokens"], steps)
    kept = np.isfinite(out["logits"])
    p_plus = np.exp(plus)
    for row, step in np.ndindex(kept.shape[:2]):
        ids = np.flatnonzero(kept[row, step])
        mass = np.sort(p_plus[row, step, ids])
        # The kept ids are the most probable under c+, the fewest reaching 0.9.
        assert p_plus[row, step, ids].min() >= np.delete(p_plus[row, step], ids).max(initial=0)
        assert mass.sum() >= 0.9 - 1e-5 and mass[1:].sum() < 0.9 + 1e-5
        target = plus[row, step, ids] + scale * (plus - minus)[row, step, ids]
        np.testing.assert_allclose(
            jax.nn.softmax(out["logits"][row, step, ids]), jax.nn.softmax(target), atol=2e-5
        )


# ----- the Generator -----

TEXTS = ["Hello there, my friend", "a", "", "The weather today is"]
NEGATIVES = ["No: " + t for t in TEXTS]  # the same texts behind another prefix


def generator(mesh: jax.sharding.Mesh, **kwargs) -> sampling.Generator:
    settings = dict(max_new_tokens=6, top_p=0.9, temperature=1.0, seed=0, batch_size=16)
    settings.update(kwargs)
    return sampling.make_generate_fn(
        sharpened_params(),
        CFG,
        small_decoder.VOCAB,
        mesh,
        small_decoder.RULES,
        compiler_options=FAST_COMPILE,
        **settings,
    )


def test_scale_zero_through_the_generator_gives_the_unguided_tokens():
    """Scale 0 with negatives == a call without negatives (whose samples no scale changes:
    the reference comes from a generator of scale 3), with the same seed; scale 3 differs."""
    guided = generator(small_decoder.one_device_mesh(), guidance_scale=3.0)
    unguided = guided(TEXTS, 3)
    zero = generator(small_decoder.one_device_mesh(), guidance_scale=0.0)
    assert zero(TEXTS, 3, negatives=NEGATIVES) == unguided
    assert guided(TEXTS, 3, negatives=NEGATIVES) != unguided  # the negatives matter
    with pytest.raises(ValueError, match="negatives"):
        zero(TEXTS, 3, negatives=NEGATIVES[:2])


def test_guided_results_do_not_depend_on_batch_size_bucketing_or_sharding():
    """One prompt per call on one device against every prompt in one call (widths bucketed
    together) over data=2 x fsdp=2 x tensor=2; prompt order restored after bucketing."""
    small = generator(small_decoder.one_device_mesh(), batch_size=4, guidance_scale=2.0)
    outputs = small(TEXTS, 2, negatives=NEGATIVES)
    assert small([TEXTS[3], TEXTS[0]], 2, negatives=[NEGATIVES[3], NEGATIVES[0]]) == [
        outputs[3],
        outputs[0],
    ]
    grid = np.array(jax.devices()).reshape(2, 2, 2)
    mesh = jax.sharding.Mesh(grid, partitioning.MESH_AXES)
    large = generator(mesh, batch_size=64, guidance_scale=2.0)
    assert large(TEXTS, 2, negatives=NEGATIVES) == outputs
