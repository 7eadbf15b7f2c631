"""Orbax checkpoints of the train state, compatibility checks, warm start and clean stops.

A checkpoint step holds two items: "state" (params, optimizer state, step; restored straight
into the sharded abstract state) and "meta" (JSON: the resolved model config, the data position
and the run config), so a mismatched config is reported from the JSON and the stored array
metadata before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

# The store orbax's default jax.Array handler is built with (no public alias).
from orbax.checkpoint._src.metadata import array_metadata_store

from toxjax import fileio
from toxjax.model import decoder, partitioning

STATE = "state"
META = "meta"
CHECKPOINT_SUBDIR = "checkpoints"
# Model fields whose change alters parameter names, shapes or dtypes (resume would be wrong).
PARAMETER_FIELDS = (
    "num_layers",
    "d_model",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "vocab_size",
    "max_len",
    "norm",
    "positions",
    "activation",
    "tie_embeddings",
    "use_bias",
    "scan_layers",
    "param_dtype",
)
_MAX_LISTED = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint cannot be restored into the configured model."""


class CheckpointRestoreError(RuntimeError):
    """No step tried in a checkpoint directory could be read; .errors maps each step to why."""

    def __init__(self, message: str, directory: str, errors: Mapping[int, str]):
        super().__init__(message)
        self.directory = directory
        self.errors = dict(errors)


def _short_error(error: BaseException) -> str:
    """The error on one line, without the JSON spec TensorStore appends to its messages."""
    text = " ".join(str(error).split(" [tensorstore_spec=")[0].split())
    if len(text) > 400:
        text = text[:400] + " ..."
    return f"{type(error).__name__}: {text}"


def _all_processes(ok: bool) -> bool:
    """True only where every process says True, so that all hosts settle on the same step."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def first_readable(
    directory: str,
    steps: Sequence[int],
    attempt: Callable[[int], Any],
    *,
    what: str = "checkpoint",
) -> tuple[Any, int, list[int]]:
    """attempt(step) on `steps` in order until one succeeds: (its result, the step, failed steps).

    CheckpointMismatchError (the configured model differs) is raised at once: it is a config
    problem, not damage, and an older step of the same run would not match either. Any other
    error (a file missing, truncated or undecodable, reported by orbax or TensorStore in many
    forms) is logged as a warning naming the step, and the next step is tried. When none is
    left, CheckpointRestoreError names the directory and each step's error.
    """
    steps = [int(step) for step in steps]
    errors: dict[int, str] = {}
    for index, step in enumerate(steps):
        try:
            result, error = attempt(step), None
        except CheckpointMismatchError:
            raise
        except Exception as caught:  # orbax and TensorStore raise many types for damage
            result, error = None, _short_error(caught)
        if _all_processes(error is None):
            return result, step, list(errors)
        errors[step] = error or "failed on another process"
        following = steps[index + 1] if index + 1 < len(steps) else None
        logging.warning(
            "%s: checkpoint %s step %d cannot be restored (%s); %s",
            what,
            directory,
            step,
            errors[step],
            "no other step to try" if following is None else f"trying step {following}",
        )
    listed = "\n  ".join(f"step {step}: {error}" for step, error in errors.items())
    raise CheckpointRestoreError(
        f"{what}: no checkpoint in {directory} could be restored (tried steps {steps}):\n  "
        f"{listed}\nThe step directories are damaged (files truncated or missing): restore "
        "them from a copy, or move them away to start this run again from scratch.",
        directory,
        errors,
    )


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{"params/layers/mlp/wi/kernel": (shape, dtype)}: one naming for live trees and metadata."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if leaf is None:
            continue
        name = "/".join(_key_name(key) for key in path)
        flat[name] = (tuple(int(d) for d in leaf.shape), str(jax.numpy.dtype(leaf.dtype)))
    return flat


def _describe(lines: list[str]) -> str:
    shown = lines[:_MAX_LISTED]
    more = len(lines) - len(shown)
    return "\n  ".join(shown + ([f"... and {more} more"] if more > 0 else []))


def check_compatible(
    where: str,
    saved_model_config: Mapping[str, Any] | None,
    model_config: Mapping[str, Any],
    saved_shapes: Mapping[str, tuple[tuple[int, ...], str]],
    expected_shapes: Mapping[str, tuple[tuple[int, ...], str]],
) -> None:
    """Raise CheckpointMismatchError naming every differing config field and array.

    The config comparison gives the readable reason (e.g. scan_layers); the array comparison
    catches whatever the JSON cannot (a changed model definition with an unchanged config).
    """
    problems = []
    if saved_model_config is not None:
        for field in PARAMETER_FIELDS:
            if field in saved_model_config and saved_model_config[field] != model_config.get(field):
                problems.append(
                    f"config.model.{field}: checkpoint has {saved_model_config[field]!r}, "
                    f"config has {model_config.get(field)!r}"
                )
        for field, value in saved_model_config.items():
            if field not in PARAMETER_FIELDS and model_config.get(field) != value:
                logging.warning(
                    "%s: config.model.%s changed from %r to %r (parameters unaffected)",
                    where,
                    field,
                    value,
                    model_config.get(field),
                )
    array_problems = []
    # Parameters first: they are what a reader recognises (optimizer moments mirror them).
    names = sorted(set(saved_shapes) | set(expected_shapes), key=lambda n: (n[:7] != "params/", n))
    for name in names:
        if name not in expected_shapes:
            array_problems.append(f"{name}: in checkpoint, not in model {saved_shapes[name]}")
        elif name not in saved_shapes:
            array_problems.append(f"{name}: in model, not in checkpoint {expected_shapes[name]}")
        elif saved_shapes[name][0] != expected_shapes[name][0]:
            array_problems.append(
                f"{name}: checkpoint shape {saved_shapes[name][0]}, "
                f"model shape {expected_shapes[name][0]}"
            )
    if array_problems:
        problems.append(f"{len(array_problems)} array(s) differ:\n  " + _describe(array_problems))
    if problems:
        hint = ""
        if any("scan_layers" in p for p in problems):
            hint = (
                "\nA scanned checkpoint converts to per-layer params (and back) with "
                "toxjax.model.decoder.unscan_params / scan_params."
            )
        raise CheckpointMismatchError(
            f"checkpoint {where} does not match the configured model:\n- "
            + "\n- ".join(problems)
            + hint
        )


@functools.cache
def _host_memory_array_handler() -> None:
    """On the CPU backend, saves copy each array's shard from replica 0 as it is.

    orbax's default splits a replicated array across its replicas with an eager slice per shard,
    each compiled on first use: 3.4 s of the first save of the tiny config, on 8 CPU devices whose
    memory is host memory already. orbax turns it off on GPU for its own reasons; TPU keeps it.
    """
    if jax.default_backend() != "cpu":
        return
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()
    )
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpointer:
    """Async, rotating checkpoints of one run (orbax CheckpointManager with two items)."""

    def __init__(
        self,
        directory: str,
        *,
        save_every: int = 1,
        max_to_keep: int | None = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = directory if fileio.is_url(directory) else os.path.abspath(directory)
        self.save_every = int(save_every)
        self.read_only = bool(read_only)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        _host_memory_array_handler()
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=(STATE, META),
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                META: ocp.JsonCheckpointHandler(),
            },
            options=options,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def is_save_step(self, step: int) -> bool:
        """Every save_every steps (<= 0: only forced saves, i.e. at the end or on a stop)."""
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, meta: Mapping[str, Any], *, force: bool = False) -> bool:
        """Start a (possibly background) save if step is a save step or force; True if started.

        Our own interval rule rather than orbax's (which also saves the first step it sees).
        """
        if not force and not self.is_save_step(step):
            return False
        if step in self.manager.all_steps():
            return False
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(dict(meta))}
            ),
            force=True,
        )
        if saved:
            logging.info("Saving checkpoint for step %d in %s", step, self.directory)
        return saved

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()})
        )
        return dict(restored[META])

    def saved_shapes(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        metadata = self.manager.item_metadata(step)[STATE]
        if metadata is None:  # e.g. state/_METADATA missing: damage, not a different model
            raise FileNotFoundError(
                f"{self.directory} step {step}: no readable array metadata for {STATE!r}"
            )
        tree = getattr(metadata, "tree", metadata)
        return flat_shapes(tree)

    def check_compatible(
        self, step: int, abstract_state: Any, model_config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Validate step against the abstract state and config; returns the checkpoint meta."""
        meta = self.read_meta(step)
        check_compatible(
            f"{self.directory} step {step}",
            meta.get("model_config"),
            model_config,
            self.saved_shapes(step),
            flat_shapes(abstract_state),
        )
        return meta

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore directly into the shardings carried by abstract_state (ShapeDtypeStructs)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
            ),
        )
        return restored[STATE], dict(restored[META])

    def restore_latest(
        self, abstract_state: Any, model_config: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any], int] | None:
        """(state, meta, step) of the newest step that checks and restores; None without steps.

        A damaged step is skipped with a warning for the next older one (see first_readable);
        CheckpointMismatchError and, when no step restores, CheckpointRestoreError are raised.
        The damaged steps, all newer than the one restored, are set aside (set_aside; not when
        read-only) so the resumed run saves those steps again instead of skipping them as saved.
        """
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None

        def attempt(step: int) -> tuple[Any, dict[str, Any]]:
            self.check_compatible(step, abstract_state, model_config)
            return self.restore(step, abstract_state)

        (state, meta), step, damaged = first_readable(self.directory, steps, attempt, what="resume")
        for bad in [] if self.read_only else damaged:
            self.set_aside(bad)
        return state, meta, step

    def set_aside(self, step: int) -> str:
        """Rename step's directory to "<step>.corrupt" (kept for inspection, unseen by orbax)."""
        source = epath.Path(self.directory) / str(step)
        target = source.with_name(f"{step}.corrupt")
        copies = 1
        while target.exists():
            copies += 1
            target = source.with_name(f"{step}.corrupt{copies}")
        if jax.process_index() == 0:
            try:
                source.rename(target)
            except OSError as error:
                raise OSError(
                    f"cannot move the damaged checkpoint {source} aside ({error}): delete it "
                    "and start again"
                ) from error
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"toxjax_set_aside_{step}")
        self.manager.reload()
        logging.warning("Moved the damaged checkpoint %s to %s", source, target)
        return str(target)

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def find_checkpoint_dir(path: str) -> str:
    """Accept a workdir (with checkpoints/) or a checkpoints directory itself (local or gs://)."""
    candidate = fileio.join(path, CHECKPOINT_SUBDIR)
    return candidate if fileio.exists(candidate) else path


def restore_params(
    path: str,
    abstract_params: Any,
    model_config: Mapping[str, Any],
    *,
    step: int | None = None,
    what: str = "checkpoint",
) -> tuple[Any, int]:
    """Params only (no optimizer state) of `step` (default: the latest) of a run under `path`.

    Checked against abstract_params and model_config first, then read straight into the
    shardings the abstract params carry, so an evaluation or a warm start never materialises
    the optimizer state or an unsharded copy. `what` names the caller's setting in errors.
    """
    directory = find_checkpoint_dir(path)
    if not fileio.exists(directory):
        raise FileNotFoundError(
            f"{what}: no checkpoint directory at {path!r} (expected a workdir with "
            f"{CHECKPOINT_SUBDIR}/ or a checkpoint directory)"
        )
    source = Checkpointer(directory, read_only=True, async_save=False)
    try:
        available = source.all_steps()
        if not available:
            raise FileNotFoundError(f"{what}: no checkpoint steps in {directory}")
        if step is not None and int(step) not in available:
            raise FileNotFoundError(
                f"{what}: {directory} has no step {step}; it has {sorted(available)}"
            )
        # The latest step falls back to older ones when damaged; an explicit step does not.
        steps = sorted(available, reverse=True) if step is None else [int(step)]
        read = functools.partial(_read_params, source, abstract_params, model_config, what)
        params, step, _ = first_readable(directory, steps, read, what=what)
    finally:
        source.close()
    logging.info("Restored params (%s) from %s step %d", what, directory, step)
    return params, step


def _read_params(
    source: Checkpointer,
    abstract_params: Any,
    model_config: Mapping[str, Any],
    what: str,
    step: int,
) -> Any:
    """Params of one step: checked against the model first, then read into their shardings."""
    meta = source.read_meta(step)
    saved = {
        name: value
        for name, value in source.saved_shapes(step).items()
        if name.startswith("params/")
    }
    expected = {f"params/{name}": value for name, value in flat_shapes(abstract_params).items()}
    check_compatible(
        f"{source.directory} step {step} ({what})",
        meta.get("model_config"),
        model_config,
        saved,
        expected,
    )
    item = {"params": abstract_params}
    restored = ocp.PyTreeCheckpointer().restore(
        fileio.join(source.directory, str(step), STATE),
        args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        ),
    )
    return restored["params"]


def restore_params_for_warm_start(
    path: str, abstract_params: Any, model_config: Mapping[str, Any]
) -> tuple[Any, int]:
    """Params only (no optimizer state, step 0) from the latest checkpoint of another run."""
    what = f"warm start from config.train.warm_start_from={path!r}"
    return restore_params(path, abstract_params, model_config, what=what)


class StopRequest:
    """Turns SIGTERM into "save at the next step and exit cleanly".

    Single process: a Python handler sets a flag. Multi-process: JAX's preemption service owns
    SIGTERM and `reached_preemption(step)` makes every host agree on the same step, so no
    Python handler is installed (it would replace the service's).
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._previous: Any = None
        self._installed = False

    def install(self) -> StopRequest:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        logging.warning("Received signal %d: saving a checkpoint at the next step", signum)
        self._flag.set()

    def request(self) -> None:
        self._flag.set()

    def should_stop(self, step: int, checkpointer: Checkpointer | None) -> bool:
        if self._flag.is_set():
            return True
        return checkpointer is not None and checkpointer.reached_preemption(step)

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


def restore_run_params(
    config: ml_collections.ConfigDict,
    checkpoint_dir: str,
    *,
    step: int | None = None,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalRules,
) -> tuple[Any, int]:
    """Params only (no optimizer state) of `step` (default: the latest) of a training run,
    checked against config.model and read straight into their shardings on `mesh`."""
    model_config = decoder.ModelConfig.from_config(config.model)
    return restore_params(
        checkpoint_dir,
        partitioning.abstract_params(model_config, mesh, rules),
        dataclasses.asdict(model_config),
        step=step,
        what=f"params of {checkpoint_dir!r}",
    )
