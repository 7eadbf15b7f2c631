"""Projected train-step MFU of the GPT configs on TPU slices, compiled on this CPU host.

Prints ONE JSON line: {"benchmark": "tpu_compile", "projected_mfu": {"<config>@<topology>":
...}, "fits": {...}, "bytes_per_device": {...}, "compile_s": {...}, "cases": {...}}. Each case
is the real train step (toxjax.compile.aot) with its layers unrolled so that XLA's FLOPs and
"optimal_seconds" cover the whole step; the MFU is model FLOPs (toxjax.model.flops) over that
estimate and the chips' bf16 peak: a compiler projection, not a measurement.

Slices and batches: one micro-batch per step (no gradient accumulation; toxjax.compile costs
an accumulated step from two compiles, which would double every case's time). On v5p each
size runs the micro-batch its config accumulates to (optim.max_microbatch_per_device
sequences of 2048 per chip), so the projection is the per-micro-batch rate of the config's
own step. Meshes are the configs' own, FSDP over every chip. v5p:2x2x1 (4 chips of 95 GiB,
one v5p host) for 126M, 357M and 1.3B; 8.3B on v5p:2x2x2 (8 chips: its 16.6 GB of state per
chip leave room for 4 sequences). v5e:2x2 (4 chips of 16 GiB, the smallest multi-chip v5e
slice) for 126M and 357M with 2 per chip, and 1.3B on v5e:4x4 (16 chips, 1 per chip: its
state and activations need the 16-chip slice). libtpu 0.0.42's cost model estimates v5p
programs of this size but not v5e ones (it returns -1 per op it cannot estimate): v5e cases
report memory and fit, and no projection.

The peer in the same run: 1.3B on v5p:2x2x1 with float32 attention scores in one call over
the full mask (the attention before model.attention_scores_dtype and model.attention_chunks),
case "gpt_1p3b/float32_attention@v5p:2x2x1"; "attention_speedup" is its projected step time
over the config's.

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
    "gpt_126m@v5p:2x2x1": {"data.global_batch_size": 64},
    "gpt_357m@v5p:2x2x1": {"data.global_batch_size": 128},
    "gpt_1p3b@v5p:2x2x1": {"data.global_batch_size": 128},
    "gpt_1p3b/float32_attention@v5p:2x2x1": {
        "data.global_batch_size": 128,
        "model.attention_scores_dtype": "float32",
        "model.attention_chunks": 1,
    },
    "gpt_1p3b@v5e:4x4": {"data.global_batch_size": 16},
    "gpt_8p3b@v5p:2x2x2": {"data.global_batch_size": 32},
}
PEER, PEERED = "gpt_1p3b/float32_attention@v5p:2x2x1", "gpt_1p3b@v5p:2x2x1"


def case_config(case: str) -> tuple[Any, topology.Topology]:
    """The case's config (its size file plus overrides) and slice."""
    name, _, slice_name = case.partition("@")
    name = name.partition("/")[0]  # "<config>/<variant>": the variant is its overrides
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


def attention_speedup(reports: dict[str, dict[str, Any]]) -> float | None:
    """The peer's projected step time over the config's (both in this run), or None."""
    if PEER not in reports or PEERED not in reports:
        return None
    peer, peered = reports[PEER]["projected_step_s"], reports[PEERED]["projected_step_s"]
    return peer / peered if peer and peered else None


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
        "attention_speedup": attention_speedup(reports),
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
