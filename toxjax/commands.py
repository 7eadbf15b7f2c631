"""How every toxjax command starts: absl flags defined in its `*_main` module, then app.run.

A console script runs a generated wrapper as `__main__`, so absl's `--help` (which lists the
key flags of the module named by sys.argv[0]) would show none of the command's flags; here
they are registered for that name too, so `toxjax-score --help` and `python -m toxjax.scoring
--help` print the same list.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags


def run_command(
    main: Callable[[list[str]], Any],
    module_name: str,
    flags_parser: Callable[[list[str]], Sequence[str]] | None = None,
) -> None:
    """app.run(main) with `module_name`'s flags shown by --help."""
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    if flags_parser is None:
        app.run(main)
    else:
        app.run(main, flags_parser=flags_parser)
