"""toxjax.compile.aot: the real steps compile for TPU slices on this CPU host.

The command's own test (compile_main_test) compiles all three steps of toxjax/configs/tiny.py; here
the parts: unrolled layers, several slices, the report's arithmetic and XLA's refusals.
"""

from __future__ import annotations

import types

import pytest

from toxjax.compile import aot, topology
from toxjax.configs import tiny

needs_libtpu = pytest.mark.skipif(
    not topology.libtpu_available(), reason="libtpu is not installed (pip install -e .[tpu-aot])"
)


def test_layered_config_unrolls_a_scanned_stack_and_keeps_the_input():
    config = tiny.get_config()
    unrolled, layers = aot.layered_config(config, unroll_layers=True)
    assert layers == "unrolled" and unrolled.model.scan_layers is False
    assert config.model.scan_layers is True  # the caller's config is not changed
    assert aot.layered_config(config, unroll_layers=False)[1] == "scanned"
    config.model.scan_unroll = config.model.num_layers
    assert aot.layered_config(config, unroll_layers=False)[1] == "unrolled"


@pytest.mark.parametrize(
    ("message", "temp", "total"),
    [
        (
            "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
            "temporaries (247.46G) exceeds available HBM (15.75G).",
            round(247.46 * 1024**3),
            1024 + round(247.46 * 1024**3),
        ),
        (
            "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
            "space hbm. Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G.",
            None,
            round(20.5 * 1024**3),
        ),
    ],
)
def test_refused_memory_reads_both_of_xlas_messages(message, temp, total):
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    args = (jax.ShapeDtypeStruct((512,), np.float32, sharding=sharding),)  # 1 KiB per device
    memory = aot.refused_memory(message, args)
    assert memory["argument"] == 1024
    assert memory["temp"] == temp and memory["total"] == total


def test_step_report_projects_from_optimal_seconds():
    program = aot.StepProgram("train", None, (), 4 * 197e12 * 0.5, 8192)
    memory = {"argument": 3, "output": 2, "temp": 10, "alias": 2, "total": 13}
    result = aot.CompileResult(memory, {"flops": 1e12, "optimal_seconds": 1.0}, 12.345)
    mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 4, "tensor": 1})
    report = aot.step_report(
        program,
        result,
        config_name="c.py",
        topology=topology.parse_topology("v5e:2x2"),
        mesh=mesh,
        layers="unrolled",
    )
    assert report["fits"] is True and report["hbm_bytes_per_device"] == 16 * 1024**3
    assert report["projected_mfu"] == pytest.approx(0.5)
    assert report["projected_tokens_per_s_per_chip"] == pytest.approx(2048.0)
    assert report["compile_s"] == 12.35 and report["projection"] == aot.PROJECTION
    # XLA's -1 per op it cannot estimate, and scanned layers, give no projection, and say why.
    for cost, layers, why in (
        ({"optimal_seconds": -20.98}, "unrolled", "could not estimate some ops"),
        ({"optimal_seconds": 1.0}, "scanned", "scanned layer body once"),
    ):
        result = aot.CompileResult(memory, cost, 1.0)
        report = aot.step_report(
            program,
            result,
            config_name="c.py",
            topology=topology.parse_topology("v5e:2x2"),
            mesh=mesh,
            layers=layers,
        )
        assert report["projected_step_s"] is None and report["projected_mfu"] is None
        assert why in report["projection"]


def test_gradient_accumulation_carries_its_work_after_the_loop():
    import jax

    config = tiny.get_config()
    config.optim.grad_accum_steps = -1  # auto: 16 sequences over 8 shards, at most 1 each
    config.optim.max_microbatch_per_device = 1
    program = aot.train_program(config, jax.devices())
    assert program.trips == 2 and program.loop is None
    rest = program.loop_rest
    assert rest is not None and rest.name == "apply_gradients" and rest.loop_rest is None
    state, grad_sums, _ = rest.args
    assert jax.tree.structure(grad_sums) == jax.tree.structure(state.params)
    compiled = aot.compile_step(rest)  # its shardings and arguments agree (compiles on CPU)
    assert compiled.error is None and compiled.memory["argument"] > 0
    config.optim.grad_accum_steps = 1
    program = aot.train_program(config, jax.devices())
    assert program.trips == 1 and program.loop_rest is None


def test_loop_correction_adds_the_body_once_per_extra_trip():
    memory = {"argument": 3, "output": 2, "temp": 10, "alias": 2, "total": 13}
    step = aot.CompileResult(memory, {"flops": 12.0, "optimal_seconds": 1.5}, 10.0)
    rest = aot.CompileResult({**memory, "temp": 1}, {"flops": 2.0, "optimal_seconds": 0.5}, 2.0)
    # body = step - rest (10 FLOPs, 1 s); 4 trips: the step and 3 more bodies.
    result = aot.loop_corrected(step, rest, trips=4)
    assert result.cost == {"flops": 42.0, "optimal_seconds": 4.5}
    assert result.loop_body == {"flops": 10.0, "optimal_seconds": 1.0}
    assert result.memory == memory and result.compile_s == 12.0  # the step's own memory
    refused = aot.CompileResult(memory, {}, 5.0, error="RESOURCE_EXHAUSTED: hbm")
    assert aot.loop_corrected(step, refused, trips=4).cost == {}


@needs_libtpu
def test_train_step_compiles_for_two_slices_with_a_dcn_axis():
    config = tiny.get_config()
    config.mesh.dcn.data = 2
    config.mesh.ici.data, config.mesh.ici.fsdp = 1, -1
    target = topology.parse_topology("v5e:2x2", num_slices=2)
    (report,) = aot.compile_config(config, target, steps=["train"], config_name="tiny")
    assert report["topology"] == "2xv5e:2x2" and report["num_devices"] == 8
    assert report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert report["fits"] and report["bytes_per_device"]["total"] > 0
    # Unrolled, XLA's count covers both layers: near the model FLOPs (rematerialisation off).
    assert 0.8 < report["xla_flops"] / report["model_flops_per_device"] < 1.5


@needs_libtpu
def test_an_accumulated_step_is_costed_over_all_its_micro_batches():
    config = tiny.get_config()
    config.mesh.ici.data, config.mesh.ici.fsdp = 1, -1
    config.optim.grad_accum_steps = -1  # 16 sequences over 4 chips, 1 per micro-batch: 4 trips
    config.optim.max_microbatch_per_device = 1
    target = topology.parse_topology("v5p:2x2x1")
    (report,) = aot.compile_config(config, target, steps=["train"], config_name="tiny")
    assert report["loop"]["trips"] == 4 and report["loop"]["body_optimal_seconds"] > 0
    # Counted once, the loop would show a quarter of the FLOPs; corrected, all of them.
    assert 0.8 < report["xla_flops"] / report["model_flops_per_device"] < 1.5
    assert report["projected_step_s"] > 3 * report["loop"]["body_optimal_seconds"]
    # Scanned layers cannot be projected anyway: the twin is not compiled (the fit check's case).
    (scanned,) = aot.compile_config(config, target, steps=["train"], unroll_layers=False)
    assert scanned["loop"]["body_optimal_seconds"] is None and scanned["projected_mfu"] is None
    assert "scanned layer body once" in scanned["projection"]


@needs_libtpu
def test_a_config_that_cannot_fit_is_reported_not_raised():
    config = tiny.get_config()
    config.data.global_batch_size = 1 << 17  # 16M tokens of float32 logits per step
    target = topology.parse_topology("v5e:1x1")
    (report,) = aot.compile_config(config, target, steps=["train"], unroll_layers=False)
    assert report["fits"] is False and report["projected_step_s"] is None
    assert report["bytes_per_device"]["total"] > report["hbm_bytes_per_device"]
    assert "RESOURCE_EXHAUSTED" in report["error"]


def test_unknown_steps_are_refused():
    with pytest.raises(ValueError, match="unknown steps"):
        next(aot.compile_config(tiny.get_config(), None, steps=["infer"]))
