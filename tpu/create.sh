#!/usr/bin/env bash
# Create a TPU VM or pod slice.
#   tpu/create.sh --name=NAME --zone=ZONE --accelerator_type=v4-32 [--version=V]
#                 [--spot | --preemptible] [--project=P] [--service_account=SA]
# DRY_RUN=1 (or --dry_run) prints the commands instead of running them; --help lists all flags.
# Thin wrapper: the logic is in toxjax/launch/launcher.py ("python -m toxjax.launch create").
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m toxjax.launch create "$@"
