"""Test environment: CPU JAX with 8 forced host devices, so sharding is exercised for real."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The suite compiles hundreds of small programs, in this process and in the commands it starts
# (they inherit the flag): at test sizes XLA's CPU backend optimisations cost more time than they
# save (measured on the model tests: 59 s at the default level, 38 s at 0). Results stay exact
# float math; every comparison the tests make runs under the same flags.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Demo tasks score the embedded corpus on first use: keep that out of the user's ~/.cache.
# xdist workers inherit the directory; the process that made it removes it when it exits.
if "TOXJAX_DATA_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["TOXJAX_DATA_DIR"] = tempfile.mkdtemp(prefix="toxjax_test_data_")
    atexit.register(shutil.rmtree, os.environ["TOXJAX_DATA_DIR"], ignore_errors=True)

# Commands import the modules of config.data.task_modules before they look a task up; tests that
# call lower-level functions with a demo task name directly get the demo family here. (The
# commands' own import is tested in subprocesses: tests/main_test.py, tests/your_corpus_test.py.)
import toxjax.data.demo_tasks  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first (each module's tests kept together, in order): xdist then
    starts both workers on the long end-to-end tests and fills the end with short ones, instead
    of one worker finishing a long test alone."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
