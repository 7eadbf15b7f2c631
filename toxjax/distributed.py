"""Multi-process start-up shared by every entry point (toxjax.main, toxjax.study.experiment).

No absl flags here, so any entry point can import it without defining flags twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def is_multi_process_environment(environ: Mapping[str, str] | None = None) -> bool:
    """True where the environment names several processes (TPU VM pod, SLURM, MPI, env vars)."""
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES"):
        if int(env.get(count_var, "1") or "1") > 1:
            return True
    hostnames = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hostnames.split(",") if h.strip()]) > 1


# Seconds without a heartbeat after which the survivors of a dead process stop with an error
# naming it (JAX's default is 100 s); set in the environment of every process.
HEARTBEAT_ENV = "TOXJAX_HEARTBEAT_TIMEOUT_S"


def initialize_kwargs(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """jax.distributed.initialize() reads JAX_COORDINATOR_ADDRESS itself but not these."""
    env = os.environ if environ is None else environ
    kwargs = {}
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    if env.get(HEARTBEAT_ENV):
        kwargs["heartbeat_timeout_seconds"] = int(env[HEARTBEAT_ENV])
    return kwargs


def maybe_initialize_distributed(mode: str, environ: Mapping[str, str] | None = None) -> bool:
    """Starts JAX's multi-process runtime (must precede any other JAX call); True if started.

    mode: "true", "false", or "auto" (start when the environment names several processes).
    """
    if mode == "false" or (mode == "auto" and not is_multi_process_environment(environ)):
        return False
    import jax
    from absl import logging

    jax.distributed.initialize(**initialize_kwargs(environ))
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
