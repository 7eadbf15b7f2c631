"""toxjax.tf_import: the one TensorFlow import, hiding accelerators, and no import side effects."""

import subprocess
import sys

from toxjax.tf_import import import_tensorflow


def test_import_tensorflow_hides_accelerators_and_is_idempotent():
    tf = import_tensorflow()
    assert import_tensorflow() is tf
    assert tf.config.get_visible_devices("GPU") == []
    assert tf.config.get_visible_devices("TPU") == []


def test_importing_any_toxjax_module_leaves_tensorflow_devices_alone():
    """Hiding devices happens when TF is first used, never as a side effect of an import."""
    script = """
import pkgutil, importlib, tensorflow as tf
calls = []
tf.config.set_visible_devices = lambda *a, **k: calls.append(a)
import toxjax
skip = ("__main__", "_main")  # commands define absl flags; __main__ runs them
for info in pkgutil.walk_packages(toxjax.__path__, "toxjax."):
    if not info.name.endswith(skip) and "beam_job" not in info.name:
        importlib.import_module(info.name)
print("CALLS", len(calls))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CALLS 0" in result.stdout
