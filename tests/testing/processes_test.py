"""ProcessGroup: 2 JAX processes form one CPU mesh, and the second reads the compilation-cache
entries the first writes."""

from __future__ import annotations

import os
import sys

import pytest

from toxjax.testing.processes import ProcessGroup, command_environment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A program over all 8 devices of both processes; prints what each process sees.
PROGRAM = """
from toxjax import distributed
distributed.maybe_initialize_distributed("auto")
import jax, jax.numpy as jnp, numpy as np
mesh = jax.make_mesh((8,), ("data",))
sharding = jax.NamedSharding(mesh, jax.P("data"))
x = jax.make_array_from_callback((8,), sharding, lambda index: np.arange(8.0)[index])
total = jax.jit(lambda v: jnp.sum(v * 2.0), out_shardings=jax.NamedSharding(mesh, jax.P()))(x)
print("process", jax.process_index(), "of", jax.process_count(), "total", float(total))
"""

pytestmark = pytest.mark.slow


def _run(tmp_path, name: str) -> list[str]:
    env = command_environment(REPO, str(tmp_path / "jax_cache"))
    env["JAX_LOG_COMPILES"] = "1"  # cache hits and misses reach the log
    group = ProcessGroup([sys.executable, "-c", PROGRAM], str(tmp_path / name), env=env, cwd=REPO)
    codes = group.wait(120)
    logs = group.logs()
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    return logs


def test_two_processes_form_one_mesh_and_share_the_compilation_cache(tmp_path):
    first = _run(tmp_path, "first")
    for index, log in enumerate(first):
        assert f"process {index} of 2 total 56.0" in log
    second = _run(tmp_path, "second")
    # Process 0 wrote the entry in the first run; in the second, both processes find it.
    for log in second:
        assert "Persistent compilation cache hit for 'jit__lambda'" in log, log[-2000:]
