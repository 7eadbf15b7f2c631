"""A SeqIO task's documents as a Grain MapDataset: shuffled per epoch, repeated, tokenized.

The registered task stays the one definition of a strategy: for a task made by
`tasks.register_toxicity_tasks`, each document goes through the same steps its SeqIO
preprocessors apply (the split's hash rule, `ConditioningFormat.condition` - the Python twin of
the graph version the preprocessors call -, the task's vocabulary, EOS and its long-document
rule), read at random from its scored shards (`scored_documents`). tests/data/
task_documents_test.py checks, document by document, that the result equals
`seqio.get_dataset` on the same task. Mixtures mix their parts deterministically by rate
(Grain's MapDataset.mix). Any other SeqIO task has no random-access source: it is read once
into memory through seqio (small tasks only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
import seqio
from absl import logging

from toxjax.data.conditioning import Strategy
from toxjax.data.preprocessors import TARGETS
from toxjax.data.scored_documents import ScoredDocuments
from toxjax.data.scored_source import ScoredShardsSource

# A task without random access is held in memory; beyond this many documents, register it with
# register_toxicity_tasks over a scored directory instead.
MAX_IN_MEMORY_DOCUMENTS = 1_000_000
# Longest document, in sequences, that long_documents="split" cuts into pieces.
MAX_PIECES = 4096


def derived_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed for one part of the input (a mixture component, a task), from the run's."""
    text = ":".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


class DocumentTokens:
    """Grain map: a scored document -> its targets (int32), a list of pieces ("split"), or
    None when the split's hash rule or FILTER drops it."""

    def __init__(self, task: Any, split: str, seq_len: int):
        source: ScoredShardsSource = task.source
        feature = task.output_features[TARGETS]
        self.task_name = task.name
        self.strategy, self.fmt = task.strategy, task.fmt
        self.keep = source.keeps(split)
        self.vocabulary = feature.vocabulary
        self.eos = int(feature.vocabulary.eos_id) if feature.add_eos else None
        self.seq_len = seq_len
        self.split_long = getattr(task, "long_documents", "trim") == "split"

    def __call__(self, document: dict[str, Any]) -> np.ndarray | list[np.ndarray] | None:
        if not self.keep(document["key"]):
            return None
        if self.strategy is Strategy.SEGMENT:
            text = self.fmt.condition_segments(
                document["text"],
                document["segment_ends"],
                document["segment_scores"],
                document["key"],
            )
        else:
            text = self.fmt.condition(
                self.strategy, document["text"], document["score"], document["key"]
            )
        if text is None:  # FILTER
            return None
        ids = list(self.vocabulary.encode(text))
        if self.split_long:
            ids += [] if self.eos is None else [self.eos]
            return [
                np.asarray(ids[start : start + self.seq_len], np.int32)
                for start in range(0, max(len(ids), 1), self.seq_len)
            ]
        if self.eos is None:
            return np.asarray(ids[: self.seq_len], np.int32)
        return np.asarray([*ids[: self.seq_len - 1], self.eos], np.int32)


def is_streamable(task: Any) -> bool:
    """A register_toxicity_tasks task: read at random from its scored shards."""
    return isinstance(getattr(task, "source", None), ScoredShardsSource) and hasattr(
        task, "strategy"
    )


def split_size(task_name: str, split: str) -> int:
    """Documents the task's split draws from, before its hash rule and FILTER."""
    provider = seqio.get_mixture_or_task(task_name)
    if isinstance(provider, seqio.Mixture):
        return min(split_size(task.name, split) for task in provider.tasks)
    if is_streamable(provider):
        return provider.source.corpus(split).num_records
    return len(_in_memory_documents(provider, split, 1 << 30))


def task_documents(task_name: str, split: str, seq_len: int, seed: int) -> grain.MapDataset:
    """Infinite: epoch e is a permutation (seed, e) of the split's documents; an element is
    the document's targets, a list of pieces, or None (dropped)."""
    provider = seqio.get_mixture_or_task(task_name)
    if isinstance(provider, seqio.Mixture):
        parts = [
            task_documents(task.name, split, seq_len, derived_seed(seed, task_name, task.name))
            for task in provider.tasks
        ]
        rates = [float(provider.get_rate(task)) for task in provider.tasks]
        return grain.MapDataset.mix(parts, rates)
    if is_streamable(provider):
        source: ScoredShardsSource = provider.source
        dataset = grain.MapDataset.source(
            ScoredDocuments(source.corpus(split), source.attribute, segments=source.segments)
        )
        process: Callable = DocumentTokens(provider, split, seq_len)
    else:
        dataset = grain.MapDataset.source(_in_memory_documents(provider, split, seq_len))
        process = _as_int32
    return dataset.shuffle(seed=derived_seed(seed, task_name)).repeat().map(process)


def _as_int32(tokens: np.ndarray) -> np.ndarray:
    return np.asarray(tokens, np.int32)


def _in_memory_documents(task: seqio.Task, split: str, seq_len: int) -> list[np.ndarray]:
    """Every document of a task with no random-access source, through its own seqio pipeline."""
    logging.warning(
        "task %s has no random-access source (not a register_toxicity_tasks task): reading "
        "its %s split into memory",
        task.name,
        split,
    )
    dataset = task.get_dataset({TARGETS: seq_len}, split=split, shuffle=False, num_epochs=1)
    documents = []
    for example in dataset.as_numpy_iterator():
        documents.append(np.asarray(example[TARGETS], np.int32))
        if len(documents) > MAX_IN_MEMORY_DOCUMENTS:
            raise ValueError(
                f"task {task.name!r} split {split!r} holds over {MAX_IN_MEMORY_DOCUMENTS} "
                "documents and has no random-access source; score it and register it with "
                "toxjax.data.tasks.register_toxicity_tasks"
            )
    if not documents:
        raise ValueError(f"task {task.name!r} split {split!r} produced no documents")
    return documents
