"""Per-device memory of the sharded training state on any mesh, without allocating it.

Shapes come from jax.eval_shape of the real model and of optax.adamw's state; shardings come
from the logical axis rules on a jax.sharding.AbstractMesh, so a 256-chip layout can be checked
on a laptop before asking for the chips.

    python -m toxjax.model.memory --config=toxjax/configs/gpt_1p3b.py \\
        --mesh=data:1,fsdp:256,tensor:1
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from toxjax.model import partitioning
from toxjax.model.decoder import Decoder, ModelConfig

GIB = 1024**3


def parse_mesh(text: str) -> dict[str, int]:
    """ "data:1,fsdp:256,tensor:1" -> {"data": 1, "fsdp": 256, "tensor": 1} (missing axes = 1)."""
    sizes = {axis: 1 for axis in partitioning.MESH_AXES}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition(":")
        if not sep or name not in sizes:
            raise ValueError(
                f"--mesh item {item!r}: expected axis:size with axis in {partitioning.MESH_AXES}"
            )
        try:
            sizes[name] = int(value)
        except ValueError as error:
            raise ValueError(f"--mesh item {item!r}: size {value!r} is not an integer") from error
    return sizes


def _bytes(abstract_tree: Any, shardings: Any) -> tuple[int, int]:
    """(per-device bytes, global bytes) of a tree of ShapeDtypeStructs under its shardings."""
    leaves = jax.tree_util.tree_leaves(abstract_tree)
    flat_shardings = jax.tree_util.tree_leaves(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding)
    )
    per_device = global_total = 0
    for leaf, sharding in zip(leaves, flat_shardings, strict=True):
        itemsize = jnp.dtype(leaf.dtype).itemsize
        per_device += math.prod(partitioning.shard_shape(leaf.shape, sharding)) * itemsize
        global_total += math.prod(leaf.shape) * itemsize
    return per_device, global_total


def state_memory(
    config: ml_collections.ConfigDict,
    mesh_sizes: Mapping[str, int],
    *,
    num_devices: int | None = None,
    include_grads: bool = False,
) -> dict[str, Any]:
    """Bytes per device of params, AdamW mu/nu and counters (and grads) on the given mesh.

    Dimensions that do not divide their mesh axes are counted padded up, as XLA stores them.
    """
    mesh = partitioning.create_abstract_mesh(mesh_sizes, num_devices)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    rules = partitioning.logical_rules(config)
    model_config = ModelConfig.from_config(config.model)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    boxed_params = jax.eval_shape(
        lambda key: Decoder(model_config).init({"params": key}, tokens)["params"],
        jax.random.key(0),
    )
    # optax keeps the nn.Partitioned boxes, so mu and nu inherit the parameters' names.
    boxed_opt_state = jax.eval_shape(optax.adamw(1e-3).init, boxed_params)
    parts = {"params": boxed_params, "opt_state": boxed_opt_state}
    if include_grads:
        parts["grads"] = boxed_params
    parts["step"] = jax.ShapeDtypeStruct((), jnp.int32)

    per_device: dict[str, int] = {}
    global_bytes: dict[str, int] = {}
    for name, boxed in parts.items():
        shardings = partitioning.abstract_shardings(boxed, mesh, rules)
        per_device[name], global_bytes[name] = _bytes(nn.unbox(boxed), shardings)
    per_device["total"] = sum(per_device.values())
    global_bytes["total"] = sum(global_bytes.values())
    param_count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(boxed_params))
    return {
        "mesh": sizes,
        "num_devices": math.prod(sizes.values()),
        "param_count": param_count,
        "per_device_bytes": per_device,
        "global_bytes": global_bytes,
    }


def _human(num_bytes: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if num_bytes >= size:
            return f"{num_bytes / size:,.2f} {unit}"
    return f"{num_bytes} B"


def format_report(report: Mapping[str, Any]) -> str:
    lines = [
        f"mesh {report['mesh']} ({report['num_devices']} devices), "
        f"{report['param_count']:,} parameters",
        f"{'':12s}{'per device':>16s}{'all devices':>16s}",
    ]
    for name, per_device in report["per_device_bytes"].items():
        total = report["global_bytes"][name]
        lines.append(f"{name:12s}{_human(per_device):>16s}{_human(total):>16s}")
    return "\n".join(lines)
