"""toxjax.launch.launcher and the tpu/*.sh wrappers: exact dry-run commands, errors, remote scripts.

gcloud is never run: every subprocess gets a PATH whose `gcloud` is a trap that records any
call, and the remote scripts are executed locally by `sh` against a fake $HOME.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile

import pytest

from toxjax.launch import launcher

ROOT = pathlib.Path(__file__).resolve().parents[2]
WRAPPERS = ("create", "setup", "launch", "logs", "stop", "delete", "gpu_multinode")


@pytest.fixture
def trap_path(tmp_path):
    """A PATH whose gcloud/srun record calls; the test fails if any was called."""
    bin_dir = tmp_path / "trap_bin"
    bin_dir.mkdir()
    calls = tmp_path / "trap_calls.txt"
    for program in ("gcloud", "srun"):
        script = bin_dir / program
        script.write_text(f'#!/bin/sh\necho "{program} $*" >> {shlex.quote(str(calls))}\nexit 1\n')
        script.chmod(0o755)
    yield f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    assert not calls.exists(), f"a real command was called: {calls.read_text()}"


def _run(argv: list[str], path: str, cwd: str | pathlib.Path, env: dict[str, str]):
    full_env = {k: v for k, v in os.environ.items() if k != "DRY_RUN"}
    full_env.update(PATH=path, PYTHONPATH=str(ROOT), PYTHON=sys.executable, **env)
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60)


def launch_cli(path: str, line: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m toxjax.launch LINE`, LINE split as a shell would."""
    return _run([sys.executable, "-m", "toxjax.launch", *shlex.split(line)], path, ROOT, env)


def wrapper(path: str, script: str, line: str, **env: str) -> subprocess.CompletedProcess:
    """`tpu/SCRIPT.sh LINE`, from another directory (the wrappers find the repo themselves)."""
    return _run(["bash", str(ROOT / "tpu" / f"{script}.sh"), *shlex.split(line)], path, "/", env)


def ok_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def remote_script(line: str) -> str:
    """The --command value of a printed `gcloud ... ssh` line, unquoted as the shell would."""
    (command,) = [a for a in shlex.split(line) if a.startswith("--command=")]
    return command[len("--command=") :]


def launched_words(script: str) -> list[str]:
    """The detached command of a run script: sh -c TRAMPOLINE PIDFILE PYTHON -m MODULE ARGS."""
    return shlex.split(script.split("setsid nohup ", 1)[1].split(" >> ", 1)[0])


# ----------------------------------------------------------------------------- dry runs


def test_create_v4_spot_via_wrapper_with_dry_run_env(trap_path):
    line = "--name=tox-v4 --zone=us-central2-b --accelerator_type=v4-32 --spot --project=my-proj"
    assert ok_lines(wrapper(trap_path, "create", line, DRY_RUN="1")) == [
        "gcloud compute tpus tpu-vm create tox-v4 --zone=us-central2-b --project=my-proj "
        "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"
    ]


@pytest.mark.parametrize(
    ("flags", "expected_tail"),
    [
        ("--accelerator_type=v5e-16 --preemptible",
         "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --preemptible"),
        ("--accelerator_type=v6e-8 --service_account=sa@p.iam.gserviceaccount.com",
         "--accelerator-type=v6e-8 --version=v2-alpha-tpuv6e "
         "--service-account=sa@p.iam.gserviceaccount.com"),
        ("--accelerator_type=v5p-8 --version=v2-alpha-tpuv5-custom",
         "--accelerator-type=v5p-8 --version=v2-alpha-tpuv5-custom"),
    ],
)  # fmt: skip
def test_create_flags(trap_path, flags, expected_tail):
    lines = ok_lines(launch_cli(trap_path, f"create --name=t --zone=us-west4-a {flags} --dry_run"))
    assert lines == [f"gcloud compute tpus tpu-vm create t --zone=us-west4-a {expected_tail}"]


def test_delete_and_logs(trap_path):
    assert ok_lines(wrapper(trap_path, "delete", "--name=t --zone=z1 --dry_run")) == [
        "gcloud compute tpus tpu-vm delete t --zone=z1 --quiet"
    ]
    assert ok_lines(wrapper(trap_path, "logs", "--name=t --zone=z1 --dry_run")) == [
        "gcloud compute tpus tpu-vm ssh t --zone=z1 --worker=0 "
        "'--command=tail -n 100 -F \"$HOME\"/toxjax_runs/toxjax.log'"
    ]
    line = "--name=t --zone=z1 --worker=all --run_name=exp1 --lines=5 --no_follow --dry_run"
    assert ok_lines(wrapper(trap_path, "logs", line)) == [
        "gcloud compute tpus tpu-vm ssh t --zone=z1 --worker=all "
        "'--command=tail -n 5 \"$HOME\"/toxjax_runs/exp1.log'"
    ]


def test_run_prints_one_ssh_line_for_all_workers(trap_path):
    line = (
        "--name=tox-v4 --zone=us-central2-b --dry_run -- "
        "--config=toxjax/configs/tiny.py --workdir=gs://my-bucket/runs/a --mode=train"
    )
    lines = ok_lines(wrapper(trap_path, "launch", line))
    expected_script = (
        'set -eu; mkdir -p "$HOME"/toxjax_runs; '
        'if [ -f "$HOME"/toxjax_runs/toxjax.pid ] && kill -0 "$(cat "$HOME"/toxjax_runs/'
        'toxjax.pid)" 2>/dev/null; then echo "toxjax run toxjax is already running on '
        '$(hostname) (pid $(cat "$HOME"/toxjax_runs/toxjax.pid)): stop it first" >&2; exit 1; '
        'fi; if ! [ -x "$HOME"/toxjax_venv/bin/python ]; then echo "toxjax is not set up on '
        '$(hostname): run the setup subcommand first" >&2; exit 1; fi; '
        'cd "$HOME"/toxjax; export PYTHONUNBUFFERED=1; '
        'echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname)" \'=== toxjax launch toxjax: '
        "toxjax_venv/bin/python -m toxjax.main --config=toxjax/configs/tiny.py "
        "--workdir=gs://my-bucket/runs/a --mode=train --distributed=true' "
        '>> "$HOME"/toxjax_runs/toxjax.log; '
        'setsid nohup sh -c \'echo $$ > "$0"; exec "$@"\' "$HOME"/toxjax_runs/toxjax.pid '
        '"$HOME"/toxjax_venv/bin/python -m toxjax.main --config=toxjax/configs/tiny.py '
        "--workdir=gs://my-bucket/runs/a --mode=train --distributed=true "
        '>> "$HOME"/toxjax_runs/toxjax.log 2>&1 < /dev/null & '
        'echo "started toxjax run toxjax on $(hostname); log: $HOME/toxjax_runs/toxjax.log"'
    )
    assert lines == [
        "gcloud compute tpus tpu-vm ssh tox-v4 --zone=us-central2-b --worker=all "
        + shlex.quote(f"--command={expected_script}")
    ]


@pytest.mark.parametrize(
    ("module", "args", "expected_tail"),
    [
        ("toxjax.main", ["--workdir=gs://bkt/w"], ["--workdir=gs://bkt/w", "--distributed=true"]),
        ("toxjax.main", ["--workdir=gs://bkt/w", "--distributed", "false"],
         ["--workdir=gs://bkt/w", "--distributed", "false"]),
        ("toxjax.study", ["--workdir=gs://bkt/w"], ["--workdir=gs://bkt/w"]),
    ],
)  # fmt: skip
def test_run_turns_on_jax_distributed_for_toxjax_main_only(module, args, expected_tail):
    (command,) = launcher.run_plan("t", "z", args, module=module).commands
    words = launched_words(remote_script(shlex.join(command)))
    assert words[5:] == ["-m", module, *expected_tail]


def test_run_quotes_config_flags_with_spaces_and_quotes(trap_path):
    tricky = '--config.train.warm_start_from=it\'s "q" $HOME'
    args = [
        "--config=toxjax/configs/tiny.py",
        "--workdir",
        "gs://b-1/runs/x y",
        "--config.data.task=a b",
    ]
    args.append(tricky)
    line = (
        "run --name=t --zone=z --module=toxjax.study --run_name=study1 "
        f"'--env=TOXJAX_DATA_DIR=/tmp/a b' --dry_run -- {shlex.join(args)}"
    )
    lines = ok_lines(launch_cli(trap_path, line))
    assert len(lines) == 1 and lines[0].startswith(
        "gcloud compute tpus tpu-vm ssh t --zone=z --worker=all '--command="
    )
    script = remote_script(lines[0])
    assert "export TOXJAX_DATA_DIR='/tmp/a b'" in script
    # Exactly the arguments given, after the sh -c trampoline and its pid file.
    words = launched_words(script)
    assert words[3:5] == ["$HOME/toxjax_runs/study1.pid", "$HOME/toxjax_venv/bin/python"]
    assert words[5:] == ["-m", "toxjax.study", *args]


def test_setup_local_source_scp_then_install(trap_path, tmp_path):
    archive = str(tmp_path / "src.tar.gz")
    line = f"--name=tox --zone=us-central2-b --archive={archive} --dry_run"
    lines = ok_lines(wrapper(trap_path, "setup", line))
    assert lines[0] == f"# pack {ROOT} (files git tracks or does not ignore) -> {archive}"
    assert lines[1] == (
        f"gcloud compute tpus tpu-vm scp {archive} tox:toxjax-src.tar.gz "
        "--zone=us-central2-b --worker=all"
    )
    assert lines[2].startswith(
        "gcloud compute tpus tpu-vm ssh tox --zone=us-central2-b --worker=all '--command=set -eu; "
    )
    assert len(lines) == 3
    assert not os.path.exists(archive), "a dry run must not pack"
    script = remote_script(lines[2])
    for piece in (
        'tar -xzf "$HOME"/toxjax-src.tar.gz -C "$HOME"/toxjax.new',
        '"$HOME"/.local/bin/uv venv --python 3.11 "$HOME"/toxjax_venv',
        "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
        "pip install --python \"$HOME\"/toxjax_venv/bin/python -e '.[tpu]' --find-links "
        "https://storage.googleapis.com/jax-releases/libtpu_releases.html",
    ):
        assert piece in script
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_setup_git_and_gcs_sources(trap_path):
    line = (
        "setup --name=t --zone=z --dry_run --source=https://github.com/org/toxjax.git "
        "--branch=v0.1 --torch= --find_links="
    )
    git = ok_lines(launch_cli(trap_path, line))
    assert len(git) == 1
    script = remote_script(git[0])
    clone = 'git clone --depth 1 --branch v0.1 https://github.com/org/toxjax.git "$HOME"/toxjax'
    assert clone in script
    assert "torch" not in script and "--find-links" not in script
    line = "setup --name=t --zone=z --dry_run --source=gs://bkt/toxjax-src.tar.gz --extra=gpu"
    script = remote_script(ok_lines(launch_cli(trap_path, line))[0])
    assert 'gcloud storage cp gs://bkt/toxjax-src.tar.gz "$HOME"/toxjax-src.tar.gz' in script
    assert "-e '.[gpu]'" in script
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_stop_script_parses(trap_path):
    lines = ok_lines(wrapper(trap_path, "stop", "--name=t --zone=z --dry_run"))
    assert lines[0].startswith("gcloud compute tpus tpu-vm ssh t --zone=z --worker=all ")
    script = remote_script(lines[0])
    assert 'kill -TERM "$(cat "$HOME"/toxjax_runs/toxjax.pid)"' in script
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_gpu_node_prints_every_node_or_one(trap_path):
    run_args = "-- --config=toxjax/configs/tiny.py '--workdir=/shared/runs/a b'"
    line = f"--coordinator_address=10.0.0.1:8476 --num_processes=2 {run_args}"
    assert ok_lines(wrapper(trap_path, "gpu_multinode", line, DRY_RUN="true")) == [
        f"env JAX_COORDINATOR_ADDRESS=10.0.0.1:8476 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID={i} "
        "python -m toxjax.main --config=toxjax/configs/tiny.py '--workdir=/shared/runs/a b'"
        for i in (0, 1)
    ]
    line = (
        "gpu-node --coordinator_address=h:1 --num_processes=4 --process_id=3 --python=python3 "
        f"--dry_run {run_args}"
    )
    assert ok_lines(launch_cli(trap_path, line)) == [
        "env JAX_COORDINATOR_ADDRESS=h:1 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=3 python3 -m "
        "toxjax.main --config=toxjax/configs/tiny.py '--workdir=/shared/runs/a b'"
    ]
    assert ok_lines(launch_cli(trap_path, f"gpu-node --slurm --dry_run {run_args}")) == [
        "srun --ntasks-per-node=1 python -m toxjax.main --config=toxjax/configs/tiny.py "
        "'--workdir=/shared/runs/a b'"
    ]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("run --name=t --zone=z -- --config=c.py --workdir=/tmp/w",
         "--workdir=/tmp/w: TPU launches need a gs:// workdir"),
        ("run --name=t --zone=z -- --config=c.py --workdir=gs://My_Bucket/w",
         "--workdir=gs://My_Bucket/w: TPU launches need a gs:// workdir"),
        ("run --name=t --zone=z -- --config=c.py",
         "the command after '--' needs --workdir=gs://BUCKET/runs/NAME"),
        ("run --name=t --zone=z -- --config=c.py --workdir", "--workdir is given without a value"),
        ("run --name=t --zone=z --config=c.py",
         "unrecognized arguments: --config=c.py (arguments for the launched module go after"),
        ("run --name=t --zone=z --run_name=a/b -- --workdir=gs://bkt/w",
         "--run_name='a/b': use letters, digits"),
        ("run --name=t --zone=z --env=1X=2 -- --workdir=gs://bkt/w",
         "--env='1X=2': expected KEY=VALUE"),
        ("create --name=t --zone=z", "the following arguments are required: --accelerator_type"),
        ("create --name=t --accelerator_type=v4-8",
         "the following arguments are required: --zone"),
        ("create --name=t --zone=z --accelerator_type=v4-8 --spot --preemptible",
         "not allowed with argument"),
        ("create --name=t --zone=z --accelerator_type=tpu7x-8",
         "no default TPU software version for 'tpu7x'"),
        ("delete --name=t --zone=z -- --workdir=gs://bkt/w",
         "delete takes no arguments after '--'"),
        ("setup --name=t --zone=z --source=/nonexistent/dir",
         "--source=/nonexistent/dir: no setup.py there"),
        ("setup --name=t --zone=z --branch=main", "--branch needs a git URL"),
        ("gpu-node --num_processes=2 -- --workdir=/w",
         "gpu-node needs --coordinator_address=HOST:PORT and --num_processes=N"),
        ("gpu-node --coordinator_address=h:1 --num_processes=2 -- --workdir=w",
         "--workdir=w: with several nodes the workdir must be shared"),
        ("gpu-node --coordinator_address=h:1 --num_processes=2 --process_id=2 -- --workdir=/w",
         "--process_id=2: must be in [0, 2)"),
        ("gpu-node --coordinator_address=h:1 --num_processes=2 -- --workdir=/w",
         "gpu-node needs --process_id=I to run"),
        ("gpu-node --slurm --num_processes=2 -- --workdir=/w", "--slurm detects the coordinator"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error(trap_path, monkeypatch, capsys, line, message):
    """In-process (fast); PATH still holds only the trap gcloud."""
    monkeypatch.setenv("PATH", trap_path)
    monkeypatch.delenv("DRY_RUN", raising=False)
    subcommand, *rest = shlex.split(line)
    # --dry_run everywhere except the case whose error is "cannot run without it".
    dry = [] if "gpu-node needs --process_id" in message else ["--dry_run"]
    with pytest.raises(SystemExit) as exit_info:
        launcher.main([subcommand, *dry, *rest])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert message in captured.err
    assert captured.out == ""


def test_missing_gcloud_is_a_clear_error(tmp_path):
    """Without --dry_run the launcher looks for gcloud first (here an empty PATH)."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    result = launch_cli(str(empty), "delete --name=t --zone=z")
    assert result.returncode == 2
    assert "gcloud not found on PATH" in result.stderr and "--dry_run" in result.stderr


def test_every_wrapper_has_help_and_the_readme_names_them(trap_path):
    readme = (ROOT / "tpu" / "README.md").read_text(encoding="utf-8")
    for script in WRAPPERS:
        result = wrapper(trap_path, script, "--help")
        assert result.returncode == 0 and "usage: python -m toxjax.launch" in result.stdout
        assert f"tpu/{script}.sh" in readme
    mentioned = set(re.findall(r"tpu/(\w+)\.sh", readme))
    assert mentioned <= set(WRAPPERS)


def test_readme_shows_current_dry_run_output(trap_path):
    readme = (ROOT / "tpu" / "README.md").read_text(encoding="utf-8").splitlines()
    line = "--name=tox-v4 --zone=us-central2-b --accelerator_type=v4-32 --spot --dry_run"
    create = ok_lines(wrapper(trap_path, "create", line))
    line = (
        "--coordinator_address=10.0.0.1:8476 --num_processes=2 --process_id=0 --dry_run -- "
        "--config=toxjax/configs/tiny.py --workdir=/shared/runs/tiny --mode=train"
    )
    node = ok_lines(wrapper(trap_path, "gpu_multinode", line))
    assert create[0] in readme and node[0] in readme


# ----------------------------------------------------------------------------- packing


def test_pack_source_ships_what_git_would(tmp_path):
    repo = tmp_path / "repo"
    (repo / "toxjax").mkdir(parents=True)
    (repo / ".venv" / "lib").mkdir(parents=True)
    (repo / "setup.py").write_text("import setuptools\n")
    (repo / "toxjax" / "a.py").write_text("x = 1\n")
    (repo / "notes.md").write_text("untracked but not ignored\n")
    (repo / ".venv" / "lib" / "big.so").write_text("ignored\n")
    (repo / "run.log").write_text("ignored\n")
    (repo / ".gitignore").write_text(".venv/\n*.log\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "setup.py", "toxjax/a.py"], check=True)
    archive = tmp_path / "out" / "src.tar.gz"
    assert launcher.pack_source(str(repo), str(archive)) == 4
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [".gitignore", "notes.md", "setup.py", "toxjax/a.py"]
        assert tar.extractfile("toxjax/a.py").read() == b"x = 1\n"


def test_pack_source_without_git_skips_build_debris(tmp_path):
    source = tmp_path / "plain"
    names = "setup.py toxjax/configs/tiny.py .venv/x.py toxjax/__pycache__/m.pyc toxjax/m.py"
    for name in [*names.split(), "toxjax.egg-info/PKG-INFO", ".ruff_cache/x"]:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("")
    expected = ["setup.py", "toxjax/configs/tiny.py", "toxjax/m.py"]
    assert launcher.source_files(str(source)) == expected


# ----------------------------------------------------------------------------- execution


def _recording_gcloud(tmp_path: pathlib.Path, exit_status: int) -> tuple[str, pathlib.Path]:
    """A stand-in gcloud that logs its argv (one shell-quoted line per call)."""
    bin_dir = tmp_path / "stub_bin"
    bin_dir.mkdir()
    calls = tmp_path / "stub_calls.txt"
    script = bin_dir / "gcloud"
    script.write_text(
        "#!/usr/bin/env python3\nimport shlex, sys\n"
        f"open({str(calls)!r}, 'a').write(shlex.join(['gcloud', *sys.argv[1:]]) + '\\n')\n"
        f"sys.exit({exit_status})\n"
    )
    script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}", calls


def test_setup_executes_pack_scp_ssh_in_order(tmp_path):
    source = tmp_path / "src"
    (source / "toxjax" / "configs").mkdir(parents=True)
    (source / "setup.py").write_text("")
    (source / "toxjax" / "configs" / "tiny.py").write_text("")
    archive = tmp_path / "staging" / "src.tar.gz"
    line = f"setup --name=t --zone=z --source={source} --archive={archive}"
    path, calls = _recording_gcloud(tmp_path, exit_status=0)
    dry = ok_lines(launch_cli(path, f"{line} --dry_run"))
    assert not calls.exists() and not archive.exists()

    result = launch_cli(path, line)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == dry[1:]  # the same lines, minus the pack note
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["setup.py", "toxjax/configs/tiny.py"]
    assert "# packed 2 files" in result.stdout


def test_execution_stops_at_the_first_failing_command(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "setup.py").write_text("")
    path, calls = _recording_gcloud(tmp_path, exit_status=3)
    line = f"setup --name=t --zone=z --source={source} --archive={tmp_path / 'a.tar.gz'}"
    result = launch_cli(path, line)
    assert result.returncode == 3
    (only_call,) = calls.read_text().splitlines()
    assert only_call.startswith("gcloud compute tpus tpu-vm scp ")
    assert "command failed with exit status 3" in result.stderr


# ----------------------------------------------------------------------------- fit check


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (.[tpu-aot])"
)
def test_dry_run_refuses_8p3b_on_v5e_2x2_after_really_compiling_it(trap_path):
    """The compile really runs (XLA:TPU refuses the step in a few seconds: out of HBM)."""
    line = (
        "run --name=t --zone=z --accelerator_type=v5litepod-4 --dry_run -- "
        "--config=toxjax/configs/gpt_8p3b.py --workdir=gs://bkt/runs/w"
    )
    result = _run([sys.executable, "-m", "toxjax.launch", *shlex.split(line)], trap_path, ROOT, {})
    assert result.returncode == 2 and result.stdout == ""
    error = result.stderr.strip().splitlines()[-1]
    expected = r"toxjax/configs/gpt_8p3b\.py does not fit v5e:2x2: its train step needs \d"
    assert re.search(expected, error)
    assert re.search(r"needs [\d.]+ GiB per device \(arguments 23\.27 GiB, temporaries", error)
    assert "but a chip has 16.00 GiB of HBM" in error
