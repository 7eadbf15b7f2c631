"""lm-evaluation-harness model "toxjax": a training run's checkpoint through our jitted engines.

    import toxjax.interop.lm_eval_adapter  # registers the model name "toxjax"
    lm_eval.simple_evaluate(model="toxjax", model_args="checkpoint=WORKDIR,batch_size=32", ...)

or `python -m toxjax.interop.lm_eval_main --checkpoint=WORKDIR --tasks=...` (lm_eval 0.4.13
finds models only among imported modules: its command line alone does not know "toxjax").

model_args: checkpoint (a workdir, required), step (default latest), batch_size (sequences
per log-likelihood call), max_length (default config.model.max_len), max_gen_toks (default
256, at most half the context), conditioning ("" none; "trained" the run's inference prefix;
or a strategy name) put in front of every context, vocabulary / strategy (see
toxjax.interop.trained_run), seed (sampling), guidance_scale (default 0: off) and
guidance_form (cfg or dexperts; toxjax.inference.guidance).

- loglikelihood: `toxjax.inference.loglik` (the harness' tokenization: trailing whitespace of
  the context moves to the continuation; every context starts from the start id every
  training document starts from, `vocab.START_ID`, where the harness uses EOS).
- loglikelihood_rolling: the harness' disjoint rolling windows of max_length tokens (the
  start id first, as its prefix token), scored by the same engine.
- generate_until: the KV-cache sampler (`toxjax.inference.sampling`), greedy unless do_sample
  with a temperature > 0; the text is cut at the first stop sequence. With guidance_scale > 0
  each context is decoded guided: under the non-toxic signal (c+) and the toxic one (c-) of
  the conditioning's strategy (the run's own when conditioning is empty), each written as the
  evaluation writes prompts (`inference_prefix` + context + `inference_suffix`, and
  `toxic_prefix` / `toxic_suffix`). A strategy without signals (base, filter) refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from toxjax.data import vocab
from toxjax.data.conditioning import Strategy
from toxjax.inference import guidance, loglik, sampling
from toxjax.inference.requests import LoglikelihoodRequest
from toxjax.interop import trained_run

try:
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as error:  # an optional dependency
    raise ImportError(
        "the lm-evaluation-harness adapter needs lm_eval: pip install 'toxjax[lm-eval]'"
    ) from error

MODEL_NAME = "toxjax"
DEFAULT_MAX_GEN_TOKS = 256


def harness_request(context: str, continuation: str, prefix: str = "") -> LoglikelihoodRequest:
    """A harness (context, continuation) pair as our request, with the conditioning prefix."""
    return LoglikelihoodRequest(prefix + context, continuation)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop sequence."""
    cut = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found >= 0:
                cut = min(cut, found)
    return text[:cut]


def _stops(gen_kwargs: Mapping[str, Any]) -> list[str]:
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


def rolling_windows(
    tokens: Sequence[int], prefix_ids: Sequence[int], max_length: int
) -> list[tuple[list[int], int]]:
    """(sequence, scored count) windows predicting every token once: the harness' disjoint
    rolling windows (context length 1, the start id first), the first one read after the
    prefix."""
    start = vocab.START_ID
    windows = []
    rolling = lm_eval_utils.get_rolling_token_windows(
        token_list=list(tokens), prefix_token=start, max_seq_len=max_length, context_len=1
    )
    for context, predicted in map(lm_eval_utils.make_disjoint_window, rolling):
        if not windows and prefix_ids:
            context = [start, *prefix_ids]  # the engine keeps the end if this is too long
        windows.append(([*context, *predicted], len(predicted)))
    return windows


@register_model(MODEL_NAME)
class ToxjaxLM(LM):
    """A toxjax run as an lm_eval LM (see module docstring)."""

    def __init__(
        self,
        checkpoint: str,
        step: int | None = None,
        batch_size: int | str = 32,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        conditioning: str = "",
        vocabulary: str = "",
        strategy: str = "",
        seed: int = 0,
        guidance_scale: float = 0.0,
        guidance_form: str = "cfg",
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            logging.info("toxjax lm_eval model: ignoring arguments %s", sorted(unused))
        self.run = trained_run.load_run(
            str(checkpoint),
            step=None if step is None else int(step),
            vocabulary=vocabulary or "",
            strategy=strategy or "",
        )
        cfg = self.run.model_config
        self.batch_size = 32 if str(batch_size) == "auto" else int(batch_size)
        self.max_length = int(max_length or cfg.max_len)
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self.prefix = self._prefix(str(conditioning or ""))
        self.guidance_scale = float(guidance_scale)
        self.guidance_form = str(guidance_form)
        guidance.check(self.guidance_scale, self.guidance_form)
        self.signals = self._signals(str(conditioning or "")) if self.guidance_scale > 0 else None
        self.engine = loglik.make_loglikelihood_fn(
            self.run.params,
            cfg,
            self.run.vocabulary,
            self.run.mesh,
            self.run.rules,
            batch_size=self.batch_size,
            max_len=self.max_length,
            progress=False,
        )
        self._generators: dict[tuple, sampling.Generator] = {}

    def _prefix(self, conditioning: str) -> str:
        """The signal in front of every harness context. A signal meant for after a prompt
        (SEGMENT's token) goes in front too: a harness context is a document of its own, as
        the held-out text of the real-text metrics is."""
        if not conditioning or conditioning == "none":
            return ""
        strategy = self.run.strategy if conditioning == "trained" else Strategy.parse(conditioning)
        return self.run.fmt.text_prefix(strategy)

    def _signals(self, conditioning: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """((prefix, suffix) of c+, (prefix, suffix) of c-) around a guided context."""
        strategy = self.run.strategy
        if conditioning and conditioning not in ("trained", "none"):
            strategy = Strategy.parse(conditioning)
        fmt = self.run.fmt
        positive = (fmt.inference_prefix(strategy), fmt.inference_suffix(strategy))
        negative = (fmt.toxic_prefix(strategy), fmt.toxic_suffix(strategy))
        if not "".join(positive) or not "".join(negative):
            raise ValueError(
                f"guided decoding contrasts a non-toxic and a toxic signal, and strategy "
                f"{strategy.value!r} has none: set guidance_scale=0, or conditioning / strategy "
                "to a conditioned strategy (meda, inst, segment)"
            )
        return positive, negative

    # ----- log-likelihood -----

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple]:
        ours = [harness_request(*request.args, prefix=self.prefix) for request in requests]
        results = self.engine(ours)
        answers = [(r.logprob, r.is_greedy) for r in results]
        for request, answer in zip(requests, answers, strict=True):
            self.cache_hook.add_partial("loglikelihood", request.args, answer)
        return answers

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list:
        vocabulary = self.run.vocabulary
        prefix_ids = [int(i) for i in vocabulary.encode(self.prefix)] if self.prefix else []
        windows, owners = [], []
        for index, request in enumerate(requests):
            (text,) = request.args
            tokens = [int(i) for i in vocabulary.encode(self.prefix + text)][len(prefix_ids) :]
            for window in rolling_windows(tokens, prefix_ids, self.max_length):
                windows.append(window)
                owners.append(index)
        scored = self.engine.score_tokens(windows) if windows else []
        totals = [0.0] * len(requests)
        for owner, result in zip(owners, scored, strict=True):
            totals[owner] += result.logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ----- generation -----

    def _generator(self, gen_kwargs: Mapping[str, Any]) -> sampling.Generator:
        limit = self.run.model_config.max_len // 2
        max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        if max_new > limit:
            logging.warning("max_gen_toks %d > half the context: %d tokens", max_new, limit)
            max_new = limit
        sample = bool(gen_kwargs.get("do_sample", False))
        temperature = float(gen_kwargs.get("temperature", 1.0 if sample else 0.0))
        top_p = float(gen_kwargs.get("top_p", 1.0)) if sample else 1.0
        key = (max_new, temperature if sample else 0.0, top_p)
        if key not in self._generators:
            self._generators[key] = sampling.make_generate_fn(
                self.run.params,
                self.run.model_config,
                self.run.vocabulary,
                self.run.mesh,
                self.run.rules,
                max_new_tokens=key[0],
                temperature=key[1],
                top_p=key[2],
                seed=self.seed,
                batch_size=self.batch_size,
                guidance_scale=self.guidance_scale,
                guidance_form=self.guidance_form,
            )
        return self._generators[key]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            _, gen_kwargs = request.args
            key = tuple(sorted((k, repr(v)) for k, v in dict(gen_kwargs).items()))
            groups.setdefault(key, []).append(index)
        outputs: list[str] = [""] * len(requests)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1])
            generator = self._generator(gen_kwargs)
            contexts = [requests[i].args[0] for i in indices]
            if self.signals is None:
                texts = generator([self.prefix + context for context in contexts], 1)
            else:
                (before, after), (toxic_before, toxic_after) = self.signals
                prompts = [before + context + after for context in contexts]
                negatives = [toxic_before + context + toxic_after for context in contexts]
                texts = generator(prompts, 1, negatives=negatives)
            for index, samples in zip(indices, texts, strict=True):
                outputs[index] = cut_at_stops(samples[0], _stops(gen_kwargs))
                self.cache_hook.add_partial("generate_until", requests[index].args, outputs[index])
        return outputs
