"""The package's import-time setting: the collector thresholds every toxjax command runs with."""

from __future__ import annotations

import subprocess
import sys


def _thresholds_after_import(before: str = "pass") -> tuple[int, ...]:
    code = f"import gc; {before}; import toxjax; print(*gc.get_threshold())"
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return tuple(int(value) for value in output.split())


def test_importing_toxjax_raises_the_default_collector_thresholds():
    assert _thresholds_after_import() == (10_000, 20, 20)


def test_thresholds_the_process_chose_are_kept():
    assert _thresholds_after_import("gc.set_threshold(1234, 5, 6)") == (1234, 5, 6)
