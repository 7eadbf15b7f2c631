"""Tests of the KV-cache sampler: cache == full forward, top-p/top-k sets, seeds, bans, EOS,
sharded == single device, and the strings-in/strings-out GenerateFn."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from toxjax.configs import default as default_config
from toxjax.data import vocab
from toxjax.inference import draws, filtering, sampling
from toxjax.model import decoder, partitioning

CFG = decoder.ModelConfig(
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    vocab_size=50,
    max_len=32,
    dtype="float32",
    positions="rope",
)
EOS = 1
START = vocab.START_ID
RULES = partitioning.logical_rules(default_config.get_config())  # the shipped rules
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.cache
def make_params(cfg: decoder.ModelConfig, seed: int = 1):
    """Random params with sharpened logits, so greedy choices are not near-ties. Made on first
    use, compiled as one program: collecting this module (on every xdist worker) costs nothing."""

    @jax.jit
    def init(key):
        params = decoder.Decoder(cfg).init({"params": key}, jnp.zeros((1, 4), jnp.int32))
        return jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, nn.unbox(params["params"]))

    return init(jax.random.key(seed))


def left_pad(prompts: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids) :] = ids
    return tokens, np.array([len(p) for p in prompts], np.int32)


PROMPTS = [[5, 9, 13, 7, 22, 31], [40, 3], [11, 12, 13, 14], [17]]


@functools.lru_cache
def compiled(config, num_samples=2, cache=True, logits=True, mesh=None):
    """The core function compiled once per setting (quickly; tiny models spend their time
    compiling), on one device or partitioned over `mesh`."""
    impl = sampling.generate_tokens if cache else sampling.generate_tokens_recompute
    fn = functools.partial(
        impl,
        model=decoder.Decoder(CFG),
        config=config,
        num_samples=num_samples,
        return_logits=logits,
    )
    params, *rest = inputs(0)
    if mesh is None:
        return jax.jit(fn).lower(params, *rest).compile(FAST_COMPILE)
    shardings = partitioning.param_shardings(CFG, mesh, RULES)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    partitioned = partitioning.PartitionedFunction(
        fn, mesh, RULES, in_shardings=(shardings,) + (replicated,) * 4, out_shardings=replicated
    )
    return partitioned.lower(jax.device_put(params, shardings), *rest).compile(FAST_COMPILE)


def inputs(seed):
    tokens, lengths = left_pad(PROMPTS, 8)
    keys = np.arange(len(PROMPTS), dtype=np.uint32)
    return make_params(CFG), tokens, lengths, keys, np.int32(seed)


def run_generate(config, *, num_samples=2, seed=0, cache=True, logits=True):
    fn = compiled(config, num_samples, cache, logits)
    return jax.device_get(fn(*inputs(seed)))


SAMPLED = sampling.SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, eos_id=-1)
GREEDY = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def sampled():
    return run_generate(SAMPLED)


def test_cached_logits_equal_a_full_forward_of_each_unpadded_row(sampled):
    """Left padding + KV cache: every step's logits equal those of the plain model run on
    the row's real prompt and the tokens sampled so far (rows right-padded: causal attention
    keeps padding at the end out of every real token)."""
    steps = SAMPLED.max_new_tokens
    rows = [PROMPTS[row // 2] + sampled["tokens"][row].tolist() for row in range(2 * len(PROMPTS))]
    width = max(len(r) for r in rows)
    batch = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
    forward = jax.jit(lambda p, t: decoder.Decoder(CFG).apply({"params": p}, t))
    params = make_params(CFG)
    full = np.asarray(forward.lower(params, batch).compile(FAST_COMPILE)(params, batch))
    for row in range(len(rows)):
        start = len(PROMPTS[row // 2]) - 1
        expected = full[row, start : start + steps]
        np.testing.assert_allclose(sampled["logits"][row], expected, atol=1e-4, rtol=1e-4)


def test_cache_and_recompute_draw_the_same_samples(sampled):
    recomputed = run_generate(SAMPLED, cache=False)
    np.testing.assert_array_equal(sampled["tokens"], recomputed["tokens"])
    np.testing.assert_allclose(sampled["logits"], recomputed["logits"], atol=1e-4, rtol=1e-4)


def test_same_seed_same_samples_other_seed_other_samples(sampled):
    again = run_generate(SAMPLED, logits=False)
    np.testing.assert_array_equal(sampled["tokens"], again["tokens"])
    other = run_generate(SAMPLED, seed=1, logits=False)
    assert not np.array_equal(sampled["tokens"], other["tokens"])
    # The samples of one prompt differ from each other (independent streams per sample).
    assert not np.array_equal(sampled["tokens"][0], sampled["tokens"][1])


def test_banned_ids_are_never_sampled_and_eos_stops_rows():
    allowed = {EOS, 7, 8}
    config = sampling.SamplingConfig(
        max_new_tokens=12,
        temperature=1.5,
        eos_id=EOS,
        banned_ids=tuple(i for i in range(CFG.vocab_size) if i not in allowed),
    )
    out = run_generate(config, num_samples=8, logits=False)
    tokens, counts = out["tokens"], out["num_tokens"]
    assert set(np.unique(tokens)) <= allowed | {config.pad_id}
    stopped = 0
    for row, count in zip(tokens, counts, strict=True):
        if EOS in row.tolist():
            first = row.tolist().index(EOS)
            assert count == first + 1  # EOS counted, nothing generated after it
            assert np.all(row[first + 1 :] == config.pad_id)
            stopped += 1
        else:
            assert count == config.max_new_tokens
    assert stopped > 0


def test_all_rows_stop_at_eos_ends_the_loop_early():
    only_eos = sampling.SamplingConfig(
        max_new_tokens=5,
        eos_id=EOS,
        banned_ids=tuple(i for i in range(CFG.vocab_size) if i != EOS),
    )
    out = run_generate(only_eos, logits=True)
    assert np.all(out["tokens"][:, 0] == EOS)
    assert np.all(out["tokens"][:, 1:] == 0)
    assert np.all(out["num_tokens"] == 1)
    assert np.all(out["logits"][:, 1:] == 0)  # no step ran after every row had stopped


def test_greedy_takes_the_argmax():
    out = run_generate(GREEDY)
    np.testing.assert_array_equal(out["tokens"], np.argmax(out["logits"], axis=-1))


# ----- filtering -----


@functools.lru_cache
def _jitted_mask(top_k: int):
    return jax.jit(lambda logits, p: filtering.filter_mask(logits, top_k=top_k, top_p=p))


TIED_LOGITS = st.lists(
    st.floats(-4, 4, allow_nan=False, width=32).map(lambda x: round(x, 1)),
    min_size=16,
    max_size=16,
)


def expected_kept(logits: list[float], top_k: int, p: float) -> set[int] | None:
    """Reference in float64: ids ranked by (logit desc, id asc), the first top_k of them
    (0 = all), then the shortest prefix of those whose renormalised mass reaches p. None when
    p is too close to a prefix mass for float32 to settle."""
    logits64 = np.asarray(logits, np.float64)
    order = sorted(range(16), key=lambda i: (-logits64[i], i))[: top_k or 16]
    probs = np.exp(logits64[order] - logits64[order].max())
    cumulative = np.cumsum(probs / probs.sum())
    if np.any(np.abs(cumulative - p) <= 1e-4):
        return None
    size = int(np.argmax(cumulative >= p)) + 1 if cumulative[-1] >= p else len(order)
    return set(order[:size])


@settings(max_examples=60, deadline=None)
@given(logits=TIED_LOGITS, p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_prefix_reaching_p(logits, p):
    """The searched top-p (no sort): kept = the first ids in (prob desc, id asc) order whose
    cumulative probability reaches p; no shorter prefix does. Rounded logits make ties common."""
    expected = expected_kept(logits, 0, p)
    assume(expected is not None)
    kept = np.asarray(_jitted_mask(0)(jnp.asarray([logits], jnp.float32), p))[0]
    assert set(np.flatnonzero(kept).tolist()) == expected


@settings(max_examples=40, deadline=None)
@given(logits=TIED_LOGITS, p=st.floats(0.01, 1.0), top_k=st.sampled_from([1, 3, 8, 16]))
def test_top_k_then_top_p_keeps_the_smallest_prefix_of_the_top_k(logits, p, top_k):
    expected = expected_kept(logits, top_k, p)
    assume(expected is not None)
    kept = np.asarray(_jitted_mask(top_k)(jnp.asarray([logits], jnp.float32), p))[0]
    assert set(np.flatnonzero(kept).tolist()) == expected


def test_top_p_search_spans_every_float():
    """The 4-way search covers the whole ordered-bits range: huge, tiny, denormal, signed-zero
    and -inf logits keep what the sorting path (top-k = vocab) keeps."""
    values = np.array([3e38, -3e38, 1e-40, -1e-40, 0.0, -0.0, -np.inf, 88.0, 87.5, 1.0], np.float32)
    rows = np.random.default_rng(0).choice(values, size=(64, 10)).astype(np.float32)
    rows[:, 0] = np.where(np.isinf(rows[:, 0]), 1.0, rows[:, 0])  # at least one finite logit
    for p in (0.3, 0.9, 1.0):
        sorted_path = _jitted_mask(10)(jnp.asarray(rows), p)
        np.testing.assert_array_equal(_jitted_mask(0)(jnp.asarray(rows), p), sorted_path)


def test_top_k_breaks_ties_by_lower_id_and_combines_with_top_p():
    logits = jnp.asarray([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0]])
    np.testing.assert_array_equal(
        _jitted_mask(2)(logits, 1.0)[0], [False, True, True, False, False, False]
    )
    # top-p applies to the renormalised top-k: two equal ids, each 0.5 -> p=0.4 keeps one.
    np.testing.assert_array_equal(
        _jitted_mask(2)(logits, 0.4)[0], [False, True, False, False, False, False]
    )


# ----- random draws -----


def _draw_inputs(seed: int) -> tuple[jax.Array, jax.Array]:
    """Step keys of 3 prompts x 5 samples and [15, 50] logits with ties, bans and -0.0."""
    keys = draws.fold_in(sampling.row_keys(jnp.int32(seed), jnp.arange(3, dtype=jnp.uint32), 5), 7)
    logits = jnp.round(jax.random.normal(jax.random.key(seed), (15, 50)) * 2, 1)
    logits = logits.at[:, :4].set(-jnp.inf).at[:, 4].set(-0.0).at[0].set(0.0)  # row 0: all tied
    return keys, logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_draws_match_jax_random_bit_for_bit(seed):
    """The unrolled threefry and first-max argmax draw exactly what jax.random draws, so the
    sampler's outputs did not change with them."""
    keys, logits = _draw_inputs(seed)
    reference = jax.jit(jax.vmap(jax.random.categorical))(keys, logits)
    np.testing.assert_array_equal(jax.jit(draws.categorical)(keys, logits), reference)
    for step in (0, 1, 19, 2**31 + 5):
        folded = jax.jit(draws.fold_in)(keys, np.uint32(step))
        expected = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, np.uint32(step))
        np.testing.assert_array_equal(jax.random.key_data(folded), jax.random.key_data(expected))


def test_draws_fall_back_to_jax_for_other_prngs():
    keys = jax.random.split(jax.random.key(0, impl="rbg"), 15)
    logits = _draw_inputs(0)[1]
    reference = jax.vmap(jax.random.categorical)(keys, logits)
    np.testing.assert_array_equal(draws.categorical(keys, logits), reference)
    with jax.threefry_partitionable(False):  # the other layout of threefry's counters
        keys = _draw_inputs(0)[0]
        reference = jax.vmap(jax.random.categorical)(keys, logits)
        np.testing.assert_array_equal(draws.categorical(keys, logits), reference)
    folded = jax.random.key_data(draws.fold_in(keys, 3))
    expected = jax.random.key_data(jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, 3))
    np.testing.assert_array_equal(folded, expected)


# ----- sharding and the GenerateFn -----


def mesh_of(devices, data=1, fsdp=1, tensor=1):
    grid = np.array(devices).reshape(data, fsdp, tensor)
    return jax.sharding.Mesh(grid, partitioning.MESH_AXES)


BYTE_CFG = decoder.ModelConfig(
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    vocab_size=264,  # 259 byte ids, padded to a multiple of the 8 test devices
    max_len=48,
    dtype="float32",
)
TEXTS = ["Hello there, my friend", "a", "", "The weather today is mild and"]


def generator(mesh, **kwargs):
    settings_ = dict(max_new_tokens=8, top_p=0.9, temperature=1.0, seed=0, batch_size=16)
    settings_.update(kwargs)
    return sampling.make_generate_fn(
        make_params(BYTE_CFG, seed=3),
        BYTE_CFG,
        seqio.ByteVocabulary(),
        mesh,
        RULES,
        compiler_options=FAST_COMPILE,
        **settings_,
    )


@pytest.mark.parametrize("config", [GREEDY, SAMPLED], ids=["greedy", "top_p"])
def test_sharded_sampling_equals_single_device(config):
    """data=2, fsdp=2, tensor=2 over the 8 test devices: the same tokens as one device."""
    devices = jax.devices()
    assert len(devices) == 8
    mesh = mesh_of(devices, data=2, fsdp=2, tensor=2)
    sharded_fn = compiled(config, 2, True, True, mesh)
    params = jax.device_put(make_params(CFG), partitioning.param_shardings(CFG, mesh, RULES))
    kernel = params["layers"]["mlp"]["wi"]["kernel"]
    assert len(kernel.sharding.device_set) == 8  # really laid out over the mesh
    _, *rest = inputs(0)
    sharded = jax.device_get(sharded_fn(params, *rest))
    single = run_generate(config)
    np.testing.assert_array_equal(sharded["tokens"], single["tokens"])
    np.testing.assert_allclose(sharded["logits"], single["logits"], atol=1e-4, rtol=1e-4)


def test_generate_fn_strings_in_strings_out():
    mesh = mesh_of(jax.devices()[:1])
    generate = generator(mesh, batch_size=4)  # 2 prompts x 2 samples per call: 2 calls
    outputs = generate(TEXTS, 2)
    assert len(outputs) == len(TEXTS)
    assert all(
        len(samples) == 2 and all(isinstance(s, str) for s in samples) for samples in outputs
    )
    vocabulary = seqio.ByteVocabulary()
    for samples in outputs:
        for text in samples:
            assert 0 < len(vocabulary.encode(text)) <= 8 or text == ""
    assert outputs[0][0] != outputs[0][1]  # independent samples
    # Prompt order is restored after length bucketing.
    assert generate([TEXTS[3], TEXTS[0]], 2) == [outputs[3], outputs[0]]
    # Batch composition and padding do not matter: one call of 4 prompts padded to 32 tokens.
    assert generator(mesh, batch_size=64)(TEXTS, 2) == outputs
    # Prompts start from the training start id; one longer than max_len - max_new_tokens (40)
    # keeps that and its last 39 tokens.
    long_prompt = "x" * 100 + TEXTS[0]
    assert generate.encode(long_prompt) == [START, *vocabulary.encode(long_prompt[-39:])]
    assert generate.encode("") == [START]
    with pytest.raises(ValueError, match="EOS"):
        generator(mesh, banned_ids=[EOS])


def test_length_bucket_and_prompt_key():
    assert sampling.length_bucket(3, 40) == 16
    assert sampling.length_bucket(17, 40) == 32
    assert sampling.length_bucket(33, 40) == 40
    with pytest.raises(ValueError, match="exceeds"):
        sampling.length_bucket(41, 40)
    assert sampling.prompt_key("abc") == sampling.prompt_key("abc") != sampling.prompt_key("abd")
