"""The training input: packed rows streamed from the task's documents, resumable exactly.

Row r of every global batch comes from stream r of `global_batch_size` independent Grain
streams: stream r reads documents r, r + B, r + 2B, ... of the task's epoch-shuffled order
(`task_documents`), tokenizes them on the fly and packs them (Grain's FirstFitPackIterDataset).
A host runs only the streams of its own rows, so the global batch of step k does not depend on
the number of processes, nothing is written per strategy or per host, and the first batch
needs only its own documents, whatever the corpus size. Each stream's Grain iterator state is
saved with every checkpoint (gathered from all hosts into the checkpoint's JSON), so a resumed
run, on a slice of any size, reads exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from grain import experimental as grain_experimental

from toxjax.data import task_documents, vocab

FEATURES = (
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)
STATE_FORMAT = "grain-row-streams-v1"
PACKED = "targets"


def get_task(name: str):
    """The registered seqio Task or Mixture; its task module must be imported already
    (`tasks.import_task_modules(config)`)."""
    import seqio

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError as err:
        raise ValueError(
            f"config.data.task={name!r} is not a registered seqio Task or Mixture ({err}); "
            "list the module that registers it in config.data.task_modules, e.g. "
            "--config.data.task_modules=\"('toxjax.data.demo_tasks','mypackage.my_tasks')\""
        ) from None


def check_vocabulary(task_name: str, model_vocab_size: int) -> int:
    """Fail before compilation when the model cannot embed every id the task produces."""
    task = get_task(task_name)
    if "targets" not in task.output_features:
        raise ValueError(
            f"config.data.task={task_name!r} has no 'targets' output feature "
            f"(features: {sorted(task.output_features)}); a decoder-only LM task needs one"
        )
    vocabulary = task.output_features["targets"].vocabulary
    task_vocab_size = int(vocabulary.vocab_size)
    if task_vocab_size > model_vocab_size:
        raise ValueError(
            f"vocabulary mismatch: config.data.task={task_name!r} uses "
            f"{type(vocabulary).__name__} with {task_vocab_size} ids but "
            f"config.model.vocab_size={model_vocab_size}; set "
            f"--config.model.vocab_size to at least {task_vocab_size}"
        )
    return task_vocab_size


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Which distinct slice of every global batch this host feeds (t5x get_data_layout)."""

    shard_index: int  # hosts feeding the same rows (replicas) get the same index
    num_shards: int
    local_batch_size: int
    global_batch_size: int
    rows: tuple[int, ...] = ()  # the global batch rows this host feeds, in order


def get_data_layout(
    batch_sharding: jax.sharding.Sharding, global_batch_size: int, seq_len: int
) -> DataLayout:
    """Derive the host's data shard from the rows its devices hold under batch_sharding."""
    indices = batch_sharding.devices_indices_map((global_batch_size, seq_len))
    rows_by_process: dict[int, set[int]] = {}
    for device, index in indices.items():
        rows = range(*index[0].indices(global_batch_size))
        rows_by_process.setdefault(device.process_index, set()).update(rows)
    distinct = sorted({tuple(sorted(rows)) for rows in rows_by_process.values()})
    mine = tuple(sorted(rows_by_process[jax.process_index()]))
    return DataLayout(
        shard_index=distinct.index(mine),
        num_shards=len(distinct),
        local_batch_size=len(mine),
        global_batch_size=global_batch_size,
        rows=mine,
    )


def heldout_rows(task: str, split: str, seq_len: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of the task's split in seqio's order, packed into rows of seq_len exactly as
    seqio.LMFeatureConverter(pack=True) packs them (`pack_like_seqio`); the held-out
    evaluation reads this, training streams (`TrainPipeline`). The documents come from the
    task's own seqio pipeline; only the packing runs in NumPy."""
    documents = get_task(task).get_dataset(
        {PACKED: seq_len}, split=split, shuffle=False, num_epochs=1, use_cached=False
    )
    return pack_like_seqio((doc[PACKED] for doc in documents.as_numpy_iterator()), seq_len)


def pack_like_seqio(
    documents: Iterable[np.ndarray], seq_len: int
) -> Iterator[dict[str, np.ndarray]]:
    """seqio.utils.trim_and_pack_dataset (its TensorFlow packing), in NumPy.

    seqio's version is a tf.while_loop that AutoGraph rewrites in every process that builds
    it: 2-3 s of every evaluation's start. Same rule: documents in windows of seq_len, each
    trimmed to seq_len and to its count of non-zero ids, packed first come first served; a
    window ends its last row. tests/data/input_pipeline_test.py checks it against seqio.
    """
    window: list[np.ndarray] = []
    for document in documents:
        window.append(document)
        if len(window) == seq_len:
            yield from _pack_window(window, seq_len)
            window = []
    if window:
        yield from _pack_window(window, seq_len)


def _pack_window(window: list[np.ndarray], seq_len: int) -> Iterator[dict[str, np.ndarray]]:
    pieces: list[np.ndarray] = []
    used = 0
    for document in window:
        tokens = np.asarray(document, np.int32)[:seq_len]
        tokens = tokens[: np.count_nonzero(tokens)]
        if used + len(tokens) > seq_len:
            yield _packed_row(pieces, seq_len)
            pieces, used = [], 0
        pieces.append(tokens)
        used += len(tokens)
    yield _packed_row(pieces, seq_len)


def _packed_row(pieces: list[np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    targets = np.zeros(seq_len, np.int32)
    positions = np.zeros(seq_len, np.int32)
    start = 0
    for tokens in pieces:
        targets[start : start + len(tokens)] = tokens
        positions[start : start + len(tokens)] = np.arange(len(tokens), dtype=np.int32)
        start += len(tokens)
    segments = np.cumsum(positions == 0, dtype=np.int32) * (targets != 0).astype(np.int32)
    return {
        PACKED: targets,
        f"{PACKED}_segment_ids": segments,
        f"{PACKED}_positions": positions,
    }


class _Pieces(grain_experimental.FlatMapTransform):
    """A document is one sequence, or several (long_documents="split")."""

    max_fan_out = task_documents.MAX_PIECES

    def flat_map(self, element):
        pieces = element if isinstance(element, list) else [element]
        return [{PACKED: piece} for piece in pieces]


def row_stream(
    documents: grain.MapDataset, row: int, num_streams: int, seq_len: int, packing_bins: int
) -> grain.DatasetIterator:
    """Packed rows of stream `row`: documents row, row + num_streams, ... in order."""
    mine = documents[row::num_streams].to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )
    packed = grain_experimental.FirstFitPackIterDataset(
        grain_experimental.FlatMapIterDataset(mine, _Pieces()),
        length_struct={PACKED: seq_len},
        num_packing_bins=packing_bins,
        shuffle_bins=False,
    )
    return iter(packed)


def model_features(rows: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Packed rows as the decoder's features, as seqio.LMFeatureConverter(pack=True) makes
    them: inputs shifted right within each document, START_ID at each document's start."""
    targets = np.stack([row[PACKED] for row in rows]).astype(np.int32)
    segments = np.stack([row[f"{PACKED}_segment_ids"] for row in rows]).astype(np.int32)
    positions = np.stack([row[f"{PACKED}_positions"] for row in rows]).astype(np.int32)
    shifted = np.pad(targets[:, :-1], ((0, 0), (1, 0)), constant_values=vocab.START_ID)
    previous = np.pad(segments[:, :-1], ((0, 0), (1, 0)))
    inputs = np.where(segments == previous, shifted, vocab.START_ID).astype(np.int32)
    return {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": inputs,
        "decoder_loss_weights": (targets != 0).astype(np.int32),
        "decoder_segment_ids": segments,
        "decoder_positions": positions,
    }


class RowStreams:
    """This host's rows of one task: one Grain stream per global batch row it feeds."""

    def __init__(
        self, task: str, split: str, seq_len: int, seed: int, rows, num_streams: int, bins: int
    ):
        documents = task_documents.task_documents(task, split, seq_len, seed)
        self.task, self.rows = task, tuple(rows)
        self.iterators = {
            row: row_stream(documents, row, num_streams, seq_len, bins) for row in self.rows
        }

    def next_rows(self) -> dict[str, np.ndarray]:
        return model_features([next(self.iterators[row]) for row in self.rows])

    def get_state(self) -> dict[str, Any]:
        return {str(row): copy.deepcopy(it.get_state()) for row, it in self.iterators.items()}

    def set_state(self, states: Mapping[str, Any], where: str) -> None:
        missing = [row for row in self.rows if str(row) not in states]
        if missing:
            raise ValueError(f"{where}: no saved stream state for rows {missing[:8]}")
        for row, iterator in self.iterators.items():
            iterator.set_state(copy.deepcopy(states[str(row)]))


@dataclasses.dataclass
class _Produced:
    step: int
    batch: dict[str, np.ndarray]
    state_after: dict[str, Any]  # the streams' state once this batch is read


class TrainPipeline:
    """Global, sharded batches, read in step order by a background thread (2 ahead).

    transform: applied to this host's rows of the main stream (e.g. the signal loss mask).
    cooldown: (first step, streams) of a signal-free cooldown (MeCo): from that step on, rows
    come from the cooldown task's streams, which start there.
    """

    def __init__(
        self,
        streams: RowStreams,
        layout: DataLayout,
        batch_sharding: jax.sharding.Sharding,
        seq_len: int,
        transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
        cooldown: tuple[int, RowStreams] | None = None,
        identity: Mapping[str, Any] | None = None,
    ):
        self.streams, self.transform, self.cooldown = streams, transform, cooldown
        self.layout, self.batch_sharding = layout, batch_sharding
        self.global_shape = (layout.global_batch_size, seq_len)
        self.identity = dict(identity or {})  # what must match for a saved state to apply
        self._next_step = 0
        self._states = {0: self._stream_state()}
        self._queue: queue.Queue[_Produced | BaseException] | None = None
        self._stop = threading.Event()

    def _stream_state(self) -> dict[str, Any]:
        state = {"main": self.streams.get_state()}
        if self.cooldown is not None:
            state["cooldown"] = self.cooldown[1].get_state()
        return state

    def _produce(self, step: int) -> dict[str, np.ndarray]:
        if self.cooldown is not None and step >= self.cooldown[0]:
            return self.cooldown[1].next_rows()
        local = self.streams.next_rows()
        return local if self.transform is None else self.transform(local)

    def _run(self, first_step: int) -> None:
        step = first_step
        try:
            while not self._stop.is_set():
                batch = self._produce(step)
                item = _Produced(step, batch, self._stream_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as error:  # noqa: BLE001 (re-raised in the training thread)
            self._queue.put(error)

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's rows of `step`; steps are read in order (a jump ahead replays)."""
        if step < self._next_step:
            raise ValueError(f"step {step} was already read (next is {self._next_step})")
        if self._queue is None:
            self._queue = queue.Queue(maxsize=2)
            first = self._next_step
            threading.Thread(target=self._run, args=(first,), daemon=True).start()
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            self._states[item.step + 1] = item.state_after
            self._states.pop(item.step - 8, None)  # a checkpoint reads a recent step's state
            self._next_step = item.step + 1
            if item.step == step:
                return item.batch

    def __call__(self, step: int) -> dict[str, jax.Array]:
        return {
            name: jax.make_array_from_process_local_data(
                self.batch_sharding, value, self.global_shape
            )
            for name, value in self.local_batch(step).items()
        }

    def close(self) -> None:
        self._stop.set()

    def state(self, step: int) -> dict[str, Any]:
        """Where the input stands before `step`, every host's streams included: saved with the
        checkpoint of `step`. Collective on several processes (each host holds its rows)."""
        if step not in self._states:
            raise ValueError(f"no input state for step {step} (read up to {self._next_step})")
        local = self._states[step]
        return {
            "format": STATE_FORMAT,
            "next_step": step,
            **self.identity,
            **{part: _gather(states) for part, states in local.items()},
        }

    def restore(self, saved: Mapping[str, Any], step: int, where: str) -> None:
        """Continues from a checkpoint's input state; with none usable, replays (exact, slow)."""
        if self._queue is not None or self._next_step:
            raise ValueError("restore the input before reading any batch")
        changed = {
            key: (saved.get(key), value)
            for key, value in self.identity.items()
            if saved.get(key) != value
        }
        if saved.get("format") != STATE_FORMAT or changed or saved.get("next_step") != step:
            logging.warning(
                "%s: no usable input state (format %s, changed %s): replaying %d steps of input",
                where,
                saved.get("format"),
                changed,
                step,
            )
            for skipped in range(step):
                self._produce(skipped)
        else:
            self.streams.set_state(saved["main"], where)
            if self.cooldown is not None:
                self.cooldown[1].set_state(saved["cooldown"], where)
        self._next_step = step
        self._states = {step: self._stream_state()}


def _gather(states: dict[str, Any]) -> dict[str, Any]:
    """Every process's stream states, merged (rows are distinct or identical replicas)."""
    if jax.process_count() == 1:
        return states
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(states).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int64)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    everything = np.asarray(multihost_utils.process_allgather(padded))
    merged: dict[str, Any] = {}
    sizes = sizes.reshape(-1)
    for size, row in zip(sizes, everything.reshape(len(sizes), -1), strict=True):
        merged.update(json.loads(bytes(row[: int(size)])))
    return merged


def create_train_pipeline(
    config: ml_collections.ConfigDict, batch_sharding: jax.sharding.Sharding
) -> TrainPipeline:
    """The training input of config.data, cut for this host by batch_sharding."""
    data = config.data
    check_vocabulary(data.task, int(config.model.vocab_size))
    seq_len, seed = int(data.seq_len), int(data.seed)
    layout = get_data_layout(batch_sharding, int(data.global_batch_size), seq_len)
    bins = int(data.get("packing_bins", 4))

    def streams(task: str) -> RowStreams:
        size = task_documents.split_size(task, data.split)
        if size < layout.global_batch_size:
            raise ValueError(
                f"task {task!r} split {data.split!r} has {size} documents, fewer than one "
                f"batch (config.data.global_batch_size={layout.global_batch_size}): every "
                "batch row streams its own documents; use a smaller batch or more data"
            )
        return RowStreams(
            task, data.split, seq_len, seed, layout.rows, layout.global_batch_size, bins
        )

    identity = {
        "task": data.task,
        "split": data.split,
        "seq_len": seq_len,
        "seed": seed,
        "num_streams": layout.global_batch_size,
        "packing_bins": bins,
    }
    return TrainPipeline(
        streams(data.task),
        layout,
        batch_sharding,
        seq_len,
        transform=loss_transform(data.task),
        cooldown=_cooldown(config, streams),
        identity=identity,
    )


def cooldown_start(num_steps: int, fraction: float) -> int:
    """First data step (0-based, as pipeline(step) is called) of a cooldown over the last
    `fraction` of num_steps batches."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.data.cooldown_fraction must be in [0, 1), got {fraction}")
    return num_steps - int(round(fraction * num_steps))


def _cooldown(config: ml_collections.ConfigDict, streams) -> tuple | None:
    fraction = float(config.data.get("cooldown_fraction", 0.0))
    if fraction == 0.0:
        return None
    task = config.data.get("cooldown_task", "")
    if not task:
        raise ValueError("config.data.cooldown_fraction > 0 needs config.data.cooldown_task")
    start = cooldown_start(int(config.train.num_steps), fraction)
    logging.info(
        "cooldown: the last %d batches draw from %s", int(config.train.num_steps) - start, task
    )
    return start, streams(task)


def loss_transform(task_name: str):
    """The task's signal loss mask when its conditioning asks for one, else None."""
    from toxjax.data import signal_mask, tasks
    from toxjax.data.conditioning import Strategy

    try:
        strategy, fmt = tasks.conditioning_for(task_name)
    except ValueError:  # not a toxjax conditioned task: nothing to mask
        return None
    if not fmt.mask_signal_loss:
        return None
    vocabulary = get_task(task_name).output_features["targets"].vocabulary
    if strategy is Strategy.SEGMENT:
        token_ids = signal_mask.segment_token_ids(vocabulary, fmt)
        logging.info("task %s: control tokens %s masked out of the loss", task_name, token_ids)
        return signal_mask.SignalLossMask([], -1, token_ids)
    start_ids, separator_id = signal_mask.signal_piece_ids(vocabulary, fmt)
    logging.info(
        "task %s: signal tokens %s..%d masked out of the loss", task_name, start_ids, separator_id
    )
    return signal_mask.SignalLossMask(start_ids, separator_id)
