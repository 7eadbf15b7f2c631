#!/usr/bin/env bash
# Print (--dry_run) or run one node's command of a multi-node GPU run.
#   tpu/gpu_multinode.sh --coordinator_address=HOST:PORT --num_processes=N --process_id=I -- \
#       --config=toxjax/configs/X.py --workdir=/shared/runs/X
#   tpu/gpu_multinode.sh --slurm -- --config=toxjax/configs/X.py --workdir=/shared/runs/X
# DRY_RUN=1 (or --dry_run) prints the commands instead of running them; --help lists all flags.
# Thin wrapper: the logic is in toxjax/launch/launcher.py ("python -m toxjax.launch gpu-node").
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m toxjax.launch gpu-node "$@"
