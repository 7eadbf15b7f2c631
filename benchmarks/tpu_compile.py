"""Projected train-step MFU of the GPT configs on TPU slices, compiled on this CPU host.

Prints ONE JSON line: {"benchmark": "tpu_compile", "projected_mfu": {"<config>@<topology>":
...}, "fits": {...}, "bytes_per_device": {...}, "compile_s": {...}, "cases": {...}}. Each case
is the real train step (toxjax.compile.aot) with its layers unrolled so that XLA's FLOPs and
"optimal_seconds" cover the whole step; the MFU is model FLOPs (toxjax.model.flops) over that
estimate and the chips' bf16 peak: a compiler projection, not a measurement.

Slices and batches (one optimizer step, no gradient accumulation, whose scan XLA would count
once; meshes are the configs' own, FSDP over every chip): each size on the slice a user would
try first, v5e:2x2 (4 chips of 16 GiB, the smallest multi-chip v5e slice) for 126M and 357M
with 2 sequences of 2048 tokens per chip, and v5p:2x2x1 (4 chips of 95 GiB, one v5p host) for
126M, 357M and 1.3B with 8 per chip (1.3B there is the case measured by hand before). 1.3B
also on v5e:4x4 (16 chips, 1 sequence per chip: its state and activations need the 16-chip
v5e slice), and 8.3B on v5p:2x2x2 (8 chips: 16.6 GB of state per chip, 4 sequences per chip).
libtpu 0.0.42's cost model estimates v5p programs of this size but not v5e ones (it returns
-1 per op it cannot estimate): v5e cases report memory and fit, and no projection.

    python -m benchmarks.tpu_compile [--cases=gpt_126m@v5e:2x2,...] [--heartbeat_s=30]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from typing import Any

import jax

from toxjax.compile import aot, topology

# "<config>@<topology>" -> config overrides (dotted field -> value).
CASES: dict[str, dict[str, Any]] = {
    "gpt_126m@v5e:2x2": {"data.global_batch_size": 8},
    "gpt_357m@v5e:2x2": {"data.global_batch_size": 8},
    "gpt_126m@v5p:2x2x1": {"data.global_batch_size": 32},
    "gpt_357m@v5p:2x2x1": {"data.global_batch_size": 32},
    "gpt_1p3b@v5p:2x2x1": {"data.global_batch_size": 32},
    "gpt_1p3b@v5e:4x4": {"data.global_batch_size": 16},
    "gpt_8p3b@v5p:2x2x2": {"data.global_batch_size": 32},
}


def case_config(case: str) -> tuple[Any, topology.Topology]:
    """The case's config (its size file plus overrides) and slice."""
    name, _, slice_name = case.partition("@")
    config = importlib.import_module(f"configs.{name}").get_config()
    for field, value in CASES.get(case, {}).items():
        *parents, leaf = field.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    config.optim.grad_accum_steps = 1
    return config, topology.parse_topology(slice_name)


def log(message: str) -> None:
    print(f"[tpu_compile {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def compile_case(case: str, heartbeat_s: float) -> dict[str, Any]:
    """The train step's report; a heartbeat line every heartbeat_s while XLA works."""
    config, target = case_config(case)
    done = threading.Event()
    start = time.perf_counter()

    def heartbeat() -> None:
        while not done.wait(heartbeat_s):
            log(f"{case}: still compiling ({time.perf_counter() - start:.0f} s)")

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        (report,) = aot.compile_config(config, target, steps=["train"], config_name=case)
    finally:
        done.set()
        thread.join()
    mfu = report["projected_mfu"]
    total, hbm = report["bytes_per_device"]["total"], report["hbm_bytes_per_device"]
    log(
        f"{case}: compiled in {report['compile_s']:.0f} s; {total / topology.GIB:.2f} GiB per "
        f"device of {hbm / topology.GIB:.0f} ({'fits' if report['fits'] else 'does NOT fit'}); "
        f"projected MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="<config>@<topology>,...")
    parser.add_argument("--heartbeat_s", type=float, default=30.0, help="progress line period")
    args = parser.parse_args()
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")  # the TPU devices are compile-only
    reports = {}
    for case in filter(None, args.cases.split(",")):
        log(f"{case}: compiling the train step (layers unrolled)")
        reports[case] = compile_case(case, args.heartbeat_s)
    record = {
        "benchmark": "tpu_compile",
        "projection": aot.PROJECTION,
        "projected_mfu": {case: r["projected_mfu"] for case, r in reports.items()},
        "fits": {case: r["fits"] for case, r in reports.items()},
        "bytes_per_device": {case: r["bytes_per_device"]["total"] for case, r in reports.items()},
        "compile_s": {case: r["compile_s"] for case, r in reports.items()},
        "cases": {
            case: {
                "overrides": CASES.get(case, {}),
                "mesh": r["mesh"],
                "hbm_bytes_per_device": r["hbm_bytes_per_device"],
                "bytes_per_device": r["bytes_per_device"],
                "projected_step_s": r["projected_step_s"],
                "xla_optimal_seconds": r["xla_optimal_seconds"],
                "projection": r["projection"],
                "projected_tokens_per_s_per_chip": r["projected_tokens_per_s_per_chip"],
                "xla_flops": r["xla_flops"],
                "model_flops_per_device": r["model_flops_per_device"],
            }
            for case, r in reports.items()
        },
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
