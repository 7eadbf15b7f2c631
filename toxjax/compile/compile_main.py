"""The compile command: `python -m toxjax.compile` or `toxjax-compile`.

Compiles a config's train step (and the evaluation's sampling and log-likelihood steps) for a
TPU slice on this host, with libtpu's compile-only devices, and prints one JSON line per step:

    python -m toxjax.compile --config=toxjax/configs/gpt_1p3b.py --topology=v5p:2x2x1 --steps=train

Fields: step, config, topology, num_devices, mesh, layers ("unrolled": XLA's figures cover
every layer), bytes_per_device {argument, output, temp, alias, total = argument + output +
temp - alias, generated_code}, hbm_bytes_per_device, fits (total <= HBM), xla_flops (per
device), model_flops (all devices) and model_flops_per_device, xla_optimal_seconds (as
cost_analysis() gives it; for a step that accumulates gradients, corrected for the loop XLA
counts once, see `loop`), projected_step_s (that, when it is a valid estimate),
projected_mfu, projected_tokens_per_s_per_chip, compile_s, projection (what the projected
figures are: the compiler's estimate, never a measurement; or why there are none), and with
gradient accumulation loop {trips, body_optimal_seconds, correction}. The
command exits 0 whether or not the config fits: `fits` is the answer.

It imports the config's task modules first (config.data.task_modules), so the launcher's fit
check, which runs this command, refuses a launch whose task modules do not import.
"""

from __future__ import annotations

import json
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from toxjax.commands import run_command
from toxjax.compile import aot, topology
from toxjax.data import tasks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (toxjax/configs/*.py).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU slice GENERATION:SHAPE: v4:2x2x1, v5e:2x2, v5p:2x2x2, v6e:4x4, ..."
)
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "Slices joined over DCN (config.mesh.dcn splits the mesh across them)."
)
_STEPS = flags.DEFINE_list("steps", list(aot.STEPS), f"Steps to compile, of {aot.STEPS}.")
_UNROLL_LAYERS = flags.DEFINE_bool(
    "unroll_layers",
    True,
    "Compile the model's per-layer twin (model.scan_layers=False: the same params, no layer "
    "loop), so XLA's FLOPs and time estimates cover every layer; --nounroll_layers compiles "
    "the config as it runs (faster; memory as trained; no projection of a scanned stack).",
)
_PROMPT_LEN = flags.DEFINE_integer(
    "generate_prompt_len",
    64,
    "Prompt tokens of the generate step, the start id included (its power-of-two bucket).",
)
_JSON = flags.DEFINE_bool("json", True, "One JSON line per step; --nojson prints readable lines.")
flags.mark_flags_as_required(["config", "topology"])
PROG = "toxjax.compile"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not os.environ.get("JAX_PLATFORMS"):
        # The host's own arrays stay on CPU; the TPU devices are libtpu's compile-only ones.
        jax.config.update("jax_platforms", "cpu")
    try:
        tasks.import_task_modules(_CONFIG.value)
        target = topology.parse_topology(_TOPOLOGY.value, _NUM_SLICES.value)
        reports = aot.compile_config(
            _CONFIG.value,
            target,
            steps=_STEPS.value,
            unroll_layers=_UNROLL_LAYERS.value,
            prompt_len=_PROMPT_LEN.value,
            config_name=config_flags.get_config_filename(flags.FLAGS["config"]),
        )
        for report in reports:
            print(json.dumps(report) if _JSON.value else aot.format_report(report), flush=True)
    except (ImportError, ValueError, topology.LibtpuMissingError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    """Console-script entry point (toxjax-compile)."""
    run_command(main, __name__)


if __name__ == "__main__":
    run()
