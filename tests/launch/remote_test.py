"""toxjax.launch.remote: the worker scripts, executed locally by `sh` against a fake $HOME."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time

import pytest

from toxjax.launch import launcher, remote

FAKE_TRAINER = """#!/bin/sh
trap 'echo "SIGTERM: saved checkpoint"; exit 0' TERM
printf '%s\\n' "$@" > "$HOME/args.txt"
echo "training started"
while :; do sleep 0.05; done
"""


def _sh(script: str, home: pathlib.Path) -> subprocess.CompletedProcess:
    """Run a remote script as `gcloud ... ssh --command` would: sh, starting in $HOME."""
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.run(
        ["sh", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=30
    )


def test_run_script_detaches_refuses_a_second_run_and_stop_checkpoints(tmp_path):
    """The generated run/stop/logs scripts, executed by sh against a fake $HOME."""
    home = tmp_path / "home"
    (home / "toxjax").mkdir(parents=True)
    venv_bin = home / "toxjax_venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(FAKE_TRAINER)
    (venv_bin / "python").chmod(0o755)
    args = ["--config=toxjax/configs/tiny.py", "--workdir=gs://b1/x", "--config.data.task=a b",
            '--config.train.warm_start_from=it\'s "q" $HOME']  # fmt: skip
    run = remote.run_script("toxjax.main", args, run_name="r1", env={"K": "v w"})

    started = time.monotonic()
    first = _sh(run, home)
    assert first.returncode == 0, first.stderr
    assert time.monotonic() - started < 5, "the launch must not wait for the run"
    args_file = home / "args.txt"
    for _ in range(100):
        if args_file.exists() and args_file.read_text().count("\n") == len(args) + 2:
            break
        time.sleep(0.05)
    assert args_file.read_text().splitlines() == ["-m", "toxjax.main", *args]
    pid = int((home / "toxjax_runs" / "r1.pid").read_text())
    os.kill(pid, 0)  # alive, and the pid file names it

    second = _sh(run, home)
    assert second.returncode == 1 and "already running" in second.stderr

    stop = _sh(remote.stop_script("r1", wait_s=20), home)
    assert stop.returncode == 0, stop.stderr
    assert "exited" in stop.stdout and "SIGTERM: saved checkpoint" in stop.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (home / "toxjax_runs" / "r1.pid").exists()

    log = _sh(remote.logs_script("r1", lines=50, follow=False), home).stdout.splitlines()
    assert "=== toxjax launch r1: toxjax_venv/bin/python -m toxjax.main" in log[0]
    assert log[1:] == ["training started", "SIGTERM: saved checkpoint"]
    assert "no running toxjax run r1" in _sh(remote.stop_script("r1", wait_s=1), home).stdout


def test_run_script_without_setup_is_refused(tmp_path):
    result = _sh(remote.run_script("toxjax.main", ["--workdir=gs://bkt/w"], run_name="r"), tmp_path)
    assert result.returncode == 1 and "run the setup subcommand first" in result.stderr


def test_stop_gives_up_after_wait_s(tmp_path):
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])
    try:
        runs = tmp_path / "toxjax_runs"
        runs.mkdir()
        (runs / "s.pid").write_text(str(stubborn.pid))
        (runs / "s.log").write_text("")
        result = _sh(remote.stop_script("s", wait_s=1), tmp_path)
        assert result.returncode == 1 and "still running" in result.stderr
    finally:
        stubborn.send_signal(signal.SIGKILL)
        stubborn.wait()


def test_setup_script_unpacks_and_installs_in_order(tmp_path):
    """The local-source setup script, run by sh with stand-ins for uv and the venv's python."""
    home = tmp_path / "home"
    (home / "toxjax").mkdir(parents=True)
    (home / "toxjax" / "stale.py").write_text("from an older setup\n")
    source = tmp_path / "src"
    source.mkdir()
    (source / "setup.py").write_text("")
    launcher.pack_source(str(source), str(home / remote.REMOTE_ARCHIVE))
    calls = home / "calls.txt"
    (home / "fake_python").write_text(f'#!/bin/sh\necho "python $*" >> {calls}\n')
    uv = home / ".local" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text(
        f'#!/bin/sh\necho "uv $* (in $(pwd))" >> {calls}\n'
        'if [ "$1" = venv ]; then mkdir -p "$4/bin" && cp "$HOME/fake_python" "$4/bin/python" '
        '&& chmod +x "$4/bin/python"; fi\n'
    )
    uv.chmod(0o755)
    script = remote.setup_script(str(source))
    for attempt in (1, 2):
        result = _sh(script, home)
        assert result.returncode == 0, result.stderr
        assert sorted(os.listdir(home / "toxjax")) == ["setup.py"]
        venv_python = f"{home}/toxjax_venv/bin/python"
        expected = [
            f"uv venv --python 3.11 {home}/toxjax_venv (in {home})",
            f"uv pip install --python {venv_python} torch==2.13.0 "
            f"--index-url https://download.pytorch.org/whl/cpu (in {home})",
            f"uv pip install --python {venv_python} -e .[tpu] --find-links "
            f"https://storage.googleapis.com/jax-releases/libtpu_releases.html (in {home}/toxjax)",
        ]
        if attempt == 2:
            expected = expected[1:]  # the environment is reused
        lines = calls.read_text().splitlines()
        assert lines[:-1] == expected
        assert lines[-1].startswith("python -c import socket, jax, toxjax;")
        calls.unlink()
