#!/usr/bin/env bash
# Stream a run's log file (worker 0 by default).
#   tpu/logs.sh --name=NAME --zone=ZONE [--worker=all] [--run_name=R] [--no_follow]
# DRY_RUN=1 (or --dry_run) prints the commands instead of running them; --help lists all flags.
# Thin wrapper: the logic is in toxjax/launch/launcher.py ("python -m toxjax.launch logs").
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m toxjax.launch logs "$@"
