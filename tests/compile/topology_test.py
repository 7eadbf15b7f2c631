"""toxjax.compile.topology: slice names, host bounds, and the chip table against libtpu."""

from __future__ import annotations

import pytest

from toxjax.compile import topology
from toxjax.model import flops

needs_libtpu = pytest.mark.skipif(
    not topology.libtpu_available(), reason="libtpu is not installed (pip install -e .[tpu-aot])"
)


@pytest.mark.parametrize(
    ("text", "num_slices", "devices", "bounds"),
    [
        ("v5e:2x2", 1, 4, (2, 2, 1)),
        ("v5e:1x1", 1, 1, (1, 1, 1)),
        ("v5e:4x4", 2, 32, (2, 2, 1)),
        ("v6e:2x4", 1, 8, (2, 2, 1)),
        ("v5p:2x2x1", 1, 4, (2, 2, 1)),
        ("v4:2x2x4", 1, 16, (2, 2, 1)),
    ],
)
def test_parse_topology(text, num_slices, devices, bounds):
    parsed = topology.parse_topology(text, num_slices)
    assert parsed.name == text
    assert parsed.num_devices == devices
    assert parsed.chips_per_host_bounds == bounds
    assert str(parsed) == (text if num_slices == 1 else f"{num_slices}x{text}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("v5e-4", "expected GENERATION:SHAPE"),
        ("v3:2x2", "expected GENERATION:SHAPE"),
        ("v5e:2x2x1", "v5e slices have 2 dimensions"),
        ("v5p:2x2", "v5p slices have 3 dimensions"),
        ("v4:0x2x2", "v4 slices have 3 dimensions"),
    ],
)
def test_bad_topologies_say_what_is_accepted(text, message):
    with pytest.raises(ValueError, match=message):
        topology.parse_topology(text)


def test_num_slices_must_be_positive():
    with pytest.raises(ValueError, match="num_slices must be >= 1"):
        topology.parse_topology("v5e:2x2", 0)


@needs_libtpu
@pytest.mark.parametrize(
    ("text", "kind"),
    [("v4:2x2x1", "TPU v4"), ("v5e:2x2", "TPU v5 lite"), ("v5p:2x2x1", "TPU v5"),
     ("v6e:2x2", "TPU v6 lite")],
)  # fmt: skip
def test_compile_only_devices_and_their_peak(text, kind):
    parsed = topology.parse_topology(text)
    devices = topology.compile_only_devices(parsed)
    assert len(devices) == parsed.num_devices
    assert {d.platform for d in devices} == {"tpu"} and devices[0].device_kind == kind
    # One chip per device (megacore for v4/v5p); the table's peak is flops' for that kind.
    assert flops.peak_flops_per_device(devices[0]) == parsed.chip.peak_flops


@needs_libtpu
def test_several_slices_carry_their_slice_index():
    devices = topology.compile_only_devices(topology.parse_topology("v5e:2x2", 2))
    assert sorted({d.slice_index for d in devices}) == [0, 1]


@needs_libtpu
def test_a_shape_libtpu_rejects_is_a_value_error():
    with pytest.raises(ValueError, match="libtpu cannot describe topology v5e:3x3"):
        topology.compile_only_devices(topology.parse_topology("v5e:3x3"))
