"""Packed SeqIO batches addressed by step: batch(step) depends only on (seed, step).

seqio has no deterministic resume, so each host materialises its shard of the packed, tokenized
examples once into flat int32 files (memory-mapped afterwards) and picks the rows of a step with
a permutation fixed by (seed, shard, epoch), as Levanter does. An interrupted run therefore
resumes on exactly the batch it would have seen, and no iterator state is ever saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging

from toxjax import fileio
from toxjax.data import vocab
from toxjax.tf_import import import_tensorflow

FEATURES = (
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)
_CACHE_FORMAT_VERSION = 1


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
    )


@dataclasses.dataclass(frozen=True)
class PackedCache:
    """Memory-mapped packed examples of one host shard: arrays[name] is [num_rows, seq_len]."""

    directory: str
    num_rows: int
    seq_len: int
    arrays: Mapping[str, np.ndarray]


def cache_key(
    task: str, split: str, seq_len: int, seed: int, max_rows: int, shard_index: int, num_shards: int
) -> str:
    safe_task = re.sub(r"[^A-Za-z0-9_.-]", "_", task)
    rows = "all" if max_rows < 0 else str(max_rows)
    return (
        f"{safe_task}-{split}-len{seq_len}-seed{seed}-rows{rows}-shard{shard_index}of{num_shards}"
        f"-v{_CACHE_FORMAT_VERSION}"
    )


def _open_cache(directory: str) -> PackedCache:
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    num_rows, seq_len = int(meta["num_rows"]), int(meta["seq_len"])
    arrays = {
        name: np.memmap(
            os.path.join(directory, f"{name}.bin"), np.int32, mode="r", shape=(num_rows, seq_len)
        )
        for name in FEATURES
    }
    return PackedCache(directory=directory, num_rows=num_rows, seq_len=seq_len, arrays=arrays)


def packed_lm_dataset(
    task: str, split: str, seq_len: int, *, shuffle: bool, seed: int | None = None, shard_info=None
):
    """One epoch of the task's split, packed into rows of seq_len by seqio.LMFeatureConverter
    (every document starts from `vocab.START_ID`); shuffled by seed, or in order."""
    import seqio

    get_task(task)  # clear error for unknown names, registers toxjax tasks
    return seqio.get_dataset(
        task,
        task_feature_lengths={"targets": seq_len},
        feature_converter=seqio.LMFeatureConverter(pack=True, bos_id=vocab.START_ID),
        dataset_split=split,
        shuffle=shuffle,
        seed=seed,
        num_epochs=1,
        shard_info=shard_info,
        verbose=False,
    )


def _packed_dataset(
    task: str, split: str, seq_len: int, seed: int, shard_index: int, num_shards: int, max_rows
):
    """The task's split, shuffled by seed, packed to seq_len, in batches of 256 rows."""
    import seqio

    tf = import_tensorflow()
    shard_info = seqio.ShardInfo(index=shard_index, num_shards=num_shards)
    dataset = packed_lm_dataset(
        task, split, seq_len, shuffle=True, seed=seed, shard_info=shard_info
    )
    if max_rows >= 0:
        dataset = dataset.take(max_rows)
    return dataset.batch(256).prefetch(tf.data.AUTOTUNE)


def _write_rows(dataset, directory: str, task: str, seq_len: int, bar) -> int:
    """Appends every feature's rows to directory/<feature>.bin; returns the row count."""
    num_rows = 0
    with contextlib.ExitStack() as stack:
        files = {
            name: stack.enter_context(open(os.path.join(directory, f"{name}.bin"), "wb"))
            for name in FEATURES
        }
        for chunk in dataset.as_numpy_iterator():
            for name in FEATURES:
                values = np.asarray(chunk[name], np.int32)
                if values.shape[1:] != (seq_len,):
                    raise ValueError(
                        f"task {task!r} feature {name!r} has shape {values.shape[1:]}, "
                        f"expected ({seq_len},)"
                    )
                files[name].write(np.ascontiguousarray(values).tobytes())
            num_rows += len(chunk[FEATURES[0]])
            bar.update(len(chunk[FEATURES[0]]))
    return num_rows


def _publish(tmp: str, directory: str, meta: Mapping[str, object]) -> None:
    """Writes meta.json last and renames the finished directory into place."""
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    try:
        os.rename(tmp, directory)
    except OSError:  # another process finished the same cache first
        if not os.path.exists(os.path.join(directory, "meta.json")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(
    task: str,
    split: str,
    seq_len: int,
    seed: int,
    cache_dir: str,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    max_rows: int = -1,
    progress: bool = True,
) -> PackedCache:
    """Packed rows of one seqio shard, built once and reused from cache_dir afterwards.

    One pass over the (shuffled by seed) split; max_rows < 0 keeps every packed row. The
    directory appears atomically (written under a temporary name, then renamed), so a crash
    mid-write never leaves a cache that looks complete. The cache is local disk on purpose:
    training reads it through np.memmap.
    """
    directory = os.path.join(
        cache_dir, cache_key(task, split, seq_len, seed, max_rows, shard_index, num_shards)
    )
    if os.path.exists(os.path.join(directory, "meta.json")):
        logging.info("Reusing packed-example cache %s", directory)
        return _open_cache(directory)

    from tqdm import tqdm

    dataset = _packed_dataset(task, split, seq_len, seed, shard_index, num_shards, max_rows)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{directory}.tmp-{uuid.uuid4().hex}"
    os.makedirs(tmp)
    start = time.time()
    logging.info(
        "Materialising %s/%s shard %d/%d into %s", task, split, shard_index, num_shards, directory
    )
    try:
        with tqdm(
            desc=f"packing {task}/{split} shard {shard_index}",
            unit="rows",
            total=max_rows if max_rows >= 0 else None,
            disable=not progress,
        ) as bar:
            num_rows = _write_rows(dataset, tmp, task, seq_len, bar)
        if num_rows == 0:
            raise ValueError(
                f"task {task!r} split {split!r} shard {shard_index}/{num_shards} produced no "
                "examples; check the split name and the source data"
            )
        meta = {
            "task": task,
            "split": split,
            "seq_len": seq_len,
            "seed": seed,
            "shard_index": shard_index,
            "num_shards": num_shards,
            "num_rows": num_rows,
            "features": list(FEATURES),
            "format_version": _CACHE_FORMAT_VERSION,
        }
        _publish(tmp, directory, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info("Materialised %d packed rows in %.1fs", num_rows, time.time() - start)
    return _open_cache(directory)


class StepIndexedBatches:
    """This host's rows for any step, with no iterator: position = step * batch + j.

    Row j of step s is perm(seed, shard, epoch)[(s * batch + j) % num_rows] with
    epoch = (s * batch + j) // num_rows, so every epoch visits each cached row once.
    """

    def __init__(self, cache: PackedCache, batch_size: int, seed: int, shard_index: int = 0):
        if batch_size < 1:
            raise ValueError(f"local batch size must be >= 1, got {batch_size}")
        self.cache = cache
        self.batch_size = batch_size
        self.seed = seed
        self.shard_index = shard_index
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # the current and the next epoch suffice
                self._permutations.pop(min(self._permutations))
            rng = np.random.default_rng([self.seed, self.shard_index, epoch])
            self._permutations[epoch] = rng.permutation(self.cache.num_rows)
        return self._permutations[epoch]

    def row_indices(self, step: int) -> np.ndarray:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.cache.num_rows)
        rows = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            selected = epochs == epoch
            rows[selected] = self._permutation(int(epoch))[offsets[selected]]
        return rows

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = self.row_indices(step)
        return {name: np.asarray(array[rows]) for name, array in self.cache.arrays.items()}

    def position(self, step: int) -> dict[str, int]:
        """Where the data stream stands before `step`; saved with checkpoints for inspection."""
        examples = step * self.batch_size
        return {
            "next_step": step,
            "epoch": examples // self.cache.num_rows,
            "rows_consumed_this_host": examples,
            "rows_per_epoch_this_host": self.cache.num_rows,
        }


class TrainPipeline:
    """Global, sharded batches for a step, assembled from every host's local rows.

    transform: applied to this host's rows of the main stream (e.g. the signal loss mask).
    cooldown: (first step, batches) of a signal-free cooldown (MeCo): from that step on, rows
    come from the cooldown stream, indexed from its own step 0, so batch(step) stays a pure
    function of the step and exact resume holds across the switch.
    """

    def __init__(
        self,
        batches: StepIndexedBatches,
        layout: DataLayout,
        batch_sharding: jax.sharding.Sharding,
        seq_len: int,
        transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
        cooldown: tuple[int, StepIndexedBatches] | None = None,
    ):
        self.batches = batches
        self.transform = transform
        self.cooldown = cooldown
        self.layout = layout
        self.batch_sharding = batch_sharding
        self.global_shape = (layout.global_batch_size, seq_len)

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's rows of `step`."""
        if self.cooldown is not None and step >= self.cooldown[0]:
            return self.cooldown[1].batch(step - self.cooldown[0])
        local = self.batches.batch(step)
        return local if self.transform is None else self.transform(local)

    def __call__(self, step: int) -> dict[str, jax.Array]:
        return {
            name: jax.make_array_from_process_local_data(
                self.batch_sharding, value, self.global_shape
            )
            for name, value in self.local_batch(step).items()
        }

    def position(self, step: int) -> dict[str, int]:
        position = {
            **self.batches.position(step),
            "shard_index": self.layout.shard_index,
            "num_shards": self.layout.num_shards,
            "seed": self.batches.seed,
        }
        if self.cooldown is not None:
            start, batches = self.cooldown
            position["cooldown_start"] = start
            position["cooldown_rows_consumed_this_host"] = max(step - start, 0) * batches.batch_size
        return position


def resolve_cache_dir(data_config: ml_collections.ConfigDict, workdir: str) -> str:
    """config.data.cache_dir, else WORKDIR/data_cache; always a local directory.

    The cache is memory-mapped, so it must be local: with a gs:// workdir each host keeps its
    shard under the system temp dir (rebuilt identically after a restart on a fresh VM).
    """
    if data_config.cache_dir:
        if fileio.is_url(data_config.cache_dir):
            raise ValueError(
                f"config.data.cache_dir={data_config.cache_dir!r}: the packed-example cache is "
                "memory-mapped and must be a local directory"
            )
        return data_config.cache_dir
    if fileio.is_url(workdir):
        return os.path.join(tempfile.gettempdir(), "toxjax_data_cache")
    return os.path.join(workdir, "data_cache")


def create_train_pipeline(
    config: ml_collections.ConfigDict,
    workdir: str,
    batch_sharding: jax.sharding.Sharding,
    *,
    progress: bool = True,
) -> TrainPipeline:
    """The training data stream of config.data, cut for this host by batch_sharding."""
    data = config.data
    check_vocabulary(data.task, int(config.model.vocab_size))
    layout = get_data_layout(batch_sharding, int(data.global_batch_size), int(data.seq_len))
    total_rows = int(data.num_cached_examples)
    rows_per_shard = -1 if total_rows < 0 else -(-total_rows // layout.num_shards)

    def step_batches(task: str) -> StepIndexedBatches:
        cache = materialize(
            task,
            data.split,
            int(data.seq_len),
            int(data.seed),
            resolve_cache_dir(data, workdir),
            shard_index=layout.shard_index,
            num_shards=layout.num_shards,
            max_rows=rows_per_shard,
            progress=progress,
        )
        return StepIndexedBatches(
            cache, layout.local_batch_size, int(data.seed), layout.shard_index
        )

    return TrainPipeline(
        step_batches(data.task),
        layout,
        batch_sharding,
        int(data.seq_len),
        transform=loss_transform(data.task),
        cooldown=_cooldown(config, step_batches),
    )


def cooldown_start(num_steps: int, fraction: float) -> int:
    """First data step (0-based, as pipeline(step) is called) of a cooldown over the last
    `fraction` of num_steps batches."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.data.cooldown_fraction must be in [0, 1), got {fraction}")
    return num_steps - int(round(fraction * num_steps))


def _cooldown(config: ml_collections.ConfigDict, step_batches) -> tuple | None:
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
    return start, step_batches(task)


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
