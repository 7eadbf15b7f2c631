#!/usr/bin/env bash
# SIGTERM a run on every worker; toxjax saves a checkpoint and exits 0.
#   tpu/stop.sh --name=NAME --zone=ZONE [--run_name=R] [--wait_s=600]
# DRY_RUN=1 (or --dry_run) prints the commands instead of running them; --help lists all flags.
# Thin wrapper: the logic is in toxjax/launch/launcher.py ("python -m toxjax.launch stop").
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m toxjax.launch stop "$@"
