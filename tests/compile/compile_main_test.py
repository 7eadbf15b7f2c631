"""`python -m toxjax.compile`: the tiny config compiles for a v5e:2x2 slice on this CPU host."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from toxjax.compile import aot, topology

ROOT = pathlib.Path(__file__).resolve().parents[2]
MEMORY_FIELDS = ("argument", "output", "temp", "alias", "total", "generated_code")


def _compile(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "toxjax.compile", "--config=toxjax/configs/tiny.py", *flags]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(
    not topology.libtpu_available(), reason="libtpu is not installed (pip install -e .[tpu-aot])"
)
def test_tiny_compiles_for_v5e_2x2_with_every_field():
    result = _compile("--topology=v5e:2x2", "--config.data.global_batch_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["step"] for r in reports] == list(aot.STEPS)
    for report in reports:
        assert report["config"] == "toxjax/configs/tiny.py" and report["topology"] == "v5e:2x2"
        assert report["num_devices"] == 4 and report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
        assert report["layers"] == "unrolled" and report["fits"] is True
        memory = report["bytes_per_device"]
        assert set(memory) == set(MEMORY_FIELDS) and memory["total"] > 0
        assert (
            memory["total"]
            == memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
        )
        assert report["hbm_bytes_per_device"] == 16 * 1024**3
        assert report["xla_flops"] > 0 and report["model_flops"] > 0 and report["compile_s"] > 0
    train, generate, loglik = reports
    for projected in (train, loglik):
        assert projected["projection"] == "XLA compiler estimate, not a measurement"
        assert projected["projected_step_s"] > 0
        assert 0 < projected["projected_mfu"] <= 1
        assert projected["projected_tokens_per_s_per_chip"] > 0
    # The donated train state is both argument and output.
    assert train["bytes_per_device"]["alias"] > 0
    assert train["model_flops"] == pytest.approx(32 * 128 * 3.047424e6, rel=1e-3)
    assert generate["projected_step_s"] is None and "decode while_loop" in generate["projection"]


def test_a_bad_topology_is_one_clear_line():
    result = _compile("--topology=v5e:2x2x1", "--steps=train")
    assert result.returncode == 1
    assert "toxjax.compile: error: topology 'v5e:2x2x1': v5e slices have 2 dimensions" in (
        result.stderr
    )


def test_a_task_module_that_does_not_import_is_one_clear_line():
    """The launcher's fit check runs this command: a launch with a broken module stops here."""
    result = _compile("--topology=v5e:2x2", "--config.data.task_modules=('my_missing_tasks',)")
    assert result.returncode == 1
    assert "cannot import task module 'my_missing_tasks'" in result.stderr.splitlines()[-1]
