"""TPU slices named as gcloud names their topologies ("v5p:2x2x1"), as compile-only devices.

With libtpu installed, jax.experimental.topologies describes any slice on a CPU host: devices
that jit can compile for but never run on. A config's per-device memory and XLA's step-time
estimate are then known before a TPU is rented.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation, per chip (with megacore, libtpu's device is the whole chip)."""

    hbm_bytes: int
    peak_flops: float  # dense bfloat16 FLOP/s, the MFU denominator
    chip_config_name: str  # libtpu: "megacore" fuses a chip's two TensorCores into one device
    dims: int  # 2 (v5e, v6e: AxB) or 3 (v4, v5p: AxBxC)


# The one table of per-chip figures the compile reports use (the peaks agree with
# toxjax.model.flops.PEAK_FLOPS_BY_DEVICE_KIND for these devices; tested).
CHIPS: dict[str, Chip] = {
    "v4": Chip(hbm_bytes=32 * GIB, peak_flops=275e12, chip_config_name="megacore", dims=3),
    "v5e": Chip(hbm_bytes=16 * GIB, peak_flops=197e12, chip_config_name="default", dims=2),
    "v5p": Chip(hbm_bytes=95 * GIB, peak_flops=459e12, chip_config_name="megacore", dims=3),
    "v6e": Chip(hbm_bytes=32 * GIB, peak_flops=918e12, chip_config_name="default", dims=2),
}
# Chips of one host in each dimension: every generation's multi-host slices have 4-chip hosts
# (2x2x1), as MaxText's accelerator_to_spec_map uses; smaller slices are one partial host.
HOST_BOUNDS = (2, 2, 1)
_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice shape of one TPU generation, times num_slices (DCN-connected copies)."""

    generation: str
    shape: tuple[int, ...]
    num_slices: int = 1

    @property
    def name(self) -> str:
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def num_devices(self) -> int:
        return math.prod(self.shape) * self.num_slices

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        shape3 = tuple(self.shape) + (1,) * (3 - len(self.shape))
        return tuple(min(size, bound) for size, bound in zip(shape3, HOST_BOUNDS, strict=True))

    def __str__(self) -> str:
        return self.name if self.num_slices == 1 else f"{self.num_slices}x{self.name}"


def parse_topology(text: str, num_slices: int = 1) -> Topology:
    """ "v5e:2x2" -> Topology("v5e", (2, 2)); ValueError naming what is accepted."""
    match = _NAME.match(text.strip())
    if not match:
        raise ValueError(
            f"topology {text!r}: expected GENERATION:SHAPE with GENERATION one of "
            f"{sorted(CHIPS)}, e.g. v5e:2x2, v6e:4x4, v4:2x2x2, v5p:2x2x1"
        )
    generation, shape_text = match.groups()
    shape = tuple(int(size) for size in shape_text.split("x"))
    dims = CHIPS[generation].dims
    if len(shape) != dims or min(shape) < 1:
        example = "2x2" if dims == 2 else "2x2x1"
        raise ValueError(
            f"topology {text!r}: {generation} slices have {dims} dimensions, e.g. "
            f"{generation}:{example}"
        )
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    return Topology(generation, shape, num_slices)


class LibtpuMissingError(RuntimeError):
    """libtpu is not installed, so no TPU topology can be described."""


def libtpu_available() -> bool:
    """Whether libtpu (the `tpu-aot` extra) is installed: compile-only devices need it."""
    return importlib.util.find_spec("libtpu") is not None


def compile_only_devices(topology: Topology) -> list[Any]:
    """The slice's devices: jit compiles for them; nothing can run or be placed on them."""
    if not libtpu_available():
        raise LibtpuMissingError(
            "compiling for TPU needs libtpu: pip install -e '.[tpu-aot]' (CPU hosts too)"
        )
    # Compiling touches no TPU, so several processes may load libtpu at once (pytest workers,
    # a compile beside a running job); otherwise all but the first fail on libtpu's lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        description = topologies.get_topology_desc(
            platform="tpu",
            topology_name=topology.name,
            num_slices=topology.num_slices,
            chip_config_name=topology.chip.chip_config_name,
            chips_per_host_bounds=topology.chips_per_host_bounds,
            wrap=(False, False, False),
        )
    except Exception as error:  # libtpu's errors are XlaRuntimeErrors with long traces
        raise ValueError(f"libtpu cannot describe topology {topology}: {error}") from error
    return list(description.devices)
