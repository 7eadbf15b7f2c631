"""The shell scripts the launcher runs on every TPU worker (over `gcloud ... ssh --command`).

Each script is one line (statements joined by "; "), POSIX sh, with every value shell-quoted.
Remote paths are "$HOME"/<quoted relative path>: the quotes keep $HOME expanded and the rest
literal. Standard library only, like toxjax.launch.launcher.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

# Ubuntu 22.04 images ship Python 3.10; jax 0.10 needs >= 3.11, so uv installs its own Python.
DEFAULT_PYTHON_VERSION = "3.11"
# detoxify needs torch; the CPU wheel avoids several GB of CUDA packages on TPU hosts.
DEFAULT_TORCH = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Older libtpu builds live only here; newer ones are on PyPI (the extra link is then harmless).
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"

# Paths on every worker, relative to the login user's $HOME.
REMOTE_REPO = "toxjax"
REMOTE_VENV = "toxjax_venv"
REMOTE_RUNS = "toxjax_runs"
REMOTE_ARCHIVE = "toxjax-src.tar.gz"


def is_git_url(source: str) -> bool:
    return bool(re.match(r"^(https?|ssh|git)://|^[\w.-]+@[\w.-]+:", source))


def home(relative: str) -> str:
    return f'"$HOME"/{shlex.quote(relative)}'


def _script(*statements: str) -> str:
    """Statements on one line; one ending in `&` is already terminated (`&;` is a syntax error)."""
    parts = []
    for index, statement in enumerate(statements):
        parts.append(statement)
        if index < len(statements) - 1:
            parts.append(" " if statement.endswith("&") else "; ")
    return "".join(parts)


def fetch_statements(source: str, branch: str | None) -> list[str]:
    """Put the source tree at ~/toxjax on a worker (fresh copy each time)."""
    repo, new = home(REMOTE_REPO), home(REMOTE_REPO + ".new")
    if not is_git_url(source):
        archive = home(REMOTE_ARCHIVE)
        steps = []
        if source.startswith("gs://"):
            steps.append(f"gcloud storage cp {shlex.quote(source)} {archive}")
        return steps + [
            f"rm -rf {new}",
            f"mkdir -p {new}",
            f"tar -xzf {archive} -C {new}",
            f"rm -rf {repo}",
            f"mv {new} {repo}",
        ]
    clone = ["git", "clone", "--depth", "1"] + (["--branch", branch] if branch else [])
    return [f"rm -rf {repo}", f"{shlex.join(clone)} {shlex.quote(source)} {repo}"]


def setup_script(
    source: str,
    *,
    branch: str | None = None,
    extra: str = "tpu",
    python_version: str = DEFAULT_PYTHON_VERSION,
    torch: str = DEFAULT_TORCH,
    find_links: str | None = LIBTPU_FIND_LINKS,
) -> str:
    venv_python = home(f"{REMOTE_VENV}/bin/python")
    uv = home(".local/bin/uv")
    install = f"{uv} pip install --python {venv_python}"
    statements = ["set -eu", *fetch_statements(source, branch)]
    statements += [
        f"[ -x {uv} ] || python3 -m pip install --user --quiet uv",
        f"[ -x {venv_python} ] || {uv} venv --python {shlex.quote(python_version)} "
        f"{home(REMOTE_VENV)}",
    ]
    if torch:
        statements.append(f"{install} {shlex.quote(torch)} --index-url {TORCH_CPU_INDEX}")
    package = shlex.quote(f".[{extra}]" if extra else ".")
    links = f" --find-links {shlex.quote(find_links)}" if find_links else ""
    statements += [
        f"cd {home(REMOTE_REPO)}",
        f"{install} -e {package}{links}",
        f"{venv_python} -c "
        + shlex.quote(
            "import socket, jax, toxjax; "
            'print(socket.gethostname(), "toxjax", toxjax.__version__, "jax", jax.__version__)'
        ),
    ]
    return _script(*statements)


def run_paths(run_name: str) -> tuple[str, str]:
    """(log file, pid file) of a run on every worker."""
    return home(f"{REMOTE_RUNS}/{run_name}.log"), home(f"{REMOTE_RUNS}/{run_name}.pid")


def run_script(
    module: str, args: Sequence[str], *, run_name: str, env: dict[str, str] | None = None
) -> str:
    """Start `python -m module args` detached (new session, no stdin), appending to its log.

    The pid file names the python process itself (`exec`), so `stop` signals it directly.
    """
    log, pid = run_paths(run_name)
    command = [f"{REMOTE_VENV}/bin/python", "-m", module, *args]
    banner = f"=== toxjax launch {run_name}: {shlex.join(command)}"
    exports = [f"export {key}={shlex.quote(value)}" for key, value in (env or {}).items()]
    return _script(
        "set -eu",
        f"mkdir -p {home(REMOTE_RUNS)}",
        f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then '
        f'echo "toxjax run {run_name} is already running on $(hostname) (pid $(cat {pid})): '
        f'stop it first" >&2; exit 1; fi',
        f'if ! [ -x {home(command[0])} ]; then echo "toxjax is not set up on $(hostname): '
        f'run the setup subcommand first" >&2; exit 1; fi',
        f"cd {home(REMOTE_REPO)}",
        "export PYTHONUNBUFFERED=1",
        *exports,
        f'echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname)" {shlex.quote(banner)} >> {log}',
        f'setsid nohup sh -c \'echo $$ > "$0"; exec "$@"\' {pid} '
        f"{home(command[0])} {shlex.join(command[1:])} >> {log} 2>&1 < /dev/null &",
        f'echo "started toxjax run {run_name} on $(hostname); log: $HOME/{REMOTE_RUNS}/'
        f'{run_name}.log"',
    )


def stop_script(run_name: str, *, wait_s: int) -> str:
    """SIGTERM the run (toxjax saves a checkpoint and exits 0), then wait for it to exit."""
    log, pid = run_paths(run_name)
    running = f'[ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'
    return _script(
        f"if ! {{ {running}; }}; then "
        f'echo "no running toxjax run {run_name} on $(hostname)"; exit 0; fi',
        f'kill -TERM "$(cat {pid})"',
        f'echo "sent SIGTERM to toxjax run {run_name} on $(hostname)"',
        "waited=0",
        f'while {running} && [ "$waited" -lt {int(wait_s)} ]; do sleep 1; '
        "waited=$((waited + 1)); done",
        f'if {running}; then echo "toxjax run {run_name} still running on $(hostname) after '
        f'{int(wait_s)} s" >&2; exit 1; fi',
        f"rm -f {pid}",
        f'echo "toxjax run {run_name} exited on $(hostname); last log lines:"',
        f"tail -n 5 {log}",
    )


def logs_script(run_name: str, *, lines: int, follow: bool) -> str:
    log, _ = run_paths(run_name)
    # -F waits for a log that does not exist yet and survives its rotation.
    return f"tail -n {int(lines)} {'-F ' if follow else ''}{log}"
