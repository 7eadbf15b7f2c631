"""Multi-process detection and start-up arguments shared by toxjax.main and toxjax.study."""

import pytest

from toxjax import distributed


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "4"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({"TPU_WORKER_HOSTNAMES": "t1k-w-0"}, False),
        ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, True),
    ],
)
def test_multi_process_detection(environ, expected):
    assert distributed.is_multi_process_environment(environ) is expected


def test_distributed_false_never_initialises():
    assert distributed.maybe_initialize_distributed("false", {"SLURM_NTASKS": "8"}) is False
    assert distributed.maybe_initialize_distributed("auto", {}) is False


def test_num_processes_and_process_id_are_passed_explicitly():
    environ = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "2",
    }
    assert distributed.initialize_kwargs(environ) == {"num_processes": 4, "process_id": 2}
    assert distributed.initialize_kwargs({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}) == {}
