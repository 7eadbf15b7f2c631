"""The fluency judge: a model that scores continuations given their prompts (config.eval.judge).

The same judge must score every model compared, so it is named by a directory, not taken from
the run being evaluated:
- a toxjax run directory (config.json written by toxjax.main): its latest checkpoint through
  toxjax's own log-likelihood engine (the study's default is its BASE run);
- a transformers model directory (config.json with a "model_type"): scored with PyTorch, the
  continuation's tokens being what encoding prompt + continuation adds after the prompt's (as
  lm-evaluation-harness); a prompt that encodes to nothing starts from BOS (or EOS).

The evaluation layer sits below this one, so `toxjax.main` and the study pass `load_judge` to
the Evaluator as its judge_loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from toxjax import fileio
from toxjax.inference import loglik
from toxjax.inference.requests import LoglikelihoodFn, LoglikelihoodRequest, LoglikelihoodResult
from toxjax.interop import trained_run

BATCH_SIZE = 256  # sequences scored together (a run judges 25 samples x prompts x conditions)


def _kind(path: str) -> str:
    config_path = fileio.join(path, trained_run.CONFIG_FILE)
    if not fileio.exists(config_path):
        raise FileNotFoundError(
            f"config.eval.judge={path!r}: no config.json there; expected a toxjax run directory "
            "or a transformers model directory"
        )
    config = fileio.read_json(config_path)
    if isinstance(config, dict) and "model_type" in config:
        return "transformers"
    if isinstance(config, dict) and "model" in config and "data" in config:
        return "toxjax"
    raise ValueError(
        f"{config_path}: neither a toxjax run config (fields 'model' and 'data') nor a "
        "transformers config (field 'model_type')"
    )


def load_judge(path: str, *, batch_size: int = BATCH_SIZE) -> LoglikelihoodFn:
    """The LoglikelihoodFn of the judge at `path` (see module docstring)."""
    if _kind(path) == "transformers":
        return TransformersJudge(path, batch_size=batch_size)
    run = trained_run.load_run(path)
    return loglik.make_loglikelihood_fn(
        run.params,
        run.model_config,
        run.vocabulary,
        run.mesh,
        run.rules,
        batch_size=batch_size,
        progress=False,
    )


class TransformersJudge:
    """A transformers causal LM as a LoglikelihoodFn (PyTorch, float32, this host's CPU/GPU)."""

    def __init__(self, path: str, *, batch_size: int = BATCH_SIZE) -> None:
        import torch
        import transformers

        self.torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32
        ).eval()
        self.batch_size = int(batch_size)
        self.max_len = int(getattr(self.model.config, "n_positions", 0) or 0) or int(
            getattr(self.model.config, "max_position_embeddings", 1024)
        )
        start = self.tokenizer.bos_token_id
        self.start_id = self.tokenizer.eos_token_id if start is None else start
        self.pad_id = self.tokenizer.pad_token_id or 0

    def _encode(self, request: LoglikelihoodRequest, index: int) -> tuple[list[int], int]:
        context, continuation = request.context, request.continuation
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self.tokenizer(context)["input_ids"] if context else []
        whole = self.tokenizer(context + continuation)["input_ids"]
        if not context_ids or whole[: len(context_ids)] != context_ids:
            if self.start_id is None:
                raise ValueError(f"request {index}: the judge's tokenizer has no BOS or EOS")
            context_ids = [self.start_id, *context_ids]
            whole = [self.start_id, *whole] if whole[:1] != [self.start_id] else whole
        num_continuation = len(whole) - len(context_ids)
        if num_continuation < 1:
            if request.truncate:  # merged into the context's last piece: nothing to score
                return context_ids[-self.max_len :], 0
            raise ValueError(f"request {index}: continuation {continuation!r} encodes to nothing")
        if len(whole) > self.max_len:
            if not request.truncate and num_continuation >= self.max_len:
                raise ValueError(f"request {index}: continuation longer than the judge's window")
            whole = whole[: self.max_len] if request.truncate else whole[-self.max_len :]
            num_continuation = min(num_continuation, len(whole) - 1)
        return whole, num_continuation

    def __call__(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        torch = self.torch
        encoded = [self._encode(r, i) for i, r in enumerate(requests)]
        results: list[Any] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(encoded[i][0]) for i in chunk)
            ids = np.full((len(chunk), width), self.pad_id, np.int64)
            mask = np.zeros((len(chunk), width), np.int64)
            for row, i in enumerate(chunk):
                ids[row, : len(encoded[i][0])] = encoded[i][0]
                mask[row, : len(encoded[i][0])] = 1
            with torch.no_grad():
                logits = self.model(
                    torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
                ).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1).numpy()
            for row, i in enumerate(chunk):
                tokens, count = encoded[i]
                positions = np.arange(len(tokens) - count, len(tokens))
                targets = np.asarray(tokens)[positions]
                picked = logprobs[row, positions - 1, targets]
                greedy = bool(np.all(logprobs[row, positions - 1].argmax(-1) == targets))
                results[i] = LoglikelihoodResult(float(picked.sum()), greedy, int(count))
        return results
