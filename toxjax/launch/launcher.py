"""Launch toxjax on Cloud TPU VMs (one host or a pod slice) and on GPU nodes.

    python -m toxjax.launch create --name=tox --zone=us-central2-b --accelerator_type=v4-32 \
        --spot
    python -m toxjax.launch setup  --name=tox --zone=us-central2-b
    python -m toxjax.launch run    --name=tox --zone=us-central2-b -- \
        --config=toxjax/configs/tiny.py --workdir=gs://BUCKET/runs/tiny --mode=train
    python -m toxjax.launch logs   --name=tox --zone=us-central2-b
    python -m toxjax.launch stop   --name=tox --zone=us-central2-b
    python -m toxjax.launch delete --name=tox --zone=us-central2-b
    python -m toxjax.launch gpu-node --coordinator_address=10.0.0.1:8476 --num_processes=2 \
        --process_id=0 -- --config=toxjax/configs/tiny.py --workdir=/shared/runs/tiny

Everything after `--` is passed verbatim to `python -m MODULE` (default toxjax.main) on every
worker. Before that, `run` compiles the config for the slice on this machine
(`--topology=v4:2x2x2` or a known `--accelerator_type`; toxjax.launch.fit_check) and refuses one
that does not fit in HBM; `--skip_fit_check` skips it. `--dry_run` (or DRY_RUN=1) prints the
commands instead of running them (after the fit check). Standard library only, so it runs on a
laptop that has gcloud but not jax; only the fit check needs jax and libtpu (the tpu-aot extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from toxjax.launch import fit_check

# The scripts run on the workers; the names callers use are re-exported from here.
from toxjax.launch.remote import (
    DEFAULT_PYTHON_VERSION,
    DEFAULT_TORCH,
    LIBTPU_FIND_LINKS,
    REMOTE_ARCHIVE,
    is_git_url,
    logs_script,
    run_script,
    setup_script,
    stop_script,
)

TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
DEFAULT_MODULE = "toxjax.main"
DEFAULT_RUN_NAME = "toxjax"
# TPU software version for JAX per accelerator family (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# Skipped when packing a local tree that is not a git checkout (git decides otherwise).
_PACK_EXCLUDE_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", ".hypothesis"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_GCS_PATH = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = {"1", "true", "yes", "on"}


class LaunchError(ValueError):
    """Bad launch input: reported as one clear line, before any remote work starts."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a subcommand does: an optional local packing step, then commands in order."""

    commands: list[list[str]]
    notes: list[str] = dataclasses.field(default_factory=list)
    pack: tuple[str, str] | None = None  # (source directory, archive path)


# ----------------------------------------------------------------------------- validation


def check_name(flag: str, value: str) -> str:
    """Names end up in remote paths and gcloud arguments: keep them to safe characters."""
    if not _NAME.match(value):
        raise LaunchError(
            f"--{flag}={value!r}: use letters, digits, '.', '_' and '-' only "
            f"(starting with a letter or digit)"
        )
    return value


def flag_value(args: Sequence[str], name: str) -> str | None:
    """The last value of --name=V / --name V / -name=V in an absl-style argument list."""
    value = None
    for index, arg in enumerate(args):
        for prefix in (f"--{name}", f"-{name}"):
            if arg.startswith(prefix + "="):
                value = arg[len(prefix) + 1 :]
            elif arg == prefix:
                if index + 1 >= len(args):
                    raise LaunchError(f"{prefix} is given without a value")
                value = args[index + 1]
    return value


def require_workdir(args: Sequence[str], *, gcs: bool) -> str:
    """The workdir the launched command writes to; TPU launches need gs:// (shared, durable)."""
    workdir = flag_value(args, "workdir")
    example = "gs://BUCKET/runs/NAME" if gcs else "/shared/runs/NAME"
    if not workdir:
        raise LaunchError(
            f"the command after '--' needs --workdir={example} (got: {shlex.join(args) or 'none'})"
        )
    if gcs and not _GCS_PATH.match(workdir):
        raise LaunchError(
            f"--workdir={workdir}: TPU launches need a gs:// workdir such as "
            f"gs://BUCKET/runs/NAME (BUCKET: 3-222 of a-z 0-9 . _ -): every worker must write "
            f"checkpoints to the same place, and the VM disks go away with the slice"
        )
    return workdir


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_NAME.match(key):
            raise LaunchError(f"--env={pair!r}: expected KEY=VALUE with KEY a shell variable name")
        env[key] = value
    return env


def normalize_accelerator_type(accelerator_type: str) -> str:
    """gcloud names v5e slices v5litepod-N; accept the v5e-N spelling used in the docs too."""
    match = re.fullmatch(r"v5e-(\d+)", accelerator_type)
    return f"v5litepod-{match.group(1)}" if match else accelerator_type


def default_runtime_version(accelerator_type: str) -> str:
    family = accelerator_type.split("-", 1)[0]
    if family not in RUNTIME_VERSIONS:
        raise LaunchError(
            f"--accelerator_type={accelerator_type}: no default TPU software version for "
            f"{family!r} (known: {', '.join(sorted(RUNTIME_VERSIONS))}); pass --version"
        )
    return RUNTIME_VERSIONS[family]


# ----------------------------------------------------------------------------- gcloud lines


def _tpu_command(verb: str, name: str, zone: str, project: str | None) -> list[str]:
    command = [*TPU_VM, verb, name, f"--zone={zone}"]
    if project:
        command.append(f"--project={project}")
    return command


def ssh_command(
    name: str, zone: str, project: str | None, script: str, *, worker: str = "all"
) -> list[str]:
    return [
        *_tpu_command("ssh", name, zone, project),
        f"--worker={worker}",
        f"--command={script}",
    ]


def create_plan(
    name: str,
    zone: str,
    accelerator_type: str,
    *,
    version: str | None = None,
    project: str | None = None,
    spot: bool = False,
    preemptible: bool = False,
    service_account: str | None = None,
    scopes: str | None = None,
) -> Plan:
    if spot and preemptible:
        raise LaunchError("--spot and --preemptible exclude each other (spot is the newer kind)")
    accelerator_type = normalize_accelerator_type(accelerator_type)
    command = _tpu_command("create", name, zone, project)
    command += [
        f"--accelerator-type={accelerator_type}",
        f"--version={version or default_runtime_version(accelerator_type)}",
    ]
    if spot:
        command.append("--spot")
    if preemptible:
        command.append("--preemptible")
    if service_account:
        command.append(f"--service-account={service_account}")
    if scopes:
        command.append(f"--scopes={scopes}")
    return Plan([command])


def delete_plan(name: str, zone: str, *, project: str | None = None) -> Plan:
    return Plan([[*_tpu_command("delete", name, zone, project), "--quiet"]])


# ----------------------------------------------------------------------------- plans


def default_source() -> str:
    """The checkout this module lives in (an editable install), else the current directory."""
    root = Path(__file__).resolve().parents[2]
    return str(root) if (root / "setup.py").exists() else os.getcwd()


def setup_plan(
    name: str,
    zone: str,
    *,
    project: str | None = None,
    source: str | None = None,
    branch: str | None = None,
    archive: str | None = None,
    **script_options: Any,
) -> Plan:
    source = source or default_source()
    local = not source.startswith("gs://") and not is_git_url(source)
    if branch and not is_git_url(source):
        raise LaunchError(f"--branch needs a git URL --source (got --source={source})")
    if source.startswith("gs://") and not (_GCS_PATH.match(source) and source.endswith(".tar.gz")):
        raise LaunchError(f"--source={source}: expected gs://BUCKET/PATH.tar.gz (a packed repo)")
    commands, notes, pack = [], [], None
    if local:
        source = os.path.abspath(source)
        if not os.path.isfile(os.path.join(source, "setup.py")):
            raise LaunchError(f"--source={source}: no setup.py there (expected a toxjax checkout)")
        archive = archive or os.path.join(tempfile.gettempdir(), f"toxjax-src-{name}.tar.gz")
        pack = (source, archive)
        notes.append(f"pack {source} (files git tracks or does not ignore) -> {archive}")
        commands.append(
            [*TPU_VM, "scp", archive, f"{name}:{REMOTE_ARCHIVE}", f"--zone={zone}"]
            + ([f"--project={project}"] if project else [])
            + ["--worker=all"]
        )
    commands.append(
        ssh_command(name, zone, project, setup_script(source, branch=branch, **script_options))
    )
    return Plan(commands, notes=notes, pack=pack)


def run_plan(
    name: str,
    zone: str,
    args: Sequence[str],
    *,
    project: str | None = None,
    module: str = DEFAULT_MODULE,
    run_name: str = DEFAULT_RUN_NAME,
    env: dict[str, str] | None = None,
) -> Plan:
    require_workdir(args, gcs=True)
    if module == DEFAULT_MODULE and flag_value(args, "distributed") is None:
        # A GCE TPU VM describes its slice in the metadata server, not in environment variables,
        # so toxjax.main's --distributed=auto cannot see it; jax.distributed then auto-detects.
        args = [*args, "--distributed=true"]
    script = run_script(module, args, run_name=run_name, env=env)
    return Plan([ssh_command(name, zone, project, script)])


def gpu_node_plan(
    args: Sequence[str],
    *,
    module: str = DEFAULT_MODULE,
    python: str = "python",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    slurm: bool = False,
    dry_run: bool = False,
) -> Plan:
    """The per-node command: jax.distributed reads JAX_* variables, or detects SLURM itself."""
    workdir = require_workdir(args, gcs=False)
    command = [python, "-m", module, *args]
    if slurm:
        if coordinator_address or num_processes or process_id is not None:
            raise LaunchError(
                "--slurm detects the coordinator, process count and id from SLURM itself: "
                "drop --coordinator_address/--num_processes/--process_id"
            )
        return Plan([["srun", "--ntasks-per-node=1", *command]])
    if not coordinator_address or not num_processes:
        raise LaunchError(
            "gpu-node needs --coordinator_address=HOST:PORT and --num_processes=N "
            "(or --slurm inside a SLURM allocation)"
        )
    if not re.fullmatch(r"[^\s:]+:\d+", coordinator_address):
        raise LaunchError(f"--coordinator_address={coordinator_address}: expected HOST:PORT")
    if num_processes < 1:
        raise LaunchError(f"--num_processes={num_processes}: must be >= 1")
    if num_processes > 1 and not (workdir.startswith("gs://") or os.path.isabs(workdir)):
        raise LaunchError(
            f"--workdir={workdir}: with several nodes the workdir must be shared by all of them "
            f"(gs://... or an absolute path on a shared file system)"
        )
    if process_id is None:
        if not dry_run:
            raise LaunchError("gpu-node needs --process_id=I to run (--dry_run prints every node)")
        ids = range(num_processes)
    elif not 0 <= process_id < num_processes:
        raise LaunchError(f"--process_id={process_id}: must be in [0, {num_processes})")
    else:
        ids = [process_id]
    commands = []
    for index in ids:
        env = [
            f"JAX_COORDINATOR_ADDRESS={coordinator_address}",
            f"JAX_NUM_PROCESSES={num_processes}",
            f"JAX_PROCESS_ID={index}",
        ]
        commands.append(["env", *env, *command])
    return Plan(commands)


# ----------------------------------------------------------------------------- execution


def source_files(source: str) -> list[str]:
    """Files to ship: what git tracks or would track; a plain directory minus build debris."""
    try:
        listed = subprocess.run(
            ["git", "-C", source, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split("\0")
        names = sorted({name for name in listed if name})
        return [name for name in names if os.path.isfile(os.path.join(source, name))]
    except (OSError, subprocess.CalledProcessError):
        return sorted(_walk_files(source))


def _skipped_dir(name: str) -> bool:
    return name in _PACK_EXCLUDE_DIRS or name.endswith((".egg-info", "_cache"))


def _walk_files(source: str) -> Iterator[str]:
    for directory, subdirs, files in os.walk(source):
        subdirs[:] = [d for d in subdirs if not _skipped_dir(d)]
        for file in files:
            if not file.endswith(".pyc"):
                yield os.path.relpath(os.path.join(directory, file), source)


def pack_source(source: str, archive: str) -> int:
    """Write the source tree to a .tar.gz (paths relative to its root); returns the file count."""
    files = source_files(source)
    if "setup.py" not in files:
        raise LaunchError(f"{source}: setup.py is not among the files to ship (ignored?)")
    os.makedirs(os.path.dirname(os.path.abspath(archive)), exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name in files:
            tar.add(os.path.join(source, name), arcname=name, recursive=False)
    return len(files)


def execute(plan: Plan, *, dry_run: bool, print_fn: Callable[[str], None] = print) -> int:
    """Print (dry run) or run the plan's steps in order; stops at the first failure."""
    if dry_run:
        for note in plan.notes:
            print_fn(f"# {note}")
        for command in plan.commands:
            print_fn(shlex.join(command))
        return 0
    needed = {command[0] for command in plan.commands} - {"env"}
    for program in sorted(needed):
        if shutil.which(program) is None:
            hint = (
                "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
                if program == "gcloud"
                else "is it installed and on PATH?"
            )
            raise LaunchError(f"{program} not found on PATH: {hint}, or use --dry_run")
    if plan.pack:
        source, archive = plan.pack
        count = pack_source(source, archive)
        print_fn(f"# packed {count} files from {source} into {archive}")
    for command in plan.commands:
        print_fn(f"+ {shlex.join(command)}")
        returncode = subprocess.run(command, check=False).returncode
        if returncode != 0:
            print(
                f"command failed with exit status {returncode}: {shlex.join(command)}",
                file=sys.stderr,
            )
            return returncode
    return 0


# ----------------------------------------------------------------------------- CLI


def _tpu_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
    parser.add_argument("--name", required=True, help="TPU VM / pod slice name")
    parser.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e)")
    parser.add_argument("--project", help="GCP project (default: gcloud's configured project)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m toxjax.launch",
        description="Create, set up, run on, follow and delete TPU VMs; print GPU node commands. "
        "Arguments after '--' go to `python -m MODULE` unchanged.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="subcommand", required=True)

    create = _tpu_parser(sub, "create", "create a TPU VM or pod slice")
    create.add_argument("--accelerator_type", required=True, help="e.g. v4-32, v5litepod-16")
    create.add_argument("--version", help="TPU software version (default: per TPU family)")
    kind = create.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="spot capacity (preemptible, cheaper)")
    kind.add_argument("--preemptible", action="store_true", help="legacy preemptible TPU")
    create.add_argument("--service_account", help="service account email (needs bucket access)")
    create.add_argument("--scopes", help="comma-separated OAuth scopes for the service account")

    setup = _tpu_parser(sub, "setup", "install toxjax with jax[tpu] on every worker")
    setup.add_argument(
        "--source", help="local checkout (default: this one), git URL, or gs://BUCKET/PATH.tar.gz"
    )
    setup.add_argument("--branch", help="branch or tag to clone (git URL sources only)")
    setup.add_argument("--archive", help="where to write the packed local checkout")
    setup.add_argument("--extra", default="tpu", help="setup.py extra to install ('' for none)")
    setup.add_argument(
        "--python_version", default=DEFAULT_PYTHON_VERSION, help="Python that uv installs"
    )
    setup.add_argument("--torch", default=DEFAULT_TORCH, help="CPU torch pin ('' to skip)")
    setup.add_argument(
        "--find_links", default=LIBTPU_FIND_LINKS, help="extra wheel page for libtpu ('' skips)"
    )

    run = _tpu_parser(
        sub,
        "run",
        "start `python -m MODULE ARGS...` detached on every worker; ARGS follow '--' "
        "and must include --workdir=gs://...",
    )
    run.add_argument("--module", default=DEFAULT_MODULE, help="e.g. toxjax.main, toxjax.study")
    run.add_argument("--run_name", default=DEFAULT_RUN_NAME, help="names the log and pid files")
    run.add_argument("--env", action="append", default=[], help="KEY=VALUE (repeatable)")
    run.add_argument(
        "--topology",
        help="the slice, e.g. v5p:2x2x1 or v5e:4x4: the config is compiled for it here first "
        "(toxjax.compile) and the launch refused if it does not fit in HBM",
    )
    run.add_argument(
        "--accelerator_type", help="the slice's type (e.g. v5p-8): the fit check's --topology"
    )
    run.add_argument("--skip_fit_check", action="store_true", help="launch without the check")

    logs = _tpu_parser(sub, "logs", "stream a run's log file")
    logs.add_argument("--run_name", default=DEFAULT_RUN_NAME)
    logs.add_argument("--worker", default="0", help="worker index, list, or 'all'")
    logs.add_argument("--lines", type=int, default=100)
    logs.add_argument("--no_follow", action="store_true", help="print and exit")

    stop = _tpu_parser(sub, "stop", "SIGTERM a run on every worker (checkpoint, then exit)")
    stop.add_argument("--run_name", default=DEFAULT_RUN_NAME)
    stop.add_argument("--wait_s", type=int, default=600, help="how long to wait for the exit")

    _tpu_parser(sub, "delete", "delete the TPU VM or pod slice")

    gpu = sub.add_parser(
        "gpu-node", help="the per-node command of a multi-node GPU run", allow_abbrev=False
    )
    gpu.add_argument("--coordinator_address", help="HOST:PORT of process 0")
    gpu.add_argument("--num_processes", type=int, help="number of nodes (one process each)")
    gpu.add_argument(
        "--process_id",
        type=int,
        help="this node's index (omit with --dry_run to print every node's command)",
    )
    gpu.add_argument("--slurm", action="store_true", help="srun; JAX reads SLURM's variables")
    gpu.add_argument("--module", default=DEFAULT_MODULE, help="e.g. toxjax.main, toxjax.study")
    gpu.add_argument("--python", default="python", help="interpreter on the nodes")
    gpu.add_argument("--dry_run", action="store_true", help="print the commands only")
    return parser


def _pick(options: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {name: getattr(options, name) for name in names}


def plan_from_args(options: argparse.Namespace, passthrough: list[str], dry_run: bool) -> Plan:
    command = options.subcommand
    if passthrough and command not in ("run", "gpu-node"):
        raise LaunchError(
            f"{command} takes no arguments after '--' (got {shlex.join(passthrough)})"
        )
    if command == "gpu-node":
        gpu = _pick(options, "module", "python", "coordinator_address", "num_processes")
        gpu.update(_pick(options, "process_id", "slurm"))
        return gpu_node_plan(passthrough, dry_run=dry_run, **gpu)
    name, zone, project = check_name("name", options.name), options.zone, options.project
    if command == "create":
        flags = _pick(options, "version", "spot", "preemptible", "service_account", "scopes")
        return create_plan(name, zone, options.accelerator_type, project=project, **flags)
    if command == "setup":
        flags = _pick(options, "source", "branch", "archive", "extra", "python_version", "torch")
        flags["find_links"] = options.find_links or None
        return setup_plan(name, zone, project=project, **flags)
    if command == "delete":
        return delete_plan(name, zone, project=project)
    run_name = check_name("run_name", options.run_name)
    if command == "run":
        flags = {"module": options.module, "run_name": run_name, "env": parse_env(options.env)}
        plan = run_plan(name, zone, passthrough, project=project, **flags)
        for note in check_fit(options, passthrough):
            print(f"# {note}", file=sys.stderr)
        return plan
    if command == "logs":
        script = logs_script(run_name, lines=options.lines, follow=not options.no_follow)
        return Plan([ssh_command(name, zone, project, script, worker=options.worker)])
    script = stop_script(run_name, wait_s=options.wait_s)  # stop
    return Plan([ssh_command(name, zone, project, script)])


def check_fit(options: argparse.Namespace, passthrough: list[str]) -> list[str]:
    """The run's fit check (after its arguments are checked); notes say what it found."""
    if options.skip_fit_check:
        return ["fit check skipped (--skip_fit_check)"]
    module = options.module
    if module not in fit_check.CHECKED_MODULES or flag_value(passthrough, "config") is None:
        return [f"fit check skipped: no --config of {', '.join(fit_check.CHECKED_MODULES)}"]
    topology = options.topology
    if not topology and options.accelerator_type:
        topology = fit_check.topology_for_accelerator(options.accelerator_type)
    if not topology:
        return ["fit check skipped: give --topology (e.g. v5p:2x2x1) or a known --accelerator_type"]
    steps = fit_check.steps_for(module, flag_value(passthrough, "mode"))
    try:
        return fit_check.check(passthrough, topology, steps)
    except fit_check.FitCheckError as error:
        raise LaunchError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, passthrough = argv[:split], argv[split + 1 :]
    parser = build_parser()
    options, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.exit(
            2,
            f"{parser.prog} {options.subcommand}: error: unrecognized arguments: "
            f"{shlex.join(unknown)} (arguments for the launched module go after '--')\n",
        )
    dry_run = options.dry_run or os.environ.get("DRY_RUN", "").lower() in _TRUE
    try:
        plan = plan_from_args(options, passthrough, dry_run)
        return execute(plan, dry_run=dry_run)
    except LaunchError as error:
        parser.exit(2, f"{parser.prog} {options.subcommand}: error: {error}\n")


def run() -> None:
    """Console-script entry point (toxjax-launch)."""
    sys.exit(main())
