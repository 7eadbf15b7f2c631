"""End-to-end tests of `python -m toxjax.main` on the tiny config and the demo INST task: every
run a real subprocess, on 1 process x 8 CPU devices and on 2 JAX processes x 4 (gloo), as on a
pod slice's workers.

One process: the model learns; kill -9 and resume reproduce the uninterrupted run bit for bit.
Two processes, training on a mesh spanning both: SIGTERM to both saves one step and exits 0;
the run resumed as train_and_eval (evaluating on the way) has the losses of an uninterrupted
2-process run exactly and of the 1-process run within float tolerance; evaluation gives the
1-process results and writes the same files; a killed process makes the other stop with an
error naming it instead of hanging. Every run shares one persistent compilation cache.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from toxjax.testing.processes import ProcessGroup, command_environment, with_cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 12
CHECKPOINT_EVERY = 4
EVAL_EVERY = 8
TRAIN = [
    "--config=toxjax/configs/tiny.py",
    f"--config.train.num_steps={NUM_STEPS}",
    f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
    "--config.mesh.ici.fsdp=2",  # data x fsdp: 4 x 2 on 1 process; 2 x 2 in each of 2
    "--config.train.log_every=1",  # every step's loss reaches train_log.jsonl at once
    "--config.train.cpu_peak_flops=3.6e11",  # skip the matmul measurement
]
EVAL = [
    "--config.eval.rtp_num_prompts=6",
    "--config.eval.rtp.num_samples=3",
    "--config.eval.rtp.max_new_tokens=6",
    "--config.eval.utility_limit=8",
    "--config.eval.bias_limit=8",
    "--config.eval.perplexity_batches=2",
]
# Float results of 1 and 2 processes differ by reduction order only.
RTOL = 2e-3

pytestmark = pytest.mark.slow


def _main(workdir: str, mode: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "toxjax.main", f"--workdir={workdir}", f"--mode={mode}", *extra]


def _environment(shared: str, devices: int | None = None) -> dict[str, str]:
    env = command_environment(REPO, os.path.join(shared, "jax_cache"))
    if devices:
        env["XLA_FLAGS"] = with_cpu_devices(env.get("XLA_FLAGS", ""), devices)
    return env


def _two(command: list[str], shared: str, name: str) -> ProcessGroup:
    return ProcessGroup(
        command, os.path.join(shared, name), cwd=REPO, env=_environment(shared), heartbeat_s=10
    )


def _finish(group: ProcessGroup, timeout_s: float = 420) -> list[str]:
    codes = group.wait(timeout_s)
    logs = group.logs()
    assert codes == [0, 0], f"exit codes {codes}:\n" + "\n".join(log[-3000:] for log in logs)
    return logs


def _one(command: list[str], shared: str, timeout_s: float = 420) -> None:
    result = subprocess.run(
        command, cwd=REPO, env=_environment(shared, 8), capture_output=True, text=True,
        timeout=timeout_s,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def _start_one(workdir: str, shared: str, log_name: str) -> tuple[subprocess.Popen, str]:
    log_path = os.path.join(shared, log_name)
    with open(log_path, "w") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            _main(workdir, "train", *TRAIN), cwd=REPO, env=_environment(shared, 8),
            stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, log_path


def _losses(workdir: str, names: str = "train_log*.jsonl") -> dict[int, float]:
    """step -> loss over the matching train logs; a step logged twice (before a kill and after
    the resume) keeps the later line; a line a kill cut short is skipped."""
    losses = {}
    for path in sorted(glob.glob(os.path.join(workdir, names))):
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    record = json.loads(line)
                    losses[record["step"]] = record["loss"]
    return losses


def _lines(workdir: str) -> int:
    path = os.path.join(workdir, "train_log.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def _checkpoint_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


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


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("main"))


@pytest.fixture(scope="module")
def one_process_run(shared) -> str:
    """Uninterrupted, 1 process: the learning check and the reference of every resume."""
    workdir = os.path.join(shared, "one")
    _one(_main(workdir, "train", *TRAIN), shared)
    return workdir


@pytest.fixture(scope="module")
def two_process_run(shared) -> str:
    workdir = os.path.join(shared, "two")
    _finish(_two(_main(workdir, "train", *TRAIN), shared, "two_logs"))
    return workdir


@pytest.fixture(scope="module")
def resumed_run(shared) -> dict:
    """2 processes stopped by SIGTERM early on, then resumed as train_and_eval, evaluating every
    EVAL_EVERY steps and at the end: one resume serves the training and the evaluation tests."""
    workdir = os.path.join(shared, "interrupted")
    group = _two(_main(workdir, "train", *TRAIN), shared, "interrupted_logs")
    deadline = time.monotonic() + 300
    while _lines(workdir) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    group.signal_all(signal.SIGTERM)
    logs = _finish(group)
    saved = {int(log.split("Stop requested: saving step ")[1].split()[0]) for log in logs}
    first_part = _losses(workdir)
    checkpoints = _checkpoint_steps(workdir)
    every = [*TRAIN, *EVAL, f"--config.train.eval_every={EVAL_EVERY}"]
    resumed = _two(_main(workdir, "train_and_eval", *every), shared, "resumed_logs")
    _finish(resumed)
    process_0 = [group.processes[0].pid, resumed.processes[0].pid]
    process_1 = [group.processes[1].pid, resumed.processes[1].pid]
    return dict(workdir=workdir, saved=saved, first_part=first_part, checkpoints=checkpoints,
                process_0=process_0, process_1=process_1)  # fmt: skip


def test_tiny_config_learns_the_demo_inst_task(one_process_run):
    losses = _losses(one_process_run)
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    first = sum(losses[s] for s in range(1, 6)) / 5
    last = sum(losses[s] for s in range(NUM_STEPS - 4, NUM_STEPS + 1)) / 5
    assert last < 0.8 * first, (first, last)
    # The run leaves its config, TensorBoard events and a final checkpoint behind.
    with open(os.path.join(one_process_run, "config.json")) as f:
        assert json.load(f)["train"]["num_steps"] == NUM_STEPS
    assert os.path.exists(os.path.join(one_process_run, "config.txt"))
    events = os.listdir(os.path.join(one_process_run, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    assert _checkpoint_steps(one_process_run)[-1] == NUM_STEPS


def test_kill9_then_resume_matches_the_uninterrupted_run_bitwise(one_process_run, shared):
    reference = _losses(one_process_run)
    workdir = os.path.join(shared, "killed9")

    # Run 1: SIGKILL as soon as a checkpoint is on disk (orbax renames it into place only
    # once complete, so the directory name appearing means it is usable).
    process, log_path = _start_one(workdir, shared, "killed9.log")
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
    process, log_path = _start_one(workdir, shared, "resumed9.log")
    target = resume_from + 2
    _wait_for(
        lambda: max(_losses(workdir, "train_log.jsonl"), default=0) >= target, process, log_path
    )
    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=120)
    with open(log_path) as f:
        output = f.read()
    assert returncode == 0, output[-3000:]
    assert "Stop requested: saving step" in output

    resumed = _losses(workdir, "train_log.jsonl")
    assert min(resumed) == resume_from + 1, "did not resume from the latest checkpoint"
    stopped_at = max(resumed)
    assert target <= stopped_at < NUM_STEPS
    # SIGTERM left a checkpoint exactly at the step where it stopped.
    assert _checkpoint_steps(workdir)[-1] == stopped_at
    # Every step of both runs, including those the killed run did past its checkpoint and
    # the resumed run did again, equals the uninterrupted run's, bit for bit.
    assert killed_at >= resume_from
    for step, loss in killed_losses.items():
        assert loss == reference[step], (step, loss, reference[step])
    for step, loss in resumed.items():
        assert loss == reference[step], (step, loss, reference[step])


def test_sigterm_and_resume_on_two_processes_reproduce_the_uninterrupted_run(
    resumed_run, two_process_run, one_process_run
):
    saved = resumed_run["saved"]
    assert len(saved) == 1, "both processes save the same step"
    stopped_at = min(saved)
    assert 3 <= stopped_at < NUM_STEPS
    assert stopped_at in resumed_run["checkpoints"]
    first_part = resumed_run["first_part"]
    assert max(first_part) == stopped_at

    resumed, uninterrupted, single = (
        _losses(resumed_run["workdir"]),
        _losses(two_process_run),
        _losses(one_process_run),
    )
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, NUM_STEPS + 1))
    for step in range(1, NUM_STEPS + 1):
        # Bit for bit, evaluating on the way included.
        assert resumed[step] == uninterrupted[step], step
        assert math.isclose(uninterrupted[step], single[step], rel_tol=RTOL), step
    for step, loss in first_part.items():
        assert loss == uninterrupted[step], step


def _close(a, b, where: str = "") -> None:
    """Nested results equal: floats within RTOL, everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            if "tim" in key or key.endswith("_path") or key in ("workdir", "model"):
                continue
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-6), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _files(workdir: str) -> Counter:
    """Every file under workdir (TensorBoard event files named without their host and pid)."""
    return Counter(
        os.path.relpath(os.path.join(root, _event_file(name)), workdir)
        for root, _, names in os.walk(workdir)
        for name in names
    )


def _event_file(name: str) -> str:
    return "events.out.tfevents" if name.startswith("events.out.tfevents") else name


def _eval_results(workdir: str) -> dict:
    with open(os.path.join(workdir, "eval", f"step_{NUM_STEPS}.json")) as f:
        return json.load(f)


def _check_every_metric(results: dict) -> None:
    assert results["step"] == NUM_STEPS
    for run in ("conditioned", "unconditioned"):
        metrics = results["rtp"][run]["metrics"]
        for subset in ("all", "toxic", "nontoxic", "challenging"):
            assert {"expected_max_toxicity", "toxicity_probability"} <= set(metrics[subset])
    assert 0.0 <= results["utility"]["demo_cloze"]["acc"] <= 1.0
    assert 0.0 <= results["bias"]["demo_toxicity_detection"]["auc"] <= 1.0
    assert results["perplexity"]["num_batches"] == 2


def test_eval_and_train_and_eval_on_two_processes_equal_one_process(
    shared, two_process_run, resumed_run
):
    """--mode=eval on 2 processes and on 1 on the same checkpoint, and the resumed
    train_and_eval run's final evaluation (exact resume: the same params). Every stage's results
    agree, and the two processes write exactly the files one process writes."""
    copies = {}
    for name in ("eval_one", "eval_two"):
        copies[name] = os.path.join(shared, name)
        shutil.copytree(two_process_run, copies[name])
    before = _files(two_process_run)
    _one(_main(copies["eval_one"], "eval", *TRAIN, *EVAL), shared)
    _finish(_two(_main(copies["eval_two"], "eval", *TRAIN, *EVAL), shared, "eval_logs"))
    one = _eval_results(copies["eval_one"])
    _check_every_metric(one)
    _close(_eval_results(copies["eval_two"]), one, "eval_two")
    _close(_eval_results(resumed_run["workdir"]), one, "train_and_eval_two")
    # The same files, once each: process 1 wrote nothing of its own.
    assert _files(copies["eval_two"]) - before == _files(copies["eval_one"]) - before
    stopped_at = min(resumed_run["saved"])
    steps = [n for n in range(EVAL_EVERY, NUM_STEPS, EVAL_EVERY) if n > stopped_at] + [NUM_STEPS]
    evaluated = sorted(os.listdir(os.path.join(resumed_run["workdir"], "eval")))
    assert evaluated == sorted(f"step_{n}{end}" for n in steps for end in ("", ".json", ".md"))
    # TensorBoard event files are named by host and pid: none is a process 1's.
    events = os.listdir(os.path.join(resumed_run["workdir"], "tensorboard"))
    process_0, process_1 = resumed_run["process_0"], resumed_run["process_1"]
    assert not [name for name in events for pid in process_1 if f".{pid}." in name]
    assert [name for name in events for pid in process_0 if f".{pid}." in name]


def test_a_killed_process_stops_the_other_with_a_named_error(shared):
    workdir = os.path.join(shared, "killed")
    group = _two(_main(workdir, "train", *TRAIN), shared, "killed_logs")
    deadline = time.monotonic() + 300
    while _lines(workdir) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    group.processes[1].kill()
    killed_at = time.monotonic()
    codes = group.wait(90)
    assert codes[0] not in (0, None), "process 0 neither hung nor claimed success"
    assert time.monotonic() - killed_at < 60
    log = group.logs()[0]
    # Whichever notices first names it: a collective that lost its peer (toxjax's message), or
    # JAX's coordination service once the dead process misses its heartbeats (it aborts).
    named = (
        "another process of this run stopped",
        "This most likely indicates that another task died",
    )
    assert any(message in log for message in named), log[-3000:]
