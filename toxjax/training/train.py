"""Training loop (lm1b shape): plain functions create_train_state, train_step, train_and_evaluate.

Everything that can be wrong with a config (mesh, logical axes, vocabulary, a checkpoint from a
different model) is checked from shapes alone (jax.eval_shape) before anything is compiled. The
state is created or restored directly in its sharded layout; the step is one jitted call per
optimizer step (micro-batches are scanned inside) with the state donated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from toxjax import fileio
from toxjax.data import input_pipeline, tasks
from toxjax.model import decoder, flops, partitioning
from toxjax.training import checkpoints, optim

TRAIN_LOG = "train_log.jsonl"
# Per-step metrics that must stay finite; param_norm is of the updated params, so a step whose
# update overflowed is caught at that step, before its state can be checkpointed.
WATCHED_METRICS = ("loss", "grad_norm", "param_norm")


EvalFn = Callable[[Any, int], Any]  # (params, step) -> results, e.g. evaluator.Evaluator
# (abstract params, config.model as a dict) -> params to start from, read into the abstract
# params' shardings; the caller builds it (toxjax.interop.hf_import.warm_starter).
WarmStartFn = Callable[[Any, dict[str, Any]], Any]


class NonFiniteLossError(ValueError):
    """Training diverged: a step's loss, gradient norm or parameter norm is NaN or infinite.

    .step is the first such step (as numbered in train_log.jsonl) and .values its watched
    metrics. Found when metrics are fetched anyway (log steps) and before every checkpoint save,
    so no state of that step or later is ever saved; .checkpoint describes the latest one.
    """

    def __init__(self, step: int, values: Mapping[str, float]):
        super().__init__(step, dict(values))
        self.step = int(step)
        self.values = dict(values)
        self.checkpoint: str | None = None

    def __str__(self) -> str:
        shown = ", ".join(f"{name} {value:.4g}" for name, value in self.values.items())
        return (
            f"training diverged at step {self.step} ({shown}): stopped, and no checkpoint was "
            f"saved from step {self.step} on"
            + (f"; {self.checkpoint}" if self.checkpoint else "")
            + ". Lower config.optim.learning_rate, lengthen config.optim.warmup_steps or "
            "clip gradients (config.optim.grad_clip_norm)."
        )


def first_nonfinite(fetched: list[tuple[int, Mapping[str, Any]]]) -> NonFiniteLossError | None:
    """The error for the first step whose WATCHED_METRICS are not all finite, if any."""
    for step, metrics in fetched:
        values = {name: float(metrics[name]) for name in WATCHED_METRICS if name in metrics}
        if not all(math.isfinite(value) for value in values.values()):
            return NonFiniteLossError(step, values)
    return None


@flax.struct.dataclass
class TrainState:
    """Everything a resume needs besides the input's stream state (saved in the meta JSON)."""

    step: jax.Array
    params: Any
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """What follows from the config before compilation: model, mesh, optimizer, shapes."""

    config: ml_collections.ConfigDict
    model_config: decoder.ModelConfig
    model: decoder.Decoder
    mesh: jax.sharding.Mesh
    rules: partitioning.LogicalRules
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_state: TrainState  # ShapeDtypeStructs carrying their target shardings
    state_shardings: TrainState
    batch_sharding: jax.sharding.NamedSharding
    grad_accum_steps: int  # config.optim.grad_accum_steps, auto (-1) resolved for this mesh

    @property
    def model_config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.model_config)


def validate_config(config: ml_collections.ConfigDict, model_config: decoder.ModelConfig) -> None:
    """Cheap consistency checks that would otherwise surface as shape errors mid-compile."""
    seq_len = int(config.data.seq_len)
    if model_config.positions == "learned" and seq_len > model_config.max_len:
        raise ValueError(
            f"config.data.seq_len={seq_len} exceeds config.model.max_len={model_config.max_len} "
            "(learned position table)"
        )
    if seq_len % model_config.attention_chunks:
        raise ValueError(
            f"config.model.attention_chunks={model_config.attention_chunks} must divide "
            f"config.data.seq_len={seq_len} (training attention's causal query chunks)"
        )
    accum = int(config.optim.grad_accum_steps)
    batch = int(config.data.global_batch_size)
    if accum != -1 and (accum < 1 or batch % accum):
        raise ValueError(
            f"config.optim.grad_accum_steps={accum} must be -1 (auto) or >= 1 and divide "
            f"config.data.global_batch_size={batch}"
        )
    if int(config.train.num_steps) < 1:
        raise ValueError(f"config.train.num_steps must be >= 1, got {config.train.num_steps}")


def _init_fn(
    model: decoder.Decoder, tx: optax.GradientTransformation, micro_batch: int, seq_len: int
):
    """rng -> TrainState whose params and moments are still nn.Partitioned boxes (for specs)."""

    def init(rng: jax.Array) -> TrainState:
        tokens = jnp.zeros((micro_batch, seq_len), jnp.int32)
        params = model.init({"params": rng}, tokens)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def create_setup(
    config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None
) -> TrainSetup:
    """Mesh, model, optimizer and the abstract sharded state; raises on any bad config."""
    model_config = decoder.ModelConfig.from_config(config.model)
    validate_config(config, model_config)
    mesh = partitioning.create_mesh(config.mesh, devices)
    rules = partitioning.logical_rules(config)
    model = decoder.Decoder(model_config)
    tx, schedule = optim.create_optimizer(config.optim, int(config.train.num_steps))
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    global_batch = int(config.data.global_batch_size)
    batch_axes = batch_sharding.spec[0] if len(batch_sharding.spec) else None
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
    batch_shards = int(np.prod([mesh.shape[axis] for axis in batch_axes]))
    if global_batch % batch_shards:
        raise ValueError(
            f"config.data.global_batch_size={global_batch} is not divisible by the "
            f"{batch_shards} devices the batch is split over (mesh {dict(mesh.shape)})"
        )
    grad_accum_steps = optim.resolve_grad_accum_steps(config.optim, global_batch, batch_shards)
    micro_batch = global_batch // grad_accum_steps
    if micro_batch % batch_shards:
        raise ValueError(
            f"micro-batch size {micro_batch} (global_batch_size / grad_accum_steps "
            f"{grad_accum_steps}) is not divisible by the {batch_shards} devices the batch is "
            "split over"
        )
    init = _init_fn(model, tx, micro_batch, int(config.data.seq_len))
    # An abstract key, made outside the mesh: a concrete one would be placed on the mesh's
    # devices, which compile-only TPU devices (toxjax.compile) cannot hold.
    abstract_rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    with partitioning.mesh_and_rules(mesh, rules):
        boxed = jax.eval_shape(init, abstract_rng)
    shardings = partitioning.abstract_shardings(boxed, mesh, rules)
    unboxed = nn.unbox(boxed)
    partitioning.check_divisible(unboxed, shardings)
    abstract_state = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        unboxed,
        shardings,
    )
    return TrainSetup(
        config=config,
        model_config=model_config,
        model=model,
        mesh=mesh,
        rules=rules,
        tx=tx,
        schedule=schedule,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batch_sharding=batch_sharding,
        grad_accum_steps=grad_accum_steps,
    )


def create_train_state(setup: TrainSetup, rng: jax.Array) -> TrainState:
    """Fresh state, materialised directly into its shardings (never whole on one device)."""
    micro_batch = int(setup.config.data.global_batch_size) // setup.grad_accum_steps
    init = _init_fn(setup.model, setup.tx, micro_batch, int(setup.config.data.seq_len))
    sharded_init = partitioning.PartitionedFunction(
        lambda r: nn.unbox(init(r)), setup.mesh, setup.rules, out_shardings=setup.state_shardings
    )
    return sharded_init(rng)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: decoder.Decoder,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    dropout_rng: jax.Array,
    grad_accum_steps: int,
    z_loss: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch; loss masked by decoder_loss_weights."""
    step_rng = jax.random.fold_in(dropout_rng, state.step)
    deterministic = model.cfg.dropout_rate == 0.0

    def loss_fn(params, micro_batch, micro_index):
        logits = model.apply(
            {"params": params},
            micro_batch["decoder_input_tokens"],
            positions=micro_batch["decoder_positions"],
            segment_ids=micro_batch["decoder_segment_ids"],
            deterministic=deterministic,
            rngs={"dropout": jax.random.fold_in(step_rng, micro_index)},
        )
        return optim.cross_entropy_sums(
            logits,
            micro_batch["decoder_target_tokens"],
            micro_batch["decoder_loss_weights"],
            z_loss=z_loss,
        )

    grad_sums, sums = optim.accumulate_gradients(loss_fn, state.params, batch, grad_accum_steps)
    return apply_gradients(state, grad_sums, sums, tx=tx, schedule=schedule)


def apply_gradients(
    state: TrainState,
    grad_sums: Any,
    sums: Mapping[str, jax.Array],
    *,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The step after its gradient sums: normalise, update, metrics (toxjax.compile costs it
    alone to cost an accumulated step's loop)."""
    denominator = jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: (g / denominator).astype(g.dtype), grad_sums)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": sums["ce_sum"] / denominator,
        "z_loss": sums["z_loss_sum"] / denominator,
        "accuracy": sums["correct_sum"] / denominator,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(params),
        "learning_rate": schedule(state.step),
        "target_tokens": sums["weight_sum"],
    }
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def make_train_step(setup: TrainSetup) -> partitioning.PartitionedFunction:
    """The jitted step: sharded in and out, state donated, mesh and rules entered per call."""
    config = setup.config
    step_fn = functools.partial(
        train_step,
        model=setup.model,
        tx=setup.tx,
        schedule=setup.schedule,
        dropout_rng=jax.random.fold_in(jax.random.PRNGKey(int(config.train.seed)), 1),
        grad_accum_steps=setup.grad_accum_steps,
        z_loss=float(config.optim.z_loss),
    )
    replicated = jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec())
    batch_shardings = {name: setup.batch_sharding for name in input_pipeline.FEATURES}
    return partitioning.PartitionedFunction(
        step_fn,
        setup.mesh,
        setup.rules,
        in_shardings=(setup.state_shardings, batch_shardings),
        out_shardings=(setup.state_shardings, replicated),
        donate_argnums=(0,),
    )


def init_rng(config: ml_collections.ConfigDict) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(int(config.train.seed)), 0)


def peak_flops(config: ml_collections.ConfigDict) -> float:
    """MFU denominator for the whole job: per-device peak x devices (CPU: the host figure)."""
    per_device = flops.peak_flops_per_device(
        jax.devices()[0], cpu_peak_flops=float(config.train.cpu_peak_flops)
    )
    return float(per_device) * jax.device_count()


class MetricsLogger:
    """Per-step losses to train_log.jsonl, interval summaries to TensorBoard and the log.

    Metrics stay on device until a log step, so logging never stalls async dispatch. Fetching
    them is also where divergence is found: flush and check_finite raise NonFiniteLossError.
    """

    def __init__(self, workdir: str, setup: TrainSetup, peak: float):
        from clu import metric_writers

        self.is_chief = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(
            fileio.join(workdir, "tensorboard"), just_logging=not self.is_chief
        )
        self.workdir = workdir
        self.segment_lines: list[str] = []  # this process's lines (gs:// cannot append)
        self.segment_name = ""
        config = setup.config
        self.tokens_per_step = int(config.data.global_batch_size) * int(config.data.seq_len)
        self.flops_per_token = float(
            flops.train_flops_per_token(setup.model_config, int(config.data.seq_len))
        )
        self.peak = peak
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.interval_start: float | None = None
        self.interval_steps = 0

    def start_timer(self) -> None:
        self.interval_start = time.perf_counter()
        self.interval_steps = 0

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.pending.append((step, metrics))
        self.interval_steps += 1

    def check_finite(self) -> None:
        """Raise NonFiniteLossError if a pending step diverged; call before saving a checkpoint.

        A sync point like the save itself: fetches only the watched scalars. If one is not
        finite, everything pending is flushed first, so the log shows the steps up to it.
        """
        watched = [{n: m[n] for n in WATCHED_METRICS if n in m} for _, m in self.pending]
        steps = [step for step, _ in self.pending]
        fetched = list(zip(steps, jax.device_get(watched), strict=True))
        error = first_nonfinite(fetched)
        if error is not None:
            self.flush()
            raise error

    def flush(self) -> dict[str, float]:
        """Fetch pending metrics (a sync point), write them, return the interval summary.

        Raises NonFiniteLossError, after writing them, if a step's watched metrics diverged.
        """
        if not self.pending:
            return {}
        fetched = [(step, jax.device_get(m)) for step, m in self.pending]
        self.pending = []
        if self.is_chief:
            self._write_step_log(fetched)
        summary = {
            name: float(np.mean([float(m[name]) for _, m in fetched]))
            for name in fetched[-1][1]
            if name != "learning_rate"
        }
        last_step, last = fetched[-1]
        summary["learning_rate"] = float(last["learning_rate"])
        summary["perplexity"] = float(np.exp(min(summary["loss"], 50.0)))
        if self.interval_start is not None and self.interval_steps:
            elapsed = time.perf_counter() - self.interval_start
            steps_per_s = self.interval_steps / elapsed
            summary["steps_per_s"] = steps_per_s
            summary["tokens_per_s"] = steps_per_s * self.tokens_per_step
            summary["mfu"] = summary["tokens_per_s"] * self.flops_per_token / self.peak
        self.writer.write_scalars(last_step, summary)
        self.writer.flush()
        self.start_timer()
        error = first_nonfinite(fetched)
        if error is not None:
            raise error
        return summary

    def _write_step_log(self, fetched: list[tuple[int, dict[str, Any]]]) -> None:
        """One JSON line per step: appended locally; on gs:// one file per run segment."""
        lines = [
            json.dumps({"step": step, **{k: float(v) for k, v in m.items()}}) + "\n"
            for step, m in fetched
        ]
        if not fileio.is_url(self.workdir):
            with open(os.path.join(self.workdir, TRAIN_LOG), "a") as f:
                f.writelines(lines)
            return
        if not self.segment_lines:
            self.segment_name = TRAIN_LOG.replace(".jsonl", f"-from{fetched[0][0]:09d}.jsonl")
        self.segment_lines.extend(lines)
        data = "".join(self.segment_lines).encode()
        fileio.write_atomic(fileio.join(self.workdir, self.segment_name), data)

    def close(self) -> None:
        self.writer.close()


def _checkpoint_meta(setup: TrainSetup, pipeline: input_pipeline.TrainPipeline, step: int):
    return {
        "step": step,
        "model_config": setup.model_config_dict,
        "data": pipeline.state(step),
        "config": json.loads(setup.config.to_json_best_effort()),
    }


def _train_loop(
    setup: TrainSetup,
    state: TrainState,
    pipeline: input_pipeline.TrainPipeline,
    checkpointer: checkpoints.Checkpointer,
    logger: MetricsLogger,
    stop: checkpoints.StopRequest,
    eval_fn: EvalFn | None = None,
) -> TrainState:
    """Steps until num_steps or a stop request; checkpoints (and evaluates) on schedule."""
    num_steps = int(setup.config.train.num_steps)
    eval_every = int(setup.config.train.get("eval_every", 0))
    log_every = max(1, int(setup.config.train.log_every))
    p_train_step = make_train_step(setup)
    step = int(jax.device_get(state.step))
    if step < num_steps:
        logging.info(
            "Training steps %d..%d, %d micro-batch(es) per step",
            step + 1,
            num_steps,
            setup.grad_accum_steps,
        )
    started = time.perf_counter()
    while step < num_steps:
        state, metrics = p_train_step(state, pipeline(step))
        step += 1
        logger.add(step, metrics)
        if logger.interval_start is None:
            jax.block_until_ready(metrics)  # keep compilation out of the throughput figures
            logging.info(
                "First step done in %.1fs (includes compilation)", time.perf_counter() - started
            )
            logger.flush()
        elif step % log_every == 0 or step == num_steps:
            summary = logger.flush()
            logging.info(
                "step %d: loss %.4f, grad_norm %.3f, lr %.3g, %.0f tokens/s, MFU %.1f%%",
                step,
                summary["loss"],
                summary["grad_norm"],
                summary["learning_rate"],
                summary.get("tokens_per_s", 0.0),
                100 * summary.get("mfu", 0.0),
            )
        if checkpointer.is_save_step(step):
            logger.check_finite()  # never save a diverged state
            checkpointer.save(step, state, _checkpoint_meta(setup, pipeline, step))
        if step < num_steps and stop.should_stop(step, checkpointer):
            logging.warning("Stop requested: saving step %d and exiting", step)
            break
        if eval_fn is not None and eval_every > 0 and step % eval_every == 0 and step < num_steps:
            eval_fn(state.params, step)
    logger.flush()  # raises NonFiniteLossError before a diverged state is saved
    checkpointer.save(step, state, _checkpoint_meta(setup, pipeline, step), force=True)
    if eval_fn is not None and step == num_steps:
        eval_fn(state.params, step)
    return state


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    eval_fn: EvalFn | None = None,
    warm_start_fn: WarmStartFn | None = None,
) -> TrainState:
    """Train config.train.num_steps steps in workdir, resuming from its latest checkpoint.

    eval_fn(params, step), if given, runs every config.train.eval_every steps and at the end
    (toxjax.main passes one evaluator.Evaluator, built before training, for train_and_eval).
    warm_start_fn, if given, gives the params a fresh run (no checkpoint yet) starts from;
    config.train.warm_start_from needs one.

    Returns the final state. A SIGTERM (or, on many hosts, a preemption notice) at any point
    saves a checkpoint after the next step and returns normally. A NaN or infinite loss, grad
    norm or param norm raises NonFiniteLossError naming the step, with no checkpoint saved from
    it on. A damaged latest checkpoint is skipped, with a warning, for the newest older one
    that restores (Checkpointer.restore_latest); CheckpointRestoreError if none does.
    """
    if config.train.get("warm_start_from", "") and warm_start_fn is None:
        raise ValueError(
            f"config.train.warm_start_from={config.train.warm_start_from!r} needs a warm_start_fn "
            "(toxjax.interop.hf_import.warm_starter(config) builds it; toxjax.main passes it)"
        )
    tasks.import_task_modules(config)
    fileio.make_dirs(workdir)
    stop = checkpoints.StopRequest().install()
    checkpointer = None
    try:
        # Config errors surface from shapes alone, before any restore, data or compilation.
        setup = create_setup(config)
        train_config = config.train
        input_pipeline.check_vocabulary(config.data.task, setup.model_config.vocab_size)
        checkpointer = checkpoints.Checkpointer(
            fileio.join(workdir, checkpoints.CHECKPOINT_SUBDIR),
            save_every=int(train_config.checkpoint_every),
            max_to_keep=int(train_config.keep_checkpoints),
            async_save=bool(train_config.async_checkpointing),
        )
        # Each step is checked (config, array shapes) before it is read into its shardings.
        restored = checkpointer.restore_latest(setup.abstract_state, setup.model_config_dict)
        warm_params = None
        if restored is None and warm_start_fn is not None:
            warm_params = warm_start_fn(setup.abstract_state.params, setup.model_config_dict)
        pipeline = input_pipeline.create_train_pipeline(config, setup.batch_sharding)

        if restored is not None:
            state, meta, resumed = restored
            pipeline.restore(meta.get("data", {}), resumed, f"{checkpointer.directory} {resumed}")
            logging.info("Resumed from %s step %d", checkpointer.directory, resumed)
        else:
            state = create_train_state(setup, init_rng(config))
            if warm_params is not None:
                state = state.replace(params=warm_params)

        logger = MetricsLogger(workdir, setup, peak_flops(config))
        try:
            return _train_loop(setup, state, pipeline, checkpointer, logger, stop, eval_fn)
        except NonFiniteLossError as error:
            checkpointer.wait()
            latest = checkpointer.latest_step()
            error.checkpoint = (
                f"the latest checkpoint is step {latest} in {checkpointer.directory}"
                if latest is not None
                else f"there is no checkpoint in {checkpointer.directory}"
            )
            raise
        finally:
            logger.close()
            pipeline.close()
    finally:
        stop.uninstall()
        if checkpointer is not None:
            checkpointer.close()
