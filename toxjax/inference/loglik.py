"""Log-likelihood engine (`LoglikelihoodFn`) and held-out perplexity over a Decoder.

Tokenization follows lm-evaluation-harness: trailing whitespace of the context (`rstrip()`,
so newlines too, as the harness' `_encode_pair`) moves to the continuation, the pair is encoded
whole and the context alone, and the continuation is what the whole encoding adds after the
context's tokens (so tokenizers that merge across the boundary score the text the model would
really see). Every sequence then starts from `vocab.START_ID`, the id every training
document starts from (where the harness starts an empty context from its end-of-text token):
without it the model reads the context's first token at a position where it only ever saw the
start id, and a conditioning prefix in particular is scored out of distribution. Sequences
longer than `max_len` + 1 tokens keep their end (left truncation, the start id included, as
the harness does); a continuation alone longer than that is an error.

Requests are sorted by length, cut into batches of `batch_size` rows and right-padded to one of
a few bucket lengths (powers of two), so a whole task compiles a handful of shapes. Right
padding needs no mask: causal attention never lets a real token see the padding after it.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from toxjax.data import input_pipeline, vocab
from toxjax.inference import sampling
from toxjax.inference.requests import LoglikelihoodRequest, LoglikelihoodResult
from toxjax.model import decoder, partitioning
from toxjax.training import optim

PyTree = Any


def encode_pair(vocabulary: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(start id + context ids, continuation ids) the harness' way (see module docstring)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = [int(i) for i in vocabulary.encode(context + continuation)]
    context_ids = [int(i) for i in vocabulary.encode(context)] if context else []
    return [vocab.START_ID, *context_ids], whole[len(context_ids) :]


def score_batch(
    params: PyTree,
    inputs: jax.Array,
    targets: jax.Array,
    continuation_mask: jax.Array,
    *,
    model: decoder.Decoder,
) -> dict[str, jax.Array]:
    """Per row: summed log-prob of the masked targets, and whether argmax hits every one."""
    logits = model.apply({"params": params}, inputs).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    mask = continuation_mask.astype(bool)
    hits = jnp.argmax(logits, axis=-1) == targets
    return {
        "logprob": jnp.sum(jnp.where(mask, target_log_probs, 0.0), axis=-1),
        "is_greedy": jnp.all(hits | ~mask, axis=-1),
    }


class LoglikelihoodEngine:
    """`LoglikelihoodFn` for a Decoder on a mesh; see the module docstring."""

    def __init__(
        self,
        params: PyTree,
        on_mesh: partitioning.ModelOnMesh,
        vocabulary: Any,
        *,
        batch_size: int = 32,
        max_len: int | None = None,
        progress: bool = True,
    ) -> None:
        model_config = on_mesh.model_config
        self.vocabulary = vocabulary
        self.progress = progress
        self.max_len = int(max_len or model_config.max_len)
        if model_config.positions == "learned" and self.max_len > model_config.max_len:
            raise ValueError(
                f"max_len={self.max_len} exceeds config.model.max_len={model_config.max_len}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = sampling.round_up(int(batch_size), on_mesh.batch_shards())
        self.params, shardings = on_mesh.place(params)
        self._score = on_mesh.replicated_function(
            functools.partial(score_batch, model=decoder.Decoder(model_config)),
            shardings,
            num_inputs=3,
        )

    def tokenize(self, request: LoglikelihoodRequest, index: int) -> tuple[list[int], int]:
        """(token sequence to feed, number of continuation tokens at its end)."""
        context, continuation = encode_pair(self.vocabulary, request.context, request.continuation)
        if not continuation:
            if request.truncate:  # merged into the context's last piece: nothing to score
                return context[-(self.max_len + 1) :], 0
            raise ValueError(
                f"request {index}: continuation {request.continuation!r} encodes to no tokens"
            )
        if request.truncate:
            continuation = continuation[: max(1, self.max_len + 1 - len(context))]
        if len(continuation) > self.max_len:
            raise ValueError(
                f"request {index}: continuation has {len(continuation)} tokens, more than "
                f"max_len={self.max_len}"
            )
        sequence = (context + continuation)[-(self.max_len + 1) :]
        return sequence, len(continuation)

    def __call__(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        return self.score_tokens([self.tokenize(r, i) for i, r in enumerate(requests)])

    def score_tokens(self, tokenized: Sequence[tuple[list[int], int]]) -> list[LoglikelihoodResult]:
        """Scores (token sequence, count) pairs: the last `count` tokens given those before
        them (sequences of at most max_len + 1 tokens; `tokenize` makes them from text)."""
        order = sorted(range(len(tokenized)), key=lambda i: -len(tokenized[i][0]))
        results: list[LoglikelihoodResult | None] = [None] * len(tokenized)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="log-likelihood", unit="batch", disable=not self.progress):
            chunk = order[start : start + self.batch_size]
            width = sampling.length_bucket(
                max(len(tokenized[i][0]) - 1 for i in chunk), self.max_len
            )
            inputs = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros((self.batch_size, width), np.int32)
            mask = np.zeros((self.batch_size, width), np.int32)
            for row, index in enumerate(chunk):
                sequence, count = tokenized[index]
                length = len(sequence) - 1
                inputs[row, :length] = sequence[:-1]
                targets[row, :length] = sequence[1:]
                mask[row, length - count : length] = 1
            scored = jax.device_get(self._score(self.params, inputs, targets, mask))
            for row, index in enumerate(chunk):
                results[index] = LoglikelihoodResult(
                    logprob=float(scored["logprob"][row]),
                    is_greedy=bool(scored["is_greedy"][row]),
                    num_tokens=tokenized[index][1],
                )
        return results  # type: ignore[return-value]


def make_loglikelihood_fn(
    params: PyTree,
    model_config: decoder.ModelConfig,
    vocabulary: Any,
    mesh: Mesh,
    rules: Sequence,
    *,
    compiler_options: Mapping[str, Any] | None = None,
    **settings: Any,
) -> LoglikelihoodEngine:
    """A `toxjax.inference.requests.LoglikelihoodFn` over the model.

    settings: batch_size, max_len, progress; see LoglikelihoodEngine.
    """
    on_mesh = partitioning.ModelOnMesh(model_config, mesh, rules, compiler_options)
    return LoglikelihoodEngine(params, on_mesh, vocabulary, **settings)


# ----- held-out perplexity -----


def heldout_batches(
    task_name: str,
    *,
    split: str = "validation",
    seq_len: int,
    batch_size: int,
    num_batches: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Packed LM batches of a task's split, in order: what seqio.get_dataset with
    seqio.LMFeatureConverter(pack=True) gives (`input_pipeline.heldout_rows`).

    The last batch is completed with all-zero rows (zero loss weight); at most num_batches
    (< 0: the whole split).
    """
    rows = input_pipeline.heldout_rows(task_name, split, seq_len)
    groups = iter(lambda: list(itertools.islice(rows, batch_size)), [])  # ends with the rows
    if num_batches >= 0:
        groups = itertools.islice(groups, num_batches)
    for read in groups:
        batch = input_pipeline.model_features(read)
        if len(read) < batch_size:
            fill = np.zeros((batch_size - len(read), seq_len), np.int32)
            batch = {name: np.concatenate([value, fill]) for name, value in batch.items()}
        yield batch


def _loss_sums(params: PyTree, batch: dict[str, jax.Array], *, model: decoder.Decoder) -> dict:
    logits = model.apply(
        {"params": params},
        batch["decoder_input_tokens"],
        positions=batch["decoder_positions"],
        segment_ids=batch["decoder_segment_ids"],
    )
    _, sums = optim.cross_entropy_sums(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    )
    return {"ce_sum": sums["ce_sum"], "weight_sum": sums["weight_sum"]}


def make_loss_fn(
    model_config: decoder.ModelConfig,
    mesh: Mesh,
    rules: Sequence,
    compiler_options: Mapping[str, Any] | None = None,
) -> partitioning.PartitionedFunction:
    """The jitted loss sums of a model on a mesh; keep it to reuse its executables when only
    the params change (toxjax.evaluation.evaluator.Evaluator does)."""
    rules = tuple(rules)
    shardings = partitioning.param_shardings(model_config, mesh, rules)
    return partitioning.PartitionedFunction(
        functools.partial(_loss_sums, model=decoder.Decoder(model_config)),
        mesh,
        rules,
        in_shardings=(shardings, partitioning.batch_sharding(mesh, rules)),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
        compiler_options=compiler_options,
    )


def heldout_perplexity(
    params: PyTree,
    model_config: decoder.ModelConfig,
    mesh: Mesh,
    rules: Sequence,
    *,
    task_name: str,
    split: str = "validation",
    seq_len: int,
    batch_size: int,
    num_batches: int,
    compiler_options: Mapping[str, Any] | None = None,
    loss_fn: partitioning.PartitionedFunction | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Token-level perplexity exp(sum CE / sum loss weights) over `num_batches` packed batches,
    the same loss the training step minimises (`optim.cross_entropy_sums`).

    loss_fn: a `make_loss_fn` result to reuse; by default one is built (compiler_options).
    """
    rules = tuple(rules)
    batch_size = sampling.round_up(int(batch_size), partitioning.batch_shards(mesh, rules))
    params, _ = partitioning.shard_params(params, model_config, mesh, rules)
    loss = loss_fn or make_loss_fn(model_config, mesh, rules, compiler_options)
    ce_sum, weight_sum, count = 0.0, 0.0, 0
    batches = heldout_batches(
        task_name, split=split, seq_len=seq_len, batch_size=batch_size, num_batches=num_batches
    )
    total = num_batches if num_batches >= 0 else None
    description = f"perplexity {task_name}:{split}"
    sharding = partitioning.batch_sharding(mesh, rules)
    for batch in tqdm(batches, total=total, desc=description, unit="batch", disable=not progress):
        sums = jax.device_get(loss(params, partitioning.from_host_copies(batch, sharding)))
        ce_sum += float(sums["ce_sum"])
        weight_sum += float(sums["weight_sum"])
        count += 1
    if weight_sum == 0:
        raise ValueError(f"task {task_name!r} split {split!r} yielded no target tokens")
    mean = ce_sum / weight_sum
    return {
        "task": task_name,
        "split": split,
        "loss": mean,
        "perplexity": math.exp(mean),
        "num_tokens": int(weight_sum),
        "num_batches": count,
        "seq_len": seq_len,
    }
