#!/usr/bin/env bash
# Install toxjax with jax[tpu] on every worker (uv, Python 3.11, ~/toxjax_venv).
#   tpu/setup.sh --name=NAME --zone=ZONE [--source=DIR | GIT_URL | gs://B/src.tar.gz]
#                [--branch=B] [--project=P]
# DRY_RUN=1 (or --dry_run) prints the commands instead of running them; --help lists all flags.
# Thin wrapper: the logic is in toxjax/launch/launcher.py ("python -m toxjax.launch setup").
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m toxjax.launch setup "$@"
