"""The memory command: `python -m toxjax.model.memory_main` or `toxjax-memory`.

Prints the per-device bytes of a config's train state on a mesh, before any TPU time is spent.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from toxjax.commands import run_command
from toxjax.model import memory

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (toxjax/configs/*.py).")
_MESH = flags.DEFINE_string(
    "mesh", "", "Mesh sizes 'data:1,fsdp:256,tensor:1'; empty = config.mesh.ici"
)
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", None, "Device count; needed when the mesh has a -1."
)
_GRADS = flags.DEFINE_bool("grads", False, "Also count one float32 gradient copy.")
_JSON = flags.DEFINE_bool("json", False, "Print the report as one JSON line.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    sizes = memory.parse_mesh(_MESH.value) if _MESH.value else dict(config.mesh.ici)
    report = memory.state_memory(
        config, sizes, num_devices=_NUM_DEVICES.value, include_grads=_GRADS.value
    )
    print(json.dumps(report) if _JSON.value else memory.format_report(report))


def run() -> None:
    """Console-script entry point (toxjax-memory)."""
    run_command(main, __name__)


if __name__ == "__main__":
    run()
