#!/usr/bin/env bash
# Start `python -m MODULE ARGS` (default toxjax.main) detached on every worker,
# appending to ~/toxjax_runs/RUN_NAME.log there.
#   tpu/launch.sh --name=NAME --zone=ZONE [--module=M] [--run_name=R] [--env=K=V] -- \
#       --config=toxjax/configs/X.py --workdir=gs://BUCKET/runs/X --mode=train [--config.a.b=c ...]
# DRY_RUN=1 (or --dry_run) prints the commands instead of running them; --help lists all flags.
# Thin wrapper: the logic is in toxjax/launch/launcher.py ("python -m toxjax.launch run").
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m toxjax.launch run "$@"
