"""The README opens with the two commands, and CI runs exactly the README's test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text[: text.index("\n## ")]  # the part before the first section
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", head, flags=re.S)


def test_readme_opens_with_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "pip install torch==2.13.0" in main_job and "python -m toxjax." in main_job
    assert "pytest" in tests and "xla_force_host_platform_device_count=8" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _readme_commands()[1] in ci_script.splitlines()


README_MAX_LINES = 260
# What the repository's own text may not contain: internal tracker references and paths that
# point outside the repository.
ISSUE_REFERENCE = re.compile(r"(?i)issue [0-9]")
OUTSIDE_PATH = "/".join(("..", "shared"))
SCANNED = ("README.md", "docs", "toxjax", "tests", "tpu", "benchmarks", "setup.py")
# Third-party text packaged as data (real tweets, comments, licences) is not ours to word.
THIRD_PARTY = (ROOT / "toxjax" / "assets" / "real",)


def _repository_texts() -> list[tuple[pathlib.Path, str]]:
    paths = []
    for name in SCANNED:
        path = ROOT / name
        paths += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    texts = []
    for path in paths:
        if "__pycache__" in path.parts or any(path.is_relative_to(d) for d in THIRD_PARTY):
            continue
        try:
            texts.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary
    return texts


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)


def test_no_issue_numbers_or_paths_outside_the_repository():
    texts = _repository_texts()
    assert len(texts) > 100  # the walk found the repository
    wrong = []
    for path, text in texts:
        for number, line in enumerate(text.splitlines(), 1):
            if ISSUE_REFERENCE.search(line) or OUTSIDE_PATH in line:
                wrong.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert wrong == []


def _documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every command in a fenced bash block of README.md and docs/*.md,
    with line continuations joined."""
    commands = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            commands += [(path.name, line.strip()) for line in joined.splitlines() if line.strip()]
    return commands


def _module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def test_documented_commands_name_modules_and_configs_that_exist():
    commands = _documented_commands()
    modules = [(f, c, m) for f, c in commands for m in re.findall(r"python -m (toxjax[\w.]*)", c)]
    configs = [(f, c, p) for f, c in commands for p in re.findall(r"--config=([^\s:'\"]+)", c)]
    assert len(modules) > 10 and len(configs) > 10  # the parser found the commands
    wrong = [f"{f}: no module {m}: {c}" for f, c, m in modules if not _module_exists(m)]
    wrong += [f"{f}: no config {p}: {c}" for f, c, p in configs if not (ROOT / p).is_file()]
    assert wrong == []
