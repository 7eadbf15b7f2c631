"""How every toxjax command starts: absl flags defined in its `*_main` module, then app.run.

A console script runs a generated wrapper as `__main__`, so absl's `--help` (which lists the
key flags of the module named by sys.argv[0]) would show none of the command's flags; here
they are registered for that name too, so `toxjax-score --help` and `python -m toxjax.scoring
--help` print the same list.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from toxjax.workdir_lock import WorkdirInUseError


def run_command(
    main: Callable[[list[str]], Any],
    module_name: str,
    flags_parser: Callable[[list[str]], Sequence[str]] | None = None,
) -> None:
    """app.run(main) with `module_name`'s flags shown by --help; a run refused because its
    workdir is in use (toxjax.workdir_lock) exits 1 with the message alone, and a run whose
    other processes died exits 1 at once, saying so."""
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    try:
        if flags_parser is None:
            app.run(main)
        else:
            app.run(main, flags_parser=flags_parser)
    except WorkdirInUseError as error:  # a refusal, not a crash: the message, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:
        if not lost_a_peer(error):
            raise
        traceback.print_exc()
        print(
            f"error: another process of this run stopped ({str(error).splitlines()[0]}); this "
            "process stops too. Its log says why; rerun the same command on every host to "
            "resume from the latest checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        # JAX's exit handler would wait for the dead process at its shutdown barrier, then abort.
        os._exit(1)


# What a collective or the coordination service says when another JAX process has died.
_PEER_LOST = ("Connection closed by peer", "heartbeat", "Connection reset by peer", "UNAVAILABLE")


def lost_a_peer(error: BaseException) -> bool:
    """Whether `error` is a multi-process run failing because another of its processes died."""
    if type(error).__name__ != "JaxRuntimeError" or "jax" not in sys.modules:
        return False
    import jax

    return jax.process_count() > 1 and any(sign in str(error) for sign in _PEER_LOST)
