"""Test environment: CPU JAX with 8 forced host devices, so sharding is exercised for real."""

import os
import sys

# The suite imports the same stack in ~60 commands it starts (real subprocesses, several JAX
# processes): it writes the bytecode of what it imports, once, even where the environment says
# not to (PYTHONDONTWRITEBYTECODE), rather than having every process compile it again or the
# install compile all ~26,000 files of the environment (README: the test command).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

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


def pytest_configure(config):
    """Commands import the modules of config.data.task_modules before they look a task up; tests
    that call lower-level functions with a demo task name directly get the demo family here. (The
    commands' own import is tested in subprocesses: tests/main_test.py, tests/your_corpus_test.py.)
    xdist's controller runs no test: it skips the import (TensorFlow and SeqIO, ~8 CPU-s)."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import toxjax.data.demo_tasks  # noqa: F401


# The longest modules, measured (pytest --durations=0, 2 cores), in the order xdist starts them
# (pyproject: --dist loadfile --no-loadscope-reorder): the 2-process training runs first, the long
# single-process modules beside them, the 2-process study once the training runs are done, so
# two multi-process modules seldom share the 2 cores; the short modules fill the end.
LONGEST_FIRST = (
    "tests/main_test.py",
    "tests/your_corpus_test.py",
    "tests/scoring/job_test.py",
    "tests/interop/lm_eval_adapter_test.py",
    "tests/scoring/detoxify_jax_test.py",
    "tests/compile/compile_main_test.py",
    "tests/study/experiment_test.py",
    "tests/scoring/multiprocess_scoring_test.py",
)


def pytest_collection_modifyitems(config, items):
    """LONGEST_FIRST, then the other modules with slow tests, then the rest; each module's tests
    stay together and in order. Otherwise a long module can start last and end alone."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        path = item.path.relative_to(config.rootpath).as_posix()
        if path in LONGEST_FIRST:
            return LONGEST_FIRST.index(path)
        return len(LONGEST_FIRST) + (item.path not in slow_modules)

    items.sort(key=rank)
