"""Compile toxjax's real steps for a TPU slice on a CPU host, and read XLA's projections.

The train step is train.make_train_step over train.create_setup's abstract state. The
evaluation steps are the jitted functions sampling.Generator and loglik.LoglikelihoodEngine
build, rebuilt here on abstract params: those classes place real params on the mesh when
constructed, and compile-only devices hold no arrays. Each step is lowered with sharded
jax.ShapeDtypeStructs and compiled by libtpu. memory_analysis() gives per-device bytes (does it
fit in HBM?); cost_analysis() gives XLA's FLOPs and "optimal_seconds", the compiler's own
step-time estimate: a projection, never a measurement.

XLA counts a loop body once, so a scanned layer stack shows ~1/num_layers of the step's FLOPs
and time. With unroll_layers the model is compiled as its per-layer twin (the same params, no
loop; see layered_config). Decoding's while_loop remains (its trip count depends on EOS), so
the generate step reports memory but no projection. Gradient accumulation is a scan too, with
a fixed trip count: the step's work after the loop (the optimizer update) is compiled on its
own, and the step's estimate less that one is one micro-batch's (loop_corrected).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from toxjax.compile.topology import GIB, Topology, compile_only_devices
from toxjax.data import input_pipeline
from toxjax.evaluation import rtp
from toxjax.inference import loglik, sampling
from toxjax.model import decoder, flops, partitioning
from toxjax.training import train

STEPS = ("train", "generate", "loglik")
PROJECTION = "XLA compiler estimate, not a measurement"
# The vocabulary is not loaded (a config's task may be registered only where it trains); the
# sampler's ids are seqio's conventions: PAD 0 (banned, as the Generator bans it), EOS 1.
PAD_ID, EOS_ID = 0, 1
_HBM_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of [\d.]+[KMGT]? hbm")
_HBM_TEMP = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GIB, "T": 1024**4}


@dataclasses.dataclass(frozen=True)
class StepProgram:
    """A jitted step, the abstract arguments it is lowered with, and what one call does."""

    name: str
    function: partitioning.PartitionedFunction
    args: tuple[Any, ...]
    model_flops: float  # model FLOPs of one call over all devices (toxjax.model.flops)
    tokens: int | None  # tokens one call trains on or scores; None: no throughput figure
    loop: str | None = None  # a loop in the step whose body XLA's estimates count once
    # A loop XLA counts once that can be corrected: its trip count, and the step's work outside
    # the loop as a program of its own (step - rest = one body; see loop_corrected).
    trips: int = 1
    loop_rest: StepProgram | None = None


def layered_config(
    config: ml_collections.ConfigDict, unroll_layers: bool
) -> tuple[ml_collections.ConfigDict, str]:
    """(config to compile, "unrolled" | "scanned").

    Unrolled is the decoder's per-layer twin (model.scan_layers=False): the same parameters,
    unstacked, and no loop. Not scan_unroll = num_layers: under nn.scan the decoder's remat
    leaves prevent_cse off (the loop stops CSE), so a fully unrolled scan lets XLA merge the
    recomputation into the forward pass, keeping every activation: more memory and fewer
    FLOPs than the program that runs.
    """
    config = copy.deepcopy(config)
    model = config.model
    if unroll_layers and model.scan_layers:
        model.scan_layers = False
        return config, "unrolled"
    if not model.scan_layers or int(model.scan_unroll) >= int(model.num_layers):
        return config, "unrolled"
    return config, "scanned"


def forward_flops_per_token(model_config: decoder.ModelConfig, seq_len: int) -> float:
    """Forward-only model FLOPs: a third of flops.train_flops_per_token (2N of 6N, attention
    4 L n h T of 12 L n h T)."""
    return flops.train_flops_per_token(model_config, seq_len) / 3.0


def train_program(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> StepProgram:
    """The training loop's own step (make_train_step) on train.create_setup's abstract state.

    With gradient accumulation the step is a scan over micro-batches; it then carries its work
    after the loop (train.apply_gradients: the optimizer update and metrics) as a program of
    its own, so that the step's cost less that one is one micro-batch's.
    """
    setup = train.create_setup(config, list(devices))
    batch_size, seq_len = int(config.data.global_batch_size), int(config.data.seq_len)
    batch = {
        name: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=setup.batch_sharding)
        for name in input_pipeline.FEATURES
    }
    step = StepProgram(
        name="train",
        function=train.make_train_step(setup),
        args=(setup.abstract_state, batch),
        model_flops=flops.train_flops_per_step(setup.model_config, seq_len, batch_size),
        tokens=batch_size * seq_len,
        trips=setup.grad_accum_steps,
    )
    if setup.grad_accum_steps == 1:
        return step
    return dataclasses.replace(step, loop_rest=apply_gradients_program(setup))


def apply_gradients_program(setup: train.TrainSetup) -> StepProgram:
    """train.apply_gradients alone: the state and gradient sums in, the next state out."""
    replicated = _replicated_sharding(setup.mesh)
    state = setup.abstract_state
    grad_sums = state.params  # same shapes, dtypes and shardings as the parameters
    sums = {
        name: jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
        for name in ("ce_sum", "z_loss_sum", "weight_sum", "correct_sum")
    }
    function = partitioning.PartitionedFunction(
        functools.partial(train.apply_gradients, tx=setup.tx, schedule=setup.schedule),
        setup.mesh,
        setup.rules,
        in_shardings=(
            setup.state_shardings,
            setup.state_shardings.params,
            jax.tree.map(lambda _: replicated, sums),
        ),
        out_shardings=(setup.state_shardings, replicated),
        donate_argnums=(0,),
    )
    return StepProgram("apply_gradients", function, (state, grad_sums, sums), 0.0, None)


def _replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _replicated(mesh: Mesh, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=_replicated_sharding(mesh))


def generate_program(config: ml_collections.ConfigDict, mesh: Mesh, prompt_len: int) -> StepProgram:
    """Generator's jitted sampler for one full call of config.eval's RTP settings.

    Rows per call and the prompt bucket follow Generator.generate_ids: generate_batch_size //
    num_samples prompts (rounded up to the batch shards), padded to a power-of-two length.
    """
    rules = partitioning.logical_rules(config)
    model_config = decoder.ModelConfig.from_config(config.model)
    ev = config.eval
    rtp_config = rtp.RTPConfig.from_dict(ev.rtp.to_dict())
    settings = rtp_config.sampling_kwargs()
    sampling_config = sampling.SamplingConfig(
        **settings, top_k=int(ev.top_k), eos_id=EOS_ID, pad_id=PAD_ID, banned_ids=(PAD_ID,)
    )
    num_samples = int(rtp_config.num_samples)
    shards = partitioning.batch_shards(mesh, rules)
    rows = sampling.round_up(max(1, int(ev.generate_batch_size) // num_samples), shards)
    max_prompt_len = model_config.max_len - sampling_config.max_new_tokens
    width = sampling.length_bucket(min(prompt_len, max_prompt_len), max_prompt_len)
    params = partitioning.abstract_params(model_config, mesh, rules)
    replicated = _replicated_sharding(mesh)
    function = partitioning.PartitionedFunction(
        functools.partial(
            sampling.generate_tokens,
            model=decoder.Decoder(model_config),
            config=sampling_config,
            num_samples=num_samples,
        ),
        mesh,
        rules,
        in_shardings=(jax.tree.map(lambda leaf: leaf.sharding, params), *[replicated] * 4),
        out_shardings=replicated,
    )
    args = (
        params,
        _replicated(mesh, (rows, width), jnp.int32),  # left-padded prompts
        _replicated(mesh, (rows,), jnp.int32),  # prompt lengths
        _replicated(mesh, (rows,), jnp.uint32),  # prompt keys
        _replicated(mesh, (), jnp.int32),  # seed
    )
    steps = sampling_config.max_new_tokens
    tokens = rows * width + rows * num_samples * steps  # prefill, then every decoded token
    per_token = forward_flops_per_token(model_config, width + steps)
    loop = "the decode while_loop (its trip count is dynamic)"
    return StepProgram("generate", function, args, per_token * tokens, None, loop=loop)


def _score_batch(*args: Any, model: decoder.Decoder) -> dict[str, jax.Array]:
    """loglik.score_batch with is_greedy as int32: for its bool [rows] output, XLA:TPU's cost
    model (libtpu 0.0.42) answers optimal_seconds = -1, "no estimate"."""
    scores = loglik.score_batch(*args, model=model)
    return {**scores, "is_greedy": scores["is_greedy"].astype(jnp.int32)}


def loglik_program(config: ml_collections.ConfigDict, mesh: Mesh) -> StepProgram:
    """LoglikelihoodEngine's jitted scorer on its longest bucket (config.eval's batch, max_len)."""
    rules = partitioning.logical_rules(config)
    model_config = decoder.ModelConfig.from_config(config.model)
    ev = config.eval
    rows = sampling.round_up(int(ev.loglik_batch_size), partitioning.batch_shards(mesh, rules))
    max_len = int(ev.loglik_max_len) if int(ev.loglik_max_len) > 0 else model_config.max_len
    width = sampling.length_bucket(max_len, max_len)
    params = partitioning.abstract_params(model_config, mesh, rules)
    replicated = _replicated_sharding(mesh)
    function = partitioning.PartitionedFunction(
        functools.partial(_score_batch, model=decoder.Decoder(model_config)),
        mesh,
        rules,
        in_shardings=(jax.tree.map(lambda leaf: leaf.sharding, params), *[replicated] * 3),
        out_shardings=replicated,
    )
    rows_by_width = _replicated(mesh, (rows, width), jnp.int32)
    args = (params, rows_by_width, rows_by_width, rows_by_width)  # inputs, targets, mask
    tokens = rows * width
    model_flops = forward_flops_per_token(model_config, width) * tokens
    return StepProgram("loglik", function, args, model_flops, tokens)


# ----- compiling and reporting -----


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """What XLA said about one program: per-device bytes, its cost estimate, or its refusal."""

    memory: dict[str, int | None]
    cost: dict[str, float]
    compile_s: float
    error: str | None = None  # XLA's out-of-memory message, when it refused to compile
    loop_body: dict[str, float] | None = None  # one loop iteration's cost (loop_corrected)


def memory_bytes(stats: Any) -> dict[str, int | None]:
    """Per-device bytes from compiled.memory_analysis(); total = argument + output + temp -
    alias (donated state is both argument and output, counted once)."""
    memory = {
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
        "temp": int(stats.temp_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
    }
    memory["total"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
    memory["generated_code"] = int(stats.generated_code_size_in_bytes)
    return memory


def _cost(compiled: Any) -> dict[str, float]:
    """flops and optimal_seconds of compiled.cost_analysis() (a dict; a list of one in older
    jax), per device: the compiled SPMD program is one device's."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return {key: float(analysis[key]) for key in ("flops", "optimal_seconds") if key in analysis}


def _size(number: str, unit: str) -> int:
    return round(float(number) * _UNITS[unit])


def argument_bytes(args: Any) -> int:
    """Per-device bytes of sharded abstract arguments (what the compiled step is given)."""
    return sum(
        math.prod(leaf.sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
        for leaf in jax.tree_util.tree_leaves(args)
    )


def refused_memory(message: str, args: Any) -> dict[str, int | None]:
    """Per-device bytes of a step XLA:TPU refused to compile, from its message.

    XLA names either the temporaries ("HLO temporaries (247.46G) exceeds available HBM") or the
    total ("Used 150.51G of 15.75G hbm"); G is GiB. With temporaries only, total is arguments
    (from their shardings) plus temporaries: outputs not aliased to the donated state (metrics)
    are left out, so it is a slight underestimate, and still over HBM.
    """
    keys = ("argument", "output", "temp", "alias", "total", "generated_code")
    memory: dict[str, int | None] = dict.fromkeys(keys)
    memory["argument"] = argument_bytes(args)
    temp = _HBM_TEMP.search(message)
    memory["temp"] = _size(*temp.groups()) if temp else None
    used = _HBM_USED.search(message)
    if used:
        memory["total"] = _size(*used.groups())
    elif memory["temp"] is not None:
        memory["total"] = memory["argument"] + memory["temp"]
    return memory


def _compile(program: StepProgram) -> CompileResult:
    """Lower and compile; an out-of-HBM refusal is a result (it does not fit), not an error."""
    start = time.perf_counter()
    try:
        compiled = program.function.lower(*program.args).compile()
    except jax.errors.JaxRuntimeError as error:
        message = str(error)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        line = next((x for x in message.splitlines() if "HBM" in x.upper()), message)
        memory = refused_memory(message, program.args)
        return CompileResult(memory, {}, time.perf_counter() - start, line.strip())
    elapsed = time.perf_counter() - start
    return CompileResult(memory_bytes(compiled.memory_analysis()), _cost(compiled), elapsed)


def loop_corrected(step: CompileResult, rest: CompileResult, trips: int) -> CompileResult:
    """The cost of a step whose loop XLA counts once, from it and its work outside the loop.

    step = body + rest, so body = step - rest and the whole step costs step + (trips - 1) *
    body. Memory stays the step's own (the rest is only costed).
    """
    if rest.error or not step.cost or rest.cost.get("optimal_seconds", 0.0) <= 0:
        # No estimate of the rest (libtpu counts -1 per op it cannot cost): no correction.
        return dataclasses.replace(step, cost={}, compile_s=step.compile_s + rest.compile_s)
    body = {key: step.cost[key] - rest.cost[key] for key in step.cost if key in rest.cost}
    cost = {key: step.cost[key] + (trips - 1) * value for key, value in body.items()}
    return dataclasses.replace(
        step, cost=cost, compile_s=step.compile_s + rest.compile_s, loop_body=body
    )


def compile_step(program: StepProgram) -> CompileResult:
    """Compiles the step (and, for a correctable loop, its work outside the loop)."""
    result = _compile(program)
    if program.loop_rest is None or result.error:
        return result
    logging.info("Compiling its work after the loop, to cost the loop's %d trips", program.trips)
    return loop_corrected(result, _compile(program.loop_rest), program.trips)


def _no_projection_reason(program: StepProgram, layers: str, result: CompileResult) -> str | None:
    if result.error:
        return "none: XLA refused to compile (out of HBM)"
    if program.loop:
        return f"none: XLA counts the body of {program.loop} once"
    if layers != "unrolled":
        return "none: XLA counts the scanned layer body once (compile with unrolled layers)"
    seconds = result.cost.get("optimal_seconds")
    if seconds is None and program.loop_rest is not None:
        return "none: the step's work after its loop could not be compiled or costed alone"
    if seconds is None:
        return "none: cost_analysis() gave no optimal_seconds"
    if seconds <= 0:  # libtpu 0.0.42 adds -1 for each op its cost model cannot estimate
        return (
            f"none: XLA:TPU's cost model could not estimate some ops (optimal_seconds "
            f"{seconds:.4g}; each such op counts -1)"
        )
    return None


def step_report(
    program: StepProgram,
    result: CompileResult,
    *,
    config_name: str,
    topology: Topology,
    mesh: Mesh,
    layers: str,
) -> dict[str, Any]:
    """The JSON line of one compiled step (see the command's docstring for the fields)."""
    chip, devices = topology.chip, topology.num_devices
    total = result.memory["total"]
    reason = _no_projection_reason(program, layers, result)
    seconds = None if reason else result.cost["optimal_seconds"]
    mfu = program.model_flops / (seconds * devices * chip.peak_flops) if seconds else None
    tokens_per_s = program.tokens / seconds / devices if seconds and program.tokens else None
    report = {
        "step": program.name,
        "config": config_name,
        "topology": str(topology),
        "num_devices": devices,
        "mesh": {name: int(size) for name, size in mesh.shape.items()},
        "layers": layers,
        "bytes_per_device": result.memory,
        "hbm_bytes_per_device": chip.hbm_bytes,
        "fits": total is not None and total <= chip.hbm_bytes,
        "xla_flops": result.cost.get("flops"),  # per device
        "model_flops": program.model_flops,  # all devices, one call
        "model_flops_per_device": program.model_flops / devices,
        "xla_optimal_seconds": result.cost.get("optimal_seconds"),
        "projected_step_s": seconds,
        "projected_mfu": mfu,
        "projected_tokens_per_s_per_chip": tokens_per_s,
        "compile_s": round(result.compile_s, 2),
        "projection": reason or PROJECTION,
    }
    if program.trips > 1:
        report["loop"] = {
            "trips": program.trips,
            "body_optimal_seconds": (result.loop_body or {}).get("optimal_seconds"),
            "correction": (
                "step + (trips - 1) * (step - apply_gradients), two compiles"
                if result.loop_body is not None
                else "none"
            ),
        }
    if result.error:
        report["error"] = result.error
    return report


def build_program(
    name: str,
    config: ml_collections.ConfigDict,
    devices: Sequence[Any],
    mesh: Mesh,
    prompt_len: int,
) -> StepProgram:
    if name == "train":
        return train_program(config, devices)
    if name == "generate":
        return generate_program(config, mesh, prompt_len)
    if name == "loglik":
        return loglik_program(config, mesh)
    raise ValueError(f"unknown step {name!r}; steps are {STEPS}")


def compile_config(
    config: ml_collections.ConfigDict,
    topology: Topology,
    *,
    steps: Sequence[str] = STEPS,
    unroll_layers: bool = True,
    prompt_len: int = 64,
    config_name: str = "",
) -> Iterator[dict[str, Any]]:
    """Compiles each step of `config` for `topology`; yields one report per step as it ends."""
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown steps {unknown}; steps are {STEPS}")
    devices = compile_only_devices(topology)
    config, layers = layered_config(config, unroll_layers)
    mesh = partitioning.create_mesh(config.mesh, devices)
    for name in steps:
        logging.info("Compiling the %s step for %s (mesh %s)", name, topology, dict(mesh.shape))
        program = build_program(name, config, devices, mesh, prompt_len)
        if layers != "unrolled":  # no projection either way: costing the loop would only take time
            program = dataclasses.replace(program, loop_rest=None)
        result = compile_step(program)
        logging.info("%s step compiled in %.1f s", name, result.compile_s)
        yield step_report(
            program, result, config_name=config_name, topology=topology, mesh=mesh, layers=layers
        )


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / GIB:.2f} GiB"


def format_report(report: dict[str, Any]) -> str:
    """A few readable lines of one step's report."""
    memory = report["bytes_per_device"]
    lines = [
        f"{report['step']} step of {report['config']} on {report['topology']} "
        f"({report['num_devices']} devices, mesh {report['mesh']}, layers {report['layers']}): "
        f"compiled in {report['compile_s']:.1f} s",
        f"  per device: {_gib(memory['total'])} of {_gib(report['hbm_bytes_per_device'])} HBM "
        f"({'fits' if report['fits'] else 'DOES NOT FIT'}; arguments {_gib(memory['argument'])}, "
        f"outputs {_gib(memory['output'])}, temporaries {_gib(memory['temp'])}, "
        f"aliased {_gib(memory['alias'])})",
    ]
    if report["projected_step_s"] is not None:
        lines.append(
            f"  projected ({report['projection']}): {report['projected_step_s']:.4g} s per step, "
            f"MFU {100 * report['projected_mfu']:.1f}%"
            + (
                f", {report['projected_tokens_per_s_per_chip']:,.0f} tokens/s per chip"
                if report["projected_tokens_per_s_per_chip"]
                else ""
            )
        )
    else:
        lines.append(f"  projection {report['projection']}")
    if report.get("loop") and report["loop"]["body_optimal_seconds"] is not None:
        lines.append(
            f"  gradient accumulation: {report['loop']['trips']} micro-batches per step, "
            "costed from two compiles (the step, and its work after the loop)"
        )
    if report.get("error"):
        lines.append(f"  XLA: {report['error']}")
    return "\n".join(lines)
