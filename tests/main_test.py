"""End-to-end tests of `python -m toxjax.main`: it learns, kill -9 + resume is exact, SIGTERM.

Every run is a real subprocess on the tiny config and the demo INST task (8 forced CPU devices,
inherited from conftest). They share one persistent compilation cache, so only the first run pays
for compilation. --mode=eval (1 and 2 processes) and train_and_eval (2 processes, evaluating
every N steps) run in tests/multiprocess_test.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from toxjax.testing.processes import command_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 40
CHECKPOINT_EVERY = 5


def _command(workdir: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "toxjax.main",
        "--config=toxjax/configs/tiny.py",
        f"--workdir={workdir}",
        "--mode=train",
        f"--config.train.num_steps={NUM_STEPS}",
        f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
        "--config.train.log_every=1",  # every step's loss reaches train_log.jsonl at once
        "--config.train.cpu_peak_flops=3.6e11",  # skip the matmul measurement
        *extra,
    ]


def _environment(shared: str) -> dict[str, str]:
    return command_environment(REPO, os.path.join(shared, "jax_cache"))


def _start(workdir: str, shared: str, log_name: str) -> tuple[subprocess.Popen, str]:
    log_path = os.path.join(shared, log_name)
    with open(log_path, "w") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            _command(workdir),
            cwd=REPO,
            env=_environment(shared),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    return process, log_path


def _losses(workdir: str) -> dict[int, float]:
    """Per-step losses; a step logged twice (before a kill and after resume) keeps the last."""
    path = os.path.join(workdir, "train_log.jsonl")
    if not os.path.exists(path):
        return {}
    losses = {}
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                record = json.loads(line)
                losses[record["step"]] = record["loss"]
    return losses


def _wait_for(condition, process: subprocess.Popen, log_path: str, timeout: float = 240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process.poll() is not None:
            with open(log_path) as f:
                tail = f.read()[-3000:]
            raise AssertionError(f"run exited early with {process.returncode}:\n{tail}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError("timed out waiting for the training run")


def _checkpoint_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def reference_run(shared) -> str:
    """An uninterrupted run: the learning check and the resume reference."""
    workdir = os.path.join(shared, "reference")
    process, log_path = _start(workdir, shared, "reference.log")
    try:
        returncode = process.wait(timeout=420)
    finally:
        if process.poll() is None:
            process.kill()
    if returncode != 0:
        with open(log_path) as f:
            raise AssertionError(f"reference run failed ({returncode}):\n{f.read()[-4000:]}")
    return workdir


@pytest.mark.slow
def test_tiny_config_learns_the_demo_inst_task(reference_run):
    losses = _losses(reference_run)
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    first = sum(losses[s] for s in range(1, 11)) / 10
    last = sum(losses[s] for s in range(NUM_STEPS - 9, NUM_STEPS + 1)) / 10
    assert last < 0.8 * first, (first, last)
    # The run leaves its config, TensorBoard events and a final checkpoint behind.
    with open(os.path.join(reference_run, "config.json")) as f:
        assert json.load(f)["train"]["num_steps"] == NUM_STEPS
    assert os.path.exists(os.path.join(reference_run, "config.txt"))
    events = os.listdir(os.path.join(reference_run, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    assert _checkpoint_steps(reference_run)[-1] == NUM_STEPS


@pytest.mark.slow
def test_kill9_then_resume_matches_the_uninterrupted_run_bitwise(reference_run, shared):
    reference = _losses(reference_run)
    workdir = os.path.join(shared, "interrupted")

    # Run 1: SIGKILL as soon as a checkpoint is on disk (orbax renames it into place only
    # once complete, so the directory name appearing means it is usable).
    process, log_path = _start(workdir, shared, "killed.log")
    _wait_for(lambda: _checkpoint_steps(workdir), process, log_path)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed_losses = _losses(workdir)
    killed_at = max(killed_losses)
    resume_from = _checkpoint_steps(workdir)[-1]
    assert resume_from % CHECKPOINT_EVERY == 0

    # Run 2: resumes from the latest checkpoint; SIGTERM mid-training saves and exits 0.
    os.rename(
        os.path.join(workdir, "train_log.jsonl"), os.path.join(workdir, "train_log.run1.jsonl")
    )
    process, log_path = _start(workdir, shared, "resumed.log")
    target = resume_from + 8
    _wait_for(lambda: max(_losses(workdir), default=0) >= target, process, log_path)
    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=120)
    with open(log_path) as f:
        output = f.read()
    assert returncode == 0, output[-3000:]
    assert "Stop requested: saving step" in output

    resumed = _losses(workdir)
    assert min(resumed) == resume_from + 1, "did not resume from the latest checkpoint"
    stopped_at = max(resumed)
    assert stopped_at >= target and stopped_at < NUM_STEPS
    # SIGTERM left a checkpoint exactly at the step where it stopped.
    assert _checkpoint_steps(workdir)[-1] == stopped_at
    # Every step of both runs, including those the killed run did past its checkpoint and
    # the resumed run did again, equals the uninterrupted run's, bit for bit.
    assert killed_at >= resume_from
    for step, loss in killed_losses.items():
        assert loss == reference[step], (step, loss, reference[step])
    for step, loss in resumed.items():
        assert loss == reference[step], (step, loss, reference[step])
