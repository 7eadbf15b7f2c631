"""Every command is a console script (setup.py) whose target exists, and `--help` runs."""

import ast
import importlib.util
import pathlib
import shutil
import subprocess

import pytest

SETUP = pathlib.Path(__file__).resolve().parents[1] / "setup.py"


def console_scripts() -> dict[str, str]:
    tree = ast.parse(SETUP.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "CONSOLE_SCRIPTS":
            entries = ast.literal_eval(node.value)
            return dict(tuple(part.strip() for part in e.split("=")) for e in entries)
    raise AssertionError("setup.py defines no CONSOLE_SCRIPTS")


def test_every_command_has_a_console_script():
    names = set(console_scripts())
    expected = {
        *("study", "score", "vocab", "train", "memory", "compile", "launch", "demo-prompts"),
        *("export", "real-corpus"),
    }
    assert names == {f"toxjax-{name}" for name in expected}


@pytest.mark.parametrize("name, target", sorted(console_scripts().items()))
def test_console_script_targets_are_defined(name, target):
    """Read, not imported: each command defines its absl flags when imported, so two
    commands never share one process."""
    module, _, function = target.partition(":")
    source = pathlib.Path(importlib.util.find_spec(module).origin).read_text()
    defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    assert function in defined, f"{name}: {module} defines no {function}()"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, shown", [("toxjax-score", "--output_dir"), ("toxjax-launch", "gpu-node")]
)
def test_installed_console_scripts_answer_help(name, shown):
    path = shutil.which(name)
    assert path, f"{name} is not installed: run pip install -e ."
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=300)
    # absl's --help exits 1 after printing the usage; argparse's exits 0.
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
    assert shown in result.stdout
