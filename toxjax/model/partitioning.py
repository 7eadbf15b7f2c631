"""Device mesh, logical-axis rules and partitioned (sharded, jitted) functions.

Vocabulary follows MaxText: mesh axes ("data", "fsdp", "tensor"); models name array dimensions
with logical axes ("embed", "mlp", "activation_batch", ...) and `config.logical_axis_rules`
maps those onto mesh axes. Following t5x, `PartitionedFunction` enters the mesh and the rules
itself on every call, so no caller can trace a sharded function without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from toxjax.model import decoder

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
PyTree = Any


def resolve_axis_sizes(
    sizes: Mapping[str, int], total: int, what: str, unit: str = "devices"
) -> tuple[int, ...]:
    """Resolves {axis: size} with at most one -1 so that the product equals `total`."""
    sizes = dict(sizes.items())
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"{what} has unknown mesh axes {unknown}; expected {MESH_AXES}")
    values = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    shown = dict(zip(MESH_AXES, values, strict=True))
    if any(v == 0 or v < -1 for v in values):
        raise ValueError(f"{what} sizes {shown}: each must be a positive integer or -1")
    if values.count(-1) > 1:
        raise ValueError(f"{what} sizes {shown}: at most one axis may be -1")
    known = math.prod(v for v in values if v != -1)
    if -1 in values:
        if total % known:
            raise ValueError(
                f"{what} sizes {shown} cannot fill {total} {unit}: {known} does not divide {total}"
            )
        values[values.index(-1)] = total // known
    elif known != total:
        raise ValueError(f"{what} sizes {shown} multiply to {known}, but there are {total} {unit}")
    return tuple(values)


def num_slices(devices: Sequence[Any]) -> int:
    """Number of multi-slice (DCN-connected) slices; devices without slice_index are one."""
    return 1 + max(int(getattr(device, "slice_index", 0) or 0) for device in devices)


def mesh_shapes(
    mesh_config: Mapping[str, Any], num_devices: int, slices: int = 1
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici_shape, dcn_shape) over MESH_AXES; the full mesh is their elementwise product."""
    if num_devices % slices:
        raise ValueError(f"{num_devices} devices cannot form {slices} equal slices")
    dcn = resolve_axis_sizes(mesh_config["dcn"], slices, "config.mesh.dcn", unit="slices")
    per_slice = num_devices // slices
    ici = resolve_axis_sizes(mesh_config["ici"], per_slice, f"config.mesh.ici ({slices} slice(s))")
    return ici, dcn


def create_device_array(mesh_config: Mapping[str, Any], devices: Sequence[Any]) -> np.ndarray:
    """Devices laid out as (data, fsdp, tensor): ICI axes within a slice, DCN axes across."""
    devices = list(devices)
    slices = num_slices(devices)
    ici, dcn = mesh_shapes(mesh_config, len(devices), slices)
    if slices > 1:
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return mesh_utils.create_device_mesh(ici, devices)


def create_mesh(mesh_config: Mapping[str, Any], devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh over (data, fsdp, tensor) from config.mesh; errors before anything compiles."""
    devices = jax.devices() if devices is None else devices
    device_array = create_device_array(mesh_config, devices)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def create_abstract_mesh(
    axis_sizes: Mapping[str, int], num_devices: int | None = None
) -> AbstractMesh:
    """Mesh of any size without devices: enough to compute shardings and shard shapes.

    A -1 size is filled from num_devices; without one, the sizes define the device count.
    """
    if num_devices is None:
        if -1 in axis_sizes.values():
            raise ValueError(f"mesh sizes {dict(axis_sizes)} contain -1: give num_devices")
        num_devices = math.prod(int(v) for v in axis_sizes.values())
    sizes = resolve_axis_sizes(axis_sizes, num_devices, "mesh")
    return AbstractMesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_rules(config: Any) -> LogicalRules:
    """config.logical_axis_rules as a tuple of (logical name, mesh axes) pairs, validated."""
    rules = []
    for index, rule in enumerate(config.logical_axis_rules):
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(
                f"config.logical_axis_rules[{index}] must be (logical_name, mesh_axes), got {rule}"
            )
        name, axes = rule
        if axes is not None and not isinstance(axes, str):
            axes = tuple(axes)
        for axis in (axes,) if isinstance(axes, str) else (axes or ()):
            if axis not in MESH_AXES:
                raise ValueError(
                    f"config.logical_axis_rules[{index}] ({name!r}) names mesh axis {axis!r}; "
                    f"mesh axes are {MESH_AXES}"
                )
        rules.append((name, axes))
    return tuple(rules)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def check_logical_axes(logical_spec_tree: PyTree, rules: LogicalRules) -> None:
    """ValueError naming every array whose logical axis has no rule (flax would replicate it)."""
    known = {name for name, _ in rules}
    problems = []
    leaves = jax.tree_util.tree_flatten_with_path(logical_spec_tree, is_leaf=_is_spec)[0]
    for path, spec in leaves:
        if not _is_spec(spec):
            continue
        unknown = [axis for axis in spec if isinstance(axis, str) and axis not in known]
        if unknown:
            problems.append(f"{jax.tree_util.keystr(path)}: {unknown}")
    if problems:
        raise ValueError(
            "logical axis names missing from config.logical_axis_rules: " + "; ".join(problems)
        )


def logical_shardings(
    logical_spec_tree: PyTree, mesh: Mesh | AbstractMesh, rules: LogicalRules
) -> PyTree:
    """Logical PartitionSpec tree -> NamedSharding tree (the mesh may be abstract)."""
    check_logical_axes(logical_spec_tree, rules)
    return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, rules)


def abstract_shardings(
    abstract_boxed_tree: PyTree, mesh: Mesh | AbstractMesh, rules: LogicalRules
) -> PyTree:
    """jax.eval_shape output with nn.Partitioned boxes -> NamedShardings of the unboxed tree.

    Leaves without logical names (e.g. step counters) are replicated.
    """
    specs = nn.get_partition_spec(abstract_boxed_tree)
    return logical_shardings(specs, mesh, rules)


def _shard_counts(ndim: int, sharding: NamedSharding) -> tuple[int, ...]:
    """How many pieces each dimension is split into by `sharding`."""
    mesh_sizes = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_sizes, strict=True))
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    counts = []
    for axes in spec:
        names = (axes,) if isinstance(axes, str) else (axes or ())
        counts.append(math.prod(mesh_sizes[name] for name in names))
    return tuple(counts)


def shard_shape(shape: Sequence[int], sharding: NamedSharding) -> tuple[int, ...]:
    """Per-device shape; a dimension that does not divide is padded up, as XLA does."""
    counts = _shard_counts(len(shape), sharding)
    return tuple(-(-dim // count) for dim, count in zip(shape, counts, strict=True))


def check_divisible(abstract_tree: PyTree, shardings: PyTree) -> None:
    """ValueError naming each array whose sharded dimension does not divide its mesh axes."""
    problems = []
    flat = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    flat_shardings = jax.tree_util.tree_leaves(
        shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
    )
    for (path, leaf), sharding in zip(flat, flat_shardings, strict=True):
        counts = _shard_counts(len(leaf.shape), sharding)
        if any(dim % count for dim, count in zip(leaf.shape, counts, strict=True)):
            problems.append(f"{jax.tree_util.keystr(path)} {leaf.shape} over {sharding.spec}")
    if problems:
        raise ValueError(
            "dimensions not divisible by the sizes of their mesh axes "
            f"{dict(flat_shardings[0].mesh.shape)}: " + "; ".join(problems)
        )


def from_host_copies(tree: PyTree, sharding: jax.sharding.Sharding) -> PyTree:
    """Numpy arrays that every process holds in full, as global arrays laid out in `sharding`.

    jit refuses numpy inputs with a non-trivial sharding once there are several processes;
    each process hands over only the pieces its own devices hold.
    """
    return jax.tree.map(
        lambda value: jax.make_array_from_callback(
            value.shape, sharding, lambda index: value[index]
        ),
        tree,
    )


@contextlib.contextmanager
def mesh_and_rules(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
    """Both contexts a sharded trace needs: the mesh (for constraints) and the axis rules."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


class PartitionedFunction:
    """jax.jit with shardings and donation that enters its mesh and rules on every call."""

    def __init__(
        self,
        fn: Callable[..., Any],
        mesh: Mesh,
        rules: LogicalRules,
        *,
        in_shardings: Any = None,
        out_shardings: Any = None,
        donate_argnums: int | Sequence[int] = (),
        static_argnums: int | Sequence[int] = (),
        compiler_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.mesh = mesh
        self.rules = tuple(rules)
        jit_kwargs: dict[str, Any] = {
            "donate_argnums": donate_argnums,
            "static_argnums": static_argnums,
            # XLA options, e.g. {"xla_backend_optimization_level": 0} for quick tests.
            "compiler_options": dict(compiler_options) if compiler_options else None,
        }
        if in_shardings is not None:
            jit_kwargs["in_shardings"] = in_shardings
        if out_shardings is not None:
            jit_kwargs["out_shardings"] = out_shardings
        self._jitted = jax.jit(fn, **jit_kwargs)
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with mesh_and_rules(self.mesh, self.rules):
            return self._jitted(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """Lowered computation (for cost/memory analysis) under the same contexts."""
        with mesh_and_rules(self.mesh, self.rules):
            return self._jitted.lower(*args, **kwargs)


def sharded_init(
    init_fn: Callable[..., PyTree], mesh: Mesh, rules: LogicalRules, *args: Any
) -> tuple[PyTree, PyTree]:
    """Runs init_fn(*args) directly into its sharded layout: (unboxed state, its shardings).

    init_fn may return nn.Partitioned-boxed leaves (model.init, or a train state built from
    them); shapes come from jax.eval_shape, so nothing is materialised unsharded.
    """
    with mesh_and_rules(mesh, rules):
        abstract = jax.eval_shape(init_fn, *args)
    shardings = abstract_shardings(abstract, mesh, rules)
    check_divisible(nn.unbox(abstract), shardings)
    init = PartitionedFunction(
        lambda *a: nn.unbox(init_fn(*a)), mesh, rules, out_shardings=shardings
    )
    return init(*args), shardings


def batch_sharding(mesh: Mesh, rules: LogicalRules, ndim: int = 2) -> NamedSharding:
    """Sharding of an input batch [batch, length, ...]: batch over the activation_batch axes."""
    names = ("activation_batch", "activation_length") + (None,) * (ndim - 2)
    return nn.logical_to_mesh_sharding(PartitionSpec(*names[:ndim]), mesh, rules)


# ----- model params and batches on a mesh -----


def abstract_params(model_config: decoder.ModelConfig, mesh: Mesh, rules: Sequence) -> PyTree:
    """ShapeDtypeStructs of the model's params carrying their shardings under `rules` (the
    training layout): targets for restoring a checkpoint."""
    rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
    # A fresh tree each call: callers may edit theirs; the trace behind it is shared.
    return jax.tree.map(lambda leaf: leaf, _abstract_params(model_config, mesh, rules))


@functools.lru_cache(maxsize=32)
def _abstract_params(model_config: decoder.ModelConfig, mesh: Mesh, rules: LogicalRules) -> PyTree:
    """Traces model.init once per (config, mesh, rules): every evaluation stage places its
    params through here (the smoke study: 63 of 65 calls repeats, 12 s of its 94 s)."""
    model = decoder.Decoder(model_config)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    with mesh_and_rules(mesh, rules):
        boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, tokens))
    shardings = abstract_shardings(boxed["params"], mesh, rules)
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        nn.unbox(boxed["params"]),
        shardings,
    )


def param_shardings(model_config: decoder.ModelConfig, mesh: Mesh, rules: Sequence) -> PyTree:
    """NamedShardings of the model's params under `rules`."""
    return jax.tree.map(lambda leaf: leaf.sharding, abstract_params(model_config, mesh, rules))


def shard_params(
    params: PyTree, model_config: decoder.ModelConfig, mesh: Mesh, rules: Sequence
) -> tuple[PyTree, PyTree]:
    """(params laid out on `mesh`, their shardings); arrays already in place are not copied."""
    shardings = param_shardings(model_config, mesh, rules)
    params = nn.unbox(params)
    try:
        placed = jax.device_put(params, shardings)
    except ValueError as error:
        raise ValueError(
            f"params do not match config.model ({error}); was the checkpoint trained with "
            "another model config?"
        ) from None
    return placed, shardings


def batch_shards(mesh: Mesh, rules: Sequence) -> int:
    """How many pieces the batch dimension is split into (rows should be a multiple)."""
    spec = batch_sharding(mesh, tuple(rules)).spec
    axes = spec[0] if len(spec) else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[axis] for axis in axes])) if axes else 1


@dataclasses.dataclass(frozen=True, eq=False)
class ModelOnMesh:
    """A model config laid out on a mesh, and the XLA options its functions compile with:
    what an engine over the model's params (sampling, log-likelihood) needs besides them."""

    model_config: decoder.ModelConfig
    mesh: Mesh
    rules: LogicalRules
    compiler_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))

    def place(self, params: PyTree) -> tuple[PyTree, PyTree]:
        """`shard_params` here: (params laid out on the mesh, their shardings)."""
        return shard_params(params, self.model_config, self.mesh, self.rules)

    def batch_shards(self) -> int:
        return batch_shards(self.mesh, self.rules)

    def replicated_function(
        self, fn: Callable[..., Any], param_shardings: PyTree, num_inputs: int
    ) -> PartitionedFunction:
        """fn(params, *inputs) jitted on the mesh: params in `param_shardings`, its
        `num_inputs` other inputs and its outputs replicated."""
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return PartitionedFunction(
            fn,
            self.mesh,
            self.rules,
            in_shardings=(param_shardings, *[replicated] * num_inputs),
            out_shardings=replicated,
            compiler_options=self.compiler_options,
        )
