"""Self-guided (contrastive) decoding: one next-token distribution from a conditioned model's
logits under its non-toxic signal (c+, "positive") and under its toxic signal or none (c-,
"negative"). The sampler decodes both conditions of a sample in one batch and appends the
token drawn from the combination to both (`sampling.generate_tokens`).

- "cfg", classifier-free guidance (Sanchez et al. 2023) with the model's own toxic signal as
  c-: log p(w|c-) + γ (log p(w|c+) - log p(w|c-)), γ = 1 + scale, written as
  positive + scale * (log p+ - log p-). That is the same distribution (the positive logits
  differ from log p+ by a per-row constant), and scale 0 returns the positive logits
  themselves: the unguided sampler's exactly.
- "dexperts" (Liu et al. 2021): the same sum on the top-p nucleus of the positive distribution
  only (DExperts restricts its base model's nucleus before adding the expert / anti-expert
  difference); every other id gets -inf.

The result then goes through the sampler's usual filters (banned ids, temperature, top-k,
top-p), as the positive logits alone would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toxjax.inference import filtering

FORMS = ("cfg", "dexperts")


def check(scale: float, form: str) -> None:
    """Raises ValueError unless `form` is one of FORMS and scale a finite number >= 0."""
    if form not in FORMS:
        raise ValueError(f"guidance form must be one of {FORMS}, got {form!r}")
    if not 0.0 <= float(scale) < float("inf"):
        raise ValueError(f"guidance scale must be finite and >= 0, got {scale}")


def combine_logits(
    positive: jax.Array, negative: jax.Array, *, scale: float, form: str, top_p: float
) -> jax.Array:
    """Guided logits [rows, vocab] (float32) from c+ and c- logits [rows, vocab].

    scale and top_p are Python numbers (they decide the traced computation). An id either
    condition rules out (-inf) gets no guidance term, so a banned id stays -inf and no
    inf - inf or inf * 0 turns into NaN.
    """
    check(scale, form)
    positive = positive.astype(jnp.float32)
    if scale == 0.0:
        guided = positive  # x + 0 * y would turn -0.0 into 0.0: keep the logits themselves
    else:
        difference = jax.nn.log_softmax(positive, axis=-1) - jax.nn.log_softmax(
            negative.astype(jnp.float32), axis=-1
        )
        difference = jnp.where(jnp.isfinite(difference), difference, 0.0)
        guided = positive + jnp.float32(scale) * difference
    if form == "dexperts" and top_p < 1.0:
        guided = jnp.where(filtering.nucleus_mask(positive, top_p), guided, -jnp.inf)
    return guided
