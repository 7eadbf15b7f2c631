"""Before a launch: does the config fit the slice? Compiled here by `python -m toxjax.compile`.

The launcher stays standard library only, so the compile runs as a subprocess (it needs jax and
libtpu, the tpu-aot extra) and answers with one JSON line per step. The check compiles the
config as it will run (layers as configured) for the steps the launch runs, and refuses a step
whose per-device bytes exceed a chip's HBM, saying what to change.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

COMPILE_MODULE = "toxjax.compile"
# Commands whose --config the check understands; others launch unchecked.
CHECKED_MODULES = ("toxjax.main", "toxjax.study")
# Slice shapes by chip count; v4 and v5p accelerator types count TensorCores (2 per chip).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16"}
_SHAPES_2D[256] = "16x16"
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}
_SHAPES_3D.update({256: "4x8x8", 512: "8x8x8"})
_ACCELERATOR = re.compile(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)")
GIB = 1024**3


class FitCheckError(ValueError):
    """The config does not fit the slice, or the check could not compile it."""


def topology_for_accelerator(accelerator_type: str) -> str | None:
    """v5p-8 -> v5p:2x2x1, v5litepod-16 (or v5e-16) -> v5e:4x4; None for other names."""
    match = _ACCELERATOR.fullmatch(accelerator_type)
    if not match:
        return None
    family, count = match.group(1), int(match.group(2))
    if family in ("v4", "v5p"):
        shape = _SHAPES_3D.get(count // 2) if count % 2 == 0 else None
    else:
        shape = _SHAPES_2D.get(count)
    generation = "v5e" if family == "v5litepod" else family
    return f"{generation}:{shape}" if shape else None


def config_args(args: Sequence[str]) -> list[str]:
    """The --config and --config.* arguments of an absl command line, each as --name=value."""
    found, index = [], 0
    while index < len(args):
        arg = args[index]
        name, sep, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and (name == "config" or name.startswith("config.")):
            if not sep:  # absl's "--flag value" form: the next word is the value, even "-1"
                if index + 1 >= len(args):
                    raise FitCheckError(f"{arg} is given without a value")
                index += 1
                value = args[index]
            found.append(f"--{name}={value}")
        index += 1
    return found


def steps_for(module: str, mode: str | None) -> list[str]:
    """The steps a launch runs: toxjax.main's --mode (default train); a study runs them all."""
    if module == "toxjax.main":
        mode = mode or "train"
        if mode == "train":
            return ["train"]
        if mode == "eval":
            return ["generate", "loglik"]
    return ["train", "generate", "loglik"]


def run_compile(command: list[str]) -> subprocess.CompletedProcess:
    """Runs the compile command on this machine (tests replace this function)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env)


def gib(value: int | None) -> str:
    return "?" if value is None else f"{value / GIB:.2f} GiB"


def does_not_fit_message(report: dict[str, Any]) -> str:
    """Why a step does not fit, and what to change, from its toxjax.compile report."""
    memory = report["bytes_per_device"]
    named = (("arguments", "argument"), ("outputs", "output"), ("temporaries", "temp"))
    parts = [f"{name} {gib(memory[key])}" for name, key in named if memory.get(key) is not None]
    return (
        f"{report['config']} does not fit {report['topology']}: its {report['step']} step needs "
        f"{gib(memory['total'])} per device ({', '.join(parts)}; mesh {report['mesh']}), but a "
        f"chip has {gib(report['hbm_bytes_per_device'])} of HBM. To fit: shard over more "
        "devices (a larger slice or config.mesh.ici.fsdp), rematerialise more "
        "(--config.model.remat_policy=full), or use a smaller --config.data.global_batch_size "
        "or more --config.optim.grad_accum_steps (with -1, a smaller "
        "--config.optim.max_microbatch_per_device). --skip_fit_check launches anyway."
    )


def check(args: Sequence[str], topology: str, steps: Sequence[str]) -> list[str]:
    """Compiles the --config of `args` for `topology`; FitCheckError unless every step fits.

    Returns one line per step: the bytes per device it needs of the HBM a chip has.
    """
    overrides = config_args(args)
    config = next((arg[len("--config=") :] for arg in overrides if arg.startswith("--config=")), "")
    if not config:
        raise FitCheckError("the fit check needs the launched command's --config")
    command = [sys.executable, "-m", COMPILE_MODULE, *overrides, f"--topology={topology}"]
    command += [f"--steps={','.join(steps)}", "--nounroll_layers", "--json"]
    result = run_compile(command)
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or len(reports) != len(steps):
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FitCheckError(
            f"the fit check could not compile {config} for {topology}: {error} (it needs "
            "toxjax installed with the tpu-aot extra here); --skip_fit_check launches anyway"
        )
    for report in reports:
        if not report["fits"]:
            raise FitCheckError(does_not_fit_message(report))
    return [
        f"fit check: the {r['step']} step needs {gib(r['bytes_per_device']['total'])} per device "
        f"of {gib(r['hbm_bytes_per_device'])} HBM on {topology}"
        for r in reports
    ]
