"""Batched autoregressive sampling with a KV cache, jitted and sharded like training.

One call of `generate_tokens` prefills a whole left-padded prompt batch at once, then decodes
`num_samples` rows per prompt one token per step inside a `lax.while_loop` that stops when
every row has emitted EOS.

Padding: prompts are LEFT-padded so every row writes the same cache slot at each step (the
cache index is shared by the batch). Real tokens get segment id 1 and positions counting from
their first real token; pad slots get segment id 0, so the model's segment mask keeps them out
of every real token's attention. Results therefore do not depend on how prompts were padded
or batched (tests compare against a plain forward pass of each unpadded row).

Cache (`kv_cache`): the prompt's keys/values are kept once per prompt and shared by its samples
(`attention_ops.cached_attention` reads them as a prefix), and each row caches only its own
max_new_tokens tokens. With RealToxicityPrompts' 25 samples per prompt that cuts the cache
each step reads by about 4x. `Decoder.init(..., decode=True)` would size a cache for max_len
tokens; the attention reads however many slots the arrays hold, so only what is needed is
allocated. Scanned models decode through their per-layer twin (`kv_cache.unscanned`).

Randomness: each output row draws from its own key, fold_in(fold_in(seed, prompt key), sample
index), folded with the step. A prompt's samples therefore depend only on (seed, prompt key),
not on batch size, bucketing, padding or the device mesh. Per-step draws go through `draws`
(jax.random's draws bit for bit, without its slow CPU lowerings).

Filtering order (as Hugging Face's warpers): banned ids -> temperature -> top-k -> top-p
(on the distribution renormalised after top-k; `filtering`). Ties are broken by token id (lower
id first).

Guidance (`guidance`): given a second, "negative" prompt per row (the same text under the toxic
signal, or none), each sample is decoded under both prompts in one batch, each with its own
cache and positions; every step combines the two rows' logits (`guidance.combine_logits`) into
the logits the token is drawn from, with the unguided path's key, and feeds that token to both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from toxjax.data import vocab
from toxjax.inference import draws, filtering, guidance, kv_cache
from toxjax.model import decoder, partitioning

PyTree = Any
Draw = Callable[[jax.Array, Any], tuple[jax.Array, jax.Array]]  # (logits, step) -> token, logits
MIN_BUCKET = 16  # shortest padded prompt length (bucket lengths are powers of two from here)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding controls; hashable, so it can be closed over by a jitted function."""

    max_new_tokens: int = 20
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus: smallest set with cumulative probability >= top_p
    top_k: int = 0  # 0 = no top-k filter
    eos_id: int = -1  # a row stops after emitting it; -1 = never stop early
    pad_id: int = 0  # written after EOS
    banned_ids: tuple[int, ...] = ()  # never sampled
    # Guided decoding (used when negative prompts are given): 0 = the positive logits as they
    # are; the form is one of guidance.FORMS.
    guidance_scale: float = 0.0
    guidance_form: str = "cfg"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        guidance.check(self.guidance_scale, self.guidance_form)
        object.__setattr__(self, "banned_ids", tuple(sorted({int(i) for i in self.banned_ids})))


# ----- drawing (a pure function of logits) -----


def sample_next(logits: jax.Array, keys: jax.Array, config: SamplingConfig) -> jax.Array:
    """One token per row of logits [rows, vocab]; keys [rows] are the rows' step keys."""
    logits = logits.astype(jnp.float32)
    if config.banned_ids:  # a constant mask (a select), not a scatter into the logits
        vocab = logits.shape[-1]
        banned = [i % vocab for i in config.banned_ids if -vocab <= i < vocab]  # as .at[].set
        logits = jnp.where(np.isin(np.arange(vocab), banned), -jnp.inf, logits)
    if config.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / config.temperature
    if config.top_k > 0 or config.top_p < 1.0:
        keep = filtering.filter_mask(logits, top_k=config.top_k, top_p=config.top_p)
        logits = jnp.where(keep, logits, -jnp.inf)
    return draws.categorical(keys, logits)


def padded_layout(lengths: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """(positions, segment_ids) [rows, width] of left-padded rows with `lengths` real tokens."""
    index = jnp.arange(width, dtype=jnp.int32)[None, :]
    first = (width - lengths.astype(jnp.int32))[:, None]
    real = index >= first
    return jnp.where(real, index - first, 0), real.astype(jnp.int32)


def row_keys(seed: jax.Array, prompt_keys: jax.Array, num_samples: int) -> jax.Array:
    """Keys [rows * num_samples]: fold_in(fold_in(key(seed), prompt key), sample index)."""
    base = jax.random.key(seed)
    num_prompts = prompt_keys.shape[0]
    per_row_prompt = jnp.repeat(prompt_keys.astype(jnp.uint32), num_samples)
    sample_index = jnp.tile(jnp.arange(num_samples, dtype=jnp.uint32), num_prompts)
    return jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))(
        per_row_prompt, sample_index
    )


def _emit(
    config: SamplingConfig, step: jax.Array, token: jax.Array, logits: jax.Array, state: dict
) -> dict[str, jax.Array]:
    """Records the token drawn at `step` (pad once a row is done) and its logits if kept."""
    done = state["done"]
    state = dict(state, last=token, done=done | (token == config.eos_id))
    state["tokens"] = state["tokens"].at[:, step].set(jnp.where(done, config.pad_id, token))
    state["num_tokens"] = state["num_tokens"] + (~done).astype(jnp.int32)
    if "logits" in state:
        state["logits"] = state["logits"].at[:, step].set(logits)
    return state


def _initial_state(rows: int, vocab: int, config: SamplingConfig, return_logits: bool) -> dict:
    state = {
        "tokens": jnp.full((rows, config.max_new_tokens), config.pad_id, jnp.int32),
        "num_tokens": jnp.zeros((rows,), jnp.int32),
        "done": jnp.zeros((rows,), bool),
        "last": jnp.zeros((rows,), jnp.int32),
    }
    if return_logits:
        state["logits"] = jnp.zeros((rows, config.max_new_tokens, vocab), jnp.float32)
    return state


def _outputs(state: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: state[k] for k in ("tokens", "num_tokens", "logits") if k in state}


# ----- generation -----


def generate_tokens(
    params: PyTree,
    prompts: jax.Array,
    lengths: jax.Array,
    prompt_keys: jax.Array,
    seed: jax.Array,
    negative_prompts: jax.Array | None = None,
    negative_lengths: jax.Array | None = None,
    *,
    model: decoder.Decoder,
    config: SamplingConfig,
    num_samples: int,
    return_logits: bool = False,
    use_cache: bool = True,
) -> dict[str, jax.Array]:
    """Samples `num_samples` continuations of each left-padded prompt row.

    prompts [b, p] (left-padded), lengths [b] (real tokens, >= 1), prompt_keys [b] (uint32,
    the rows' random streams). Returns "tokens" [b * num_samples, max_new_tokens] (pad after
    EOS; rows grouped by prompt), "num_tokens" [b * n] (generated, EOS included) and, with
    return_logits, the "logits" [b * n, max_new_tokens, vocab] each token was drawn from (raw;
    guided: the combined logits, before banned ids, temperature and top-k/top-p).
    negative_prompts [b, q] (left-padded, q may differ from p) and negative_lengths [b] make
    the decoding guided by config.guidance_scale / guidance_form (module docstring).
    One prefill of the prompts, then one cached step per token until every row is done;
    use_cache=False decodes without a cache instead (`generate_tokens_recompute`).
    """
    if (negative_prompts is None) != (negative_lengths is None):
        raise ValueError("guided decoding needs both negative_prompts and negative_lengths")
    rows = prompts.shape[0] * num_samples
    keys = row_keys(seed, prompt_keys, num_samples)
    state = _initial_state(rows, model.cfg.vocab_size, config, return_logits)
    guided = negative_prompts is not None
    if guided:
        prompts, lengths = _stack_conditions(prompts, lengths, negative_prompts, negative_lengths)
    draw = functools.partial(_draw, keys=keys, config=config, guided=guided)
    decode = _cached if use_cache else _recompute
    lengths = lengths.astype(jnp.int32)
    return _outputs(decode(params, prompts, lengths, draw, state, model, config, num_samples))


# Reference without a cache: every step reruns the model over the whole sequence buffer. Same
# inputs, keys and filtering as `generate_tokens`, so both draw the same samples; the
# benchmark's "recompute" baseline and the cache's correctness oracle.
generate_tokens_recompute = functools.partial(generate_tokens, use_cache=False)


def _stack_conditions(
    prompts: jax.Array, lengths: jax.Array, negatives: jax.Array, negative_lengths: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Positive rows, then negative rows, left-padded to one width (pad slots are masked out,
    so the width changes no result)."""
    if negatives.shape[0] != prompts.shape[0] or negative_lengths.shape != lengths.shape:
        raise ValueError(
            f"negative prompts {negatives.shape} / lengths {negative_lengths.shape} do not "
            f"match the prompts {prompts.shape} / lengths {lengths.shape} row for row"
        )
    width = max(prompts.shape[1], negatives.shape[1])

    def widen(tokens: jax.Array) -> jax.Array:
        return jnp.pad(tokens.astype(jnp.int32), ((0, 0), (width - tokens.shape[1], 0)))

    stacked = jnp.concatenate([widen(prompts), widen(negatives)])
    return stacked, jnp.concatenate([lengths, negative_lengths]).astype(jnp.int32)


def _draw(
    logits: jax.Array, step: Any, *, keys: jax.Array, config: SamplingConfig, guided: bool
) -> tuple[jax.Array, jax.Array]:
    """(token [rows], the logits it was drawn from) of one step; guided, logits holds the
    positive rows then the negative rows, combined first."""
    if guided:
        positive, negative = jnp.split(logits, 2)
        logits = guidance.combine_logits(
            positive,
            negative,
            scale=config.guidance_scale,
            form=config.guidance_form,
            top_p=config.top_p,
        )
    return sample_next(logits, draws.fold_in(keys, step), config), logits


def _cached(
    params: PyTree,
    prompts: jax.Array,
    lengths: jax.Array,
    draw: Draw,
    state: dict[str, jax.Array],
    model: decoder.Decoder,
    config: SamplingConfig,
    num_samples: int,
) -> dict[str, jax.Array]:
    """`generate_tokens`'s steps with the cache; prompts [conditions * b, width] (guided: the
    positive rows, then the negative rows)."""
    batch, width = prompts.shape
    steps = config.max_new_tokens
    rows = batch * num_samples  # decoded rows, both conditions' when guided
    conditions = rows // state["done"].shape[0]
    model, params = kv_cache.unscanned(model, params)
    positions, segment_ids = padded_layout(lengths, width)
    cache = kv_cache.init_cache(model, batch, width)
    logits, variables = model.apply(
        {"params": params, "cache": cache},
        prompts,
        positions=positions,
        segment_ids=segment_ids,
        decode=True,
        mutable=["cache"],
    )
    state = dict(state, cache=kv_cache.share_prompt_cache(variables["cache"], num_samples, steps))
    lengths = jnp.repeat(lengths, num_samples)
    first, drawn = draw(jnp.repeat(logits[:, -1], num_samples, axis=0), 0)
    state = _emit(config, jnp.int32(0), first, drawn, state)

    def cond(carry: tuple[jax.Array, dict[str, jax.Array]]) -> jax.Array:
        t, state = carry
        return (t < steps) & ~jnp.all(state["done"])

    def body(carry: tuple[jax.Array, dict[str, jax.Array]]) -> tuple:
        t, state = carry
        logits, variables = model.apply(
            {"params": params, "cache": state["cache"]},
            jnp.tile(state["last"], conditions)[:, None],  # each condition's row, same token
            positions=(lengths + t - 1)[:, None],
            segment_ids=jnp.ones((rows, 1), jnp.int32),
            decode=True,
            mutable=["cache"],
        )
        state = dict(state, cache=variables["cache"])
        token, drawn = draw(logits[:, 0], t)
        return t + 1, _emit(config, t, token, drawn, state)

    _, state = jax.lax.while_loop(cond, body, (jnp.int32(1), state))
    return state


def _recompute(
    params: PyTree,
    prompts: jax.Array,
    lengths: jax.Array,
    draw: Draw,
    state: dict[str, jax.Array],
    model: decoder.Decoder,
    config: SamplingConfig,
    num_samples: int,
) -> dict[str, jax.Array]:
    """`generate_tokens`'s steps without a cache: the model reruns over prompts and samples."""
    batch, width = prompts.shape
    steps = config.max_new_tokens
    rows = batch * num_samples
    conditions = rows // state["done"].shape[0]
    buffer = (
        jnp.zeros((rows, width + steps), jnp.int32)
        .at[:, :width]
        .set(jnp.repeat(prompts.astype(jnp.int32), num_samples, axis=0))
    )
    lengths = jnp.repeat(lengths, num_samples)
    positions, prompt_segments = padded_layout(lengths, width)
    after = jnp.arange(steps, dtype=jnp.int32)[None, :]
    positions = jnp.concatenate([positions, lengths[:, None] + after], axis=1)

    def body(t: jax.Array, state: dict[str, jax.Array]) -> dict[str, jax.Array]:
        generated = jnp.broadcast_to(after < t, (rows, steps)).astype(jnp.int32)
        segments = jnp.concatenate([prompt_segments, generated], axis=1)
        logits = model.apply(
            {"params": params}, state["buffer"], positions=positions, segment_ids=segments
        )
        logits = jax.lax.dynamic_index_in_dim(logits, width + t - 1, axis=1, keepdims=False)
        token, drawn = draw(logits, t)
        state = _emit(config, t, token, drawn, state)
        state["buffer"] = state["buffer"].at[:, width + t].set(jnp.tile(token, conditions))
        return state

    return jax.lax.fori_loop(0, steps, body, dict(state, buffer=buffer))


# ----- batching -----


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def length_bucket(length: int, max_length: int, min_bucket: int = MIN_BUCKET) -> int:
    """Padded length for `length`: the next power of two >= min_bucket, capped at max_length."""
    if length > max_length:
        raise ValueError(f"length {length} exceeds the maximum {max_length}")
    bucket = max(min_bucket, 1 << max(0, math.ceil(math.log2(max(length, 1)))))
    return min(bucket, max_length)


def prompt_key(text: str) -> int:
    """A prompt's random stream id: CRC32 of its text (stable across runs and machines)."""
    return zlib.crc32(text.encode("utf-8"))


# ----- strings in, strings out -----


class Generator:
    """`GenerateFn` over a Decoder: tokenizes, buckets by length, samples, detokenizes.

    `batch_size` counts decoded rows (prompts x samples, x 2 when guided); prompts are grouped
    by token length so each compiled shape is reused. Every prompt starts from the start id
    every training document starts from (`vocab.START_ID`); prompts longer than max_len -
    max_new_tokens keep it and their last tokens (left truncation).
    """

    def __init__(
        self,
        params: PyTree,
        on_mesh: partitioning.ModelOnMesh,
        vocabulary: Any,
        sampling: SamplingConfig,
        *,
        seed: int = 0,
        batch_size: int = 256,
        use_cache: bool = True,
    ) -> None:
        """sampling: the decoding controls; its eos_id and pad_id come from the vocabulary,
        and PAD plus the embedding rows the vocabulary cannot decode join its banned_ids."""
        model_config = self.model_config = on_mesh.model_config
        self.vocabulary = vocabulary
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        max_new_tokens = sampling.max_new_tokens
        self.max_prompt_len = model_config.max_len - max_new_tokens
        if self.max_prompt_len < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt within "
                f"config.model.max_len={model_config.max_len}"
            )
        vocab_size = int(vocabulary.vocab_size)
        if vocab_size > model_config.vocab_size:
            raise ValueError(
                f"vocabulary has {vocab_size} ids but config.model.vocab_size is "
                f"{model_config.vocab_size}"
            )
        self.eos_id = int(vocabulary.eos_id)
        pad_id = int(vocabulary.pad_id)
        # Padding rows of the embedding table (ids the vocabulary cannot decode), PAD itself and
        # the start id (never a training target).
        banned = {
            *sampling.banned_ids,
            pad_id,
            vocab.START_ID,
            *range(vocab_size, model_config.vocab_size),
        }
        if self.eos_id in banned:
            raise ValueError(
                f"banned_ids must not contain EOS ({self.eos_id}): rows could not stop"
            )
        if len(banned) >= model_config.vocab_size:
            raise ValueError("banned_ids leave no token to sample")
        self.config = dataclasses.replace(
            sampling, eos_id=self.eos_id, pad_id=pad_id, banned_ids=tuple(banned)
        )
        self.on_mesh = on_mesh
        self.params, self._param_shardings = on_mesh.place(params)
        self._shards = on_mesh.batch_shards()
        self._use_cache = use_cache
        self._compiled: dict[tuple[int, bool], partitioning.PartitionedFunction] = {}

    def _function(self, num_samples: int, guided: bool) -> partitioning.PartitionedFunction:
        if (num_samples, guided) not in self._compiled:
            fn = functools.partial(
                generate_tokens,
                model=decoder.Decoder(self.model_config),
                config=self.config,
                num_samples=num_samples,
                use_cache=self._use_cache,
            )
            self._compiled[num_samples, guided] = self.on_mesh.replicated_function(
                fn, self._param_shardings, num_inputs=6 if guided else 4
            )
        return self._compiled[num_samples, guided]

    def encode(self, text: str) -> list[int]:
        """Prompt ids: the start id every training document starts from, then the text's
        (its end, when longer than max_len - max_new_tokens - 1)."""
        return self._fit([int(i) for i in self.vocabulary.encode(text)])

    def _fit(self, ids: list[int]) -> list[int]:
        keep = self.max_prompt_len - 1  # the start id takes one slot
        return [vocab.START_ID, *ids[max(0, len(ids) - keep) :]]

    def _check_lengths(self, prompts: Sequence[Sequence[int]], what: str) -> None:
        for index, ids in enumerate(prompts):
            if not 1 <= len(ids) <= self.max_prompt_len:
                raise ValueError(
                    f"{what} {index} has {len(ids)} tokens; expected 1..{self.max_prompt_len}"
                )

    def _left_padded(
        self, prompts: Sequence[Sequence[int]], width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [rows, width], lengths [rows]) of prompts left-padded with PAD."""
        tokens = np.full((len(prompts), width), self.config.pad_id, np.int32)
        for row, ids in enumerate(prompts):
            tokens[row, width - len(ids) :] = ids
        return tokens, np.array([len(ids) for ids in prompts], np.int32)

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        num_samples: int,
        keys: Sequence[int],
        negatives: Sequence[Sequence[int]] | None = None,
    ) -> list[list[list[int]]]:
        """Token ids of `num_samples` continuations per prompt (EOS and what follows removed).

        negatives: one id sequence per prompt (c-); decoding is then guided by the config's
        guidance_scale / guidance_form, and each sample's two rows count toward batch_size.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} keys for {len(prompts)} prompts")
        conditions = [prompts] if negatives is None else [prompts, negatives]
        if len(conditions[-1]) != len(prompts):
            raise ValueError(f"{len(conditions[-1])} negatives for {len(prompts)} prompts")
        for sequences, what in zip(conditions, ("prompt", "negative"), strict=False):
            self._check_lengths(sequences, what)
        per_call = round_up(
            max(1, self.batch_size // (num_samples * len(conditions))), self._shards
        )
        longest = [max(len(c[i]) for c in conditions) for i in range(len(prompts))]
        order = sorted(range(len(prompts)), key=longest.__getitem__)
        outputs: list[list[list[int]]] = [[] for _ in prompts]
        fn = self._function(num_samples, guided=negatives is not None)
        for start in range(0, len(order), per_call):
            chunk = order[start : start + per_call]
            rows = min(per_call, round_up(1 << math.ceil(math.log2(len(chunk))), self._shards))
            width = length_bucket(max(longest[i] for i in chunk), self.max_prompt_len)
            filled = [chunk[min(row, len(chunk) - 1)] for row in range(rows)]  # fillers repeat
            tokens, lengths = self._left_padded([prompts[i] for i in filled], width)
            row_key = np.array([keys[i] for i in filled], np.uint32)
            args = [tokens, lengths, row_key, np.int32(self.seed)]
            if negatives is not None:
                args += self._left_padded([negatives[i] for i in filled], width)
            result = jax.device_get(fn(self.params, *args))
            generated = result["tokens"].reshape(rows, num_samples, -1)
            counts = result["num_tokens"].reshape(rows, num_samples)
            for row, index in enumerate(chunk):
                outputs[index] = [
                    self._strip_eos(generated[row, s, : counts[row, s]]) for s in range(num_samples)
                ]
        return outputs

    def _strip_eos(self, ids: np.ndarray) -> list[int]:
        ids = ids.tolist()
        return ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids

    def __call__(
        self, prompts: Sequence[str], num_samples: int, negatives: Sequence[str] | None = None
    ) -> list[list[str]]:
        """Continuations of each prompt; with negatives (one model input per prompt: the same
        text under the toxic signal, or none) guided by the config's guidance settings."""
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negatives for {len(prompts)} prompts")
        texts = [*prompts, *(negatives or ())]
        full = [[int(i) for i in self.vocabulary.encode(text)] for text in texts]
        truncated = sum(len(ids) >= self.max_prompt_len for ids in full)
        if truncated:
            logging.warning(
                "%d prompts left-truncated to %d tokens", truncated, self.max_prompt_len - 1
            )
        fitted = [self._fit(x) for x in full]
        keys = [prompt_key(p) for p in prompts]
        positive, negative = fitted[: len(prompts)], fitted[len(prompts) :]
        ids = self.generate_ids(
            positive, num_samples, keys, negatives=None if negatives is None else negative
        )
        return [[self.vocabulary.decode(sample) for sample in samples] for samples in ids]


def make_generate_fn(
    params: PyTree,
    model_config: decoder.ModelConfig,
    vocabulary: Any,
    mesh: Mesh,
    rules: Sequence,
    *,
    max_new_tokens: int,
    top_p: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    banned_ids: Sequence[int] = (),
    guidance_scale: float = 0.0,
    guidance_form: str = "cfg",
    compiler_options: Mapping[str, Any] | None = None,
    **engine_settings: Any,
) -> Generator:
    """A `toxjax.inference.requests.GenerateFn` (strings in, continuations out).

    The decoding controls become the Generator's SamplingConfig (the guidance settings apply
    to calls given negatives); engine_settings are its seed, batch_size and use_cache.
    """
    sampling = SamplingConfig(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        banned_ids=tuple(banned_ids),
        guidance_scale=float(guidance_scale),
        guidance_form=str(guidance_form),
    )
    on_mesh = partitioning.ModelOnMesh(model_config, mesh, rules, compiler_options)
    return Generator(params, on_mesh, vocabulary, sampling, **engine_settings)
