"""Several JAX processes on this machine forming one CPU mesh (gloo), as a pod slice's workers
do: what the multi-process tests and benchmarks start every command with."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence

from toxjax.distributed import HEARTBEAT_ENV

# Its sitecustomize.py makes process 1 find the compilation-cache entries process 0 writes.
SHARED_COMPILE_CACHE_HOOK = os.path.join(os.path.dirname(__file__), "shared_compile_cache")


def command_environment(repo: str, compile_cache: str | None = None) -> dict[str, str]:
    """This environment, with the checkout importable and, optionally, a persistent
    compilation cache that several runs of one test share."""
    env = dict(os.environ)
    if compile_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = compile_cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env


def with_cpu_devices(xla_flags: str, devices: int) -> str:
    """xla_flags forcing `devices` CPU devices; its other flags stay, so every process compiles
    as the caller does."""
    kept = [flag for flag in xla_flags.split() if "host_platform_device_count" not in flag]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def process_environment(
    index: int,
    count: int,
    port: int,
    devices: int,
    base: Mapping[str, str] | None = None,
    heartbeat_s: int = 20,
) -> dict[str, str]:
    """Process `index` of `count`, each with `devices` forced CPU devices."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (SHARED_COMPILE_CACHE_HOOK, env.get("PYTHONPATH")) if path
    )
    env.update(
        {
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": with_cpu_devices(env.get("XLA_FLAGS", ""), devices),
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": str(count),
            "JAX_PROCESS_ID": str(index),
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            HEARTBEAT_ENV: str(heartbeat_s),
        }
    )
    return env


class ProcessGroup:
    """`count` copies of one command as JAX processes 0..count-1; logs in log_dir."""

    def __init__(
        self,
        command: Sequence[str],
        log_dir: str,
        *,
        count: int = 2,
        devices: int = 4,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        heartbeat_s: int = 20,
    ):
        os.makedirs(log_dir, exist_ok=True)
        port = free_port()
        self.log_paths = [os.path.join(log_dir, f"process_{i}.log") for i in range(count)]
        self.processes = []
        for index, log_path in enumerate(self.log_paths):
            with open(log_path, "w") as log:  # the child keeps its own descriptor
                self.processes.append(
                    subprocess.Popen(
                        list(command),
                        cwd=cwd,
                        env=process_environment(index, count, port, devices, env, heartbeat_s),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

    def signal_all(self, signum: int = signal.SIGTERM) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def wait(self, timeout_s: float) -> list[int]:
        """Exit codes; processes still running at the deadline are killed (code None)."""
        deadline = time.monotonic() + timeout_s
        codes: list[int | None] = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes.append(None)
        return codes

    def logs(self) -> list[str]:
        out = []
        for path in self.log_paths:
            with open(path, errors="replace") as f:
                out.append(f.read())
        return out
