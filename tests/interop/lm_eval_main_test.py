"""lm_eval_main's task index: built-in tasks indexed only when a task asked for needs them.

The command itself runs end to end in tests/interop/lm_eval_adapter_test.py (test_command_line).
"""

from __future__ import annotations

import lm_eval.tasks
import pytest

from toxjax.interop import lm_eval_main


def _write_task(directory, name: str) -> str:
    (directory / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\noutput_type: multiple_choice\n"
        "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: gold\n"
    )
    return str(directory)


def test_local_tasks_skip_the_built_in_index(tmp_path):
    include = _write_task(tmp_path, "my_local_cloze")
    manager = lm_eval_main.task_manager(["my_local_cloze"], include)
    assert manager.all_subtasks == ["my_local_cloze"]  # no built-in task was indexed


class _RecordingManager:
    """Stands in for lm_eval's TaskManager: records how it was built; indexes one built-in."""

    built: list[bool] = []

    def __init__(self, include_path=None, include_defaults=True):
        self.built.append(include_defaults)
        self.all_subtasks = ["my_local_cloze"] + (["hellaswag"] if include_defaults else [])


@pytest.mark.parametrize(
    "tasks, include, built",
    [
        (["my_local_cloze", "hellaswag"], True, [False, True]),  # one built-in: the full index
        (["hellaswag"], False, [True]),  # no include_path: the full index at once
    ],
)
def test_a_built_in_task_gets_the_full_index(tmp_path, monkeypatch, tasks, include, built):
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", _RecordingManager)
    monkeypatch.setattr(_RecordingManager, "built", [])
    include_path = _write_task(tmp_path, "my_local_cloze") if include else None
    manager = lm_eval_main.task_manager(tasks, include_path)
    assert _RecordingManager.built == built
    assert set(tasks) <= set(manager.all_subtasks)
