"""The real commands on 2 JAX processes x 4 CPU devices (gloo), as on a pod slice's workers,
against the same commands on 1 process x 8 devices.

Training on a mesh spanning both processes: SIGTERM to both saves one step and exits 0; the run
resumed as train_and_eval (evaluating on the way) has the losses of an uninterrupted 2-process
run exactly and of a 1-process run within float tolerance; evaluation gives the 1-process
results and writes the same files; a killed process makes the other stop with an error naming
it instead of hanging.
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

from toxjax.testing.processes import ProcessGroup, command_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 20
EVAL_EVERY = 10
TRAIN = [
    "--config=toxjax/configs/tiny.py",
    f"--config.train.num_steps={NUM_STEPS}",
    "--config.train.checkpoint_every=5",
    "--config.mesh.ici.fsdp=2",  # data x fsdp: 2 x 2 in each process, data 2 across them
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


def _environment(shared: str) -> dict[str, str]:
    return command_environment(REPO, os.path.join(shared, "jax_cache"))


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
    env = _environment(shared)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def _losses(workdir: str) -> dict[int, float]:
    """step -> loss over every train log segment; a resumed step's later line wins."""
    losses = {}
    for path in sorted(glob.glob(os.path.join(workdir, "train_log*.jsonl"))):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                losses[record["step"]] = record["loss"]
    return losses


def _lines(workdir: str) -> int:
    path = os.path.join(workdir, "train_log.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("multiprocess"))


@pytest.fixture(scope="module")
def one_process_run(shared) -> str:
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
    checkpoints = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))]
    every = [*TRAIN, *EVAL, f"--config.train.eval_every={EVAL_EVERY}"]
    resumed = _two(_main(workdir, "train_and_eval", *every), shared, "resumed_logs")
    _finish(resumed)
    pids = [p.pid for p in (*group.processes, *resumed.processes)]
    return dict(workdir=workdir, saved=saved, first_part=first_part, checkpoints=checkpoints,
                pids=pids)  # fmt: skip


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
    process_0, process_1 = resumed_run["pids"][0::2], resumed_run["pids"][1::2]
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
